"""Hot reload of the config (issue 13 section 4): the swap, what it keeps, the API, the dashboard, the signals."""

from __future__ import annotations

import logging
import signal
import time

import pytest
from werkzeug.security import generate_password_hash

from app.config import Config, load_config
from app.services import reload as reloading
from app.services.admin import Admin
from app.services.breaker import Breakers
from app.state import routing
from app.storage.usage import audit_entries
from tests.conftest import BASE, MASTER_KEY, TOKENS
from tests.unit.test_dashboard import PASSWORD, SECRET_KEY, csrf, sign_in

RUNTIME_TOKEN = "tok-runtime-000000000009"


def upstream(name: str, tokens: tuple[str, ...] = TOKENS, models: str = '["*"]') -> str:
    quoted = ", ".join(f'"{t}"' for t in tokens)
    return f'[[upstreams]]\nname = "{name}"\nbase_url = "{BASE}"\ntokens = [{quoted}]\nmodels = {models}\n'


ONE = "[gateway]\nmax_attempts = 3\n\n" + upstream("primary")
TWO = ONE + upstream("second", ("tok-second-0000000004",), '["extra-*"]')
WITH_ALIAS = TWO + '[[models]]\nname = "smart"\ntargets = [{ upstream = "second", model = "extra-1" }]\n'
INVALID = {
    "unknown key": (ONE + "bogus = 1\n", "upstreams[0].bogus: unknown key"),
    "bad TOML": (ONE + "name = \n", "invalid TOML"),
    "no upstreams": ("[gateway]\n", "upstreams: at least one [[upstreams]] table is required"),
    "unknown upstream in an alias": (
        ONE + '[[models]]\nname = "smart"\ntargets = [{ upstream = "nowhere", model = "m" }]\n',
        "models[0].targets[0]",
    ),
}


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "sluice.toml"
    path.write_text(ONE)
    return path


@pytest.fixture
def app(make_app, config_file):
    return make_app(
        load_config(str(config_file)), config_path=str(config_file), secret_key=SECRET_KEY,
        admin_password_hash=generate_password_hash(PASSWORD),
    )  # fmt: skip


@pytest.fixture
def gw(app):
    return app.extensions["sluice"]


def reload_api(client, key: str | None = MASTER_KEY):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return client.post("/admin/api/reload", headers=headers)


@pytest.mark.parametrize(
    ("text", "upstreams", "models"),
    [(ONE, ["primary"], []), (TWO, ["primary", "second"], []), (WITH_ALIAS, ["primary", "second"], ["smart"])],
)
def test_a_valid_reload_swaps_the_routing_and_answers_what_it_loaded(app, gw, client, config_file, text, upstreams,
                                                                      models):  # fmt: skip
    old = gw.routing
    config_file.write_text(text)
    answer = reload_api(client)
    assert answer.status_code == 200, answer.json
    assert answer.json == {"source": str(config_file), "loaded_at": gw.config.loaded_at, "upstreams": upstreams,
                           "models": models}  # fmt: skip
    assert gw.routing is not old and gw.pool is gw.routing.pool is gw.client.pool
    assert [u.name for u in gw.config.upstreams] == upstreams
    assert gw.config.loaded_at >= old.config.loaded_at
    assert gw.client.session is old.client.session  # connections are kept
    assert gw.client.selector.breakers is old.client.selector.breakers
    assert [u.name for u in gw.catalog.upstreams] == upstreams


def test_a_request_keeps_the_routing_it_started_with(app, gw, config_file):
    with app.test_request_context("/v1/chat/completions"):
        started = routing()
        config_file.write_text(TWO)
        reloading.reload(gw)
        assert routing() is started and len(routing().config.upstreams) == 1
    with app.test_request_context("/v1/chat/completions"):
        assert routing() is gw.routing and len(routing().config.upstreams) == 2


def test_token_state_runtime_tokens_and_overrides_survive_a_reload(app, gw, config_file):
    now = time.time()
    admin = Admin(gw, actor="test")
    added = admin.add_token("primary", RUNTIME_TOKEN)
    admin.set_overrides("primary", user_agent="reloaded-agent/1", headers={"X-Team": "blue"})
    first, second = [token for token, _ in gw.pool.candidates("primary")][:2]
    gw.pool.report(first, status=429, ok=False, cooldown=120.0, now=now)
    gw.pool.report(second, status=200, ok=True, cooldown=0.0, now=now)  # counted in memory, flushed by the swap
    before = {row.id: row for row in gw.pool.rows()}
    config_file.write_text(TWO)
    reloading.reload(gw)
    after = {row.id: row for row in gw.pool.rows()}
    assert after[first.id].cooldown_until == before[first.id].cooldown_until > now
    assert after[second.id].successes == before[second.id].successes + 1
    assert added["id"] in after and any(t.value == RUNTIME_TOKEN for t, _ in gw.pool.candidates("primary"))
    overrides = gw.pool.stored_overrides()
    assert overrides["primary"] == ("reloaded-agent/1", {"X-Team": "blue"})
    assert gw.pool.usable_count("primary", now) == 3  # the run-time token and two config ones; one cools down


def test_tokens_dropped_from_the_file_are_no_longer_used_but_come_back_with_their_state(gw, config_file):
    gone = gw.pool.candidates("primary")[0][0]
    gw.pool.report(gone, status=429, ok=False, cooldown=300.0, now=time.time())
    config_file.write_text(upstream("primary", TOKENS[1:]))
    reloading.reload(gw)
    assert gone.id not in {t.id for t, _ in gw.pool.candidates("primary")}
    config_file.write_text(ONE)
    reloading.reload(gw)
    assert gw.pool.rows()[0].cooldown_until > time.time() + 200  # its cooldown was kept in the store


@pytest.mark.parametrize("name", sorted(INVALID))
def test_an_invalid_config_changes_nothing_and_answers_400_with_the_one_line_error(gw, client, config_file, logs,
                                                                                   name):  # fmt: skip
    text, expected = INVALID[name]
    old = gw.routing
    config_file.write_text(text)
    answer = reload_api(client)
    assert answer.status_code == 400
    error = answer.json["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_config")
    assert error["message"].startswith(f"{config_file}: ") and expected in error["message"]
    assert "\n" not in error["message"]
    assert gw.routing is old
    assert f"sluice: configuration error: {error['message']}" in logs.getvalue()


@pytest.mark.parametrize("key", [None, "sk-wrong-key-0000000000000"])
def test_the_reload_api_needs_the_master_key(gw, client, config_file, key):
    old = gw.routing
    config_file.write_text(TWO)
    answer = reload_api(client, key)
    assert answer.status_code == 401 and answer.json["error"]["code"] == "invalid_api_key"
    assert gw.routing is old


def test_reloads_are_audited(gw, client, config_file):
    reload_api(client)
    config_file.write_text("nonsense = [")
    reload_api(client)
    actions = [(e["actor"], e["action"], e["target"]) for e in audit_entries(gw.db)][:2]
    assert actions == [("admin-api", "config.reload_refused", str(config_file)),
                       ("admin-api", "config.reload", str(config_file))]  # fmt: skip


def test_the_dashboard_shows_the_config_and_reloads_it_with_a_session_and_csrf(gw, client, config_file):
    assert sign_in(client).status_code == 303
    page = client.get("/dashboard").data.decode()
    assert f"config: {config_file}, loaded " in page and " UTC" in page
    config_file.write_text(TWO)
    assert client.post("/dashboard/reload").status_code == 403  # no CSRF token
    assert len(gw.config.upstreams) == 1
    done = client.post("/dashboard/reload", data={"csrf_token": csrf(page.encode())})
    assert done.status_code == 303 and len(gw.config.upstreams) == 2
    assert "Config reloaded from" in client.get("/dashboard").data.decode()
    config_file.write_text(INVALID["unknown key"][0])
    refused = client.post("/dashboard/reload", data={"csrf_token": csrf(page.encode())})
    assert refused.status_code == 400 and "unknown key" in refused.data.decode()
    assert len(gw.config.upstreams) == 2


def test_the_dashboard_reload_needs_a_session(gw, client, config_file):
    token = csrf(client.get("/dashboard/login").data)
    answer = client.post("/dashboard/reload", data={"csrf_token": token})
    assert answer.status_code == 302 and "/dashboard/login" in answer.headers["Location"]


def test_the_new_pool_takes_the_new_auto_disable_after(gw, config_file):
    config_file.write_text(ONE.replace("max_attempts = 3", "max_attempts = 3\nauto_disable_after = 7"))
    reloading.reload(gw)
    assert gw.pool.auto_disable_after == 7


def test_breakers_keep_the_state_of_upstreams_still_configured(gw, config_file):
    now = time.time()
    breakers = gw.client.selector.breakers
    for name in ("primary", "second"):
        for _ in range(breakers.failures):
            breakers.record(name, fault=True, now=now)
    config_file.write_text(ONE.replace("max_attempts = 3", "max_attempts = 3\nbreaker_failures = 2"))
    reloading.reload(gw)
    assert gw.client.selector.breakers is breakers and breakers.failures == 2
    assert breakers.is_open("primary", now) and not breakers.is_open("second", now)


@pytest.mark.parametrize(("keep", "kept"), [(["a"], {"a"}), ([], set()), (["a", "b", "c"], {"a", "b"})])
def test_breakers_configure_keeps_only_the_named_upstreams(keep, kept):
    breakers = Breakers(failures=5, cooldown=30.0)
    for name in ("a", "b"):
        for _ in range(5):
            breakers.record(name, fault=True, now=100.0)
    breakers.configure(3, 10.0, keep)
    assert (breakers.failures, breakers.cooldown) == (3, 10.0)
    assert {name for name in ("a", "b", "c") if breakers.is_open(name, 105.0)} == kept
    assert not any(breakers.is_open(name, 111.0) for name in ("a", "b"))  # the new cooldown applies


def test_hooks_see_the_new_config_before_the_swap_and_a_failing_one_does_not_stop_it(gw, config_file, logs):
    seen: list[tuple[Config, Config]] = []

    def broken(config: Config) -> None:
        raise RuntimeError("hook bug")

    gw.on_reload.extend([lambda config: seen.append((config, gw.config)), broken])
    config_file.write_text(TWO)
    new = reloading.reload(gw)
    assert seen == [(new, seen[0][1])] and seen[0][1] is not new  # called while the old config was in force
    assert gw.config is new
    assert "a reload hook failed" in logs.getvalue() and "hook bug" in logs.getvalue()


def test_new_secrets_are_masked_in_the_log(gw, config_file, logs):
    secret = "tok-brand-new-secret-0042"
    config_file.write_text(ONE + upstream("second", (secret,)))
    reloading.reload(gw)
    logging.getLogger("sluice").warning("leaked %s", secret)
    assert secret not in logs.getvalue()
    assert "config reloaded source=" in logs.getvalue() and "upstreams=2 models=0" in logs.getvalue()


@pytest.mark.parametrize(("elapsed", "retired_left"), [(0.0, 1), (899.0, 1), (2000.0, 0)])
def test_replaced_pools_are_flushed_until_their_requests_must_have_ended(gw, config_file, elapsed, retired_left):
    now = time.time()
    config_file.write_text(TWO)
    old_pool = gw.pool
    reloading.swap(gw, load_config(str(config_file)), now=now)
    token = old_pool.candidates("primary")[0][0]
    old_pool.report(token, status=200, ok=True, cooldown=0.0, now=now)  # a request still running on the old config
    count = next(r for r in gw.pool.rows() if r.id == token.id).successes
    reloading.flush_pools(gw, now=now + elapsed)
    assert next(r for r in gw.pool.rows() if r.id == token.id).successes == count + 1
    assert len(gw.retired) == retired_left


def test_the_demo_config_reloads_as_itself(make_app):
    gw = make_app(None).extensions["sluice"]
    gw.settings = type(gw.settings)(**{**gw.settings.__dict__, "config_path": None})
    config = reloading.reload(gw)
    assert config.source == "<built-in demo config>" and gw.config is config


@pytest.mark.parametrize(
    ("env", "parent", "expected"),
    [({"SLUICE_MASTER_PID": "4242"}, 4242, 4242), ({"SLUICE_MASTER_PID": "4242"}, 1, None), ({}, 4242, None),
     ({"SLUICE_MASTER_PID": "x"}, 4242, None), ({"SLUICE_MASTER_PID": ""}, 4242, None)],
)  # fmt: skip
def test_the_master_is_signalled_only_when_it_is_the_parent(env, parent, expected):
    assert reloading.gunicorn_master(env, parent) == expected


@pytest.mark.parametrize(("under_gunicorn", "signals"), [(True, 1), (False, 0)])
def test_reload_everywhere_signals_the_gunicorn_master(gw, config_file, monkeypatch, under_gunicorn, signals):
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(reloading.os, "kill", lambda pid, sig: sent.append((pid, sig)))
    monkeypatch.setattr(reloading.os, "getppid", lambda: 777)
    if under_gunicorn:
        monkeypatch.setenv("SLUICE_MASTER_PID", "777")
    else:
        monkeypatch.delenv("SLUICE_MASTER_PID", raising=False)
    config_file.write_text(TWO)
    reloading.reload_everywhere(gw)
    assert sent == [(777, signal.SIGHUP)] * signals and len(gw.config.upstreams) == 2


def test_an_invalid_config_signals_nobody(gw, config_file, monkeypatch):
    monkeypatch.setattr(reloading.os, "kill", lambda pid, sig: pytest.fail("signalled"))
    monkeypatch.setenv("SLUICE_MASTER_PID", str(reloading.os.getppid()))
    config_file.write_text("[gateway]\n")
    with pytest.raises(reloading.ConfigError):
        reloading.reload_everywhere(gw)
