"""Thin views: authenticate, validate, route, admit, hand over to the upstream client and writer."""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from app.api.responses import write_response
from app.api.validation import ENDPOINTS, parse_payload, read_body
from app.auth import Identity, authenticate
from app.errors import ApiError
from app.requestlog import RequestLine
from app.services.headers import forwardable
from app.services.router import route
from app.services.upstream import UpstreamCall
from app.state import gateway
from app.storage.db import StorageError
from app.storage.limits import LimitExceeded

bp = Blueprint("api", __name__)
log = logging.getLogger("sluice.api")


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
    body = read_body(
        request.stream, request.content_length, request.headers.get("Content-Type"), gw.config.gateway.max_body_bytes
    )
    payload = parse_payload(body, kind)
    line.model, line.streaming = payload["model"], bool(payload.get("stream"))
    upstreams = route(gw.config.upstreams, line.model)
    if not upstreams or not g.identity.allows(line.model):
        raise _model_not_found(line.model)
    _admit(line, g.identity)
    usage_body = _usage_body(payload) if line.streaming else None
    call = UpstreamCall(
        "POST", ENDPOINTS[kind].path, body, line.streaming, upstreams, line.request_id,
        client_headers=forwardable(request.headers.items()), usage_body=usage_body,
    )  # fmt: skip
    settings = gw.config.gateway
    attempts = gw.client.start(call, deadline=line.started_at + settings.deadline)
    # A stream waits one heartbeat interval for its first event before committing the 200;
    # a plain request waits until its answer (or the deadline).
    until = time.time() + settings.heartbeat_interval if line.streaming else attempts.deadline
    outcome = attempts.advance(until=until)
    return write_response(attempts, outcome, line, settings, injected_usage=usage_body is not None)


def _admit(line: RequestLine, identity: Identity) -> None:
    """Count the request against the key's limits (managed keys only; the master key has none)."""
    if identity.key is None:
        return
    try:
        line.admission = gateway().limiter.admit(identity.key, time.time())
    except LimitExceeded as exc:
        line.window = exc.window
        raise ApiError(
            429, exc.message, code=exc.code, headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
        ) from None
    line.window = line.admission.window


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
