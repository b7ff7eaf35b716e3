"""The upstream client: one requests.Session per worker, send, retry on another token.

Transport errors become an attempt outcome at this one boundary. Every failed
attempt's response is closed before the next attempt. The commit point (the moment
an attempt's answer is handed to the response writer and no retry is possible any
more) is `_accept`: today, the upstream's 2xx status.
"""

from __future__ import annotations

import http.cookiejar
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import requests
import urllib3
from requests.adapters import HTTPAdapter

from app.config import Config, UpstreamConfig
from app.errors import ApiError
from app.services.breaker import Breakers, is_upstream_fault
from app.services.headers import build_upstream_headers
from app.services.tokens import Decision, Token, TokenPool, classify

log = logging.getLogger("sluice.upstream")

ERROR_BODY_LIMIT = 64 * 1024  # bytes read from a failed attempt's body


def build_session(trust_env: bool, pool_size: int = 1000) -> requests.Session:
    """The per-worker session: no environment proxies/.netrc unless asked, no default headers."""
    session = requests.Session()
    session.trust_env = trust_env
    session.headers.clear()  # build_upstream_headers decides every header
    # One session serves every token and client: an upstream cookie set for one must never
    # ride along on another's request, so the jar accepts nothing.
    session.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    # pool_size idle connections kept per upstream host: as many as concurrent streams,
    # so a busy worker neither reconnects for every request nor logs "pool is full".
    adapter = HTTPAdapter(pool_connections=16, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


@dataclass(frozen=True)
class UpstreamCall:
    """One client request, as the upstream client needs it."""

    method: str
    path: str  # below the upstream's base_url, e.g. "/chat/completions"
    body: bytes | None
    streaming: bool
    upstreams: Sequence[UpstreamConfig]  # routed, in order of preference
    request_id: str
    client_headers: Mapping[str, str] = field(default_factory=dict)
    usage_body: bytes | None = None  # the body asking for a usage chunk, for upstreams with inject_usage
    max_attempts: int | None = None  # overrides [gateway] max_attempts (e.g. 1 for a /models probe)
    read_timeout: float | None = None  # overrides the upstream's read_timeout

    def body_for(self, upstream: UpstreamConfig) -> bytes | None:
        return self.usage_body if self.usage_body is not None and upstream.inject_usage else self.body


@dataclass(frozen=True)
class Attempt:
    upstream: str
    token_id: str
    status: int | None
    reason: str
    elapsed: float


@dataclass
class UpstreamResult:
    """Either an accepted response (open when streaming) or the error for the client."""

    attempts: list[Attempt]
    upstream: UpstreamConfig | None = None
    token: Token | None = None
    response: requests.Response | None = None
    error: ApiError | None = None


@dataclass
class _Failure:
    decision: Decision
    status: int | None
    retry_after: str | None = None
    body: bytes = b""
    content_type: str = ""


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
        self._queued = 0
        self._queue_lock = threading.Lock()

    def send(self, call: UpstreamCall) -> UpstreamResult:
        """Try up to max_attempts distinct tokens; return the first accepted answer or the error."""
        attempts: list[Attempt] = []
        tried: set[str] = set()
        failure: _Failure | None = None
        overrides = self.pool.overrides(self.clock())
        for _ in range(call.max_attempts or self.max_attempts):
            choice = self._pick(call.upstreams, tried, overrides)
            if choice is None and not attempts:
                choice = self._queue(call, tried, overrides)
            if choice is None:
                break
            upstream, token = choice
            tried.add(token.id)
            result, failure = self._attempt(call, upstream, token, attempts)
            if result is not None:
                return result
        if failure is None:
            error = ApiError(
                503,
                "No upstream is available right now: every token is cooling down or every upstream is failing.",
                code="no_upstream_available",
                headers={"Retry-After": str(self._retry_after(call))},
            )
            return UpstreamResult(attempts, error=error)
        return UpstreamResult(attempts, error=final_error(failure, self.pool.secrets()))

    def _pick(
        self, upstreams: Sequence[UpstreamConfig], tried: set[str], overrides: Mapping[str, tuple]
    ) -> tuple[UpstreamConfig, Token] | None:
        now = self.clock()
        for upstream in upstreams:
            if self.breakers.is_open(upstream.name, now):
                continue
            token = self.pool.pick(upstream.name, tried, now)
            if token is not None and self.breakers.allow(upstream.name, now):
                return self.pool.effective(upstream, overrides), token
        return None

    def _queue(
        self, call: UpstreamCall, tried: set[str], overrides: Mapping[str, tuple]
    ) -> tuple[UpstreamConfig, Token] | None:
        """With no usable token, wait up to queue_timeout for the earliest cooldown to end."""
        with self._queue_lock:
            if self.queue_timeout <= 0 or self._queued >= self.max_queued:
                return None
            self._queued += 1
        try:
            deadline = self.clock() + self.queue_timeout
            while (now := self.clock()) < deadline:
                self.sleep(min(self._retry_after(call), deadline - now))
                choice = self._pick(call.upstreams, tried, overrides)
                if choice is not None:
                    log.debug("dequeued request_id=%s after %.1fs", call.request_id, self.clock() - now)
                    return choice
            return None
        finally:
            with self._queue_lock:
                self._queued -= 1

    def _retry_after(self, call: UpstreamCall) -> int:
        """Seconds until a routed upstream may take an attempt again (a breaker or a cooldown)."""
        names = [u.name for u in call.upstreams]
        now = self.clock()
        breaker_wait = self.breakers.retry_after(names, now)
        if breaker_wait is not None:
            return breaker_wait
        return self.pool.retry_after([n for n in names if not self.breakers.is_open(n, now)], now)

    def _attempt(
        self, call: UpstreamCall, upstream: UpstreamConfig, token: Token, attempts: list[Attempt]
    ) -> tuple[UpstreamResult | None, _Failure | None]:
        """One attempt on one token: a final result, or the failure to retry past."""
        started = self.clock()
        response, failure = self._exchange(call, upstream, token)
        status = response.status_code if response is not None else failure.status if failure else None
        decision = failure.decision if failure else Decision(False, 0.0, "ok")
        # A 4xx the client caused says nothing bad about the token.
        healthy = failure is None or (not decision.retry and status is not None and status < 500)
        self.pool.report(token, status=status, ok=healthy, cooldown=decision.cooldown, now=self.clock())
        self.breakers.record(upstream.name, fault=is_upstream_fault(status, decision.reason), now=self.clock())
        attempts.append(Attempt(upstream.name, token.id, status, decision.reason, self.clock() - started))
        log.debug(
            "attempt request_id=%s upstream=%s token=%s status=%s reason=%s retry=%s cooldown=%.0fs",
            call.request_id, upstream.name, token.masked, status, decision.reason,
            decision.retry, decision.cooldown,
        )  # fmt: skip
        if failure is None:
            return UpstreamResult(attempts, upstream, token, response=response), None
        if not decision.retry:
            return UpstreamResult(attempts, upstream, token, error=final_error(failure, self.pool.secrets())), None
        return None, failure

    def _exchange(
        self, call: UpstreamCall, upstream: UpstreamConfig, token: Token
    ) -> tuple[requests.Response | None, _Failure | None]:
        """One HTTP exchange. Returns the accepted response, or the failure (response closed)."""
        headers = build_upstream_headers(
            upstream, token.value, streaming=call.streaming,
            client_headers=call.client_headers, request_id=call.request_id,
        )  # fmt: skip
        proxies = {"http": upstream.proxy, "https": upstream.proxy} if upstream.proxy else None
        try:
            response = self.session.request(
                call.method, upstream.base_url + call.path, data=call.body_for(upstream), headers=headers,
                stream=True, timeout=(upstream.connect_timeout, call.read_timeout or upstream.read_timeout),
                proxies=proxies, allow_redirects=False,
            )  # fmt: skip
        except requests.RequestException as exc:
            return None, _transport_failure(exc, self.clock())
        try:
            return self._accept(call, response)
        except requests.RequestException as exc:
            response.close()
            return None, _transport_failure(exc, self.clock())

    def _accept(
        self, call: UpstreamCall, response: requests.Response
    ) -> tuple[requests.Response | None, _Failure | None]:
        """The commit point: a 2xx is accepted (streams stay open); anything else is a failure."""
        if 200 <= response.status_code < 300:
            if not is_event_stream(response):
                _ = response.content  # non-streaming: read it all now, so a broken body is retryable
            return response, None
        retry_after = response.headers.get("Retry-After")
        body = _read_bounded(response, ERROR_BODY_LIMIT)
        response.close()
        decision = classify(response.status_code, None, retry_after, self.clock())
        content_type = response.headers.get("Content-Type", "")
        return None, _Failure(decision, response.status_code, retry_after, body, content_type)


def is_event_stream(response: requests.Response) -> bool:
    content_type = response.headers.get("Content-Type", "").lower()
    if content_type.startswith("text/event-stream"):
        return True
    # A streaming request answered without a content type is still relayed as a stream.
    return (
        not content_type
        and response.request is not None
        and "text/event-stream" in str(response.request.headers.get("Accept", ""))
    )


def _read_bounded(response: requests.Response, limit: int) -> bytes:
    """At most `limit` bytes of an error body; a broken body reads as empty."""
    try:
        return response.raw.read(limit, decode_content=True) or b""
    except (urllib3.exceptions.HTTPError, OSError):
        return b""


def _transport_failure(exc: requests.RequestException, now: float) -> _Failure:
    if isinstance(exc, requests.ConnectTimeout):
        kind = "connect_timeout"
    elif isinstance(exc, (requests.ReadTimeout, requests.Timeout)):
        kind = "read_timeout"
    elif isinstance(exc, requests.ConnectionError) and "Read timed out" in str(exc):
        kind = "read_timeout"  # requests wraps a body-read timeout in ConnectionError
    else:
        kind = "connect_error"
    return _Failure(classify(None, kind, None, now), None)


def final_error(failure: _Failure, secrets: Sequence[str]) -> ApiError:
    """The client's answer when the last attempt failed (see the retry table in the README)."""
    status = failure.status
    if status is None:
        if failure.decision.reason in ("connect_timeout", "read_timeout"):
            return ApiError(504, f"Upstream timed out ({failure.decision.reason}).", code="upstream_timeout")
        return ApiError(502, "Could not connect to the upstream.", code="upstream_error")
    if status == 429:
        seconds = max(1, round(failure.decision.cooldown))
        message = "The upstream rate limit was reached on every available token."
        return ApiError(429, message, code="rate_limit_exceeded", headers={"Retry-After": str(seconds)})
    if status in (401, 403):
        message = f"The upstream rejected the gateway's credentials (HTTP {status}); no token was accepted."
        return ApiError(502, message, code="upstream_auth_failed")
    if status >= 500 or status < 400:
        return ApiError(502, f"The upstream answered HTTP {status}.", code="upstream_error")
    return _client_fault(failure, secrets)


def _client_fault(failure: _Failure, secrets: Sequence[str]) -> ApiError:
    """A 4xx the client caused: keep the upstream's OpenAI-shaped error, else wrap it as JSON."""
    status = failure.status or 400
    body = failure.body
    for secret in secrets:  # an upstream echoing a credential must not pass it on
        body = body.replace(secret.encode(), b"***")
    try:
        parsed = json.loads(body) if "json" in failure.content_type.lower() else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        inner = parsed["error"]
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
