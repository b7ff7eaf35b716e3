"""The API blueprint (mounted at /v1 and /api/v1): every request is authenticated first."""

from __future__ import annotations

import time

from flask import Blueprint, Response, g, request

from app.auth import authenticate
from app.services import admission
from app.state import gateway

bp = Blueprint("api", __name__)


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
