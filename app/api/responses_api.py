"""Thin views of the OpenAI Responses API: create (native or translated), and the stored-response calls."""

from __future__ import annotations

from flask import Response

from app.api.blueprint import bp
from app.api.proxy import proxy, proxy_stored
from app.dialects.openai_responses import RESPONSES


@bp.post("/responses")
def create_response() -> Response:
    """Create a response, streamed or not (passed through, or translated onto chat completions)."""
    return proxy(RESPONSES)


@bp.get("/responses/<response_id>")
def retrieve_response(response_id: str) -> Response:
    """Retrieve a stored response from the upstream that created it."""
    return proxy_stored("GET", response_id)


@bp.delete("/responses/<response_id>")
def delete_response(response_id: str) -> Response:
    """Delete a stored response."""
    return proxy_stored("DELETE", response_id)


@bp.post("/responses/<response_id>/cancel")
def cancel_response(response_id: str) -> Response:
    """Cancel a background response."""
    return proxy_stored("POST", response_id, "/cancel")


@bp.get("/responses/<response_id>/input_items")
def list_input_items(response_id: str) -> Response:
    """List a stored response's input items."""
    return proxy_stored("GET", response_id, "/input_items")
