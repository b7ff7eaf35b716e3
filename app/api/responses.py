"""The response writer: an upstream result becomes a streamed or a plain client response."""

from __future__ import annotations

from flask import Response

from app.requestlog import RequestLine
from app.services.headers import client_response_headers
from app.services.streaming import StreamStats, relay
from app.services.upstream import UpstreamResult, is_event_stream

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def write_response(result: UpstreamResult, line: RequestLine) -> Response:
    """Stream an accepted event stream, return a read body, or raise the result's error."""
    line.attempts = result.attempts
    line.upstream = ",".join(dict.fromkeys(a.upstream for a in result.attempts)) or "-"
    if result.error is not None:
        raise result.error
    response = result.response
    assert response is not None  # send() returns a response or an error
    headers = client_response_headers(response.headers.items())
    if is_event_stream(response):
        line.deferred = True  # the stream's end emits the line

        def finish(stats: StreamStats) -> None:
            line.emit(response.status_code, stats.outcome, stats.bytes_sent)

        headers.update(SSE_HEADERS)
        return Response(relay(response, finish), status=response.status_code, headers=headers)
    try:
        return Response(response.content, status=response.status_code, headers=headers)
    finally:
        response.close()
