"""Thin views: authenticate, validate, route, hand over to the upstream client and writer."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request

from app.api.responses import write_response
from app.api.validation import ENDPOINTS, parse_payload, read_body
from app.auth import authenticate
from app.errors import ApiError
from app.services.router import route
from app.services.upstream import UpstreamCall
from app.state import gateway

bp = Blueprint("api", __name__)


@bp.before_request
def _authenticate() -> None:
    g.line.key = authenticate(request.headers.get("Authorization"), gateway().settings.master_key).name


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
    """List the models this gateway routes."""
    return jsonify({"object": "list", "data": gateway().catalog.models(g.line.request_id)})


@bp.get("/models/<path:model_id>")
def get_model(model_id: str) -> Response:
    """Describe one routed model."""
    model = gateway().catalog.find(model_id, g.line.request_id)
    if model is None:
        raise _model_not_found(model_id)
    return jsonify(model)


def _proxy(kind: str) -> Response:
    gw = gateway()
    endpoint = ENDPOINTS[kind]
    body = read_body(
        request.stream, request.content_length, request.headers.get("Content-Type"), gw.config.gateway.max_body_bytes
    )
    payload = parse_payload(body, kind)
    line = g.line
    line.model, line.streaming = payload["model"], bool(payload.get("stream"))
    upstreams = route(gw.config.upstreams, line.model)
    if not upstreams:
        raise _model_not_found(line.model)
    call = UpstreamCall(
        "POST", endpoint.path, body, line.streaming, upstreams, line.request_id, client_headers=dict(request.headers)
    )
    return write_response(gw.client.send(call), line)


def _model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )
