"""One upstream HTTP exchange, run by a reader thread (a greenlet under gevent).

The request's own greenlet never blocks on the upstream socket: it waits on this
exchange's queue with a timeout of its choosing, so it can send heartbeats, enforce
first-byte, idle and whole-request deadlines, and walk away at any moment. The reader
puts what it sees on a bounded queue (so a slow client slows the upstream read, not
memory) and ends when the stream ends, breaks, or the exchange is closed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from app.services.streaming import StreamBroken, iter_events

QUEUE_EVENTS = 64


@dataclass(frozen=True)
class Message:
    """`kind` is status (the response, headers read), event, end, body, broken or error."""

    kind: str
    value: Any = None


class Exchange:
    def __init__(self, send: Callable[[], requests.Response], *, streaming: bool) -> None:
        self._send, self._streaming = send, streaming
        self._queue: queue.Queue[Message] = queue.Queue(maxsize=QUEUE_EVENTS)
        self._closed = threading.Event()
        self.response: requests.Response | None = None
        self._reader = _spawn(self._run)

    def next(self, timeout: float) -> Message | None:
        """The next message, or None when `timeout` seconds pass first."""
        try:
            return self._queue.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def close(self) -> None:
        """Stop reading and close the upstream connection (safe to call twice).

        Under gevent the reader greenlet is killed wherever it waits (connecting, reading
        headers or events), and closes the connection on its way out; closing the response
        from here while it reads would be a reentrant call on the same buffered reader.
        """
        if self._closed.is_set():
            return
        self._closed.set()
        if hasattr(self._reader, "kill"):
            self._reader.kill(block=False)
        elif self.response is not None and not self._reader.is_alive():
            self.response.close()
        while True:  # unblock a reader waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _put(self, message: Message) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(message, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            response = self._send()
        except requests.RequestException as exc:
            self._put(Message("error", exc))
            return
        self.response = response
        if self._closed.is_set():
            response.close()
            return
        if not self._put(Message("status", response)) or not 200 <= response.status_code < 300:
            return  # the waiting side reads (or discards) a failed attempt's body itself
        try:
            self._read(response)
        finally:
            if self._closed.is_set():
                response.close()

    def _read(self, response: requests.Response) -> None:
        try:
            if is_event_stream(response) or (self._streaming and not _is_json(response)):
                for event in iter_events(lambda size: response.raw.read1(size, decode_content=True)):
                    if not self._put(Message("event", event)):
                        return
                self._put(Message("end"))
            else:
                self._put(Message("body", response.content))
        except StreamBroken as exc:
            self._put(Message("broken", exc))
        except requests.RequestException as exc:
            self._put(Message("error", exc))


def _spawn(target: Callable[[], None]) -> Any:
    """A greenlet when gevent has patched sockets (gunicorn's gevent worker), else a thread."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        monkey = None
    if monkey is not None and monkey.is_module_patched("socket"):
        import gevent

        return gevent.spawn(target)
    thread = threading.Thread(target=target, name="sluice-exchange", daemon=True)
    thread.start()
    return thread


def is_event_stream(response: requests.Response) -> bool:
    return response.headers.get("Content-Type", "").lower().startswith("text/event-stream")


def _is_json(response: requests.Response) -> bool:
    return "json" in response.headers.get("Content-Type", "").lower()
