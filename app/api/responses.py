"""The response writer: an upstream result becomes a streamed or a plain client response."""

from __future__ import annotations

import time

from flask import Response

from app.requestlog import RequestLine
from app.services.accounting import usage_from_body
from app.services.headers import client_response_headers
from app.services.streaming import StreamBody, StreamStats
from app.services.upstream import UpstreamResult, is_event_stream

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def write_response(result: UpstreamResult, line: RequestLine, *, injected_usage: bool = False) -> Response:
    """Stream an accepted event stream, return a read body, or raise the result's error."""
    line.attempts = result.attempts
    line.upstream = ",".join(dict.fromkeys(a.upstream for a in result.attempts)) or "-"
    if result.error is not None:
        raise result.error
    response = result.response
    assert response is not None and result.upstream is not None  # send() returns a response or an error
    headers = client_response_headers(response.headers.items())
    if is_event_stream(response):
        line.deferred = True  # the stream's end finishes the line

        def finish(stats: StreamStats) -> None:
            line.usage = stats.usage or {}
            line.first_byte = stats.first_event_at
            line.finish(response.status_code, stats.outcome, stats.bytes_sent)

        headers.update(SSE_HEADERS)
        hide_usage = injected_usage and result.upstream.inject_usage
        return Response(StreamBody(response, finish, hide_usage), status=response.status_code, headers=headers)
    try:
        content = response.content
    finally:
        response.close()
    if "json" in headers.get("Content-Type", ""):
        line.usage = usage_from_body(content) or {}
    line.first_byte = time.monotonic()
    return Response(content, status=response.status_code, headers=headers)
