"""The upstream client: one requests.Session per worker, token and upstream choice, errors.

`start(call)` returns the request's `Attempts` (app/services/attempts.py), which runs the
retry loop; this module supplies what it needs: the token pick (skipping open circuit
breakers), queueing when no token is usable, one `Exchange` per attempt, and the
translation of statuses and transport errors into retry-table decisions and client errors.
"""

from __future__ import annotations

import http.cookiejar
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar

from app.config import Config, UpstreamConfig
from app.dialects.base import Dialect, Leg
from app.errors import ApiError
from app.services.attempts import Accepted, Attempt, Attempts, Failure
from app.services.breaker import Breakers
from app.services.calls import UpstreamCall
from app.services.exchange import Exchange
from app.services.headers import build_upstream_headers
from app.services.tokens import Token, TokenPool, classify

log = logging.getLogger("sluice.upstream")

# Failure reasons without a status -> (client error code, description).
TIMEOUT_ERRORS = {
    "connect_timeout": ("upstream_connect_timeout", "connect timeout"),
    "first_byte_timeout": ("upstream_first_byte_timeout", "no first event within first_byte_timeout"),
    "read_timeout": ("upstream_timeout", "socket read timeout"),
}
STREAM_FAULTS = {"empty_stream": "it ended without data", "error_event": "its first event was an error",
                 "stream_broken": "the connection broke"}  # fmt: skip


def build_session(trust_env: bool, pool_size: int = 1000) -> requests.Session:
    """The per-worker session: no environment proxies/.netrc unless asked, no default headers."""
    session = requests.Session()
    session.trust_env = trust_env
    session.headers.clear()  # build_upstream_headers decides every header
    session.cookies = _NoCookies()
    # pool_size idle connections kept per upstream host: as many as concurrent streams,
    # so a busy worker neither reconnects for every request nor logs "pool is full".
    adapter = HTTPAdapter(pool_connections=16, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _NoCookies(RequestsCookieJar):
    """One session serves every token and client: an upstream cookie set for one must never
    ride along on another's request, so the session's jar keeps (and parses) nothing."""

    def set_cookie(self, cookie: http.cookiejar.Cookie, *args: object, **kwargs: object) -> None:
        return None

    def extract_cookies(self, response: object, request: object) -> None:  # type: ignore[override]
        return None


def send_prepared(
    session: requests.Session, method: str, url: str, body: bytes, headers: Mapping[str, str], **options: Any
) -> requests.Response:
    """`session.request` without its per-call merging of session defaults (this session has no
    default headers, cookies, auth or parameters to merge); the environment's proxies and CA
    bundle are still honoured when the session trusts the environment."""
    prepared = requests.PreparedRequest()
    prepared.prepare(method=method, url=url, headers=headers, data=body, cookies=session.cookies)
    proxies = options.pop("proxies", None) or {}
    if session.trust_env:
        settings = session.merge_environment_settings(url, proxies, True, None, None)
    else:
        settings = {"proxies": proxies, "stream": True, "verify": session.verify, "cert": session.cert}
    return session.send(prepared, allow_redirects=False, **settings, **options)


@dataclass
class UpstreamResult:
    """A finished call (used for one-shot calls such as the /models probe)."""

    attempts: list[Attempt]
    upstream: UpstreamConfig | None = None
    body: bytes | None = None
    error: ApiError | None = None


class UpstreamClient:
    """Sends a call to the routed upstreams, retrying on a different token per the table."""

    def __init__(
        self,
        config: Config,
        pool: TokenPool,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.max_attempts = config.gateway.max_attempts
        self.pool = pool
        self.session = session or build_session(config.gateway.trust_env)
        self.clock = clock
        self.sleep = sleep
        self.breakers = Breakers(config.gateway.breaker_failures, config.gateway.breaker_cooldown)
        self.queue_timeout, self.max_queued = config.gateway.queue_timeout, config.gateway.max_queued
        self.first_byte_timeout = config.gateway.first_byte_timeout
        self.deadline = config.gateway.deadline
        self._waiting: set[int] = set()
        self._queue_lock = threading.Lock()

    def start(self, call: UpstreamCall, deadline: float | None = None) -> Attempts:
        """The retry loop for `call`; drive it with `advance(until)`."""
        return Attempts(self, call, deadline if deadline is not None else self.clock() + self.deadline)

    def send(self, call: UpstreamCall) -> UpstreamResult:
        """Run `call` to the end (no heartbeats): the body of a plain request, or the error."""
        attempts = self.start(call)
        outcome = attempts.advance(until=attempts.deadline)
        if isinstance(outcome, Accepted):
            outcome.exchange.close()
            return UpstreamResult(attempts.records, outcome.upstream, body=outcome.body or b"")
        error = outcome.error if outcome is not None else ApiError(504, "Deadline exceeded.", code="deadline_exceeded")
        return UpstreamResult(attempts.records, error=error)

    def pick(
        self,
        upstreams: Sequence[UpstreamConfig],
        tried: set[str],
        overrides: Mapping[str, tuple],
        pinned: str | None = None,
    ) -> tuple[UpstreamConfig, Token] | None:
        """The next (upstream, token) to try: config order, skipping open breakers and tried tokens
        (or the `pinned` token alone, cooling down or not: no other can serve the call)."""
        now = self.clock()
        if pinned is not None:
            token = self.pool.find(pinned)
            if token is None or token.id in tried:
                return None
            upstream = next((u for u in upstreams if u.name == token.upstream), None)
            return (self.pool.effective(upstream, overrides), token) if upstream is not None else None
        for upstream in upstreams:
            if self.breakers.is_open(upstream.name, now):
                continue
            token = self.pool.pick(upstream.name, tried, now)
            if token is not None and self.breakers.allow(upstream.name, now):
                return self.pool.effective(upstream, overrides), token
        return None

    def enter_queue(self, waiter: object) -> bool:
        """Join the per-worker queue of requests waiting for a token (False: queueing off or full)."""
        with self._queue_lock:
            if id(waiter) in self._waiting:
                return True
            if self.queue_timeout <= 0 or len(self._waiting) >= self.max_queued:
                return False
            self._waiting.add(id(waiter))
            return True

    def leave_queue(self, waiter: object) -> None:
        with self._queue_lock:
            self._waiting.discard(id(waiter))

    def retry_after(self, call: UpstreamCall) -> int:
        """Seconds until a routed upstream may take an attempt again (a breaker or a cooldown)."""
        names = [u.name for u in call.upstreams]
        now = self.clock()
        breaker_wait = self.breakers.retry_after(names, now)
        if breaker_wait is not None:
            return breaker_wait
        return self.pool.retry_after([n for n in names if not self.breakers.is_open(n, now)], now)

    def open_exchange(self, call: UpstreamCall, upstream: UpstreamConfig, token: Token, leg: Leg) -> Exchange:
        """Start one attempt's HTTP exchange in the background."""
        headers = build_upstream_headers(
            upstream, token.value, streaming=call.streaming and leg.dialect.sse, client_headers=call.client_headers,
            request_id=call.request_id, content_type=leg.content_type,
        )  # fmt: skip
        proxies = {"http": upstream.proxy, "https": upstream.proxy} if upstream.proxy else None
        # The socket read timeout is a backstop: first-byte, idle and deadline limits are
        # enforced by the waiting side, which closes the exchange when one passes.
        timeout = (upstream.connect_timeout, call.read_timeout or upstream.read_timeout)

        def send() -> requests.Response:
            url = upstream.base_url + leg.path
            return send_prepared(self.session, call.method, url, leg.body, headers, timeout=timeout, proxies=proxies)

        return Exchange(send, streaming=call.streaming, sse=leg.dialect.sse)

    def status_failure(self, response: requests.Response, body: bytes) -> Failure:
        """A non-2xx answer (its body already read by the exchange): the retry-table decision."""
        retry_after = response.headers.get("Retry-After")
        decision = classify(response.status_code, None, retry_after, self.clock())
        return Failure(decision, response.status_code, retry_after, body, response.headers.get("Content-Type", ""))

    def transport_failure(self, exc: Exception) -> Failure:
        return _transport_failure(exc, self.clock())

    def final_error(self, failure: Failure, dialect: Dialect) -> ApiError:
        return final_error(failure, self.pool.secrets(), dialect)


def _transport_failure(exc: Exception, now: float) -> Failure:
    if isinstance(exc, requests.ConnectTimeout):
        kind = "connect_timeout"
    elif isinstance(exc, (requests.ReadTimeout, requests.Timeout)):
        kind = "read_timeout"
    elif isinstance(exc, requests.ConnectionError) and "Read timed out" in str(exc):
        kind = "read_timeout"  # requests wraps a body-read timeout in ConnectionError
    else:
        kind = "connect_error"
    return Failure(classify(None, kind, None, now), None)


def final_error(failure: Failure, secrets: Sequence[str], dialect: Dialect) -> ApiError:
    """The client's answer when the last attempt failed (see the retry table in the README)."""
    status = failure.status
    if status is None:
        reason = failure.decision.reason
        if reason in TIMEOUT_ERRORS:
            code, what = TIMEOUT_ERRORS[reason]
            return ApiError(504, f"The upstream timed out ({what}).", code=code)
        if reason in STREAM_FAULTS:
            return ApiError(
                502,
                f"The upstream stream failed before its first event ({STREAM_FAULTS[reason]}).",
                code="upstream_error",
            )
        return ApiError(502, "Could not connect to the upstream.", code="upstream_error")
    if status == 429:
        seconds = max(1, round(failure.decision.cooldown))
        message = "The upstream rate limit was reached on every available token."
        return ApiError(429, message, code="rate_limit_exceeded", headers={"Retry-After": str(seconds)})
    if status in (401, 403):
        message = f"The upstream rejected the gateway's credentials (HTTP {status}); no token was accepted."
        return ApiError(502, message, code="upstream_auth_failed")
    if status == 529:  # Anthropic's "overloaded": a 503 with Retry-After (an Anthropic client sees overloaded_error)
        seconds = str(max(1, round(failure.decision.cooldown)))
        message = "The upstream is overloaded (HTTP 529) on every available token."
        return ApiError(503, message, code="upstream_overloaded", headers={"Retry-After": seconds})
    if status >= 500 or status < 400:
        return ApiError(502, f"The upstream answered HTTP {status}.", code="upstream_error")
    return _client_fault(failure, secrets, dialect)


def _client_fault(failure: Failure, secrets: Sequence[str], dialect: Dialect) -> ApiError:
    """A 4xx the client caused: keep the upstream's error (as its dialect shapes it), else wrap it as JSON."""
    status = failure.status or 400
    body = failure.body
    for secret in secrets:  # an upstream echoing a credential must not pass it on
        body = body.replace(secret.encode(), b"***")
    try:
        parsed = json.loads(body) if "json" in failure.content_type.lower() else None
    except ValueError:
        parsed = None
    inner = dialect.upstream_error(parsed)
    if inner is not None:
        clean = lambda value: None if value is None else _scrub(str(value), secrets)  # noqa: E731
        return ApiError(
            status,
            clean(inner.get("message")) or f"The upstream answered HTTP {status}.",
            code=clean(inner.get("code")),
            param=clean(inner.get("param")),
            type=clean(inner.get("type")) or "invalid_request_error",
        )
    return ApiError(status, f"The upstream rejected the request (HTTP {status}).", code="upstream_bad_request")


def _scrub(text: str, secrets: Sequence[str]) -> str:
    """Mask credentials in decoded text (the raw-bytes pass misses JSON escapes such as \\/)."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
