"""One upstream HTTP exchange, run by a reader thread (a greenlet under gevent).

The request's own greenlet never blocks on the upstream socket: it waits on this
exchange's queue with a timeout of its choosing, so it can send heartbeats, enforce
first-byte, idle and whole-request deadlines, and walk away at any moment. The reader
puts what it sees on a bounded queue (so a slow client slows the upstream read, not
memory) and ends when the stream ends, breaks, or the exchange is closed.

Once a stream is accepted there are no heartbeats left to send and every wait that passes
ends it, so under gevent the reader hands the rest of the stream over (`take_over`): the
request's greenlet then reads the upstream itself, with the wait as the socket's timeout,
and no event crosses between two greenlets.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import requests
import urllib3

from app.errors import StreamBroken
from app.services import sse
from app.services.sse import Splitter

QUEUE_EVENTS = 64
READ_SIZE = 64 * 1024
MAX_EVENT_BYTES = 8 * 1024 * 1024
MAX_LINE = 4096  # a chunk size line or trailer line longer than this is a broken body
MAX_TRAILERS = 100
ERROR_BODY_LIMIT = 64 * 1024  # bytes read from a failed attempt's body
# A plain (non-streamed) answer is held whole in memory before it is sent: a misbehaving
# upstream (or a small compressed body that inflates) must not make the worker hold any
# amount. Large embeddings batches reach tens of MiB, so the bound is generous.
PLAIN_BODY_LIMIT = 256 * 1024 * 1024
log = logging.getLogger("sluice.upstream")


class Message(NamedTuple):
    """`kind`: status (a 2xx response, headers read), failed ((response, error body) of a non-2xx),
    event, end, body, broken or error. A tuple: one is made per relayed event."""

    kind: str
    value: Any = None


class Exchange:
    def __init__(self, send: Callable[[], requests.Response], *, streaming: bool, sse: bool = True) -> None:
        self._send, self._streaming, self._sse = send, streaming, sse
        self._queue: queue.Queue[Message] = _new_queue()
        self._closed = threading.Event()
        # Set after each message is queued, when one side waits on several exchanges at once (hedging):
        # it clears the event, polls each exchange with next(0), then waits on the event.
        self.waker: threading.Event | None = None
        self.response: requests.Response | None = None
        self._handing_over = False  # take_over() was asked: the reader hands its events over after its next one
        self._direct: Direct | None = None  # once handed over: the upstream read in the caller's greenlet
        self._reader = _spawn(self._run)

    def next(self, timeout: float) -> Message | None:
        """The next message, or None when `timeout` seconds pass first.

        A message already queued is taken without a timer: a timed wait (a timer object, and under
        threads a condition) is only set up when the queue is empty.
        """
        if self._direct is not None:
            return self._direct.next(timeout)
        try:
            message = self._queue.get_nowait()
        except queue.Empty:
            if timeout <= 0:
                return None
            try:
                message = self._queue.get(timeout=timeout)
            except queue.Empty:
                return None
        if message.kind == "direct":
            # The reader has ended: its greenlet and the queue (2-3 KiB a stream) are let go while the stream lives.
            self._direct, self._reader, self._queue = message.value, None, _HANDED_OVER
            return self._direct.next(timeout)
        return message

    def take_over(self) -> None:
        """From the reader's next event on, read the upstream in the caller's greenlet (gevent only): no
        hand-off between greenlets and no queue per event. A stream's accepted exchange asks for it; after
        that, next() blocks in the upstream read itself, and a next() that times out ends the exchange."""
        if hasattr(self._reader, "kill") and self._streaming and self._sse:
            self._handing_over = True

    def close(self) -> None:
        """Stop reading and close the upstream connection (safe to call twice).

        Under gevent the reader greenlet is killed wherever it waits (connecting, reading
        headers or events), and closes the connection on its way out; closing the response
        from here while it reads would be a reentrant call on the same buffered reader.
        """
        if self._closed.is_set():
            return
        self._closed.set()
        response, reader = self.response, self._reader
        if reader is None or (hasattr(reader, "kill") and reader.dead):
            # No reader any more (it handed the stream over, or ended, e.g. with a status message nobody read).
            if response is not None:
                response.close()
        elif hasattr(reader, "kill"):
            reader.kill(block=False)
        elif response is not None:
            _shutdown(response)  # a plain thread blocked in a read wakes up and closes it itself
            if not reader.is_alive():
                response.close()
        while True:  # unblock a reader waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _put(self, message: Message) -> bool:
        if self._closed.is_set():
            return False
        try:
            self._queue.put_nowait(message)  # the usual case: room, so no timer
        except queue.Full:
            if not self._put_waiting(message):
                return False
        waker = self.waker
        if waker is not None:
            waker.set()
        return True

    def _put_waiting(self, message: Message) -> bool:
        """Wait for room (the client reads slower than the upstream sends), checking for close twice a second."""
        while not self._closed.is_set():
            try:
                self._queue.put(message, timeout=0.5)
            except queue.Full:
                continue
            return True
        return False

    def _run(self) -> None:
        try:
            response = self._send()
        except requests.RequestException as exc:
            self._put(Message("error", exc))
            return
        except Exception as exc:
            log.exception("upstream request could not be sent: %s", type(exc).__name__)
            self._put(Message("error", requests.RequestException(type(exc).__name__)))
            return
        self.response = response
        if self._closed.is_set():
            response.close()
            return
        try:
            if not 200 <= response.status_code < 300:
                # The (bounded) error body is read here too, so the waiting side never blocks on it.
                self._put(Message("failed", (response, read_bounded(response, ERROR_BODY_LIMIT))))
                response.close()
                return
            if self._put(Message("status", response)):
                self._read(response)
        except Exception as exc:
            if not self._closed.is_set():
                log.exception("upstream reader failed: %s", type(exc).__name__)
                self._put(Message("broken", StreamBroken("upstream_stream_error", "The upstream exchange failed.")))
        finally:
            if self._closed.is_set():
                response.close()

    def _read(self, response: requests.Response) -> None:
        try:
            if self._streaming and not self._sse:  # e.g. audio: the bytes as they arrive, whatever their type
                for chunk in iter_chunks(lambda size: response.raw.read1(size, decode_content=True)):
                    if not self._put(Message("event", chunk)):
                        return
                self._put(Message("end"))
            elif is_event_stream(response) or (self._streaming and not _is_json(response)):
                events = iter_events(body_reader(response))
                for event in events:
                    if not self._put(Message("event", event)):
                        return
                    if not self._handing_over:
                        # The waiting side takes this event before the reader reads on: a first event reaches
                        # the client without waiting behind the read of the events that came with it.
                        _pass()
                    elif (direct := Direct.over(response, events)) is not None:
                        self._put(Message("direct", direct))  # `events` is left suspended between two events
                        return
                self._put(Message("end"))
            else:
                self._put(Message("body", _read_plain(response)))
        except StreamBroken as exc:
            self._put(Message("broken", exc))
        except requests.RequestException as exc:
            self._put(Message("error", exc))


class _HandedOver:
    """The queue of an exchange whose reader handed the stream over: always empty, as nothing is put any more."""

    def get_nowait(self) -> Message:
        raise queue.Empty


_HANDED_OVER: Any = _HandedOver()


class Direct:
    """The rest of an event stream, read by whoever calls next(): the reader's suspended event iterator, each
    read bounded by that call's wait (a timed-out read leaves the HTTP framing undefined, so it ends the stream:
    next() answers None from then on). `bound` arms the wait around each read (a Clock)."""

    def __init__(self, events: Iterator[bytes], backstop: float | None, bound: Any) -> None:
        self.events, self.backstop, self.bound = events, backstop, bound
        self.ended = False
        self.last: Message | None = None  # what ended the stream (None: a wait passed), given again if asked

    @classmethod
    def over(cls, response: requests.Response, events: Iterator[bytes]) -> Direct | None:
        """None when the upstream socket cannot be reached (the reader then goes on as before)."""
        sock = getattr(getattr(response.raw, "connection", None), "sock", None)
        return None if sock is None else cls(events, sock.gettimeout(), Clock(sock))

    def next(self, timeout: float) -> Message | None:
        if self.ended:
            return self.last
        wait = timeout if self.backstop is None else min(timeout, self.backstop)  # the read timeout still holds
        if wait <= 0:
            return None
        bound = self.bound
        try:
            bound.arm(wait)
            try:
                return Message("event", next(self.events))
            finally:
                bound.disarm()
        except StopIteration:
            self.last = Message("end")
        except StreamBroken as exc:
            mine = exc.code == "upstream_timeout" and wait < (self.backstop or math.inf)
            self.last = None if mine else Message("broken", exc)  # mine: the caller's wait passed, not the backstop
        except requests.RequestException as exc:
            self.last = Message("error", exc)
        except Exception as exc:  # as in Exchange._run: logged, and a broken stream
            log.exception("upstream reader failed: %s", type(exc).__name__)
            self.last = Message("broken", StreamBroken("upstream_stream_error", "The upstream exchange failed."))
        self.ended = True
        bound.close()
        return self.last


class Clock:
    """Bounds each read with one timer of the event loop, restarted around every read: with a timeout on the
    socket, gevent builds a Timeout, its timer and a timeout exception for every wait of every read (about a
    tenth of a worker's time at 4,000 events/s, and objects that live across each wait: docs/benchmarks.md).
    When the timer fires, the read gets the socket timeout the socket's own would have raised."""

    def __init__(self, sock: Any) -> None:
        sock.settimeout(None)  # gevent waits without a timer of its own; urllib3 sets it again for the next request
        self.timer: Any = None
        self.after: float | None = None

    def arm(self, wait: float) -> None:
        from gevent import get_hub, getcurrent

        if wait != self.after:
            if self.timer is not None:
                self.timer.close()
            # Repeating, for again(): it starts the timer afresh with the whole `repeat`, from the loop's
            # current time. start() after stop() would go on from where the last read left it (libev keeps
            # the time left on stop), so the reads of a stream would share one wait between them.
            self.timer, self.after = get_hub().loop.timer(wait, wait), wait
        self.timer.again(_expire, getcurrent())

    def disarm(self) -> None:
        self.timer.stop()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.close()
            self.timer = None


def _expire(reader: Any) -> None:
    """The read's time is up: raise the socket timeout in the greenlet waiting in it (the only place it can
    be: the event loop runs timers only while that greenlet waits, and it waits only in the socket read)."""
    reader.throw(TimeoutError("timed out"))


def body_reader(response: requests.Response) -> Callable[[int], bytes]:
    """read(size) of the body's next bytes (b"" at its end), as they arrive: a chunked, unencoded body (what
    upstreams stream events as) straight from the connection's buffer (`Chunked`), else through urllib3."""
    chunked = Chunked.over(response)
    if chunked is not None:
        return chunked.read
    return lambda size: response.raw.read1(size, decode_content=True)


class Chunked:
    """A chunked HTTP body's data, read from the connection's buffered reader with one scan of each chunk's
    size line: urllib3 and http.client reach the same reads through ten Python frames per read (a fifth of a
    worker's time per relayed event, docs/benchmarks.md). At the end the connection goes back to the pool as
    urllib3 would put it; a body cut short leaves it to be closed with the response."""

    def __init__(self, response: requests.Response, fp: Any) -> None:
        self.raw, self.fp = response.raw, fp
        self.left = 0  # bytes left in the current chunk
        self.crlf = False  # the CRLF after the current chunk is still to be read

    @classmethod
    def over(cls, response: requests.Response) -> Chunked | None:
        """None unless nothing of the body was read yet and it is chunked, without content coding."""
        raw = response.raw
        message = getattr(raw, "_fp", None)  # http.client's response
        fp = getattr(message, "fp", None)
        fresh = getattr(message, "chunk_left", 0) is None and not getattr(raw, "_fp_bytes_read", 1)
        coded = response.headers.get("Content-Encoding", "identity").strip().lower() not in ("identity", "")
        decoder = getattr(raw, "_decoder", True)  # urllib3's content decoder; an unknown urllib3: its own path
        if fp is None or not getattr(message, "chunked", False) or not fresh or coded or decoder is not None:
            return None
        return cls(response, fp)

    def read(self, size: int) -> bytes:
        left = self.left
        if not left:
            left = self._next_chunk()
            if not left:
                return b""
        data = self.fp.read1(min(left, size))  # what is buffered, else one receive
        if not data:
            raise urllib3.exceptions.ProtocolError("The upstream closed the connection inside a chunk.")
        self.left = left - len(data)
        self.crlf = True
        return data

    def _next_chunk(self) -> int:
        fp = self.fp
        if fp is None:
            return 0  # ended
        if self.crlf and fp.read(2) != b"\r\n":
            raise urllib3.exceptions.ProtocolError("A chunk did not end with CRLF.")
        self.crlf = False
        line = fp.readline(MAX_LINE + 1)
        try:
            size = int(line.split(b";", 1)[0], 16)  # int() ignores the line's surrounding whitespace (CRLF)
        except ValueError:
            raise urllib3.exceptions.ProtocolError(f"Bad chunk size line ({len(line)} bytes).") from None
        if size < 0 or len(line) > MAX_LINE:
            raise urllib3.exceptions.ProtocolError("Bad chunk size line.")
        if size == 0:
            self._end()
        return size

    def _end(self) -> None:
        """The last chunk: read the trailer section, then hand the connection back as urllib3 would."""
        fp = self.fp
        for _ in range(MAX_TRAILERS):
            line = fp.readline(MAX_LINE + 1)
            if line in (b"\r\n", b"\n", b""):
                break
        else:
            raise urllib3.exceptions.ProtocolError("Too many trailer lines.")
        self.fp = None
        self.raw._fp.close()  # http.client's response: its body is read
        self.raw.release_conn()


def iter_events(raw_read: Callable[[int], bytes]) -> Iterator[bytes]:
    """Yield each SSE event as soon as its terminator arrives; raise StreamBroken on transport errors.

    An event over MAX_EVENT_BYTES ends the stream instead of growing without bound.
    """
    splitter = Splitter()
    for chunk in iter_chunks(raw_read):
        yield from splitter.feed(chunk)
        if splitter.pending > MAX_EVENT_BYTES:
            raise StreamBroken("upstream_stream_error", f"An upstream event exceeded {MAX_EVENT_BYTES} bytes.")
    tail = splitter.tail()
    if tail is not None:
        if not whole_event(tail):  # the connection closed inside an event: never pass on half of it
            raise StreamBroken("upstream_stream_error", "The upstream connection closed in the middle of an event.")
        yield tail  # a final event without its blank line: complete it


def whole_event(raw: bytes) -> bool:
    """Whether an event that came without its blank line is whole: its data (if any) is `[DONE]` or JSON."""
    try:
        data = sse.parse(raw).data
        if data is not None and data.strip() != "[DONE]":
            json.loads(data)
    except ValueError:  # also a UnicodeDecodeError: cut inside a multi-byte character
        return False
    return True


def iter_chunks(raw_read: Callable[[int], bytes]) -> Iterator[bytes]:
    """The body's bytes as they arrive; transport errors become StreamBroken (with how it broke)."""
    while True:
        try:
            chunk = raw_read(READ_SIZE)
        except (urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
            raise StreamBroken("upstream_timeout", "The upstream stopped sending events (read timeout).") from exc
        except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
            raise StreamBroken("upstream_stream_error", "The upstream connection broke mid-stream.") from exc
        if not chunk:
            return
        yield chunk


def _read_plain(response: requests.Response, limit: int | None = None) -> bytes:
    """The whole answer, decoded; StreamBroken past `limit` bytes (PLAIN_BODY_LIMIT by default)."""
    limit = PLAIN_BODY_LIMIT if limit is None else limit
    try:
        body = response.raw.read(limit + 1, decode_content=True) or b""
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise requests.ConnectionError(exc) from exc  # as response.content would
    if len(body) > limit:
        raise StreamBroken("upstream_error", f"The upstream's answer is larger than {limit} bytes.")
    return body


def _shutdown(response: requests.Response) -> None:
    sock = getattr(getattr(response.raw, "connection", None), "sock", None)
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed


def read_bounded(response: requests.Response, limit: int) -> bytes:
    """At most `limit` bytes of an error body; a broken body reads as empty."""
    try:
        return response.raw.read(limit, decode_content=True) or b""
    except (urllib3.exceptions.HTTPError, OSError):
        return b""


def _new_queue() -> queue.Queue[Message]:
    """gevent's own queue under gunicorn's gevent worker (compiled, one hub switch per hand-off), else the
    standard one. The patched standard queue works too, but builds a condition and a lock per wait in Python."""
    if _gevent_patched():
        from gevent.queue import Queue

        return Queue(maxsize=QUEUE_EVENTS)  # type: ignore[return-value]  # raises queue.Empty / queue.Full too
    return queue.Queue(maxsize=QUEUE_EVENTS)


def _gevent_patched() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return bool(monkey.is_module_patched("socket"))


def _pass() -> None:
    """Let the other greenlets that are ready run first (gevent), as a thread's scheduler would."""
    if _gevent_patched():
        import gevent

        gevent.sleep(0)


def _spawn(target: Callable[[], None]) -> Any:
    """A greenlet when gevent has patched sockets (gunicorn's gevent worker), else a thread."""
    if _gevent_patched():
        import gevent

        return gevent.spawn(target)
    thread = threading.Thread(target=target, name="sluice-exchange", daemon=True)
    thread.start()
    return thread


def is_event_stream(response: requests.Response) -> bool:
    return response.headers.get("Content-Type", "").lower().startswith("text/event-stream")


def _is_json(response: requests.Response) -> bool:
    return "json" in response.headers.get("Content-Type", "").lower()
