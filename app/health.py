"""Liveness and readiness probes (no authentication, no secrets)."""

from __future__ import annotations

import time

from flask import Blueprint, Response, jsonify

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
