"""A bounded wait for request heads and JSON error pages, for Sluice's gevent worker (app/worker.py).

gunicorn's gevent worker waits for each request's line and headers under one timer,
`keepalive` (75 s here): a client that sends its headers a byte at a time holds a connection
for all of it, and 50 such clients held every SLUICE_WORKER_CONNECTIONS slot. This worker
(HeadWaitMixin) splits the wait the way nginx does:
  - a new connection must deliver its request line and headers within SLUICE_HEADER_TIMEOUT
    (15 s) of being accepted (nginx: client_header_timeout);
  - between requests on a kept-alive connection, idling is allowed for `keepalive` as before
    (nginx's upstream keep-alive relies on it), but once the next request's first byte
    arrives, the rest of its head must follow within SLUICE_HEADER_TIMEOUT.
A wait that runs out closes the connection without an answer, like gunicorn's own keep-alive
timeout. Bodies have their own deadline: [gateway] body_timeout (app/bodylimit.py).

gunicorn answers malformed requests (bad request line, URI or headers too long, unsupported
transfer coding) itself, with an HTML page written by `gunicorn.util.write_error`, which its
worker calls by name with no hook in between; the mixin replaces that function in the worker's
own process with one writing the OpenAI error shape. A Transfer-Encoding with an empty coding in it
(`Transfer-Encoding: `) is a malformed header (400: a request whose codings do not end in chunked,
RFC 9112 6.3), not a coding gunicorn does not know (501). nginx in front answers 501 for it itself.
"""

from __future__ import annotations

import json
import socket
import ssl
from typing import Any

import gevent
from gunicorn import util
from gunicorn.http.errors import InvalidHeader, UnsupportedTransferCoding

_CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


class _WaitOver(BaseException):
    """Ends one wait for a request head. A BaseException, like gevent.Timeout: no parser catches it."""


class RequestWait:
    """The timer of one wait for a request's line and headers (the `with` around gunicorn's parser).

    Idle for up to `idle` seconds, then `head` seconds from the first byte; `fresh` connections
    start with the `head` timer. Running out ends the `with` block quietly: gunicorn then sees
    no request and closes the connection.
    """

    def __init__(self, idle: float, head: float, fresh: bool) -> None:
        self._head = head
        self._expired = _WaitOver()
        self._in_head = fresh
        self._over = False
        self._timer = gevent.Timeout(head if fresh else idle, self._expired)

    def __enter__(self) -> RequestWait:
        self._timer.start()
        return self

    def data_arrived(self) -> None:
        # Not once the head is parsed: a timer started while the body is read would later
        # interrupt the request itself.
        if not self._in_head and not self._over:
            self._in_head = True
            self._timer.close()
            self._timer = gevent.Timeout(self._head, self._expired)
            self._timer.start()

    def __exit__(self, typ: Any, value: BaseException | None, tb: Any) -> bool:
        self._over = True
        self._timer.close()
        return value is self._expired


class WatchedSocket:
    """A client socket that tells the current RequestWait when bytes arrive; the rest passes through."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.wait: RequestWait | None = None
        self.waits = 0

    def recv(self, size: int, *flags: int) -> bytes:
        data = self._sock.recv(size, *flags)
        if data and self.wait is not None:
            self.wait.data_arrived()
        return data

    def send(self, data: Any, *flags: int) -> int:  # every body write: named, not found by __getattr__
        return self._sock.send(data, *flags)

    def sendall(self, data: Any, *flags: int) -> None:
        self._sock.sendall(data, *flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class HeadWaitMixin:
    """For a subclass of gunicorn's GeventWorker: RequestWait around each request head, JSON errors."""

    header_timeout = 15.0
    cfg: Any

    def init_process(self) -> None:
        from app.config import load_settings

        self.header_timeout = float(load_settings().header_timeout)
        self._sockets: dict[Any, WatchedSocket] = {}
        util.write_error = write_json_error  # see the module docstring: gunicorn has no hook for it
        super().init_process()  # type: ignore[misc]

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        if isinstance(client, ssl.SSLSocket):  # TLS in gunicorn: left as gunicorn handles it
            super().handle(listener, client, addr)  # type: ignore[misc]
            return
        watched = WatchedSocket(client)
        current = gevent.getcurrent()
        self._sockets[current] = watched
        try:
            super().handle(listener, watched, addr)  # type: ignore[misc]
        finally:
            del self._sockets[current]

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        if isinstance(exc, UnsupportedTransferCoding) and _empty_coding(exc.hdr):
            exc = InvalidHeader("TRANSFER-ENCODING", req=req)
        super().handle_error(req, client, addr, exc)  # type: ignore[misc]

    def timeout_ctx(self) -> Any:
        watched = self._sockets.get(gevent.getcurrent())
        if watched is None:
            return super().timeout_ctx()  # type: ignore[misc]
        wait = RequestWait(self.cfg.keepalive, self.header_timeout, fresh=watched.waits == 0)
        watched.waits += 1
        watched.wait = wait
        return wait


def _empty_coding(value: object) -> bool:
    """Whether a Transfer-Encoding value has an empty element (gunicorn's parser calls that an unknown coding)."""
    return isinstance(value, str) and any(not coding.strip(" \t") for coding in value.split(","))


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own error answers (`util.write_error`), in the OpenAI error shape."""
    message = f"{reason}: {mesg}" if mesg else reason
    kind = "server_error" if status_int >= 500 else "invalid_request_error"
    code = _CODES.get(status_int, "bad_request" if status_int < 500 else "internal_error")
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)
