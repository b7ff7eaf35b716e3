"""Managed keys through the app: auth states, model globs, limits, headers, and the CLI."""

from __future__ import annotations

import json
import time

import pytest
import responses

from app.errors import ApiError
from app.storage.limits import LimitExceeded
from tests.conftest import BASE, TOKENS, chat

USAGE = {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}
OK = {"id": "x", "object": "chat.completion", "choices": [], "usage": USAGE}


@pytest.fixture
def keys(app):
    return app.extensions["sluice"].keys


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_key_states_answer_401_with_their_code(client, keys, upstream):
    upstream.add(responses.POST, f"{BASE}/chat/completions", json=OK)
    key, secret = keys.create("k", now=time.time())
    assert client.post("/v1/chat/completions", json=chat(), headers=bearer(secret)).status_code == 200
    for values, code in [
        ({"enabled": False}, "key_disabled"),
        ({"enabled": True, "expires_at": time.time() - 1}, "key_expired"),
        ({"revoked_at": time.time()}, "invalid_api_key"),
    ]:
        keys.update(key.id, **values)
        resp = client.post("/v1/chat/completions", json=chat(), headers=bearer(secret))
        assert resp.status_code == 401 and resp.get_json()["error"]["code"] == code


def test_model_globs_limit_what_a_key_reaches(client, keys, upstream):
    upstream.add(responses.POST, f"{BASE}/chat/completions", json=OK)
    _, secret = keys.create("k", now=0.0, models=("gpt-*",))
    assert client.post("/v1/chat/completions", json=chat(), headers=bearer(secret)).status_code == 200
    resp = client.post("/v1/chat/completions", json=chat() | {"model": "claude-x"}, headers=bearer(secret))
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "model_not_found"
    assert not upstream.calls[1:]  # refused before any upstream call


def test_limits_answer_429_with_openai_headers(client, keys, upstream):
    upstream.add(responses.POST, f"{BASE}/chat/completions", json=OK)
    _, secret = keys.create("k", now=0.0, rpm=2, tpm=1000)
    first = client.post("/v1/chat/completions", json=chat(), headers=bearer(secret))
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    assert first.headers["x-ratelimit-remaining-tokens"] == "1000"
    client.post("/v1/chat/completions", json=chat(), headers=bearer(secret))
    third = client.post("/v1/chat/completions", json=chat(), headers=bearer(secret))
    assert third.status_code == 429
    assert third.get_json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(third.headers["Retry-After"]) <= 61  # the window is kept to the second, never early
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.headers["x-ratelimit-remaining-tokens"] == "980"
    refused = client.post("/v1/chat/completions", json={"model": 1}, headers=bearer(secret))
    assert refused.status_code == 400 and refused.headers["x-ratelimit-remaining-requests"] == "0"
    models = client.get("/v1/models", headers=bearer(secret))
    assert "x-ratelimit-limit-requests" in models.headers


def test_budget_and_parallel_limits(client, keys, upstream):
    upstream.add(responses.POST, f"{BASE}/chat/completions", json=OK)
    _, secret = keys.create("budget", now=0.0, monthly_tokens=15)
    assert client.post("/v1/chat/completions", json=chat(), headers=bearer(secret)).status_code == 200
    assert client.post("/v1/chat/completions", json=chat(), headers=bearer(secret)).status_code == 200
    resp = client.post("/v1/chat/completions", json=chat(), headers=bearer(secret))
    assert resp.status_code == 429 and resp.get_json()["error"]["code"] == "insufficient_quota"


def test_budget_alerts_at_80_and_100_percent(client, keys, upstream):
    """budget_80 once the month's tokens reach 80 % of the budget, budget_100 at 100 % and on a refusal."""
    from app.services import events

    sent: list[tuple] = []
    with events.listening(lambda event, subject, text, fields: sent.append((event, subject, dict(fields)))):
        upstream.add(responses.POST, f"{BASE}/chat/completions", json=OK)
        _, secret = keys.create("team-a", now=0.0, monthly_tokens=USAGE["total_tokens"] * 2 + 5)
        statuses = [client.post("/v1/chat/completions", json=chat(), headers=bearer(secret)).status_code
                    for _ in range(4)]  # fmt: skip
    assert statuses == [200, 200, 200, 429]
    month = time.strftime("%Y-%m", time.gmtime())
    assert [(e, s) for e, s, _ in sent] == [("budget_80", f"key team-a {month}")] + [
        ("budget_100", f"key team-a {month}")
    ] * 2
    assert sent[0][2]["used_tokens"] == USAGE["total_tokens"] * 2 and sent[2][2]["used_tokens"] is None
    assert secret not in repr(sent)


def test_streams_hide_the_injected_usage_chunk_and_account_it(app, client, keys, upstream):
    sse = (
        'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
        'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}\n\n'
        "data: [DONE]\n\n"
    )
    upstream.add(responses.POST, f"{BASE}/chat/completions", body=sse, content_type="text/event-stream")
    _, secret = keys.create("k", now=0.0)
    hidden = client.post("/v1/chat/completions", json=chat(stream=True), headers=bearer(secret)).get_data(as_text=True)
    assert '"usage":{' not in hidden and "data: [DONE]" in hidden
    sent = json.loads(upstream.calls[0].request.body)
    assert sent["stream_options"] == {"include_usage": True}
    asked = chat(stream=True, stream_options={"include_usage": True})
    shown = client.post("/v1/chat/completions", json=asked, headers=bearer(secret)).get_data(as_text=True)
    assert '"total_tokens":8' in shown
    gw = app.extensions["sluice"]
    gw.writer.flush()
    records = gw.usage.recent()
    assert [r["total_tokens"] for r in records] == [8, 8]
    assert all(r["streamed"] and r["outcome"] == "ok" and r["key_name"] == "k" for r in records)
    assert records[0]["token_ids"].startswith("primary:") and TOKENS[0] not in json.dumps(records, default=str)


def test_cli_keys_tokens_usage(app, upstream):
    runner = app.test_cli_runner()
    created = runner.invoke(args=["keys", "create", "cli-key", "--rpm", "5", "--models", "gpt-*,o1"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[0]
    assert secret.startswith("sk-sluice-")
    listed = json.loads(runner.invoke(args=["keys", "list", "--json"]).stdout)
    assert (
        listed[0]["name"] == "cli-key" and listed[0]["models"] == ["gpt-*", "o1"] and secret not in json.dumps(listed)
    )
    assert "disabled key 'cli-key'" in runner.invoke(args=["keys", "disable", secret[:14]]).output
    assert runner.invoke(args=["keys", "revoke", "nobody"]).exit_code != 0
    tokens = json.loads(runner.invoke(args=["tokens", "list", "--json"]).stdout)
    assert [t["masked"] for t in tokens] == ["...0001", "...0002", "...0003"]
    assert not any(t in json.dumps(tokens) for t in TOKENS)
    no_secret = runner.invoke(args=["tokens", "add", "primary", "-"], input="new-token-0000000004\n")
    assert no_secret.exit_code != 0 and "SLUICE_SECRET_KEY" in no_secret.output
    assert "group" in runner.invoke(args=["usage", "--by", "model"]).output
    assert runner.invoke(args=["db", "upgrade"]).exit_code == 0


def test_cli_adds_encrypted_tokens_with_a_secret_key(make_app):
    app = make_app(secret_key="s" * 32)
    runner = app.test_cli_runner()
    added = runner.invoke(args=["tokens", "add", "primary", "-"], input="new-token-0000000004\n")
    assert added.exit_code == 0 and "...0004" in added.output and "new-token" not in added.output
    row = next(r for r in app.extensions["sluice"].pool.repo.rows() if r.source == "runtime")
    assert row.secret and "new-token" not in row.secret
    assert runner.invoke(args=["tokens", "remove", row.id]).exit_code == 0
    assert runner.invoke(args=["secrets", "rotate"]).output.startswith("re-encrypted 0 tokens")


def test_the_first_request_of_a_window_resets_when_it_leaves(client, keys, upstream):
    """Issue #10 item 13: the admitted request is the window's oldest, so reset is ~60 s, not 0ms."""
    upstream.add(responses.POST, f"{BASE}/chat/completions", json=OK)
    _, secret = keys.create("first", now=0.0, rpm=5)
    for remaining in ("4", "3"):
        resp = client.post("/v1/chat/completions", json=chat(), headers=bearer(secret))
        assert resp.headers["x-ratelimit-remaining-requests"] == remaining
        reset = resp.headers["x-ratelimit-reset-requests"]
        assert reset in ("1m0s", "1m1s", "59s"), reset  # the window holds its second until 61 s later


@pytest.mark.parametrize("oldest", [None, 1000.0])
def test_decide_counts_the_admitted_request_as_oldest_of_an_empty_window(oldest):
    from app.storage.keys import ApiKey
    from app.storage.limits import decide

    key = ApiKey("id", "k", "sk-sluice-x", 0.0, None, True, None, ("*",), 10, None, None, None)
    window = decide(key, 1030.0, 0 if oldest is None else 3, oldest, 0, None, this_req=1030.0)
    assert window.remaining_requests == (9 if oldest is None else 6)
    assert window.reset_requests == pytest.approx(60.0 if oldest is None else 30.0)


def test_a_release_the_store_refused_is_retried_until_it_lands(app, keys, logs):
    """Issue #10 item 2: the slot comes back once the store does, off the request path."""
    from app.requestlog import RequestLine
    from app.storage.db import StorageError

    gw = app.extensions["sluice"]
    key, _ = keys.create("parallel", now=0.0, max_parallel=1)
    limiter, now = gw.limiter, time.time()
    line = RequestLine("req_1", "POST", "/v1/chat/completions", admission=limiter.admit(key, now, now + 900))
    real_release, failures = limiter.release, []

    def broken(*args):
        failures.append(args)
        raise StorageError("database write failed: OperationalError")

    limiter.release = broken
    gw.accounting.finish(line)
    releases = gw.accounting.releases
    assert len(failures) == 1 and releases.pending() == 1
    releases.retry()
    assert len(failures) >= 2 and releases.pending() == 1  # still failing: kept
    with pytest.raises(LimitExceeded) as info:
        limiter.admit(key, time.time())
    assert info.value.code == "too_many_parallel_requests"
    limiter.release = real_release
    for _ in range(50):  # the writer's thread may be running the same retry
        releases.retry()
        if releases.pending() == 0:
            break
        time.sleep(0.05)
    assert releases.pending() == 0
    limiter.admit(key, time.time())  # the slot is free again
    assert "could not release admission request_id=req_1 (will retry)" in logs.getvalue()


def test_a_release_is_given_up_once_its_slot_has_expired(app, keys):
    from app.services.releases import Releases
    from app.storage.db import StorageError

    key, _ = keys.create("parallel", now=0.0, max_parallel=1)
    clock = [1000.0]
    limiter = app.extensions["sluice"].limiter
    admission = limiter.admit(key, 1000.0, 1005.0)
    releases = Releases(limiter, clock=lambda: clock[0])
    limiter.release = lambda *args: (_ for _ in ()).throw(StorageError("down"))
    releases.release(admission, 0, "req_2")
    clock[0] = 1005.0
    releases.retry()
    assert releases.pending() == 0
    del limiter.release
    limiter.admit(key, 1005.0)  # expired on its own: the key is free


class _Body:
    """A request body that arrives after `delay` seconds (gevent's clock), and what took the slot."""

    def __init__(self, delay: float, take_delay: float = 0.0, refuse: bool = False) -> None:
        self.delay, self.take_delay, self.refuse = delay, take_delay, refuse
        self.taken = 0

    def read(self) -> bytes:
        import gevent

        gevent.sleep(self.delay)
        return b"{}"

    def take(self) -> None:
        import gevent

        gevent.sleep(self.take_delay)
        self.taken += 1
        if self.refuse:
            raise ApiError(429, "no free slot", code="too_many_parallel_requests")


@pytest.mark.parametrize(
    ("body", "taken"),
    [
        (_Body(0.0), 0),  # arrived at once: no slot before admission (no extra transaction)
        (_Body(0.3), 1),  # still arriving: the slot is taken meanwhile
        (_Body(0.08, take_delay=0.1), 1),  # arrived while the slot was being taken: it is kept
    ],
)
def test_a_slow_body_takes_its_slot_while_it_arrives(body, taken, monkeypatch):
    from app.services import slots

    monkeypatch.setattr(slots, "cooperative", lambda: True)
    assert slots.read_holding_slot(body.read, body.take, after=0.05) == b"{}"
    assert body.taken == taken


def test_a_slow_body_with_no_free_slot_is_cut_short_with_the_429(monkeypatch):
    from app.services import slots

    monkeypatch.setattr(slots, "cooperative", lambda: True)
    body, started = _Body(5.0, refuse=True), time.monotonic()
    with pytest.raises(ApiError) as info:
        slots.read_holding_slot(body.read, body.take, after=0.05)
    assert info.value.code == "too_many_parallel_requests" and time.monotonic() - started < 1.0


def test_a_slot_taken_before_admission_is_given_back_whatever_the_answer(app, client, keys, upstream, monkeypatch):
    """The slow-body path (slot first, admission after): refused or failed requests free it too."""
    from sqlalchemy import func, select

    from app.storage import schema

    def slow_body(read, take):  # as if the body were still arriving: the slot is taken first
        take()
        return read()

    monkeypatch.setattr("app.services.admission.read_holding_slot", slow_body)
    upstream.add(responses.POST, f"{BASE}/chat/completions", json=OK)
    key, secret = keys.create("slow", now=0.0, rpm=1, max_parallel=1, models=("gpt-*",))
    assert client.post("/v1/chat/completions", json=chat(), headers=bearer(secret)).status_code == 200
    limited = client.post("/v1/chat/completions", json=chat(), headers=bearer(secret))
    assert limited.status_code == 429 and limited.get_json()["error"]["code"] == "rate_limit_exceeded"
    unknown = client.post("/v1/chat/completions", json=chat(model="nope-x"), headers=bearer(secret))
    assert unknown.status_code == 404, unknown.get_json()
    with app.extensions["sluice"].db.read() as conn:
        running = conn.execute(select(func.count()).where(schema.inflight.c.key_id == key.id)).scalar()
    assert running == 0


def test_an_empty_patch_leaves_a_key_as_it_is(client, auth):
    """PATCH with `{}` is not an update with no column (which the database refuses): the key, unchanged."""
    created = client.post("/admin/api/keys", json={"name": "unchanged", "rpm": 5}, headers=auth).get_json()
    patched = client.patch(f"/admin/api/keys/{created['id']}", json={}, headers=auth)
    assert patched.status_code == 200 and patched.get_json()["rpm"] == 5
    assert client.patch("/admin/api/keys/key_missing", json={}, headers=auth).status_code == 404
