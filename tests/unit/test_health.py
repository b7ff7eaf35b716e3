"""Credential health (issue 13, section 2): token states, auto-disable, background probes (what
they bring back and what they never touch), the prober lease, the load report, the admin view,
the dashboard and the gauges. The upstream is a `responses` fake; clocks are injected."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
from werkzeug.security import generate_password_hash

from app.config import Config, GatewayConfig, UpstreamConfig
from app.config_routing import ProbeConfig
from app.services import events, metrics
from app.services.health import HealthCollector, register_health, report_load, upstream_health
from app.services.load import token_key
from app.services.probe import request_of
from app.services.prober import Prober
from app.services.tokens import token_id
from app.storage.db import StorageError
from app.storage.leases import Leases
from app.storage.load import LoadRepo
from app.storage.tokens import TokenRow
from tests.conftest import BASE, MASTER_KEY, TOKENS
from tests.unit.test_dashboard import PASSWORD, SECRET_KEY, sign_in

NOW = 1_000_000.0
IDS = [token_id("primary", value) for value in TOKENS]


MODELS = ProbeConfig("models")


def health_config(probe: ProbeConfig | None = MODELS, **gateway) -> Config:
    gateway = {"max_attempts": 3, "max_body_bytes": 16384, "probe_interval": 10.0, **gateway}
    upstream = UpstreamConfig(name="primary", base_url=BASE, tokens=TOKENS, probe=probe)
    return Config(GatewayConfig(**gateway), (upstream,), "test")


@pytest.fixture
def gw(make_app):
    return make_app(health_config()).extensions["sluice"]


@pytest.fixture
def emitted():
    seen: list[tuple[str, str, dict]] = []
    with events.listening(lambda event, subject, text, fields: seen.append((event, subject, dict(fields)))):
        yield seen


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def prober(gw, clock: Clock, worker: str | None = None) -> Prober:
    if worker is not None:
        gw.worker = worker
    return Prober(gw, Leases(gw.db), clock, jitter=lambda: 0.0, spawn=lambda run: run())


def row(**fields) -> TokenRow:
    base = {"id": "u:1", "upstream": "u", "source": "config", "secret": None, "masked": "...", "enabled": True,
            "removed": False, "cooldown_until": 0.0, "last_status": None, "last_at": None, "successes": 0,
            "failures": 0, "created_at": 0.0}  # fmt: skip
    return TokenRow(**{**base, **fields})


@pytest.mark.parametrize(
    ("fields", "state"),
    [
        ({}, "healthy"),
        ({"cooldown_until": NOW + 5}, "cooling"),
        ({"cooldown_until": NOW}, "healthy"),  # the cooldown ends at that instant
        ({"enabled": False, "disabled_by": "auto"}, "auto_disabled"),
        ({"enabled": False, "disabled_by": "operator"}, "disabled"),
        ({"enabled": False, "disabled_by": None}, "disabled"),  # from before revision 0006: the operator's
        ({"enabled": False, "removed": True, "disabled_by": "auto"}, "removed"),
        ({"enabled": False, "disabled_by": "auto", "cooldown_until": NOW + 5}, "auto_disabled"),
    ],
)
def test_one_state_per_token(fields, state):
    assert row(**fields).state(NOW) == state


def auth_fail(gw, index: int = 0, status: int = 401) -> None:
    token = gw.pool.find(IDS[index])
    gw.pool.report(token, status=status, ok=False, cooldown=1.0, now=NOW)


def test_the_pool_auto_disables_after_the_configured_count_and_says_so_once(make_app, emitted):
    gw = make_app(health_config(auto_disable_after=2)).extensions["sluice"]  # the pool reads it from the config
    auth_fail(gw)
    assert gw.pool.repo.get(IDS[0]).state(NOW + 2) == "healthy"
    auth_fail(gw, status=403)
    stored = gw.pool.repo.get(IDS[0])
    assert (stored.state(NOW), stored.disabled_by, stored.last_error) == ("auto_disabled", "auto", "HTTP 403")
    assert [(e, s) for e, s, _ in emitted] == [("token_auto_disabled", IDS[0])]
    assert TOKENS[0] not in json.dumps(emitted)
    assert gw.pool.find(IDS[0]) is None  # out of rotation for every worker


def test_auto_disable_off(make_app):
    gw = make_app(health_config(auto_disable_after=0)).extensions["sluice"]
    for _ in range(5):
        auth_fail(gw)
    assert gw.pool.repo.get(IDS[0]).enabled


def models_ok(upstream, status: int = 200) -> None:
    upstream.get(f"{BASE}/models", json={"object": "list", "data": []}, status=status)


def test_a_probe_brings_back_auto_disabled_and_cooling_tokens_never_operator_disabled(gw, upstream, emitted):
    for _ in range(3):
        auth_fail(gw, 0)
    gw.pool.repo.report(IDS[1], status=429, ok=False, cooldown=600.0, now=NOW)
    gw.pool.repo.set_flags(IDS[2], enabled=False, disabled_by="operator", disabled_at=NOW)
    models_ok(upstream)
    prober(gw, Clock(NOW + 1)).tick()
    states = [gw.pool.repo.get(tid).state(NOW + 1) for tid in IDS]
    assert states == ["healthy", "healthy", "disabled"]
    sent = [call.request.headers["Authorization"] for call in upstream.calls]
    assert sent == [f"Bearer {TOKENS[0]}", f"Bearer {TOKENS[1]}"]  # the operator's token is not even probed
    assert all(c.request.headers["X-Request-ID"].startswith("probe-") for c in upstream.calls)
    assert ("upstream_recovered", "primary") in [(e, s) for e, s, _ in emitted]
    assert gw.pool.repo.get(IDS[2]).last_probe_at is None


def test_a_failing_probe_brings_nothing_back_and_is_recorded(gw, upstream):
    for _ in range(3):
        auth_fail(gw, 0)
    models_ok(upstream, status=503)
    prober(gw, Clock(NOW + 1)).tick()
    stored = gw.pool.repo.get(IDS[0])
    assert stored.state(NOW + 1) == "auto_disabled"
    assert (stored.last_probe_ok, stored.last_probe_detail) == (False, "503 Service Unavailable")


def test_probes_never_count_as_usage(gw, upstream, logs):
    models_ok(upstream)
    before = {r.id: (r.successes, r.failures, r.last_at) for r in gw.pool.rows()}
    prober(gw, Clock()).tick()
    gw.pool.flush()
    gw.writer.flush()
    assert {r.id: (r.successes, r.failures, r.last_at) for r in gw.pool.rows()} == before
    assert gw.usage.summary(0.0, "key") == []
    assert len(upstream.calls) == 3
    lines = [line for line in logs.getvalue().splitlines() if "probe upstream=primary" in line]
    assert len(lines) == 3 and all(TOKENS[0] not in line for line in lines)


def test_one_holder_of_the_lease_probes(make_app, upstream):
    app = make_app(health_config())
    first = app.extensions["sluice"]
    models_ok(upstream)
    clock = Clock()
    a = prober(first, clock, "host:1")
    b = Prober(first, Leases(first.db), clock, jitter=lambda: 0.0, spawn=lambda run: run())
    a.tick()
    first.worker = "host:2"  # b runs as another process of the deployment
    b.tick()
    assert len(upstream.calls) == 3  # a's round only
    clock.now += 10 * 1.5 + 1  # a is gone (no renewal): its lease expires, b takes over
    b.tick()
    assert len(upstream.calls) == 6


@pytest.mark.parametrize(("jitter", "due"), [(0.0, 10.0), (0.2, 12.0), (-0.2, 8.0)])
def test_each_upstream_is_probed_once_per_jittered_interval(gw, upstream, jitter, due):
    models_ok(upstream)
    clock = Clock()
    probe = Prober(gw, Leases(gw.db), clock, jitter=lambda: jitter, spawn=lambda run: run())
    probe.tick()
    clock.now += due - 0.01
    probe.tick()
    assert len(upstream.calls) == 3
    clock.now += 0.02
    probe.tick()
    assert len(upstream.calls) == 6


class CountingLeases(Leases):
    def __init__(self, db) -> None:
        super().__init__(db)
        self.takes: list[float] = []

    def take(self, name: str, holder: str, now: float, ttl: float) -> bool:
        self.takes.append(ttl)
        return super().take(name, holder, now, ttl)


def test_the_lease_is_touched_at_most_four_times_per_interval(gw, upstream):
    models_ok(upstream)
    clock, leases = Clock(), CountingLeases(gw.db)
    probe = Prober(gw, leases, clock, jitter=lambda: 0.0, spawn=lambda run: run())
    for _ in range(20):  # the scheduler's turns, one a second
        probe.tick()
        clock.now += 1
    assert leases.takes == [15.0] * 7  # at 0, 3, 6, ... 18 s: every interval / 4 = 2.5 s at most
    assert len(upstream.calls) == 2 * 3  # at 0 and 10 s


def swap_config(gw, **gateway) -> None:
    """What a reload does: a new Routing in one assignment (here with the same pool and client)."""
    gw.routing = dataclasses.replace(gw.routing, config=health_config(**gateway))


# (probe_interval before, after the swap, seconds after the first probe, probes then, lease ttl then)
SWAPS = [
    (3600.0, 10.0, 11.0, 2, 15.0),  # shortened: due and renewed by the new interval at once
    (10.0, 3600.0, 11.0, 1, 5400.0),  # lengthened: not probed again until the new interval has passed
    (10.0, 3600.0, 3601.0, 2, 5400.0),
]


@pytest.mark.parametrize(("before", "after", "later", "rounds", "ttl"), SWAPS)
def test_a_swapped_config_interval_applies_at_once(make_app, upstream, before, after, later, rounds, ttl):
    gw = make_app(health_config(probe_interval=before)).extensions["sluice"]
    models_ok(upstream)
    clock, leases = Clock(), CountingLeases(gw.db)
    probe = Prober(gw, leases, clock, jitter=lambda: 0.0, spawn=lambda run: run())
    probe.tick()
    swap_config(gw, probe_interval=after)
    clock.now += later
    probe.tick()
    assert len(upstream.calls) == 3 * rounds
    assert leases.takes == [before * 1.5, ttl]
    assert Leases(gw.db).holder("prober", clock.now + ttl - 1) == gw.worker


def test_close_gives_the_lease_and_the_load_rows_back(gw, upstream):
    models_ok(upstream)
    prober(gw, Clock()).tick()
    repo, leases = LoadRepo(gw.db), Leases(gw.db)
    repo.report(gw.worker, {token_key(IDS[0]): (2, 0.1)}, now=NOW)
    repo.report("other:1", {token_key(IDS[0]): (1, None)}, now=NOW)
    assert leases.holder("prober", NOW + 1) == gw.worker
    gw.close()
    assert leases.take("prober", "next:1", NOW + 1, 15.0)  # at once, not 1.5 intervals later
    assert repo.others("me", since=0.0) == {token_key(IDS[0]): (1, None)}  # the other worker's are kept


def test_close_leaves_another_holders_lease_alone(gw):
    assert Leases(gw.db).take("prober", "other:1", NOW, 15.0)
    gw.close()
    assert Leases(gw.db).holder("prober", NOW + 1) == "other:1"


def test_close_carries_on_when_the_database_is_away(gw, monkeypatch, caplog):
    def away(*args, **kwargs):
        raise StorageError("database write failed: OperationalError")

    monkeypatch.setattr(Leases, "release", away)
    monkeypatch.setattr(LoadRepo, "clear", away)
    with caplog.at_level(logging.WARNING, logger="sluice"):
        gw.close()
    said = [r.getMessage() for r in caplog.records if "database write failed" in r.getMessage()]
    assert len(said) == 2 and all("\n" not in line for line in said)


def test_no_probe_config_no_lease(make_app):
    gw = make_app(health_config(probe=None)).extensions["sluice"]
    prober(gw, Clock()).tick()
    assert Leases(gw.db).holder("prober", NOW) is None


@pytest.mark.parametrize(
    ("api", "spec", "expected"),
    [
        ("openai", None, ("GET", "/models", None)),
        ("openai", ProbeConfig("models"), ("GET", "/models", None)),
        ("openai", ProbeConfig("completion", "m1", 1), ("POST", "/chat/completions", "m1")),
        ("anthropic", ProbeConfig("completion", "claude-x", 2), ("POST", "/messages", "claude-x")),
    ],
)
def test_the_probe_request(api, spec, expected):
    method, path, body = request_of(UpstreamConfig(name="u", base_url=BASE, api=api), spec)
    assert (method, path, body and body["model"]) == expected
    if body is not None:
        assert body["max_tokens"] == spec.max_tokens and body["messages"][0]["role"] == "user"
        assert "stream" not in body


def test_a_completion_probe_posts_a_tiny_request(make_app, upstream):
    gw = make_app(health_config(probe=ProbeConfig("completion", "gpt-x", 1))).extensions["sluice"]
    upstream.post(f"{BASE}/chat/completions", json={"choices": []})
    prober(gw, Clock()).tick()
    assert len(upstream.calls) == 3
    assert json.loads(upstream.calls[0].request.body)["max_tokens"] == 1


def test_the_load_report_merges_the_other_workers(gw):
    repo = LoadRepo(gw.db)
    repo.report("other:1", {token_key(IDS[0]): (4, 0.2)}, now=NOW)
    repo.report("dead:1", {token_key(IDS[0]): (9, 0.2)}, now=NOW - 60)
    gw.load.begin(token_key(IDS[0]))
    report_load(gw, repo, NOW + 1)
    assert gw.load.inflight(token_key(IDS[0])) == 5
    assert repo.others("other:1", NOW - 5) == {token_key(IDS[0]): (1, None)}


def test_breaker_view():
    from app.services.breaker import Breakers

    breakers = Breakers(failures=1, cooldown=30.0)
    assert breakers.view("u", NOW) == {"state": "closed", "until": None}
    breakers.record("u", fault=True, now=NOW)
    assert breakers.view("u", NOW + 1) == {"state": "open", "until": NOW + 30}
    assert breakers.view("u", NOW + 31)["state"] == "half_open"


def test_the_admin_api_and_the_dashboard_show_health(app_for_health, auth):
    client, gw = app_for_health
    data = client.get("/admin/api/health", headers=auth).get_json()["data"]
    [primary] = data
    assert primary["breaker"]["state"] == "closed" and primary["probe"] == "models"
    states = {t["id"]: t for t in primary["tokens"]}
    assert states[IDS[0]]["state"] == "auto_disabled" and states[IDS[0]]["last_error"] == "HTTP 401"
    assert states[IDS[2]]["state"] == "disabled" and states[IDS[2]]["disabled_by"] == "operator"
    assert states[IDS[1]]["inflight"] == 1 and primary["inflight"] == 1
    assert TOKENS[0] not in json.dumps(data)


def test_operator_enable_and_disable_through_the_admin_api(app_for_health, auth):
    client, gw = app_for_health
    client.patch(f"/admin/api/tokens/{IDS[0]}", headers=auth, json={"enabled": True})
    stored = gw.pool.repo.get(IDS[0])
    assert (stored.state(NOW), stored.disabled_by, stored.auth_failures) == ("healthy", None, 0)
    disabled = client.patch(f"/admin/api/tokens/{IDS[0]}", headers=auth, json={"enabled": False}).get_json()
    assert disabled["state"] == "disabled" and disabled["disabled_by"] == "operator"


def test_the_gauges(app_for_health):
    _, gw = app_for_health
    metrics.at_scrape(HealthCollector(gw, lambda: NOW))
    try:
        text = metrics.render().decode()
    finally:
        metrics.at_scrape(None)
    assert f'sluice_token_state{{state="auto_disabled",token="{IDS[0]}",upstream="primary"}} 1.0' in text
    assert f'sluice_token_state{{state="healthy",token="{IDS[0]}",upstream="primary"}} 0.0' in text
    assert f'sluice_token_inflight{{token="{IDS[1]}",upstream="primary"}} 1.0' in text
    assert TOKENS[0] not in text


@pytest.fixture
def app_for_health(make_app):
    app = make_app(health_config(), secret_key=SECRET_KEY, admin_password_hash=generate_password_hash(PASSWORD))
    gw = app.extensions["sluice"]
    for _ in range(3):
        auth_fail(gw, 0)
    gw.pool.repo.set_flags(IDS[2], enabled=False, disabled_by="operator", disabled_at=NOW)
    gw.load.begin(token_key(IDS[1]))
    return app.test_client(), gw


def test_the_dashboard_shows_token_states(app_for_health):
    client, _ = app_for_health
    assert sign_in(client).status_code == 303
    page = client.get("/dashboard/upstreams").get_data(as_text=True)
    assert "auto-disabled" in page and "disabled by operator" in page and "Breaker (this worker)" in page
    assert "HTTP 401" in page and TOKENS[0] not in page


def test_register_health_wires_the_chores_and_the_gauges(make_app):
    gw = make_app(health_config(auto_disable_after=5, probe_interval=3600.0)).extensions["sluice"]
    try:
        assert isinstance(register_health(gw), Prober)
        chores = {chore.name: chore.every for chore in gw.writer.scheduler._chores}
        # the prober ticks every second and reads the (reloadable) interval itself
        assert chores["prober"] == 1.0 and chores["load_report"] == 1.5 and "load_pruning" in chores
        assert gw.pool.auto_disable_after == 5
        assert b"sluice_token_state{" in metrics.render()
    finally:
        gw.writer.scheduler.close()
        metrics.at_scrape(None)


def test_upstream_health_names_every_configured_upstream(gw):
    assert [u["name"] for u in upstream_health(gw, NOW)] == ["primary"]
    assert MASTER_KEY  # the fixtures' admin key authenticates the API tests above
