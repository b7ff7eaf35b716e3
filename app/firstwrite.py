"""gunicorn's response with its head and first body bytes in one send.

gunicorn writes a response's status line and headers with one `sendall` and each body write with
another: a small JSON answer, or a stream's first event, leaves in two system calls and (with
TCP_NODELAY) two segments, the client waiting for the second. Here the first write gathers both and
sends them at once; every later write, `sendfile` and gunicorn's own error pages are unchanged.
app/worker.py installs it for the worker's requests.
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


class _Gathered:
    """Stands in for the client socket during a first write: keeps what gunicorn sends."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def sendall(self, data: Any) -> None:
        self.parts.append(bytes(data))
