"""Thin views: authenticate, validate, route, admit, hand over to the upstream client and writer."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, g, jsonify, request

from app.api.responses import write_response
from app.api.validation import parse_payload, read_body
from app.auth import Identity, authenticate
from app.dialects.base import Dialect
from app.dialects.openai_chat import CHAT, COMPLETIONS, EMBEDDINGS
from app.errors import ApiError
from app.requestlog import RequestLine
from app.services import admission
from app.services.attempts import Accepted, Attempts, Failed
from app.services.calls import UpstreamCall
from app.services.headers import forwardable
from app.services.lifecycle import SHUTDOWN_MESSAGE, shutdown_deadline
from app.services.router import route
from app.state import gateway

bp = Blueprint("api", __name__)
log = logging.getLogger("sluice.api")
# A plain request's wait looks this often (seconds) for a graceful stop, which SIGTERM starts
# while it waits; well within lifecycle.SHUTDOWN_MARGIN, so the 503 is written in time.
SHUTDOWN_POLL = 0.5


@bp.before_request
def _authenticate() -> None:
    gw = gateway()
    identity = authenticate(request.headers.get("Authorization"), gw.settings.master_key, gw.keys, time.time())
    g.identity = identity
    g.line.key, g.line.key_id = identity.name, identity.key.id if identity.key else None


@bp.after_request
def _ratelimit_window(response: Response) -> Response:
    """Managed keys get x-ratelimit-* headers on every response, admitted or not."""
    admission.window(gateway().limiter, g.get("identity"), g.line)
    return response


@bp.post("/chat/completions")
def chat_completions() -> Response:
    """Proxy a chat completion, streamed or not."""
    return _proxy(CHAT)


@bp.post("/completions")
def completions() -> Response:
    """Proxy a legacy text completion, streamed or not."""
    return _proxy(COMPLETIONS)


@bp.post("/embeddings")
def embeddings() -> Response:
    """Proxy an embeddings request."""
    return _proxy(EMBEDDINGS)


@bp.get("/models")
def list_models() -> Response:
    """List the models this gateway routes (those the caller's key may use)."""
    models = [m for m in gateway().catalog.models(g.line.request_id) if g.identity.allows(m["id"])]
    return jsonify({"object": "list", "data": models})


@bp.get("/models/<path:model_id>")
def get_model(model_id: str) -> Response:
    """Describe one routed model."""
    model = gateway().catalog.find(model_id, g.line.request_id)
    if model is None or not g.identity.allows(model_id):
        raise _model_not_found(model_id)
    return jsonify(model)


def _proxy(dialect: Dialect) -> Response:
    gw = gateway()
    line: RequestLine = g.line
    identity: Identity = g.identity
    line.endpoint = dialect.name
    settings = gw.config.gateway
    slot_expires = line.started_at + settings.deadline + admission.SLOT_MARGIN  # a slot outlives its request
    body = admission.read_body(gw.limiter, line, identity, slot_expires, _reader(settings.max_body_bytes))
    payload = parse_payload(body, dialect)
    line.model, line.streaming = payload["model"], bool(payload.get("stream"))
    upstreams = route(gw.config.upstreams, line.model)
    if not upstreams or not identity.allows(line.model):
        raise _model_not_found(line.model)
    admission.admit(gw.limiter, line, identity, slot_expires)
    call = UpstreamCall(
        "POST", dialect.legs(payload, body, line.streaming), line.streaming, upstreams, line.request_id,
        client_headers=forwardable(request.headers.items()),
    )  # fmt: skip
    attempts = gw.client.start(call, deadline=line.started_at + settings.deadline)
    if line.streaming:  # a stream waits one heartbeat interval for its first event before committing the 200
        outcome = attempts.advance(until=time.time() + settings.heartbeat_interval)
    else:
        outcome = _plain_answer(attempts)
    return write_response(attempts, outcome, line, settings)


def _reader(limit: int):
    def read() -> bytes:
        return read_body(request.stream, request.content_length, request.headers.get("Content-Type"), limit)

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


def _model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )
