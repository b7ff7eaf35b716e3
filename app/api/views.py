"""Thin views of the OpenAI chat family and the model list: each names its dialect and proxies."""

from __future__ import annotations

from flask import Response, g, jsonify

from app.api.blueprint import bp
from app.api.proxy import model_not_found, proxy
from app.dialects.openai_chat import CHAT, COMPLETIONS, EMBEDDINGS
from app.services.router import with_aliases
from app.state import routing


@bp.post("/chat/completions")
def chat_completions() -> Response:
    """Proxy a chat completion, streamed or not."""
    return proxy(CHAT)


@bp.post("/completions")
def completions() -> Response:
    """Proxy a legacy text completion, streamed or not."""
    return proxy(COMPLETIONS)


@bp.post("/embeddings")
def embeddings() -> Response:
    """Proxy an embeddings request."""
    return proxy(EMBEDDINGS)


@bp.get("/models")
def list_models() -> Response:
    """List the models and aliases this gateway routes (those the caller's key may use)."""
    models = [m for m in _models() if g.identity.allows(m["id"])]
    return jsonify({"object": "list", "data": models})


@bp.get("/models/<path:model_id>")
def get_model(model_id: str) -> Response:
    """Describe one routed model or alias."""
    model = next((m for m in _models() if m["id"] == model_id), None)
    if model is None or not g.identity.allows(model_id):
        raise model_not_found(model_id)
    return jsonify(model)


def _models() -> list[dict]:
    snapshot = routing()
    return with_aliases(snapshot.config.models, snapshot.catalog.models(g.line.request_id))
