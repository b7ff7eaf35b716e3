"""SSE pass-through: frame the upstream's bytes into events, one client write per event.

Runs inside the response generator, after the headers are sent: it takes plain
arguments, never `flask.request`. The upstream response is closed in `finally`,
whether the stream ended, broke, or the client went away (GeneratorExit).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import requests
import urllib3

from app.errors import error_body
from app.services.accounting import usage_from

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


def _is_done(event: bytes) -> bool:
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


class StreamBody:
    """The WSGI body of a relayed stream. Finishes the request exactly once: at the end of the
    stream, on breakage, or when the server closes it (client gone), even if never iterated."""

    def __init__(self, response: requests.Response, on_finish: Callable[[StreamStats], None], hide_usage: bool):
        self.response, self.on_finish, self.stats = response, on_finish, StreamStats()
        self._events = _relay(response, self.stats, on_finish, hide_usage)

    def __iter__(self) -> Iterator[bytes]:
        return self._events

    def close(self) -> None:
        self._events.close()
        if not self.stats.started:  # closed before the first read: the generator's finally never ran
            self.response.close()
            self.stats.outcome = "client_disconnect"
            self.on_finish(self.stats)


def relay(response: requests.Response, on_finish: Callable[[StreamStats], None]) -> Iterator[bytes]:
    """A plain generator over the stream (used by tests); the app uses StreamBody."""
    return iter(StreamBody(response, on_finish, hide_usage=False))


def _relay(
    response: requests.Response, stats: StreamStats, on_finish: Callable[[StreamStats], None], hide_usage: bool
) -> Iterator[bytes]:
    """The client's event stream: upstream events as they arrive, an error event on breakage."""
    stats.started = True
    saw_done = False
    try:
        # decode_content: an upstream that ignored Accept-Encoding: identity still reaches
        # the client as plain text (the Content-Encoding header is never passed on).
        for event in iter_events(lambda size: response.raw.read1(size, decode_content=True)):
            saw_done = saw_done or _is_done(event)
            usage, usage_only = usage_event(event)
            if usage is not None:
                stats.usage = usage
                if usage_only and hide_usage:
                    continue
            if stats.first_event_at is None:
                stats.first_event_at = time.monotonic()
            stats.events += 1
            stats.bytes_sent += len(event)
            yield event
        if not saw_done:
            raise StreamBroken("upstream_stream_error", "The upstream stream ended without data: [DONE].")
    except StreamBroken as exc:
        stats.outcome = exc.code
        for tail in (error_event(exc.code, exc.message), DONE):
            stats.bytes_sent += len(tail)
            yield tail
    except GeneratorExit:
        stats.outcome = "client_disconnect"
        raise
    finally:
        response.close()
        on_finish(stats)
