"""Thin views: authenticate, validate, route, admit, hand over to the upstream client and writer."""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from app.api.responses import write_response
from app.api.slots import read_holding_slot
from app.api.validation import ENDPOINTS, parse_payload, read_body
from app.auth import Identity, authenticate
from app.errors import ApiError
from app.requestlog import RequestLine
from app.services.attempts import Accepted, Attempts, Failed
from app.services.headers import forwardable
from app.services.lifecycle import shutdown_deadline
from app.services.router import route
from app.services.streaming import SHUTDOWN_MESSAGE
from app.services.upstream import UpstreamCall
from app.state import gateway
from app.storage.db import StorageError
from app.storage.keys import ApiKey
from app.storage.limits import SLOT_MARGIN, Limiter, LimitExceeded

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
    identity: Identity | None = g.get("identity")
    line: RequestLine = g.line
    if identity is not None and identity.key is not None and line.window is None:
        try:
            line.window = gateway().limiter.peek(identity.key, time.time())
        except StorageError as exc:
            log.warning("no rate-limit headers for request_id=%s: %s", line.request_id, exc)
    return response


@bp.post("/chat/completions")
def chat_completions() -> Response:
    """Proxy a chat completion, streamed or not."""
    return _proxy("chat")


@bp.post("/completions")
def completions() -> Response:
    """Proxy a legacy text completion, streamed or not."""
    return _proxy("completions")


@bp.post("/embeddings")
def embeddings() -> Response:
    """Proxy an embeddings request."""
    return _proxy("embeddings")


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


def _proxy(kind: str) -> Response:
    gw = gateway()
    line: RequestLine = g.line
    line.endpoint = kind
    settings = gw.config.gateway
    slot_expires = line.started_at + settings.deadline + SLOT_MARGIN  # a slot outlives its request
    body = _read(line, g.identity.key, slot_expires)
    payload = parse_payload(body, kind)
    line.model, line.streaming = payload["model"], bool(payload.get("stream"))
    upstreams = route(gw.config.upstreams, line.model)
    if not upstreams or not g.identity.allows(line.model):
        raise _model_not_found(line.model)
    _admit(line, g.identity, slot_expires)
    usage_body = _usage_body(payload) if line.streaming else None
    call = UpstreamCall(
        "POST", ENDPOINTS[kind].path, body, line.streaming, upstreams, line.request_id,
        client_headers=forwardable(request.headers.items()), usage_body=usage_body,
    )  # fmt: skip
    attempts = gw.client.start(call, deadline=line.started_at + settings.deadline)
    if line.streaming:  # a stream waits one heartbeat interval for its first event before committing the 200
        outcome = attempts.advance(until=time.time() + settings.heartbeat_interval)
    else:
        outcome = _plain_answer(attempts)
    return write_response(attempts, outcome, line, settings, injected_usage=usage_body is not None)


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


def _read(line: RequestLine, key: ApiKey | None, slot_expires: float) -> bytes:
    """The request body; a key with max_parallel takes its slot if the body is slow to arrive."""
    gw = gateway()

    def read() -> bytes:
        content_type, limit = request.headers.get("Content-Type"), gw.config.gateway.max_body_bytes
        return read_body(request.stream, request.content_length, content_type, limit)

    if key is None or key.max_parallel is None:
        return read()
    return read_holding_slot(read, lambda: _hold(gw.limiter, line, key, slot_expires))


def _hold(limiter: Limiter, line: RequestLine, key: ApiKey, expires_at: float) -> None:
    """Take the key's slot while its body arrives (in a helper greenlet: no flask globals here)."""
    try:
        line.admission = limiter.hold(key, time.time(), expires_at)
    except LimitExceeded as exc:
        raise _refused(line, exc) from None


def _admit(line: RequestLine, identity: Identity, expires_at: float) -> None:
    """Count the request against the key's limits (managed keys only; the master key has none).
    A slot held while the body arrived is kept in `line.admission` (released at the end) either way."""
    if identity.key is None:
        return
    try:
        line.admission = gateway().limiter.admit(identity.key, time.time(), expires_at, held=line.admission)
    except LimitExceeded as exc:
        raise _refused(line, exc) from None
    line.window = line.admission.window


def _refused(line: RequestLine, exc: LimitExceeded) -> ApiError:
    line.window = exc.window
    retry_after = str(max(1, math.ceil(exc.retry_after)))
    return ApiError(429, exc.message, code=exc.code, headers={"Retry-After": retry_after})


def _usage_body(payload: dict[str, Any]) -> bytes | None:
    """The body that also asks for a usage chunk, or None when the client asked for one itself."""
    options = payload.get("stream_options") or {}
    if options.get("include_usage") is True:
        return None
    return json.dumps({**payload, "stream_options": {**options, "include_usage": True}}).encode()


def _model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )
