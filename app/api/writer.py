"""The response writer: an attempt outcome becomes a streamed or a plain client response."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Response, request

from app.config import GatewayConfig
from app.errors import ApiError
from app.requestlog import RequestLine
from app.services import metrics
from app.services.attempts import Accepted, Attempts, Failed
from app.services.headers import client_response_headers
from app.services.lifecycle import shutdown_deadline
from app.services.streaming import StreamBody, StreamLimits, StreamStats

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def write_response(
    attempts: Attempts,
    outcome: Accepted | Failed | None,
    line: RequestLine,
    gateway: GatewayConfig,
    keepalive: bytes | None,
    on_accept: Callable[[Accepted], None] | None = None,
) -> Response:
    """Stream (committed now, or already waiting behind heartbeats), return a body, or raise the error.
    `on_accept` learns of the accepted answer (now, or when a stream committed early finds one)."""
    line.attempts = attempts.records  # the same list: attempts made after the commit show up too
    line.upstream = ",".join(dict.fromkeys(a.upstream for a in attempts.records)) or "-"
    if isinstance(outcome, Failed):
        raise outcome.error
    if isinstance(outcome, Accepted) and on_accept is not None:
        try:
            on_accept(outcome)
        except BaseException:  # e.g. the store failed: the answer is not written, its attempt is over
            attempts.finish()
            raise
    client = ClientSocket(request.environ.get("gunicorn.socket"))
    if isinstance(outcome, Accepted) and outcome.body is not None:
        return _plain(outcome, line, client, attempts)
    events = keepalive is not None  # else a raw body (audio) passed through as it arrives
    line.deferred = True  # the stream's end finishes the line
    metrics.ACTIVE_STREAMS.inc()
    body = StreamBody(
        attempts, outcome, _stream_finish(line, attempts, client), limits=_limits(outcome, attempts, gateway),
        before_write=client.bound, keepalive=keepalive,
        on_accept=on_accept if outcome is None else None,
    )  # fmt: skip
    # Passed through as it is: gunicorn iterates the body's own generator (its bytes need no encoding, and it
    # closes itself), not werkzeug's two wrappers around it, a generator step and a call fewer per event.
    return Response(body, status=200, headers=_stream_headers(outcome, attempts, events), direct_passthrough=True)


def _stream_headers(outcome: Accepted | None, attempts: Attempts, events: bool) -> dict[str, str]:
    """The upstream's allowed headers, the SSE ones, and the leg's own (committed early: the first leg's,
    which every leg of a request shares but for the upstream's own headers)."""
    headers = dict(SSE_HEADERS) if events else {}
    if outcome is None:
        call = attempts.call
        headers.update(call.first_leg().headers)
        return headers
    headers.update(client_response_headers(outcome.response.headers.items()))
    headers.update({k: v for k, v in SSE_HEADERS.items() if k != "Content-Type"})
    headers.update(outcome.leg.headers)
    return headers


def _stream_finish(line: RequestLine, attempts: Attempts, client: ClientSocket) -> Callable[[StreamStats], None]:
    def finish(stats: StreamStats) -> None:
        attempts.finish()  # the accepted attempt leaves the in-flight counts
        client.reset()
        line.usage = stats.usage or {}
        line.first_byte = stats.first_event_at
        line.resumes = stats.resumes
        line.upstream = ",".join(dict.fromkeys(a.upstream for a in attempts.records)) or "-"
        try:
            line.finish(200, stats.outcome, stats.bytes_sent)
        finally:
            metrics.ACTIVE_STREAMS.dec()

    return finish


def _limits(outcome: Accepted | None, attempts: Attempts, gateway: GatewayConfig) -> StreamLimits:
    return StreamLimits(
        heartbeat_interval=gateway.heartbeat_interval,
        idle_timeout=_idle_timeout(outcome, attempts, gateway),
        deadline=attempts.deadline,
        drain=gateway.on_client_disconnect == "drain",
        max_resumes=gateway.max_resumes,
    )


class ClientSocket:
    """The client's connection (gunicorn's socket; None under the test client).

    A client that stops reading must not hold its connection (and its max_parallel slot,
    which expires at the deadline) past the deadline: each write gets only the time left.
    """

    def __init__(self, sock: Any) -> None:
        self.sock = sock

    def bound(self, until: float) -> None:
        """The next write must be done by `until` (at least a second from now)."""
        if self.sock is not None:
            self.sock.settimeout(max(1.0, until - time.time()))

    def reset(self) -> None:
        if self.sock is not None:
            self.sock.settimeout(None)  # gunicorn reuses the connection for the next request


class PlainBody:
    """The WSGI body of a plain answer (under gunicorn), each write bounded by the deadline or the shutdown's.

    It finishes the request exactly once: when the body but its last byte has been written
    (the server asks for more), or when the server closes it (the write failed or timed out,
    the client went away). Until then the key's slot stays taken, as for a stream. The last
    byte goes out after: a client sees its answer complete only once the slot is released
    and the tokens counted, so its next request never finds its own slot still taken.
    """

    def __init__(self, data: bytes, deadline: float, client: ClientSocket, on_end: Callable[[bool], None]) -> None:
        self.data, self.deadline, self.client, self.on_end = data, deadline, client, on_end
        self.ended = False

    def __iter__(self) -> Iterator[bytes]:
        head, tail = self.data[:-1], self.data[-1:]
        if head:
            self.client.bound(min(self.deadline, shutdown_deadline()))
            yield head
        self._end(written=True)
        if tail:
            self.client.bound(min(self.deadline, shutdown_deadline()))
            yield tail

    def close(self) -> None:
        self.client.reset()  # gunicorn closes the body after its last write, or after a failed one
        self._end(written=not self.data)

    def _end(self, *, written: bool) -> None:
        if not self.ended:
            self.ended = True
            self.on_end(written)


def _plain(outcome: Accepted, line: RequestLine, client: ClientSocket, attempts: Attempts) -> Response:
    """A plain answer; the accepted attempt stays in flight until the body is written (or the write fails)."""
    outcome.exchange.close()
    try:
        return _plain_body(outcome, line, client, attempts)
    except BaseException:
        attempts.finish()
        raise


def _plain_body(outcome: Accepted, line: RequestLine, client: ClientSocket, attempts: Attempts) -> Response:
    status = outcome.response.status_code
    headers = client_response_headers(outcome.response.headers.items())
    relay = outcome.leg.relay()
    try:
        data = relay.plain(outcome.body or b"", headers.get("Content-Type", ""))
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:  # a malformed upstream answer
        raise ApiError(502, "The upstream's answer could not be read or translated.", code="upstream_error") from exc
    line.usage = relay.usage or {}
    headers.update(outcome.leg.headers)
    line.first_byte = time.monotonic()
    if client.sock is None:  # not gunicorn (the test client): nothing to bound, after_request finishes the line
        attempts.finish()
        return Response(data, status=status, headers=headers)
    if status not in (204, 304):
        headers["Content-Length"] = str(len(data))  # an iterable body: werkzeug does not count it

    def end(written: bool) -> None:
        attempts.finish()
        if written:
            line.finish_response(status, len(data))
        else:  # the usage is recorded all the same: the upstream generated it
            line.finish(status, "client_disconnect", 0)

    line.deferred = True  # the body's end finishes the line
    return Response(PlainBody(data, attempts.deadline, client, end), status=status, headers=headers)


def _idle_timeout(outcome: Accepted | None, attempts: Attempts, gateway: GatewayConfig) -> float:
    upstream = outcome.upstream if outcome is not None else attempts.call.hop.routes[0].upstream
    return upstream.idle_timeout or gateway.idle_timeout
