"""The admin JSON API (/admin/api/...), authenticated by the master key as a bearer token.

No cookies are involved, so no CSRF token is needed. Errors are OpenAI-shaped.
"""

from __future__ import annotations

import hmac
from dataclasses import asdict
from time import time
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from app.auth import bearer_token
from app.errors import ApiError, error_response
from app.jsontext import JsonError, loads_object
from app.services.admin import Admin, AdminError
from app.state import gateway

bp = Blueprint("admin_api", __name__)


@bp.before_request
def _authenticate() -> None:
    master = gateway().settings.master_key
    presented = bearer_token(request.headers.get("Authorization"))
    if not master:
        raise ApiError(401, "The admin API needs SLUICE_MASTER_KEY to be set.", code="admin_disabled")
    if presented is None or not hmac.compare_digest(presented.encode(), master.encode()):
        raise ApiError(
            401, "The admin API takes the master key as 'Authorization: Bearer <key>'.", code="invalid_api_key"
        )
    g.line.key = "master"
    g.admin = Admin(gateway(), actor="admin-api")


@bp.errorhandler(AdminError)
def _admin_error(exc: AdminError) -> Response:
    g.line.outcome = "admin_error"
    return error_response(
        ApiError(exc.status, exc.message, param=exc.param, code=_CODES.get(exc.status, "invalid_value"))
    )


_CODES = {404: "not_found", 409: "conflict"}


def _body() -> dict[str, Any]:
    """The JSON object sent, parsed as strictly as API bodies (app/jsontext.py)."""
    try:
        return loads_object(request.get_data(cache=False), allow_nul=False)  # every string may be stored
    except JsonError as exc:
        raise ApiError(400, exc.message, param=exc.param, code="invalid_request_error") from None


def _only(data: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ApiError(400, f"Unknown field '{unknown[0]}'.", param=unknown[0], code="invalid_value")
    return data


KEY_FIELDS = {"name", "rpm", "tpm", "models", "max_parallel", "monthly_tokens", "expires_at"}


@bp.get("/keys")
def list_keys() -> Response:
    """List client keys (never their values)."""
    return jsonify({"object": "list", "data": g.admin.list_keys()})


@bp.post("/keys")
def create_key() -> tuple[Response, int]:
    """Create a key; the response carries its value, shown this once."""
    data = _only(_body(), KEY_FIELDS)
    key, secret = g.admin.create_key(data.pop("name", None), **data)
    return jsonify({**key.public(time()), "key": secret}), 201


@bp.patch("/keys/<key_id>")
def update_key(key_id: str) -> Response:
    """Change a key's limits, models, expiry, name or enabled flag."""
    data = _only(_body(), KEY_FIELDS | {"enabled"})
    return jsonify(g.admin.update_key(key_id, **data).public(time()))


@bp.delete("/keys/<key_id>")
def revoke_key(key_id: str) -> Response:
    """Revoke a key for good."""
    return jsonify(g.admin.revoke_key(key_id).public(time()))


@bp.get("/tokens")
def list_tokens() -> Response:
    """List upstream tokens, masked, with their state (healthy, cooling, auto_disabled, disabled, removed)."""
    return jsonify({"object": "list", "data": g.admin.list_tokens()})


@bp.post("/tokens")
def add_token() -> tuple[Response, int]:
    """Add a run-time upstream token (stored encrypted; never echoed back)."""
    data = _only(_body(), {"upstream", "token"})
    return jsonify(g.admin.add_token(data.get("upstream"), data.get("token"))), 201


@bp.patch("/tokens/<token_id>")
def update_token(token_id: str) -> Response:
    """Enable or disable an upstream token."""
    data = _only(_body(), {"enabled"})
    return jsonify(g.admin.set_token_enabled(token_id, data.get("enabled")))


@bp.delete("/tokens/<token_id>")
def remove_token(token_id: str) -> Response:
    """Remove a token (a config token stays removed until re-enabled)."""
    g.admin.remove_token(token_id)
    return jsonify({"id": token_id, "deleted": True})


@bp.post("/tokens/<token_id>/validate")
def validate_token(token_id: str) -> Response:
    """Probe the token's upstream with it (GET /models): status and latency, never the token."""
    result = g.admin.validate_token(token_id)
    return jsonify({"id": token_id, **asdict(result)})


@bp.get("/upstreams")
def list_upstreams() -> Response:
    """List upstreams with their effective user agent and extra headers."""
    return jsonify({"object": "list", "data": g.admin.list_upstreams()})


@bp.get("/health")
def health() -> Response:
    """Per upstream: breaker, probe, in flight; per token: state, in flight, ttfe, last error, last probe."""
    return jsonify({"object": "list", "data": g.admin.health()})


@bp.patch("/upstreams/<name>")
def update_upstream(name: str) -> Response:
    """Override an upstream's user agent and/or extra headers (validated like the config file)."""
    data = _only(_body(), {"user_agent", "headers"})
    return jsonify(g.admin.set_overrides(name, **data))


@bp.delete("/upstreams/<name>")
def reset_upstream(name: str) -> Response:
    """Drop the upstream's run-time overrides (back to the config file)."""
    return jsonify(g.admin.reset_overrides(name))


@bp.get("/usage")
def usage() -> Response:
    """Requests and tokens since `since` (24h, 7d, ISO 8601), grouped `by` key|model|upstream|day."""
    rows = g.admin.usage(request.args.get("since", "24h"), request.args.get("by", "key"))
    return jsonify({"object": "list", "data": rows})
