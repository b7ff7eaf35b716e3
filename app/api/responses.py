"""The response writer: an attempt outcome becomes a streamed or a plain client response."""

from __future__ import annotations

import time

from flask import Response, request

from app.config import GatewayConfig
from app.requestlog import RequestLine
from app.services import metrics
from app.services.attempts import Accepted, Attempts, Failed
from app.services.headers import client_response_headers
from app.services.streaming import StreamBody, StreamLimits, StreamStats
from app.services.usage import usage_from_body

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
    *,
    injected_usage: bool = False,
) -> Response:
    """Stream (committed now, or already waiting behind heartbeats), return a body, or raise the error."""
    line.attempts = attempts.records  # the same list: attempts made after the commit show up too
    line.upstream = ",".join(dict.fromkeys(a.upstream for a in attempts.records)) or "-"
    if isinstance(outcome, Failed):
        raise outcome.error
    if isinstance(outcome, Accepted) and outcome.body is not None:
        return _plain(outcome, line)
    headers = dict(SSE_HEADERS)
    if outcome is not None:
        headers.update(client_response_headers(outcome.response.headers.items()))
        headers.update({k: v for k, v in SSE_HEADERS.items() if k != "Content-Type"})

    client_socket = request.environ.get("gunicorn.socket")
    before_write = None
    if client_socket is not None:
        # A client that stops reading must not hold the stream (and its connection) past the
        # deadline, when its max_parallel slot expires: each write gets only the time left.
        def before_write(until: float) -> None:
            client_socket.settimeout(max(1.0, until - time.time()))

    def finish(stats: StreamStats) -> None:
        if client_socket is not None:
            client_socket.settimeout(None)  # gunicorn reuses the connection for the next request
        line.usage = stats.usage or {}
        line.first_byte = stats.first_event_at
        line.upstream = ",".join(dict.fromkeys(a.upstream for a in attempts.records)) or "-"
        try:
            line.finish(200, stats.outcome, stats.bytes_sent)
        finally:
            metrics.ACTIVE_STREAMS.dec()

    line.deferred = True  # the stream's end finishes the line
    limits = StreamLimits(
        heartbeat_interval=gateway.heartbeat_interval,
        idle_timeout=_idle_timeout(outcome, attempts, gateway),
        deadline=attempts.deadline,
        drain=gateway.on_client_disconnect == "drain",
    )
    hide = injected_usage and all(u.inject_usage for u in attempts.call.upstreams)
    metrics.ACTIVE_STREAMS.inc()
    body = StreamBody(attempts, outcome, finish, hide_usage=hide, limits=limits, before_write=before_write)
    return Response(body, status=200, headers=headers)


def _plain(outcome: Accepted, line: RequestLine) -> Response:
    outcome.exchange.close()
    headers = client_response_headers(outcome.response.headers.items())
    if "json" in headers.get("Content-Type", ""):
        line.usage = usage_from_body(outcome.body or b"") or {}
    line.first_byte = time.monotonic()
    return Response(outcome.body, status=outcome.response.status_code, headers=headers)


def _idle_timeout(outcome: Accepted | None, attempts: Attempts, gateway: GatewayConfig) -> float:
    upstream = outcome.upstream if outcome is not None else attempts.call.upstreams[0]
    return upstream.idle_timeout or gateway.idle_timeout
