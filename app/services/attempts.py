"""The retry loop of one client request, as a resumable state machine.

`advance(until)` runs attempts (token after token, route after route in the order the hop's
strategy gives, then the hop's fallbacks) until one is accepted, the request has failed, or
`until` passes. Each hop has its own `max_attempts`; the deadline covers them all. A prompt too
long for the model moves to the hop's `context_fallbacks` instead of another token. When no hop has
a usable token before any attempt, the request queues (within queue_timeout) and looks at every hop
again on each wake-up. The commit point is acceptance:
for a stream, its first *data* event (an error status, an empty stream, a first event
that is an error, or no data before `first_byte_timeout` are all retried on another
token); for a plain request, its 2xx body. Because `advance` can return "still waiting",
the response writer can commit a stream early and send heartbeats while retries go on.

Hedging (issue 14, docs/resilience.md): with `hedge_after` set (the hop's, else the first attempt's
upstream's), an attempt without a first event after that long gets a hedge beside it, on another token
(the same upstream first); the first to have its first event wins and the others are closed as
HEDGE_LOST, without blame (the running set and the hedge timers: app/services/hedging.py). A failure
beside a running attempt waits for it, for one hedge delay at most (see `_settle`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from app.config import UpstreamConfig
from app.dialects.base import Dialect, Leg, Verdict
from app.errors import ApiError, StreamBroken
from app.services import metrics
from app.services.calls import Hop, UpstreamCall
from app.services.exchange import Exchange, Message
from app.services.hedging import Hedging, Running, count
from app.services.outcomes import Decision, Failure, Outcome
from app.services.selector import Choice, Selector
from app.services.tokens import Token
from app.services.transport import Transport

log = logging.getLogger("sluice.upstream")


@dataclass(frozen=True)
class Attempt:
    """One attempt, as the log line and the usage record see it (a token id, never its value)."""

    upstream: str
    token_id: str
    status: int | None
    reason: str
    elapsed: float
    outcome: Outcome = Outcome.OK
    model: str | None = None  # the model the upstream was sent (None: the body as the client sent it)
    hedge: bool = False  # started as a hedge: an earlier attempt of the request was late with its first event


@dataclass(frozen=True)
class LoopSettings:
    """The retry loop's limits ([gateway] settings, per call where the call overrides them)."""

    max_attempts: int
    first_byte_timeout: float
    sleep: Callable[[float], None]
    final_error: Callable[[Failure, Dialect], ApiError]  # the client's answer when the last attempt failed


@dataclass
class Accepted:
    choice: Choice
    response: requests.Response
    exchange: Exchange
    leg: Leg
    prefix: list[bytes] = field(default_factory=list)  # events up to and including the first data event
    body: bytes | None = None  # a plain (non-stream) answer

    @property
    def upstream(self) -> UpstreamConfig:
        return self.choice.upstream

    @property
    def token(self) -> Token:
        return self.choice.token


@dataclass
class Failed:
    error: ApiError


class Attempts:
    def __init__(
        self, selector: Selector, transport: Transport, settings: LoopSettings, call: UpstreamCall, deadline: float
    ) -> None:
        self.selector, self.transport, self.settings = selector, transport, settings
        self.call, self.deadline = call, deadline
        self.clock = selector.clock
        self.records: list[Attempt] = []
        self.hop, self.pending = call.hop, list[Hop]()  # the hop being tried, and the ones queued after it
        self.hop_attempts = 0
        self.tried: dict[str, set[str]] = {}  # route key -> token ids tried on it
        self.failed_routes: set[str] = set()
        self._live: tuple[str, ...] = ()  # the accepted attempt's Load keys, until finish()
        self.failure: Failure | None = None
        self.failure_dialect: Dialect | None = None  # the dialect of the upstream that failed last
        self.overrides = selector.overrides()
        self.hedging = Hedging(selector.load, self.clock, call.streaming)  # the attempts in progress (1, or more)
        self._decisive: tuple[Failure, Dialect] | None = None  # the first non-retryable failure beside running ones
        self.max_attempts = call.max_attempts or settings.max_attempts
        self._queue_deadline: float | None = None
        self._continuations: list[Attempts] = []
        self.continuing = False  # a resumed stream's continuation loop (see continuation())

    def continuation(self, call: UpstreamCall) -> Attempts:
        """The retry loop of a resumed stream's next part (app/services/resume.py): `call` with its own
        max_attempts, on tokens this request has not tried yet, within the same deadline; its attempts show up
        in this loop's records, and `finish()` here ends its in-flight attempt too."""
        loop = Attempts(self.selector, self.transport, self.settings, call, self.deadline)
        loop.records, loop.tried, loop.continuing = self.records, self.tried, True
        self._continuations.append(loop)
        return loop

    def broke(self, accepted: Accepted, outcome: Outcome) -> None:
        """The accepted attempt's stream broke after the commit and is being resumed: its record says how (the
        token is not blamed: a stream that is not resumed is not either), and it leaves the in-flight counts."""
        for i in range(len(self.records) - 1, -1, -1):  # its record (the last OK one of its token) says how it ended
            record = self.records[i]
            if record.token_id == accepted.token.id and record.outcome is Outcome.OK:
                self.records[i] = dataclasses.replace(record, reason=outcome.value, outcome=outcome)
                break
        self.finish()

    def advance(self, until: float) -> Accepted | Failed | None:
        """Work until an outcome (Accepted or Failed) or `until`; None means still waiting."""
        try:
            return self._advance(until)
        except BaseException:  # a storage error (or the greenlet killed): leave nothing claimed behind
            self.abandon(Outcome.ABORTED)
            raise

    def _advance(self, until: float) -> Accepted | Failed | None:
        while True:
            now = self.clock()
            if now >= self.deadline:
                held = self.abandon(Outcome.DEADLINE)
                if held is not None:  # a decisive failure came before: it is the answer, not the deadline
                    return held
                message = "The request deadline passed before an upstream answered."
                return Failed(ApiError(504, message, code="deadline_exceeded"))
            if not self.hedging.running:
                choice = self._choose()
                if choice is None:
                    if self._next_hop(self.hop.fallbacks):
                        continue
                    if self.records or not self.selector.enter_queue(self):
                        return self._failed()
                    waited = self._wait_in_queue(now, until)
                    if waited is not _KEEP_WAITING:
                        return waited  # type: ignore[return-value]
                    continue
                self.selector.leave_queue(self)
                self._start(choice)
            outcome = self._wait(until)
            if outcome is not _KEEP_WAITING:
                return outcome  # type: ignore[return-value]

    def _choose(self) -> Choice | None:
        """The next attempt in this hop, None when its routes (or its attempts) are used up."""
        if self.hop_attempts >= self.max_attempts:
            return None
        routes = self.selector.order(self.hop, self.failed_routes)
        return self.selector.pick(routes, self.tried, self.overrides, self.call.token_id)

    def _next_hop(self, first: tuple[Hop, ...]) -> bool:
        """Go on with `first`, then the hops queued before; False when there is none left."""
        self.pending[:0] = first
        if not self.pending:
            return False
        self.hop, self.hop_attempts = self.pending.pop(0), 0
        self.failed_routes = set()
        return True

    def _restart(self) -> None:
        """Back to the first hop with its fallbacks pending: a queued request (no attempt made yet) looks
        at every hop on each wake-up, the one whose cooldown ends first included."""
        self.hop, self.pending, self.hop_attempts, self.failed_routes = self.call.hop, [], 0, set()

    def _wait_in_queue(self, now: float, until: float) -> Failed | None | object:
        """No usable token: sleep towards the earliest cooldown end, within queue_timeout."""
        if self._queue_deadline is None:
            self._queue_deadline = min(now + self.selector.queue_timeout, self.deadline)
        if now >= self._queue_deadline:
            return self._failed()
        wake = min(now + self.selector.retry_after(self.call.hop.chain_upstreams()), self._queue_deadline, until)
        self.settings.sleep(max(0.01, wake - now))
        self._restart()
        if self.clock() >= until and self.clock() < self._queue_deadline:
            return None
        return _KEEP_WAITING

    def _start(self, choice: Choice, hedge: bool = False) -> None:
        self.tried.setdefault(choice.route.key, set()).add(choice.token.id)
        self.hop_attempts += 1
        first_byte = choice.upstream.first_byte_timeout or self.settings.first_byte_timeout
        leg = self.call.leg(choice.route)
        exchange = self.transport.open(self.call, choice.upstream, choice.token.value, leg)
        now = self.clock()  # after picking (which may read the store): its timers count from its request
        current = Running(choice, leg, exchange, now, first_byte, now + first_byte, hedge)
        self.hedging.add(current, self.hop.hedge, room=self.hop_attempts < self.max_attempts)

    def _hedge(self) -> None:
        """Start one more attempt beside the late ones: another token of the primary's route first (pick skips
        the tokens tried on it), else the next route in the hop's order."""
        routes = self.hedging.routes(self.selector.order(self.hop, self.failed_routes))
        choice = self.selector.pick(routes, self.tried, self.overrides, self.call.token_id)
        if self.hedging.starting(choice):
            assert choice is not None
            self._start(choice, hedge=True)

    def _wait(self, until: float) -> Accepted | Failed | None | object:
        """Wait on the running attempts until a message of one of them, or the next timer."""
        got = self.hedging.wait(until, self.deadline)
        if got is None:
            return self._timers(until)
        return self._handle(*got)

    def _timers(self, until: float) -> Accepted | Failed | None | object:
        """No message came: an attempt's first-byte limit passed, a hedge is due, or the wait is over."""
        now = self.clock()
        if now >= self.deadline:
            return _KEEP_WAITING  # the loop's deadline check answers
        if self._decisive is not None and now >= self.hedging.decide_by:
            self._won(None)  # none had its first event in time: the decisive failure is the answer
            return self._decide()
        late = self.hedging.late(now)
        if late is not None:
            return self._attempt_failed(late, self.transport.fault(Outcome.FIRST_BYTE_TIMEOUT))
        if now >= self.hedging.due:
            self._hedge()
            return _KEEP_WAITING
        return None if now >= until else _KEEP_WAITING

    def _handle(self, current: Running, message: Message) -> Accepted | Failed | object:
        if message.kind == "status":
            current.response = message.value
            if not self.call.streaming:
                current.first_byte_deadline = math.inf  # a plain answer has started: the body gets until the deadline
                self.hedging.first_event(current)
                self._won(current)  # a plain answer's first event is its 2xx status
            return _KEEP_WAITING
        if message.kind == "failed":
            response, body = message.value
            current.response = response
            return self._attempt_failed(current, self.transport.status_failure(response, body, current.leg.dialect))
        if message.kind == "body":
            return self._accept(current, body=message.value)
        if message.kind == "event":
            return self._stream_event(current, message.value)
        if message.kind == "end":
            return self._attempt_failed(current, self.transport.fault(Outcome.EMPTY_STREAM))
        if message.kind == "broken":
            broken: StreamBroken = message.value
            kind = Outcome.READ_TIMEOUT if broken.code == "upstream_timeout" else Outcome.STREAM_BROKEN
            return self._attempt_failed(current, self.transport.fault(kind))
        return self._transport_failed(current, message.value)

    def _stream_event(self, current: Running, event: bytes) -> Accepted | Failed | object:
        verdict = current.leg.dialect.verdict(event)
        if verdict is Verdict.WAIT:
            current.prefix.append(event)  # comments and keep-alives before the first content
            return _KEEP_WAITING
        if verdict is Verdict.ERROR:
            return self._attempt_failed(current, self.transport.fault(Outcome.ERROR_EVENT))
        if verdict is Verdict.EMPTY:  # the stream's end before any content: nothing was generated
            return self._attempt_failed(current, self.transport.fault(Outcome.EMPTY_STREAM))
        current.prefix.append(event)
        self.hedging.first_event(current)
        return self._accept(current)

    def _transport_failed(self, current: Running, exc: Exception) -> Failed | object:
        """The request could not be sent or answered: say why once (tokens are redacted by the log filter)."""
        log.warning(
            "upstream request failed request_id=%s upstream=%s token=%s: %s: %s",
            self.call.request_id, current.choice.upstream.name, current.choice.token.masked, type(exc).__name__, exc,
        )  # fmt: skip
        return self._attempt_failed(current, self.transport.transport_failure(exc))

    def _accept(self, current: Running, body: bytes | None = None) -> Accepted:
        assert current.response is not None
        self._won(current)  # the losers' records first: the last record is the answer's (accounting reads it)
        self.hedging.remove(current)
        self._live = current.choice.load_keys()  # in flight until finish()
        try:
            self._record(current, Decision(Outcome.OK, current.response.status_code, 0.0))
        except BaseException:  # the store failed: the answer is never handed on, so it is over here
            current.exchange.close()
            self.finish()
            raise
        count(current, "won")
        return Accepted(current.choice, current.response, current.exchange, current.leg, current.prefix, body)

    def _won(self, winner: Running | None) -> None:
        """`winner` had its first event first (None: a decisive failure decides): every other running
        attempt is closed as lost, and no hedge starts after it."""
        for loser in self.hedging.won(winner):
            self._drop(loser, Outcome.HEDGE_LOST)

    def _attempt_failed(self, current: Running, failure: Failure) -> Failed | object:
        self.hedging.end(current)  # over before it is recorded: a store error can't end it twice
        if failure.decision.policy.upstream_fault:  # a penalty sample: `latency` sinks a failing target
            self.selector.load.first_event(current.first_byte_timeout, *current.choice.load_keys())  # (no p95 one)
        self._record(current, failure.decision)
        self.failure, self.failure_dialect = failure, current.leg.dialect
        self.failed_routes.add(current.choice.route.key)
        return self._settle(failure, current.leg.dialect)

    def _settle(self, failure: Failure, dialect: Dialect) -> Failed | object:
        """After a failed attempt: while others run, wait for them (no replacement, and after a non-retryable
        failure no hedge either, and that failure answers after one hedge delay if none had its first event:
        `Hedging.hold`); with none left, the first non-retryable failure seen decides (a retryable one after
        it does not hide it: the answer the client would have had without the hedge), else the loop goes
        on to the next token. The deadline (`_advance`) or an `abandon` also answer with that failure."""
        if not failure.decision.retry and self._decisive is None:
            self._decisive = (failure, dialect)
            self.hedging.hold(self.clock())
        if self.hedging.running or self._decisive is None:
            return _KEEP_WAITING
        return self._decide()

    def _decide(self) -> Failed | object:
        """Nothing runs beside the decisive failure: it is the answer, or moves to the context fallbacks."""
        assert self._decisive is not None
        (failure, dialect), self._decisive = self._decisive, None
        self.failure, self.failure_dialect = failure, dialect
        if failure.decision.policy.context_fallback and self.hop.context_fallbacks:
            self.pending = []  # the prompt is too long for this model: its other fallbacks are not tried
            self._next_hop(self.hop.context_fallbacks)
            return _KEEP_WAITING
        return Failed(self.settings.final_error(failure, dialect))

    def _record(self, current: Running, decision: Decision) -> None:
        """Note the attempt (records, metrics, log), then teach the selector, last: the store may fail."""
        upstream, token = current.choice.upstream.name, current.choice.token
        self._note(current, decision.status, decision.reason, decision.outcome)
        outcome = "ok" if decision.outcome is Outcome.OK else "retry" if decision.retry else "fail"
        metrics.ATTEMPTS.labels(upstream=upstream, outcome=outcome, reason=decision.reason).inc()
        if decision.cooldown > 0:
            metrics.COOLDOWNS.labels(upstream=upstream, reason=decision.reason).inc()
        log.debug(
            "attempt request_id=%s upstream=%s token=%s status=%s reason=%s retry=%s cooldown=%.0fs",
            self.call.request_id, upstream, token.masked, decision.status, decision.reason,
            decision.retry, decision.cooldown,
        )  # fmt: skip
        self.selector.record(current.choice, decision)

    def _failed(self) -> Failed:
        self.selector.leave_queue(self)
        if self.failure is None:
            if not self.continuing:  # a resume that found no untried token refused no client
                self.selector.exhausted(self.call.hop)
            retry_after = str(self.selector.retry_after(self.call.hop.chain_upstreams()))
            message = "No upstream is available right now: every token is cooling down or every upstream is failing."
            return Failed(ApiError(503, message, code="no_upstream_available", headers={"Retry-After": retry_after}))
        assert self.failure_dialect is not None
        return Failed(self.settings.final_error(self.failure, self.failure_dialect))

    def _note(self, current: Running, status: int | None, reason: str, outcome: Outcome) -> None:
        """The attempt's record, as the request log and the usage record see it."""
        choice = current.choice
        elapsed = self.clock() - current.started
        self.records.append(
            Attempt(choice.upstream.name, choice.token.id, status, reason, elapsed, outcome, choice.route.model,
                    current.hedge)
        )  # fmt: skip

    def abandon(self, outcome: Outcome) -> Failed | None:
        """Stop every attempt in progress (client gone, deadline, shutdown); no token is blamed. Returns the
        non-retryable failure held beside them, if any: the answer the client is owed, not a timeout."""
        for current in list(self.hedging.running):
            self._drop(current, outcome)
        self.selector.leave_queue(self)
        held, self._decisive = self._decisive, None
        return None if held is None else Failed(self.settings.final_error(*held))

    def _drop(self, current: Running, outcome: Outcome) -> None:
        """End a running attempt without a verdict (abandoned, or lost to another attempt)."""
        self.hedging.end(current)
        self.selector.release(current.choice)
        status = current.response.status_code if current.response is not None else None
        self._note(current, status, outcome.value, outcome)
        if outcome is Outcome.HEDGE_LOST:
            self.hedging.lost(current)

    def finish(self) -> None:
        """The client's answer is over (written, finished, broken or abandoned): the accepted attempt
        leaves the in-flight counts. Safe to call more than once, or with nothing accepted."""
        live, self._live = self._live, ()
        self.selector.load.end(*live)
        for loop in self._continuations:
            loop.finish()


_KEEP_WAITING = object()
