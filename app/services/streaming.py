"""SSE pass-through: frame the upstream's bytes into events, one client write per event.

Runs inside the response generator, after the headers are sent: it takes plain
arguments, never `flask.request`. The upstream response is closed in `finally`,
whether the stream ended, broke, or the client went away (GeneratorExit).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests
import urllib3

from app.errors import error_body
from app.services import lifecycle
from app.services.lifecycle import shutdown_deadline
from app.services.usage import usage_from
from app.storage.db import StorageError

log = logging.getLogger("sluice.streaming")
READ_SIZE = 64 * 1024
MAX_EVENT_BYTES = 8 * 1024 * 1024
DONE = b"data: [DONE]\n\n"
_SEPARATORS = (b"\r\n\r\n", b"\n\n", b"\r\r")


class StreamBroken(Exception):
    """The upstream stream failed after the commit; `code` names how."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class StreamStats:
    """What the log line and usage record need to know about a finished stream."""

    events: int = 0
    bytes_sent: int = 0
    outcome: str = "ok"
    usage: dict[str, int] | None = None
    first_event_at: float | None = None  # time.monotonic() of the first write
    started: bool = False


def split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Cut complete events (terminator included) off the front of `buffer`."""
    data = bytearray(buffer)
    events = list(_cut_events(data, 0))
    return events, bytes(data)


def _cut_events(buffer: bytearray, start: int) -> Iterator[bytes]:
    """Yield and remove complete events from `buffer`, searching from `start` on."""
    while True:
        cut, size = -1, 0
        for sep in _SEPARATORS:
            index = buffer.find(sep, start)
            if index != -1 and (cut == -1 or index < cut):
                cut, size = index, len(sep)
        if cut == -1:
            return
        event = bytes(buffer[: cut + size])
        del buffer[: cut + size]
        start = 0
        yield event


def iter_events(raw_read: Callable[[int], bytes]) -> Iterator[bytes]:
    """Yield each SSE event as soon as its terminator arrives; raise StreamBroken on transport errors.

    Each read is scanned once (from just before its start), so a large event costs linear
    time; an event over MAX_EVENT_BYTES ends the stream instead of growing without bound.
    """
    buffer = bytearray()
    while True:
        try:
            chunk = raw_read(READ_SIZE)
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
            raise StreamBroken("upstream_timeout", "The upstream stopped sending events (read timeout).") from exc
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
            raise StreamBroken("upstream_stream_error", "The upstream connection broke mid-stream.") from exc
        if not chunk:
            break
        start = max(0, len(buffer) - 3)  # a separator may straddle the previous read
        buffer += chunk
        yield from _cut_events(buffer, start)
        if len(buffer) > MAX_EVENT_BYTES:
            raise StreamBroken("upstream_stream_error", f"An upstream event exceeded {MAX_EVENT_BYTES} bytes.")
    if bytes(buffer).strip():
        yield bytes(buffer) + b"\n\n"  # a final event without its blank line: complete it


def error_event(code: str, message: str) -> bytes:
    body = error_body(message, type="server_error", code=code)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def is_done(event: bytes) -> bool:
    return any(line.startswith(b"data:") and line[5:].strip() == b"[DONE]" for line in event.splitlines())


def usage_event(event: bytes) -> tuple[dict[str, int] | None, bool]:
    """(usage counts, is a usage-only chunk) for one SSE event; cheap for events without usage."""
    if b'"usage"' not in event or b'"usage":null' in event or b'"usage": null' in event:
        return None, False
    payload = b"".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
    try:
        data = json.loads(payload)
    except ValueError:
        return None, False
    usage = usage_from(data)
    return usage, usage is not None and not data.get("choices")


KEEPALIVE = b": keep-alive\n\n"


@dataclass(frozen=True)
class StreamLimits:
    heartbeat_interval: float
    idle_timeout: float
    deadline: float  # absolute time (the clock's)
    drain: bool  # on client disconnect, read the upstream to its end (bounded by deadline)


class StreamBody:
    """The WSGI body of a streamed answer.

    Before acceptance it sends `: keep-alive` comments every heartbeat while `attempts`
    goes on retrying; then it relays the accepted upstream's events, one write each. It
    finishes the request exactly once: at the end, on breakage, or when the server closes
    it (client gone), even if it was never iterated.
    """

    def __init__(
        self,
        attempts: Any,
        accepted: Any,
        on_finish: Callable[[StreamStats], None],
        *,
        hide_usage: bool,
        limits: StreamLimits,
        clock: Callable[[], float] = time.time,
        before_write: Callable[[float], None] | None = None,
    ) -> None:
        self.attempts, self.accepted, self.on_finish = attempts, accepted, on_finish
        self.hide_usage, self.limits, self.clock = hide_usage, limits, clock
        # Told, before each write, by when the write must be done (the deadline or the shutdown's).
        self.before_write = before_write
        self.stats = StreamStats()
        self._draining = False
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
            self.attempts.abandon("client_disconnect")

    def _run(self) -> Iterator[bytes]:
        self.stats.started = True
        saw_done = False
        try:
            if self.accepted is None:
                yield self._written(KEEPALIVE)  # commit now; retries go on behind the heartbeats
                yield from self._wait_for_acceptance()
            for event in self._upstream_events():
                saw_done = saw_done or is_done(event)
                if self._forward(event):
                    yield self._written(event)
            if not saw_done:
                raise StreamBroken("upstream_stream_error", "The upstream stream ended without data: [DONE].")
        except StreamBroken as exc:
            self.stats.outcome = exc.code
            for tail in (error_event(exc.code, exc.message), DONE):
                yield self._written(tail)
        except StorageError as exc:  # the token store failed while retrying behind heartbeats
            log.error("storage unavailable mid-stream: %s", exc)
            self.stats.outcome = "storage_unavailable"
            for tail in (error_event("storage_unavailable", "The gateway's storage is unavailable."), DONE):
                yield self._written(tail)
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

    def _wait_for_acceptance(self) -> Iterator[bytes]:
        while True:
            now = self.clock()
            outcome = self.attempts.advance(until=min(now + self.limits.heartbeat_interval, shutdown_deadline()))
            if outcome is None:
                if self.clock() >= shutdown_deadline():
                    self.attempts.abandon("server_shutdown")
                    raise StreamBroken("server_shutdown", SHUTDOWN_MESSAGE)
                yield self._written(KEEPALIVE)
                continue
            if hasattr(outcome, "error"):
                raise StreamBroken(outcome.error.code or "upstream_error", outcome.error.message)
            self.accepted = outcome
            return

    def _upstream_events(self) -> Iterator[bytes]:
        """The accepted upstream's events: the ones read before acceptance, then the rest as they come."""
        yield from self.accepted.prefix
        exchange = self.accepted.exchange
        upstream = self.accepted.upstream
        idle = (upstream.idle_timeout if upstream is not None else None) or self.limits.idle_timeout
        while True:
            now = self.clock()
            if now >= self.limits.deadline or now >= shutdown_deadline():
                raise _timeout(now, self.limits.deadline)  # also for a client too slow to keep up
            limit = min(now + idle, self.limits.deadline, shutdown_deadline())
            message = exchange.next(limit - now)
            if message is None:
                raise _timeout(self.clock(), self.limits.deadline)
            if message.kind == "event":
                yield message.value
            elif message.kind == "end":
                return
            elif message.kind == "broken":
                raise message.value
            else:
                raise StreamBroken("upstream_stream_error", "The upstream connection broke mid-stream.")

    def _forward(self, event: bytes) -> bool:
        """Record usage; False for the usage chunk Sluice asked for and the client did not."""
        usage, usage_only = usage_event(event)
        if usage is not None:
            self.stats.usage = usage
            if usage_only and self.hide_usage:
                return False
        self.stats.events += 1
        return True

    def _written(self, data: bytes) -> bytes:
        if self.before_write is not None:
            self.before_write(min(self.limits.deadline, shutdown_deadline()))
        if self.stats.first_event_at is None and data is not KEEPALIVE:
            self.stats.first_event_at = time.monotonic()
        self.stats.bytes_sent += len(data)
        return data

    def _drain(self) -> None:
        """on_client_disconnect = "drain": read the rest (for its usage), bounded by the deadline."""
        exchange = self.accepted.exchange
        lifecycle.drain_started()
        try:
            while (now := self.clock()) < (until := min(self.limits.deadline, shutdown_deadline())):
                message = exchange.next(until - now)
                if message is None or message.kind != "event":
                    break
                usage, _ = usage_event(message.value)
                if usage is not None:
                    self.stats.usage = usage
        except Exception:  # the thread's last stop: logged (redacted) here; the record is still written
            log.exception("draining the upstream after a client disconnect failed")
        finally:
            exchange.close()
            try:
                self.on_finish(self.stats)
            finally:
                lifecycle.drain_finished()


SHUTDOWN_MESSAGE = "The gateway is restarting; retry the request."


def _timeout(now: float, deadline: float) -> StreamBroken:
    if now >= deadline:
        return StreamBroken("deadline_exceeded", "The request deadline passed mid-stream.")
    if now >= shutdown_deadline():
        return StreamBroken("server_shutdown", SHUTDOWN_MESSAGE)
    return StreamBroken("upstream_idle_timeout", "The upstream sent no event within idle_timeout.")


def relay(response: Any, on_finish: Callable[[StreamStats], None]) -> Iterator[bytes]:
    """Relay an already-open upstream response (used by tests of the framing and error paths)."""
    from app.services.exchange import Exchange

    exchange = Exchange(lambda: response, streaming=True)
    status = exchange.next(5.0)
    assert status is not None and status.kind == "status"

    class _Accepted:
        prefix: list[bytes] = []
        upstream = None

    accepted = _Accepted()
    accepted.exchange = exchange  # type: ignore[attr-defined]
    limits = StreamLimits(heartbeat_interval=10, idle_timeout=30, deadline=time.time() + 60, drain=False)
    return iter(StreamBody(None, accepted, on_finish, hide_usage=False, limits=limits))
