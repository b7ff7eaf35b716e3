"""SSE pass-through: frame the upstream's bytes into events, one client write per event.

Runs inside the response generator, after the headers are sent: it takes plain
arguments, never `flask.request`. The upstream response is closed in `finally`,
whether the stream ended, broke, or the client went away (GeneratorExit).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from app.aborts import BodyCut
from app.errors import StreamBroken
from app.services import lifecycle
from app.services.lifecycle import SHUTDOWN_MESSAGE, shutdown_deadline
from app.services.outcomes import Outcome
from app.services.resume import BREAKS, Resumer
from app.storage.db import StorageError

log = logging.getLogger("sluice.streaming")


@dataclass
class StreamStats:
    """What the log line and usage record need to know about a finished stream."""

    events: int = 0
    bytes_sent: int = 0
    outcome: str = "ok"
    usage: dict[str, int] | None = None
    first_event_at: float | None = None  # time.monotonic() of the first write
    started: bool = False
    resumes: list[str] = field(default_factory=list)  # why each resume of the stream was made


KEEPALIVE = b": keep-alive\n\n"
REBOUND = 0.5  # seconds: how often the client socket's write timeout is brought up to date mid-stream


@dataclass(frozen=True)
class StreamLimits:
    heartbeat_interval: float
    idle_timeout: float
    deadline: float  # absolute time (the clock's)
    drain: bool  # on client disconnect, read the upstream to its end (bounded by deadline)
    max_resumes: int = 0  # [gateway] max_resumes: continuations of a broken stream (upstreams with `resume`)


class StreamBody:
    """The WSGI body of a streamed answer.

    Before acceptance it sends `: keep-alive` comments every heartbeat while `attempts`
    goes on retrying; then it relays the accepted upstream's events through the leg's
    relay (a pass-through, or a translator into the client's dialect), one write each.
    It finishes the request exactly once: at the end, on breakage, or when the server
    closes it (client gone), even if it was never iterated. `keepalive` is None for a
    body that is not an event stream (it cannot carry comments: it commits at acceptance).
    """

    def __init__(
        self,
        attempts: Any,
        accepted: Any,
        on_finish: Callable[[StreamStats], None],
        *,
        limits: StreamLimits,
        clock: Callable[[], float] = time.time,
        before_write: Callable[[float], None] | None = None,
        keepalive: bytes | None = KEEPALIVE,
        on_accept: Callable[[Any], None] | None = None,
    ) -> None:
        self.attempts, self.accepted, self.on_finish = attempts, accepted, on_finish
        self.limits, self.clock, self.keepalive, self.on_accept = limits, clock, keepalive, on_accept
        self.relay = accepted.leg.relay() if accepted is not None else None
        self.resumer: Resumer | None = None
        # Told, before each write, by when the write must be done (the deadline or the shutdown's).
        self.before_write = before_write
        self.stats = StreamStats()
        self._draining = False
        self._bound_until, self._bound_at = math.nan, -math.inf  # the last bound told before_write, and when
        if accepted is not None:
            self._accepted(accepted)
        self._events = self._run()

    def __iter__(self) -> Iterator[bytes]:
        return self._events

    def close(self) -> None:
        self._events.close()
        if not self.stats.started:  # closed before the first read: the generator never ran
            self._stop_upstream()
            self.stats.outcome = "client_disconnect"
            self.on_finish(self.stats)

    def _stop_upstream(self) -> None:
        if self.accepted is not None:
            self.accepted.exchange.close()
        elif self.attempts is not None:
            self.attempts.abandon(Outcome.CLIENT_DISCONNECT)

    def _run(self) -> Iterator[bytes]:
        self.stats.started = True
        try:
            if self.accepted is None:
                yield self._written(self.keepalive)  # commit now; retries go on behind the heartbeats
                yield from self._wait_for_acceptance()
            relay = self.relay
            for event in self._source():
                if event is None:  # a continuation is being sought: the client waits behind heartbeats
                    yield self._written(self.keepalive)
                    continue
                for out in _relayed(relay.feed, event):
                    self.stats.events += 1
                    yield self._written(out)
                self.stats.usage = relay.usage
            for out in relay.end():
                yield self._written(out)
            if getattr(relay, "failed", False):  # the upstream's own error event ended it: relayed, and recorded
                self.stats.outcome = "upstream_error"
        except StreamBroken as exc:
            if self.relay is not None and getattr(self.relay, "done", False):
                return  # the stream had ended in its dialect: what broke after its last event is not the client's
            self.stats.outcome = exc.code
            yield from self._tail(exc.code, exc.message)
        except StorageError as exc:  # the token store failed while retrying behind heartbeats
            log.error("storage unavailable mid-stream: %s", exc)
            self.stats.outcome = "storage_unavailable"
            yield from self._tail("storage_unavailable", "The gateway's storage is unavailable.")
        except GeneratorExit:
            self.stats.outcome = "client_disconnect"
            if self.accepted is not None and self.limits.drain:
                self._draining = True
                threading.Thread(target=self._drain, name="sluice-drain", daemon=True).start()
            raise
        finally:
            if not self._draining:
                self._stop_upstream()
                self.on_finish(self.stats)

    def _tail(self, code: str, message: str) -> Iterator[bytes]:
        """End a broken stream well-formed in the client's dialect (a raw body cannot say why: it is cut)."""
        if self.relay is None:  # the retries behind the heartbeats failed: any leg's relay speaks the client's dialect
            self.relay = self.attempts.call.first_leg().relay()
        if self.keepalive is None:
            raise BodyCut(code, message)  # a raw body cannot say why: the connection is cut instead
        for out in self.relay.fail(code, message):
            yield self._written(out)
        self.stats.usage = self.relay.usage

    def _wait_for_acceptance(self) -> Iterator[bytes]:
        while True:
            now = self.clock()
            outcome = self.attempts.advance(until=min(now + self.limits.heartbeat_interval, shutdown_deadline()))
            if outcome is None:
                if self.clock() >= shutdown_deadline():
                    self.attempts.abandon(Outcome.SERVER_SHUTDOWN)
                    raise StreamBroken("server_shutdown", SHUTDOWN_MESSAGE)
                yield self._written(self.keepalive)
                continue
            if hasattr(outcome, "error"):
                raise StreamBroken(outcome.error.code or "upstream_error", outcome.error.message)
            self.accepted = outcome
            self.relay = outcome.leg.relay()
            self._accepted(outcome)
            if self.on_accept is not None:
                self.on_accept(outcome)
            return

    def _accepted(self, accepted: Any) -> None:
        """The stream's first accepted attempt: it may be resumed when its upstream says so."""
        if self.attempts is not None and self.keepalive is not None and self.limits.max_resumes > 0:
            self.resumer = Resumer(accepted, self.attempts.call, self.limits.max_resumes, self.limits.deadline)
            self.stats.resumes = self.resumer.reasons

    def _source(self) -> Iterator[bytes | None]:
        """The upstream's events for the relay; with resume on, a resumable break is followed by the
        continuation's events (spliced into the same stream), and None while a continuation is sought."""
        resumer = self.resumer
        if resumer is None or not resumer.enabled:
            yield from self._upstream_events()
            return
        while True:
            held: bytes | None = None
            try:
                for event in self._upstream_events():
                    if resumer.is_error(event):
                        call, why = resumer.plan("error_event", self.clock())
                        if call is not None:
                            held = event
                            break
                        resumer.refused(why, self.accepted.upstream.name)
                    yield from self._spliced(event)
                else:
                    if getattr(self.relay, "done", True):
                        return
                    call, why = resumer.plan("ended_early", self.clock())
                    if call is None:
                        resumer.refused(why, self.accepted.upstream.name)
                        return  # the relay's end() says it ended cut short, as without resume
                code, broken = ("error_event" if held is not None else "ended_early"), None
            except StreamBroken as exc:
                call, why = resumer.plan(exc.code, self.clock())
                if call is None:
                    resumer.refused(why, self.accepted.upstream.name)
                    raise
                code, broken = exc.code, exc
            resumed = yield from self._resume(call, code)
            if not resumed:  # no continuation: the stream ends as it would have without resume
                if broken is not None:
                    raise broken
                if held is not None:
                    yield from self._spliced(held)
                return

    def _spliced(self, event: bytes) -> Sequence[bytes]:
        """The event through the resumer's transcript; one it cannot read (a malformed continuation) ends the
        stream with the error event like any unreadable event, and is not resumed again."""
        assert self.resumer is not None and self.accepted is not None
        try:
            return self.resumer.feed(event)
        except UNREADABLE as exc:
            log.warning("an upstream event could not be spliced: %s: %s", type(exc).__name__, exc)
            self.resumer.refused("unreadable", self.accepted.upstream.name)
            raise StreamBroken("upstream_stream_error", UNREADABLE_MESSAGE) from exc

    def _resume(self, call: Any, code: str) -> Generator[None, None, bool]:
        """Run the continuation's retry loop behind heartbeats; True once it is accepted (it is then
        `self.accepted`), False when it failed."""
        resumer, broken = self.resumer, self.accepted
        assert resumer is not None and broken is not None
        self.attempts.broke(broken, BREAKS[code][1])  # its record says how it ended
        broken.exchange.close()
        self.accepted, self.attempts = None, self.attempts.continuation(call)
        while True:
            outcome = self.attempts.advance(until=min(self.clock() + self.limits.heartbeat_interval,
                                                      shutdown_deadline()))  # fmt: skip
            if outcome is None:
                if self.clock() >= shutdown_deadline():
                    self.attempts.abandon(Outcome.SERVER_SHUTDOWN)
                    resumer.refused("server_shutdown", broken.upstream.name)
                    raise StreamBroken("server_shutdown", SHUTDOWN_MESSAGE)
                yield None
                continue
            if hasattr(outcome, "error"):
                code = outcome.error.code or str(outcome.error.status)
                resumer.refused(
                    "no_token" if code == "no_upstream_available" else f"failed:{code}", broken.upstream.name
                )
                self.accepted = broken  # closed: what is left of it is the stream's end, as without resume
                return False
            self.accepted = outcome
            resumer.resumed(BREAKS[code][0], outcome)
            return True

    def _upstream_events(self) -> Iterator[bytes]:
        """The accepted upstream's events: the ones read before acceptance, then the rest as they come."""
        yield from self.accepted.prefix
        exchange = self.accepted.exchange
        take_over = getattr(exchange, "take_over", None)  # test doubles may not have it
        if take_over is not None:
            take_over()  # accepted: from here every wait ends the stream, so it may read in this greenlet
        upstream = self.accepted.upstream
        idle = (upstream.idle_timeout if upstream is not None else None) or self.limits.idle_timeout
        deadline = self.limits.deadline
        while True:
            now, stop = self.clock(), min(deadline, shutdown_deadline())
            if now >= stop:
                raise _timeout(now, deadline)  # also for a client too slow to keep up
            message = exchange.next(min(idle, stop - now))
            if message is None:
                raise _timeout(self.clock(), deadline)
            if message.kind == "event":
                yield message.value
            elif message.kind == "end":
                return
            elif message.kind == "broken":
                raise message.value
            else:
                raise StreamBroken("upstream_stream_error", "The upstream connection broke mid-stream.")

    def _written(self, data: bytes) -> bytes:
        if self.before_write is not None:
            self._bound()
        if self.stats.first_event_at is None and data is not self.keepalive:
            self.stats.first_event_at = time.monotonic()
        self.stats.bytes_sent += len(data)
        return data

    def _bound(self) -> None:
        """Tell before_write by when the next write must be done: when that changed, or REBOUND seconds after the
        last time. Not before every event: it sets the client socket's timeout (a call into the socket layer),
        and a bound at most REBOUND seconds old lets a write overrun it by at most that much."""
        until = min(self.limits.deadline, shutdown_deadline())
        now = self.clock()
        if until != self._bound_until or now - self._bound_at >= REBOUND:
            self._bound_until, self._bound_at = until, now
            self.before_write(until)  # type: ignore[misc]  # only called when set

    def _drain(self) -> None:
        """on_client_disconnect = "drain": read the rest (for its usage), bounded by the deadline."""
        exchange = self.accepted.exchange
        lifecycle.drain_started()
        try:
            while (now := self.clock()) < (until := min(self.limits.deadline, shutdown_deadline())):
                message = exchange.next(until - now)
                if message is None or message.kind != "event":
                    break
                for event in self.resumer.feed(message.value) if self.resumer is not None else (message.value,):
                    self.relay.feed(event)
                self.stats.usage = self.relay.usage
        except Exception:  # the thread's last stop: logged (redacted) here; the record is still written
            log.exception("draining the upstream after a client disconnect failed")
        finally:
            exchange.close()
            try:
                self.on_finish(self.stats)
            finally:
                lifecycle.drain_finished()


UNREADABLE_MESSAGE = "The upstream sent an event the gateway could not read."
UNREADABLE = (TypeError, ValueError, AttributeError, KeyError, IndexError)  # a malformed event, as a parser sees it


def _relayed(feed: Callable[[bytes], Any], event: bytes) -> Any:
    """The relay's output for one upstream event; an event it cannot read or translate (a malformed
    upstream) breaks the stream like a transport error, so it still ends well-formed."""
    try:
        return feed(event)
    except UNREADABLE as exc:
        log.warning("an upstream event could not be relayed: %s: %s", type(exc).__name__, exc)
        raise StreamBroken("upstream_stream_error", UNREADABLE_MESSAGE) from exc


def _timeout(now: float, deadline: float) -> StreamBroken:
    if now >= deadline:
        return StreamBroken("deadline_exceeded", "The request deadline passed mid-stream.")
    if now >= shutdown_deadline():
        return StreamBroken("server_shutdown", SHUTDOWN_MESSAGE)
    return StreamBroken("upstream_idle_timeout", "The upstream sent no event within idle_timeout.")
