"""The retry loop of one client request, as a resumable state machine.

`advance(until)` runs attempts (token after token, upstream after upstream) until one is
accepted, the request has failed, or `until` passes. The commit point is acceptance:
for a stream, its first *data* event (an error status, an empty stream, a first event
that is an error, or no data before `first_byte_timeout` are all retried on another
token); for a plain request, its 2xx body. Because `advance` can return "still waiting",
the response writer can commit a stream early and send heartbeats while retries go on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import requests

from app.config import UpstreamConfig
from app.dialects.base import Dialect, Leg, Verdict
from app.errors import ApiError, StreamBroken
from app.services import metrics
from app.services.breaker import Breakers, is_upstream_fault
from app.services.calls import UpstreamCall
from app.services.exchange import Exchange, Message
from app.services.tokens import Decision, Token, TokenPool, classify

log = logging.getLogger("sluice.upstream")


@dataclass(frozen=True)
class Attempt:
    """One attempt, as the log line and the usage record see it (a token id, never its value)."""

    upstream: str
    token_id: str
    status: int | None
    reason: str
    elapsed: float


@dataclass
class Failure:
    """Why an attempt failed, and what the retry table says about it."""

    decision: Decision
    status: int | None
    retry_after: str | None = None
    body: bytes = b""
    content_type: str = ""


class Client(Protocol):
    """What the retry loop needs from the upstream client (app/services/upstream.py)."""

    pool: TokenPool
    breakers: Breakers
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    max_attempts: int
    queue_timeout: float
    first_byte_timeout: float

    def pick(
        self, upstreams: Sequence[UpstreamConfig], tried: set[str], overrides: Mapping[str, tuple], pinned: str | None
    ) -> tuple[UpstreamConfig, Token] | None: ...
    def enter_queue(self, waiter: object) -> bool: ...
    def leave_queue(self, waiter: object) -> None: ...
    def retry_after(self, call: UpstreamCall) -> int: ...
    def open_exchange(self, call: UpstreamCall, upstream: UpstreamConfig, token: Token, leg: Leg) -> Exchange: ...
    def status_failure(self, response: requests.Response, body: bytes) -> Failure: ...
    def transport_failure(self, exc: Exception) -> Failure: ...
    def final_error(self, failure: Failure, dialect: Dialect) -> ApiError: ...


@dataclass
class Accepted:
    upstream: UpstreamConfig
    token: Token
    response: requests.Response
    exchange: Exchange
    leg: Leg
    prefix: list[bytes] = field(default_factory=list)  # events up to and including the first data event
    body: bytes | None = None  # a plain (non-stream) answer


@dataclass
class Failed:
    error: ApiError


@dataclass
class _Current:
    upstream: UpstreamConfig
    token: Token
    leg: Leg
    exchange: Exchange
    started: float
    first_byte_deadline: float
    response: requests.Response | None = None
    prefix: list[bytes] = field(default_factory=list)


class Attempts:
    def __init__(self, client: Client, call: UpstreamCall, deadline: float) -> None:
        self.client, self.call, self.deadline = client, call, deadline
        self.records: list[Attempt] = []
        self.tried: set[str] = set()
        self.failure: Failure | None = None
        self.failure_dialect: Dialect | None = None  # the dialect of the upstream that failed last
        self.overrides = client.pool.overrides(client.clock())
        self.current: _Current | None = None
        self.max_attempts = call.max_attempts or client.max_attempts
        self._queue_deadline: float | None = None

    def advance(self, until: float) -> Accepted | Failed | None:
        """Work until an outcome (Accepted or Failed) or `until`; None means still waiting."""
        try:
            return self._advance(until)
        except BaseException:  # a storage error (or the greenlet killed): leave nothing claimed behind
            self.abandon("error")
            raise

    def _advance(self, until: float) -> Accepted | Failed | None:
        while True:
            now = self.client.clock()
            if now >= self.deadline:
                self.abandon("deadline")
                message = "The request deadline passed before an upstream answered."
                return Failed(ApiError(504, message, code="deadline_exceeded"))
            if self.current is None:
                if len(self.records) >= self.max_attempts:
                    return self._failed()
                choice = self.client.pick(self.call.upstreams, self.tried, self.overrides, self.call.token_id)
                if choice is None:
                    if self.records or not self.client.enter_queue(self):
                        return self._failed()
                    waited = self._wait_in_queue(now, until)
                    if waited is not _KEEP_WAITING:
                        return waited  # type: ignore[return-value]
                    continue
                self.client.leave_queue(self)
                self._start(*choice, now)
            outcome = self._wait(until)
            if outcome is not _KEEP_WAITING:
                return outcome  # type: ignore[return-value]

    def _wait_in_queue(self, now: float, until: float) -> Failed | None | object:
        """No usable token: sleep towards the earliest cooldown end, within queue_timeout."""
        if self._queue_deadline is None:
            self._queue_deadline = min(now + self.client.queue_timeout, self.deadline)
        if now >= self._queue_deadline:
            return self._failed()
        wake = min(now + self.client.retry_after(self.call), self._queue_deadline, until)
        self.client.sleep(max(0.01, wake - now))
        if self.client.clock() >= until and self.client.clock() < self._queue_deadline:
            return None
        return _KEEP_WAITING

    def _start(self, upstream: UpstreamConfig, token: Token, now: float) -> None:
        self.tried.add(token.id)
        first_byte = upstream.first_byte_timeout or self.client.first_byte_timeout
        leg = self.call.leg(upstream)
        exchange = self.client.open_exchange(self.call, upstream, token, leg)
        self.current = _Current(upstream, token, leg, exchange, now, now + first_byte)

    def _wait(self, until: float) -> Accepted | Failed | None | object:
        current = self.current
        assert current is not None
        now = self.client.clock()
        message = current.exchange.next(min(until, current.first_byte_deadline, self.deadline) - now)
        if message is None:
            now = self.client.clock()
            if now >= self.deadline:
                return _KEEP_WAITING  # the loop's deadline check answers
            if now >= current.first_byte_deadline:
                return self._attempt_failed(self._failure("first_byte_timeout"))
            return None if now >= until else _KEEP_WAITING
        return self._handle(message)

    def _handle(self, message: Message) -> Accepted | Failed | object:
        current = self.current
        assert current is not None
        if message.kind == "status":
            current.response = message.value
            if not self.call.streaming:
                current.first_byte_deadline = math.inf  # a plain answer has started: the body gets until the deadline
            return _KEEP_WAITING
        if message.kind == "failed":
            response, body = message.value
            current.response = response
            return self._attempt_failed(self.client.status_failure(response, body))
        if message.kind == "body":
            return self._accept(body=message.value)
        if message.kind == "event":
            event: bytes = message.value
            verdict = current.leg.dialect.verdict(event)
            if verdict is Verdict.WAIT:
                current.prefix.append(event)  # comments and keep-alives before the first content
                return _KEEP_WAITING
            if verdict is Verdict.ERROR:
                return self._attempt_failed(self._failure("error_event"))
            if verdict is Verdict.EMPTY:  # the stream's end before any content: nothing was generated
                return self._attempt_failed(self._failure("empty_stream"))
            current.prefix.append(event)
            return self._accept()
        if message.kind == "end":
            return self._attempt_failed(self._failure("empty_stream"))
        if message.kind == "broken":
            broken: StreamBroken = message.value
            kind = "read_timeout" if broken.code == "upstream_timeout" else "stream_broken"
            return self._attempt_failed(self._failure(kind))
        return self._transport_failed(message.value)

    def _transport_failed(self, exc: Exception) -> Failed | object:
        """The request could not be sent or answered: say why once (tokens are redacted by the log filter)."""
        current = self.current
        assert current is not None
        log.warning(
            "upstream request failed request_id=%s upstream=%s token=%s: %s: %s",
            self.call.request_id, current.upstream.name, current.token.masked, type(exc).__name__, exc,
        )  # fmt: skip
        return self._attempt_failed(self.client.transport_failure(exc))

    def _failure(self, kind: str) -> Failure:
        return Failure(classify(None, kind, None, self.client.clock()), None)

    def _accept(self, body: bytes | None = None) -> Accepted:
        current = self.current
        assert current is not None and current.response is not None
        self._record(current, current.response.status_code, Decision(False, 0.0, "ok"), healthy=True)
        self.current = None
        return Accepted(
            current.upstream, current.token, current.response, current.exchange, current.leg, current.prefix, body
        )

    def _attempt_failed(self, failure: Failure) -> Failed | object:
        current = self.current
        assert current is not None
        current.exchange.close()
        status, decision = failure.status, failure.decision
        # A 4xx the client caused says nothing bad about the token.
        self._record(current, status, decision, healthy=not decision.retry and status is not None and status < 500)
        self.current, self.failure, self.failure_dialect = None, failure, current.leg.dialect
        if not decision.retry:
            return Failed(self.client.final_error(failure, current.leg.dialect))
        return _KEEP_WAITING

    def _record(self, current: _Current, status: int | None, decision: Decision, *, healthy: bool) -> None:
        now = self.client.clock()
        # The breaker first: it is in memory and must learn the verdict even if the store fails.
        self.client.breakers.record(current.upstream.name, fault=is_upstream_fault(status, decision.reason), now=now)
        self.client.pool.report(current.token, status=status, ok=healthy, cooldown=decision.cooldown, now=now)
        elapsed = now - current.started
        self.records.append(Attempt(current.upstream.name, current.token.id, status, decision.reason, elapsed))
        outcome = "ok" if decision.reason == "ok" else "retry" if decision.retry else "fail"
        metrics.ATTEMPTS.labels(upstream=current.upstream.name, outcome=outcome, reason=decision.reason).inc()
        if decision.cooldown > 0:
            metrics.COOLDOWNS.labels(upstream=current.upstream.name, reason=decision.reason).inc()
        log.debug(
            "attempt request_id=%s upstream=%s token=%s status=%s reason=%s retry=%s cooldown=%.0fs",
            self.call.request_id, current.upstream.name, current.token.masked, status, decision.reason,
            decision.retry, decision.cooldown,
        )  # fmt: skip

    def _failed(self) -> Failed:
        self.client.leave_queue(self)
        if self.failure is None:
            return Failed(
                ApiError(
                    503,
                    "No upstream is available right now: every token is cooling down or every upstream is failing.",
                    code="no_upstream_available",
                    headers={"Retry-After": str(self.client.retry_after(self.call))},
                )
            )
        assert self.failure_dialect is not None
        return Failed(self.client.final_error(self.failure, self.failure_dialect))

    def abandon(self, reason: str) -> None:
        """Stop the attempt in progress (client gone, deadline); the token is not blamed."""
        current, self.current = self.current, None
        if current is not None:
            current.exchange.close()
            self.client.breakers.release(current.upstream.name)
            status = current.response.status_code if current.response is not None else None
            now = self.client.clock()
            self.records.append(Attempt(current.upstream.name, current.token.id, status, reason, now - current.started))
        self.client.leave_queue(self)


_KEEP_WAITING = object()
