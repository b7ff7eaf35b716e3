"""Thin views of the Anthropic Messages API, for Claude clients: errors here are Anthropic-shaped."""

from __future__ import annotations

from flask import Response

from app.api.blueprint import dialect_route
from app.api.proxy import answer_locally, proxy
from app.dialects.anthropic_messages import COUNT_TOKENS, MESSAGES, estimate_tokens


@dialect_route("/messages", MESSAGES, methods=["POST"])
def create_message() -> Response:
    """Create a message, streamed or not (passed through to Anthropic upstreams, translated for the others)."""
    return proxy(MESSAGES)


@dialect_route("/messages/count_tokens", COUNT_TOKENS, methods=["POST"])
def count_tokens() -> Response:
    """Count a request's input tokens: an Anthropic upstream counts, else Sluice estimates (README)."""
    return answer_locally(COUNT_TOKENS, lambda payload: {"input_tokens": estimate_tokens(payload)}) or proxy(
        COUNT_TOKENS
    )
