"""The retry table, row by row, through the app with a `responses` upstream."""

from __future__ import annotations

import json
import time
from email.utils import formatdate

import pytest
import requests
import responses

from app.services.outcomes import MAX_RETRY_AFTER, classify, is_retryable, parse_retry_after
from app.services.tokens import token_id
from tests.conftest import BASE, TOKENS, chat, make_config

URL = f"{BASE}/chat/completions"
OK_BODY = {"id": "x", "object": "chat.completion", "choices": [], "usage": {"total_tokens": 3}}


def by_token(upstream, replies: dict, url: str = URL, calls: list | None = None):
    """Answer per token: replies maps a token to (status, headers, body) or an exception."""
    seen = [] if calls is None else calls

    def callback(request):
        token = request.headers["Authorization"].removeprefix("Bearer ")
        seen.append(token)
        reply = replies[token]
        if isinstance(reply, Exception):
            raise reply
        status, headers, body = reply
        return status, headers, body if isinstance(body, str) else json.dumps(body)

    upstream.add_callback(responses.POST, url, callback=callback)
    return seen


def ok():
    return 200, {"Content-Type": "application/json"}, OK_BODY


def err(status, headers=None, code="x"):
    body = {"error": {"message": f"status {status}", "type": "t", "param": None, "code": code}}
    return status, {"Content-Type": "application/json", **(headers or {})}, body


def cooldown_left(app, token):
    state = app.extensions["sluice"].pool.repo.get(token_id("primary", token))
    return state.cooldown_until - time.time()


A, B, C = TOKENS


@pytest.mark.parametrize(
    ("status", "cooldown"),
    [(401, 600), (403, 60), (408, 5), (500, 5), (502, 5), (503, 5), (504, 5), (520, 5), (524, 5)],
)
def test_retryable_status_moves_to_another_token_and_cools_down(app, client, auth, upstream, status, cooldown):
    calls = by_token(upstream, {A: err(status), B: ok()})
    resp = client.post("/v1/chat/completions", json=chat(), headers=auth)
    assert resp.status_code == 200
    assert resp.get_json() == OK_BODY
    assert calls == [A, B]
    assert cooldown_left(app, A) == pytest.approx(cooldown, abs=2)
    assert cooldown_left(app, B) <= 0


def test_429_honours_retry_after_seconds(app, client, auth, upstream):
    calls = by_token(upstream, {A: err(429, {"Retry-After": "17"}), B: ok()})
    assert client.post("/v1/chat/completions", json=chat(), headers=auth).status_code == 200
    assert calls == [A, B]
    assert cooldown_left(app, A) == pytest.approx(17, abs=2)


def test_429_honours_retry_after_http_date(app, client, auth, upstream):
    when = formatdate(time.time() + 120, usegmt=True)
    by_token(upstream, {A: err(429, {"Retry-After": when}), B: ok()})
    assert client.post("/v1/chat/completions", json=chat(), headers=auth).status_code == 200
    assert cooldown_left(app, A) == pytest.approx(120, abs=3)


def test_429_without_retry_after_cools_30s_and_huge_values_are_capped(app, client, auth, upstream):
    by_token(upstream, {A: err(429), B: err(429, {"Retry-After": "999999"}), C: ok()})
    assert client.post("/v1/chat/completions", json=chat(), headers=auth).status_code == 200
    assert cooldown_left(app, A) == pytest.approx(30, abs=2)
    assert cooldown_left(app, B) == pytest.approx(MAX_RETRY_AFTER, abs=2)


@pytest.mark.parametrize(
    "exc", [requests.ConnectionError("refused"), requests.ConnectTimeout("slow"), requests.ReadTimeout("slow")]
)
def test_transport_errors_are_retried(app, client, auth, upstream, exc):
    calls = by_token(upstream, {A: exc, B: ok()})
    assert client.post("/v1/chat/completions", json=chat(), headers=auth).status_code == 200
    assert calls == [A, B]
    assert cooldown_left(app, A) == pytest.approx(5, abs=2)


def test_streaming_request_is_retried_on_another_token(client, auth, upstream):
    sse = 'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
    calls = by_token(upstream, {A: err(403), B: (200, {"Content-Type": "text/event-stream"}, sse)})
    resp = client.post("/v1/chat/completions", json=chat(stream=True), headers=auth)
    assert resp.status_code == 200
    assert resp.mimetype == "text/event-stream"
    assert resp.get_data(as_text=True) == sse
    assert calls == [A, B]


@pytest.mark.parametrize(
    ("reply", "status", "code", "fragment"),
    [
        (err(403), 502, "upstream_auth_failed", "HTTP 403"),
        (err(401), 502, "upstream_auth_failed", "HTTP 401"),
        (err(500), 502, "upstream_error", "HTTP 500"),
        (err(503), 502, "upstream_error", "HTTP 503"),
        (requests.ConnectionError("refused"), 502, "upstream_error", "connect"),
        (requests.ReadTimeout("slow"), 504, "upstream_timeout", "timed out"),
        (requests.ConnectTimeout("slow"), 504, "upstream_connect_timeout", "connect timeout"),
    ],
)
def test_every_token_failing(client, auth, upstream, reply, status, code, fragment):
    calls = by_token(upstream, dict.fromkeys(TOKENS, reply))
    resp = client.post("/v1/chat/completions", json=chat(), headers=auth)
    assert resp.status_code == status
    error = resp.get_json()["error"]
    assert error["code"] == code
    assert fragment in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert sorted(calls) == sorted(TOKENS)  # three distinct tokens, none twice


def test_last_failure_429_is_passed_on_with_retry_after(client, auth, upstream):
    by_token(upstream, {A: err(403), B: err(500), C: err(429, {"Retry-After": "42"})})
    resp = client.post("/v1/chat/completions", json=chat(), headers=auth)
    assert resp.status_code == 429
    assert resp.headers["Retry-After"] == "42"
    assert resp.get_json()["error"]["code"] == "rate_limit_exceeded"


def test_attempts_are_bounded_by_max_attempts(upstream, auth, make_app):
    app = make_app(make_config(max_attempts=2))
    calls = by_token(upstream, dict.fromkeys(TOKENS, err(503)))
    resp = app.test_client().post("/v1/chat/completions", json=chat(), headers=auth)
    assert resp.status_code == 502
    assert len(calls) == 2 and len(set(calls)) == 2


def test_a_failed_token_is_never_reused_in_the_same_request(app, client, auth, upstream):
    calls = by_token(upstream, {A: err(503), B: err(503), C: err(503)})
    client.post("/v1/chat/completions", json=chat(), headers=auth)
    assert len(calls) == len(set(calls)) == 3


def test_no_usable_token_answers_503_with_earliest_cooldown(app, client, auth, upstream):
    by_token(upstream, {A: err(429, {"Retry-After": "40"}), B: err(429, {"Retry-After": "25"}), C: err(403)})
    first = client.post("/v1/chat/completions", json=chat(), headers=auth)
    assert first.status_code == 502  # the last failure was a 403
    second = client.post("/v1/chat/completions", json=chat(), headers=auth)
    assert second.status_code == 503
    assert second.get_json()["error"]["code"] == "no_upstream_available"
    assert 23 <= int(second.headers["Retry-After"]) <= 25


def test_client_fault_4xx_is_not_retried_and_passed_on(app, client, auth, upstream):
    calls = by_token(upstream, {A: err(400, code="context_length_exceeded"), B: ok()})
    resp = client.post("/v1/chat/completions", json=chat(), headers=auth)
    assert resp.status_code == 400
    assert resp.get_json()["error"]["code"] == "context_length_exceeded"
    assert calls == [A]
    assert cooldown_left(app, A) <= 0
    assert app.extensions["sluice"].pool.repo.get(token_id("primary", A)).failures == 0


def test_html_error_page_becomes_json(client, auth, upstream):
    page = "<html><body><h1>404 Not Found</h1></body></html>"
    by_token(upstream, {A: (404, {"Content-Type": "text/html"}, page)})
    resp = client.post("/v1/chat/completions", json=chat(), headers=auth)
    assert resp.status_code == 404
    assert resp.mimetype == "application/json"
    assert resp.get_json()["error"]["code"] == "upstream_bad_request"
    assert "<html" not in resp.get_data(as_text=True)


def test_upstream_echo_of_a_token_is_scrubbed(client, auth, upstream):
    by_token(upstream, {A: (422, {"Content-Type": "application/json"}, err(422)[2] | {"echo": A})})
    body = client.post("/v1/chat/completions", json=chat(), headers=auth).get_data(as_text=True)
    assert A not in body


def test_tokens_rotate_across_requests(client, auth, upstream):
    calls = by_token(upstream, {A: ok(), B: ok(), C: ok()})
    for _ in range(4):
        assert client.post("/v1/chat/completions", json=chat(), headers=auth).status_code == 200
    assert calls == [A, B, C, A]


@pytest.mark.parametrize(
    ("status", "retry"),
    [(400, False), (404, False), (413, False), (422, False), (401, True), (529, True), (418, False)],
)
def test_is_retryable_matches_the_table(status, retry):
    assert is_retryable(status) is retry
    assert classify(status, None, None, 0).retry is retry


def test_parse_retry_after():
    now = time.time()
    assert parse_retry_after("5", now) == 5
    assert parse_retry_after("junk", now) is None
    assert parse_retry_after(None, now) is None
    assert parse_retry_after(formatdate(now - 50, usegmt=True), now) == 0


def test_unparseable_retry_after_falls_back_to_the_default(app, client, auth, upstream):
    by_token(upstream, {A: err(429, {"Retry-After": "\u00b2"}), B: ok()})
    assert client.post("/v1/chat/completions", json=chat(), headers=auth).status_code == 200
    assert cooldown_left(app, A) == pytest.approx(30, abs=2)


def test_escaped_token_in_an_upstream_error_is_scrubbed(upstream, auth, make_app):
    from app.config import UpstreamConfig

    token = "abc/def+ghi=0000000001"
    app = make_app(make_config(UpstreamConfig(name="primary", base_url=BASE, tokens=(token,))))
    body = '{"error": {"message": "bad key abc\\/def+ghi=0000000001", "code": "x"}}'
    upstream.add(responses.POST, URL, status=400, body=body, content_type="application/json")
    resp = app.test_client().post("/v1/chat/completions", json=chat(), headers=auth)
    assert resp.status_code == 400 and token not in resp.get_data(as_text=True)


def test_upstream_cookies_are_never_sent_back(client, auth, upstream):
    calls = []

    def reply(request):
        calls.append(request.headers.get("Cookie"))
        return (
            200,
            {"Set-Cookie": "sess=for-one-token; Path=/", "Content-Type": "application/json"},
            json.dumps(OK_BODY),
        )

    upstream.add_callback(responses.POST, URL, callback=reply)
    for _ in range(3):
        assert client.post("/v1/chat/completions", json=chat(), headers=auth).status_code == 200
    assert calls == [None, None, None]
