"""Fallback across upstreams, circuit breakers, and queueing when no token is usable."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import responses

from app.config import GatewayConfig, UpstreamConfig
from app.services import aliases
from app.services.breaker import Pass
from tests.conftest import make_config

PRIMARY, SECONDARY = "http://primary.test/v1", "http://secondary.test/v1"
OK = {"id": "x", "object": "chat.completion", "choices": [], "usage": {"total_tokens": 2}}
P_TOKENS = tuple(f"p-token-00000000{i}" for i in range(5))


def two_upstreams(**gateway) -> object:
    config = make_config(
        UpstreamConfig(name="primary", base_url=PRIMARY, tokens=P_TOKENS),
        UpstreamConfig(name="secondary", base_url=SECONDARY, tokens=("s-token-000000001",)),
    )
    return replace(config, gateway=GatewayConfig(max_body_bytes=16384, **gateway))


def reply(status: int, calls: list, name: str, headers: dict | None = None):
    def callback(request):
        calls.append((name, request.headers["Authorization"][-1]))
        body = OK if status == 200 else {"error": {"message": "no", "type": "t", "param": None, "code": None}}
        return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(body)

    return callback


def body():
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def test_falls_back_to_the_next_upstream_and_opens_the_breaker(make_app, auth, upstream):
    calls: list = []
    upstream.add_callback(responses.POST, f"{PRIMARY}/chat/completions", callback=reply(500, calls, "p"))
    upstream.add_callback(responses.POST, f"{SECONDARY}/chat/completions", callback=reply(200, calls, "s"))
    app = make_app(two_upstreams(max_attempts=5, breaker_failures=2, breaker_cooldown=60))
    client = app.test_client()
    assert client.post("/v1/chat/completions", json=body(), headers=auth).status_code == 200
    assert [c[0] for c in calls] == ["p", "p", "s"]  # the breaker opened after two failures
    calls.clear()
    assert client.post("/v1/chat/completions", json=body(), headers=auth).status_code == 200
    assert [c[0] for c in calls] == ["s"]  # primary skipped while open
    app.extensions["sluice"].writer.flush()
    first = app.extensions["sluice"].usage.recent()[-1]
    assert first["upstreams"] == "primary,secondary" and first["upstream"] == "secondary"


def test_half_open_trial_closes_the_breaker_on_success(make_app, auth, upstream):
    calls: list = []
    primary = upstream.add_callback(responses.POST, f"{PRIMARY}/chat/completions", callback=reply(500, calls, "p"))
    upstream.add_callback(responses.POST, f"{SECONDARY}/chat/completions", callback=reply(200, calls, "s"))
    app = make_app(two_upstreams(max_attempts=5, breaker_failures=1, breaker_cooldown=0.3))
    client = app.test_client()
    client.post("/v1/chat/completions", json=body(), headers=auth)
    assert app.extensions["sluice"].client.selector.breakers.is_open("primary", time.time())
    upstream.remove(primary)
    upstream.add_callback(responses.POST, f"{PRIMARY}/chat/completions", callback=reply(200, calls, "p"))
    time.sleep(0.35)
    calls.clear()
    assert client.post("/v1/chat/completions", json=body(), headers=auth).status_code == 200
    assert [c[0] for c in calls] == ["p"]  # the trial went to primary and succeeded
    assert not app.extensions["sluice"].client.selector.breakers.is_open("primary", time.time())


def test_every_breaker_open_answers_503_with_retry_after(make_app, auth, upstream):
    calls: list = []
    upstream.add_callback(responses.POST, f"{PRIMARY}/chat/completions", callback=reply(502, calls, "p"))
    upstream.add_callback(responses.POST, f"{SECONDARY}/chat/completions", callback=reply(502, calls, "s"))
    app = make_app(two_upstreams(max_attempts=2, breaker_failures=1, breaker_cooldown=40))
    client = app.test_client()
    assert client.post("/v1/chat/completions", json=body(), headers=auth).status_code == 502
    resp = client.post("/v1/chat/completions", json=body(), headers=auth)
    assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "no_upstream_available"
    assert 38 <= int(resp.headers["Retry-After"]) <= 40
    assert len(calls) == 2


def test_a_request_waits_in_the_queue_for_a_cooldown_to_end(make_app, auth, upstream):
    calls: list = []
    config = make_config(UpstreamConfig(name="one", base_url=PRIMARY, tokens=("only-token-00000001",)))
    app = make_app(replace(config, gateway=GatewayConfig(max_body_bytes=16384, queue_timeout=5)))
    limited = upstream.add_callback(
        responses.POST, f"{PRIMARY}/chat/completions", callback=reply(429, calls, "p", {"Retry-After": "1"})
    )
    client = app.test_client()
    assert client.post("/v1/chat/completions", json=body(), headers=auth).status_code == 429
    upstream.remove(limited)
    upstream.add_callback(responses.POST, f"{PRIMARY}/chat/completions", callback=reply(200, calls, "p"))
    started = time.monotonic()
    assert client.post("/v1/chat/completions", json=body(), headers=auth).status_code == 200
    assert time.monotonic() - started >= 0.5  # it waited for the cooldown instead of failing


def test_a_full_queue_answers_at_once(make_app, auth, upstream):
    calls: list = []
    config = make_config(UpstreamConfig(name="one", base_url=PRIMARY, tokens=("only-token-00000001",)))
    app = make_app(replace(config, gateway=GatewayConfig(max_body_bytes=16384, queue_timeout=5, max_queued=0)))
    upstream.add_callback(
        responses.POST, f"{PRIMARY}/chat/completions", callback=reply(429, calls, "p", {"Retry-After": "30"})
    )
    client = app.test_client()
    client.post("/v1/chat/completions", json=body(), headers=auth)
    started = time.monotonic()
    resp = client.post("/v1/chat/completions", json=body(), headers=auth)
    assert resp.status_code == 503 and time.monotonic() - started < 1


def test_the_deadline_before_any_answer_is_a_504(make_app, auth, upstream):
    calls: list = []

    def stall(request):
        time.sleep(1.5)  # runs in the attempt's reader thread: the request itself keeps the time
        return reply(200, calls, "p")(request)

    config = make_config(UpstreamConfig(name="one", base_url=PRIMARY, tokens=("only-token-00000001",)))
    app = make_app(replace(config, gateway=GatewayConfig(max_body_bytes=16384, deadline=0.5, first_byte_timeout=5)))
    upstream.add_callback(responses.POST, f"{PRIMARY}/chat/completions", callback=stall)
    started = time.monotonic()
    resp = app.test_client().post("/v1/chat/completions", json=body(), headers=auth)
    assert resp.status_code == 504 and resp.get_json()["error"]["code"] == "deadline_exceeded"
    assert time.monotonic() - started < 1.4


def test_first_byte_timeout_retries_on_another_token_then_answers_504(make_app, auth, upstream):
    calls: list = []

    def stall(request):
        calls.append(request.headers["Authorization"][-4:])
        time.sleep(0.8)
        return 200, {"Content-Type": "application/json"}, json.dumps(OK)

    config = make_config(
        UpstreamConfig(name="one", base_url=PRIMARY, tokens=("token-a-0000000001", "token-b-0000000002"))
    )
    app = make_app(replace(config, gateway=GatewayConfig(max_body_bytes=16384, first_byte_timeout=0.3)))
    upstream.add_callback(responses.POST, f"{PRIMARY}/chat/completions", callback=stall)
    resp = app.test_client().post("/v1/chat/completions", json=body(), headers=auth)
    assert resp.status_code == 504 and resp.get_json()["error"]["code"] == "upstream_first_byte_timeout"
    assert sorted(calls) == ["0001", "0002"]  # both tokens tried


def test_a_half_open_trial_without_a_verdict_is_released_by_its_holder_only():
    from app.services.breaker import Breakers

    breakers = Breakers(failures=1, cooldown=10)
    assert breakers.allow("up", 99.0) == Pass(0)  # closed: no trial claimed
    breakers.record("up", fault=True, now=100.0)
    assert not breakers.allow("up", 105.0)  # open
    first = breakers.allow("up", 111.0)  # half-open: this caller holds the trial
    assert first is not None and first.trial > 0
    assert not breakers.allow("up", 111.5)  # one trial at a time
    breakers.release("up", 0)  # an attempt let through while closed (a hedge that lost): frees nothing
    assert not breakers.allow("up", 111.6)
    breakers.release("up", first.trial)  # the trial's client went away: no verdict
    second = breakers.allow("up", 112.0)  # the next request may try
    assert second is not None and second.trial not in (0, first.trial)
    breakers.release("up", first.trial)  # the first trial, released twice: the second one stays claimed
    assert not breakers.allow("up", 112.1)
    breakers.record("up", fault=False, now=112.5)
    assert not breakers.is_open("up", 113.0) and breakers.allow("up", 113.0) == Pass(0)


def test_a_dropped_attempt_frees_the_half_open_trial_only_when_it_claimed_it(make_app):
    config = two_upstreams(breaker_failures=1, breaker_cooldown=30.0)
    selector = make_app(config).extensions["sluice"].client.selector
    hop = aliases.resolve(config, "m")
    assert hop is not None
    routes, overrides = [r for r in hop.routes if r.upstream.name == "primary"], selector.overrides()
    before = selector.pick(routes, {}, overrides)  # let through while the breaker was closed
    assert before is not None and before.trial == 0
    selector.breakers.record("primary", fault=True, now=time.time() - 31.0)  # opened, cooled down: half-open
    trial = selector.pick(routes, {}, overrides)
    assert trial is not None and trial.trial > 0
    assert selector.pick(routes, {}, overrides) is None  # one trial at a time
    selector.release(before)  # the attempt from before (a losing hedge, abandoned) ends without a verdict
    assert selector.pick(routes, {}, overrides) is None  # the trial is still held
    selector.release(trial)
    again = selector.pick(routes, {}, overrides)
    assert again is not None and again.trial not in (0, trial.trial)


def test_a_breaker_says_once_when_it_opens_and_when_it_closes():
    from app.services import events
    from app.services.breaker import Breakers

    seen: list[tuple[str, str]] = []
    breakers = Breakers(failures=2, cooldown=10)
    with events.listening(lambda event, subject, text, fields: seen.append((event, subject))):
        breakers.record("up", fault=True, now=100.0)
        assert seen == []  # one failure: still closed
        breakers.record("up", fault=True, now=101.0)
        breakers.record("up", fault=True, now=102.0)  # already open: no second alert
        assert breakers.allow("up", 113.0)
        breakers.record("up", fault=True, now=113.5)  # the trial failed: it stays open, no new alert
        assert breakers.allow("up", 124.0)
        breakers.record("up", fault=False, now=124.5)  # the trial succeeded
        breakers.record("up", fault=False, now=125.0)
    assert seen == [("breaker_open", "up"), ("breaker_closed", "up")]
