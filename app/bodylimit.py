"""Bounded request bodies: a size limit per route and a deadline for the whole body to arrive.

Every request's `wsgi.input` is wrapped before Flask sees it. Reads past the route's limit
raise BodyTooLarge (413) and reads after the deadline raise BodyTimeout (408), whoever reads:
Werkzeug's form parser, `get_json`, or the API's own `read_body`. A declared Content-Length
over the limit is refused before anything is read; a chunked body is counted as it arrives
(Werkzeug would cut it off at MAX_CONTENT_LENGTH and parse the prefix).

Limits: the OpenAI API keeps its own, `[gateway] max_body_bytes`, enforced with a precise
message by app/api/validation.read_body. The admin API takes JSON objects of a few KiB (a key's
model list, an upstream's header overrides): 1 MiB leaves two orders of magnitude of room and
still bounds what an unauthenticated client can make a worker read. Dashboard forms are a few
KiB at most (the header-lines textarea): 64 KiB once signed in; before sign-in only the login
form (password, CSRF token, return path) may arrive, so 8 KiB.

The deadline starts when the request's headers are complete and moves on by one second for
every MIN_RATE bytes that have arrived: a slow but steady upload (nginx streams bodies through
unbuffered, so Sluice sees the client's own pace) is never cut, while a client that trickles a
few bytes is cut after `body_timeout`. Under gevent a stalled read is
interrupted with `gevent.Timeout`; elsewhere (tests, a threaded server) the deadline is checked
before each read, so a body that trickles in is still refused once it is late.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from flask import request

from app.errors import ApiError

if TYPE_CHECKING:
    from flask import Flask

API_PREFIXES = ("/v1/", "/api/v1/")
ADMIN_API_LIMIT = 1024 * 1024
DASHBOARD_LIMIT = 64 * 1024
LOGIN_FORM_LIMIT = 8 * 1024
OTHER_LIMIT = 64 * 1024  # /healthz, /metrics, /: nothing there reads a body
_READ_SIZE = 64 * 1024
MIN_RATE = 16 * 1024  # bytes/s: a body arriving at least this fast on average never times out


class BodyTooLarge(ApiError):
    """More bytes arrived than the route allows: 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"Request body too large: the limit is {limit} bytes.", code="request_too_large")


class BodyTimeout(ApiError):
    """The body did not arrive before its deadline: 408. Not an OSError: Werkzeug makes those 400s."""

    def __init__(self, timeout: float) -> None:
        # gunicorn then discards the rest of the body under app/headwait.py's timer for the
        # next request (it ignores an application's Connection: close).
        super().__init__(408, f"The request body did not arrive within {timeout:g} seconds.", code="request_timeout")


def _gevent_timeout(seconds: float, error: BodyTimeout) -> contextlib.AbstractContextManager[Any]:
    """A gevent.Timeout raising `error` when gevent runs the sockets, else nothing to arm."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("socket"):
        return contextlib.nullcontext()
    import gevent

    return gevent.Timeout(seconds, error)


class BoundedInput:
    """`wsgi.input` with a byte limit (None: unlimited here) and a deadline that moves on with
    the bytes received (one second per MIN_RATE bytes)."""

    def __init__(
        self, raw: BinaryIO, deadline: float, timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._raw = raw
        self._deadline = deadline
        self.timeout = timeout
        self._clock = clock
        self.limit: int | None = None
        self.received = 0

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return b"".join(iter(lambda: self.read(_READ_SIZE), b""))
        return self._count(self._timed(self._raw.read, size))

    def readline(self, size: int | None = -1) -> bytes:
        if self.limit is not None and (size is None or size < 0 or size > self.limit + 1 - self.received):
            size = self.limit + 1 - self.received  # a line without an end must not outgrow the limit
        return self._count(self._timed(self._raw.readline, size))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(self)

    def _timed(self, read: Callable[[int], bytes], size: int) -> bytes:
        remaining = self._deadline + self.received / MIN_RATE - self._clock()
        if remaining <= 0:
            raise BodyTimeout(self.timeout)
        with _gevent_timeout(remaining, BodyTimeout(self.timeout)):
            return read(size)

    def _count(self, data: bytes) -> bytes:
        self.received += len(data)
        if self.limit is not None and self.received > self.limit:
            raise BodyTooLarge(self.limit)
        return data


class _BoundInputs:
    """WSGI middleware: wrap each request's input in a BoundedInput whose deadline starts now."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], timeout: float) -> None:
        self.wsgi_app = wsgi_app
        self.timeout = timeout

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        deadline = time.monotonic() + self.timeout
        environ["wsgi.input"] = BoundedInput(environ["wsgi.input"], deadline, self.timeout)
        return self.wsgi_app(environ, start_response)


def limit_for(path: str, signed_in: Callable[[], bool]) -> int | None:
    """The body limit of a route; None for the OpenAI API, which enforces max_body_bytes itself."""
    if path.startswith(API_PREFIXES):
        return None
    if path.startswith("/admin/api/"):
        return ADMIN_API_LIMIT
    if path == "/dashboard" or path.startswith("/dashboard/"):
        return DASHBOARD_LIMIT if signed_in() else LOGIN_FORM_LIMIT
    return OTHER_LIMIT


def _bound_body() -> None:
    """Before any view or form parser: refuse a declared length over the limit, cap the rest."""
    stream = request.environ["wsgi.input"]
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if not isinstance(stream, BoundedInput) or (not request.content_length and not chunked):
        return  # no body to bound
    limit = limit_for(request.path, _signed_in)
    if limit is None:
        return
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(limit)
    stream.limit = limit


def _signed_in() -> bool:
    from app.admin.login import signed_in
    from app.state import gateway

    return signed_in(gateway())


def register_body_limits(app: Flask) -> None:
    """Wrap every request's input (deadline: [gateway] body_timeout) and bound non-API bodies."""
    timeout = app.extensions["sluice"].config.gateway.body_timeout
    app.wsgi_app = _BoundInputs(app.wsgi_app, timeout)  # type: ignore[method-assign]
    app.before_request(_bound_body)  # errors are ApiErrors: OpenAI-shaped by app/errors.py
