"""gunicorn's response with its head and first body bytes in one send.

gunicorn writes a response's status line and headers with one `sendall` and each body write with
another: a small JSON answer, or a stream's first event, leaves in two system calls and (with
TCP_NODELAY) two segments, the client waiting for the second. Here the first write gathers both and
sends them at once. Every body write is framed as gunicorn frames it and leaves by one `send` where the
socket takes it all (`send_all`); `sendfile` and gunicorn's own error pages are unchanged. app/worker.py
installs it for the worker's requests.
"""

from __future__ import annotations

from typing import Any

from gunicorn.http import wsgi


class FirstWriteResponse(wsgi.Response):
    def write(self, arg: bytes) -> None:
        if self.headers_sent:
            super().write(arg)
            return
        sock, gathered = self.sock, _Gathered()
        self.sock = gathered
        try:
            super().write(arg)  # the head, then (unless there is nothing to send) the framed bytes
        finally:
            self.sock = sock
            if gathered.parts:  # as gunicorn would have sent them, even if writing the body raised
                sock.sendall(b"".join(gathered.parts))

    def _emit_body(self, data: bytes) -> None:
        send_all(self.sock, b"%X\r\n%s\r\n" % (len(data), data) if self.chunked else data)


def send_all(sock: Any, data: bytes) -> None:
    """`sock.sendall(data)`, for a stream's event in one `send`: gevent's sendall asks the kernel for the
    socket's send buffer size and reads the clock on every call, a system call and more per event. What
    the socket did not take (a large write, a full buffer) goes by sendall, bounded by the socket's timeout."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


class _Gathered:
    """Stands in for the client socket during a first write: keeps what gunicorn sends."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def sendall(self, data: Any) -> None:
        self.parts.append(bytes(data))

    def send(self, data: Any) -> int:
        self.sendall(data)
        return len(data)
