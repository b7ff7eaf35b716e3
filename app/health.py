"""Liveness and readiness probes (no authentication, no secrets) and /metrics (bearer token)."""

from __future__ import annotations

import hmac
import time

from flask import Blueprint, Response, jsonify, request

from app.auth import bearer_token
from app.errors import ApiError
from app.services import metrics
from app.state import gateway

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: 200 while the process serves."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Readiness: the config is loaded and at least one upstream has a usable token."""
    gw = gateway()
    now = time.time()
    usable = [u.name for u in gw.config.upstreams if gw.pool.usable_count(u.name, now) > 0]
    status = 200 if usable else 503
    return jsonify({"status": "ready" if usable else "no_upstream_available", "usable_upstreams": len(usable)}), status


@bp.get("/metrics")
def metrics_view() -> Response:
    """Prometheus metrics; bearer SLUICE_METRICS_TOKEN or the master key."""
    settings = gateway().settings
    presented = bearer_token(request.headers.get("Authorization")) or ""
    allowed = [t for t in (settings.metrics_token, settings.master_key) if t]
    if not any(hmac.compare_digest(presented.encode(), t.encode()) for t in allowed):
        raise ApiError(401, "Send SLUICE_METRICS_TOKEN (or the master key) as a bearer token.", code="invalid_api_key")
    return Response(metrics.render(), mimetype="text/plain; version=0.0.4")
