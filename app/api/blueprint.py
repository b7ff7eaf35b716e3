"""The API blueprint (mounted at /v1 and /api/v1): every request is authenticated first.

A route whose errors are not OpenAI-shaped (the Anthropic Messages routes) is declared with
`dialect_route`, so every error on it, even one raised before its view runs (a 401, a 413), is
written by its dialect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, g, request

from app.auth import authenticate
from app.dialects.base import Dialect
from app.services import admission
from app.state import gateway

bp = Blueprint("api", __name__)
PREFIXES = ("/v1", "/api/v1")
ERROR_DIALECTS: dict[str, Dialect] = {}  # full URL rule -> the dialect its errors are written in


def dialect_route(rule: str, dialect: Dialect, **options: Any) -> Callable:
    """`bp.route`, and every error on the route (under each prefix) in `dialect`'s shape, and below it
    (a 404 for /v1/messages/batches, a 405 for GET /v1/messages)."""
    ERROR_DIALECTS.update({prefix + rule: dialect for prefix in PREFIXES})
    return bp.route(rule, **options)


def error_dialect(rule: str | None, path: str) -> Dialect | None:
    """The dialect a request's errors are written in: its route's, or (no route matched) the one of the
    declared route the path falls under; None: the OpenAI shape."""
    if rule is not None and rule in ERROR_DIALECTS:
        return ERROR_DIALECTS[rule]
    under = [r for r in ERROR_DIALECTS if path == r or path.startswith(r + "/")]
    return ERROR_DIALECTS[min(under, key=len)] if under else None


@bp.before_request
def _authenticate() -> None:
    gw = gateway()
    header = request.headers.get("Authorization") or None
    if header is None and request.headers.get("x-api-key"):  # Anthropic clients send the key this way
        header = "Bearer " + request.headers["x-api-key"]
    identity = authenticate(header, gw.settings.master_key, gw.keys, time.time())
    g.identity = identity
    g.line.key, g.line.key_id = identity.name, identity.key.id if identity.key else None


@bp.after_request
def _ratelimit_window(response: Response) -> Response:
    """Managed keys get x-ratelimit-* headers on every response, admitted or not."""
    admission.window(gateway().limiter, g.get("identity"), g.line)
    if request.url_rule is not None and request.url_rule.rule in ERROR_DIALECTS:
        response.headers["request-id"] = g.line.request_id  # as Anthropic's API names it (errors: app/errors.py)
    return response
