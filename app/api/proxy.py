"""The one request path every proxied endpoint takes: read, check, route, admit, send, write.

A view names its dialect (app/dialects/) and calls `proxy(dialect)`; everything an API
does differently is in the dialect.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flask import Response, g, request

from app.api.responses import write_response
from app.api.validation import read_body
from app.auth import Identity
from app.dialects.base import Dialect
from app.errors import ApiError
from app.requestlog import RequestLine
from app.services import admission
from app.services.attempts import Accepted, Attempts, Failed
from app.services.calls import UpstreamCall
from app.services.headers import forwardable
from app.services.lifecycle import SHUTDOWN_MESSAGE, shutdown_deadline
from app.services.router import route
from app.state import gateway

# A plain request's wait looks this often (seconds) for a graceful stop, which SIGTERM starts
# while it waits; well within lifecycle.SHUTDOWN_MARGIN, so the 503 is written in time.
SHUTDOWN_POLL = 0.5


def proxy(dialect: Dialect) -> Response:
    gw = gateway()
    line: RequestLine = g.line
    identity: Identity = g.identity
    line.endpoint = dialect.name
    settings = gw.config.gateway
    slot_expires = line.started_at + settings.deadline + admission.SLOT_MARGIN  # a slot outlives its request
    body = admission.read_body(gw.limiter, line, identity, slot_expires, _reader(dialect, settings.max_body_bytes))
    client_request = dialect.parse(body, request.headers.get("Content-Type"))
    line.model, line.streaming = client_request.payload["model"], client_request.streaming
    upstreams = route(gw.config.upstreams, line.model)
    if not upstreams or not identity.allows(line.model):
        raise model_not_found(line.model)
    admission.admit(gw.limiter, line, identity, slot_expires)
    call = UpstreamCall(
        "POST", dialect.legs(client_request), line.streaming, upstreams, line.request_id,
        client_headers=forwardable(request.headers.items()),
    )  # fmt: skip
    attempts = gw.client.start(call, deadline=line.started_at + settings.deadline)
    if line.streaming and dialect.sse:  # an event stream waits one heartbeat for its first event before the 200
        outcome = attempts.advance(until=time.time() + settings.heartbeat_interval)
    else:
        outcome = _plain_answer(attempts)
    return write_response(attempts, outcome, line, settings)


def _reader(dialect: Dialect, limit: int) -> Callable[[], bytes]:
    def read() -> bytes:
        return read_body(request.stream, request.content_length, request.headers.get("Content-Type"), limit, dialect)

    return read


def _plain_answer(attempts: Attempts) -> Accepted | Failed:
    """Wait for the answer until the deadline, or until a graceful stop's deadline: then a 503
    (the attempt is abandoned), so the client hears why and the request is accounted for."""
    while True:
        outcome = attempts.advance(until=min(time.time() + SHUTDOWN_POLL, attempts.deadline, shutdown_deadline()))
        if outcome is not None:
            return outcome
        if time.time() >= shutdown_deadline():
            attempts.abandon("server_shutdown")
            return Failed(ApiError(503, SHUTDOWN_MESSAGE, code="server_shutdown", headers={"Retry-After": "1"}))


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )
