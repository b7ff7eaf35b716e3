"""The upstream client: a transport and a selector, wired once per worker, and the client's error.

`start(call)` returns the request's `Attempts` (app/services/attempts.py), the retry loop, handed
the selector (app/services/selector.py: which upstream and token, breakers, queueing) and the
transport (app/services/transport.py: the session, exchanges, outcomes of statuses and exceptions).
`final_error` turns the last failed attempt into the client's answer (see the retry table in the README).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import requests

from app.config import Config, UpstreamConfig
from app.dialects.base import Dialect
from app.errors import ApiError
from app.services.attempts import Accepted, Attempt, Attempts, LoopSettings
from app.services.breaker import Breakers
from app.services.calls import UpstreamCall
from app.services.load import Load
from app.services.outcomes import Failure, Outcome
from app.services.selector import Selector
from app.services.tokens import TokenPool
from app.services.transport import Transport, build_session

# Outcomes without an HTTP answer -> (client error code, description).
TIMEOUT_ERRORS = {
    Outcome.CONNECT_TIMEOUT: ("upstream_connect_timeout", "connect timeout"),
    Outcome.FIRST_BYTE_TIMEOUT: ("upstream_first_byte_timeout", "no first event within first_byte_timeout"),
    Outcome.READ_TIMEOUT: ("upstream_timeout", "socket read timeout"),
}
STREAM_FAULTS = {Outcome.EMPTY_STREAM: "it ended without data", Outcome.ERROR_EVENT: "its first event was an error",
                 Outcome.STREAM_BROKEN: "the connection broke"}  # fmt: skip


@dataclass
class UpstreamResult:
    """A finished call (used for one-shot calls such as the /models probe)."""

    attempts: list[Attempt]
    upstream: UpstreamConfig | None = None
    body: bytes | None = None
    error: ApiError | None = None


class UpstreamClient:
    """Sends a call to the routed upstreams, retrying on a different token per the policy table."""

    def __init__(
        self,
        config: Config,
        pool: TokenPool,
        session: requests.Session | None = None,
        load: Load | None = None,
        breakers: Breakers | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.pool, self.clock = pool, clock
        self.session = session or build_session(config.gateway.trust_env)
        self.transport = Transport(self.session, clock)
        self.selector = Selector(config.gateway, pool, load or Load(), clock, breakers=breakers)
        self.deadline = config.gateway.deadline
        self.settings = LoopSettings(
            config.gateway.max_attempts, config.gateway.first_byte_timeout, sleep,
            lambda failure, dialect: final_error(failure, pool.secrets(), dialect),
        )  # fmt: skip

    def start(self, call: UpstreamCall, deadline: float | None = None) -> Attempts:
        """The retry loop for `call`; drive it with `advance(until)`."""
        deadline = deadline if deadline is not None else self.clock() + self.deadline
        return Attempts(self.selector, self.transport, self.settings, call, deadline)

    def send(self, call: UpstreamCall) -> UpstreamResult:
        """Run `call` to the end (no heartbeats): the body of a plain request, or the error."""
        attempts = self.start(call)
        outcome = attempts.advance(until=attempts.deadline)
        if isinstance(outcome, Accepted):
            outcome.exchange.close()
            attempts.finish()
            return UpstreamResult(attempts.records, outcome.upstream, body=outcome.body or b"")
        error = outcome.error if outcome is not None else ApiError(504, "Deadline exceeded.", code="deadline_exceeded")
        return UpstreamResult(attempts.records, error=error)


def final_error(failure: Failure, secrets: Sequence[str], dialect: Dialect) -> ApiError:
    """The client's answer when the last attempt failed (see the retry table in the README)."""
    status = failure.status
    if status is None:
        reason = failure.outcome
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
