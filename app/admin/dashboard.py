"""The admin dashboard (/dashboard): server-rendered pages over the Admin service.

Every state change is a POST carrying the session's CSRF token; every page is
autoescaped, served with a strict Content-Security-Policy and never shows a secret in
full (client keys once, at creation; upstream tokens only masked).
"""

from __future__ import annotations

import posixpath
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, flash, g, redirect, render_template, request, session, url_for

from app.admin import login
from app.admin.blueprint import bp
from app.admin.charts import bar_list, column_chart
from app.config import ConfigError
from app.services.admin import Admin, parse_since
from app.services.overview import RANGES, overview
from app.services.reload import reload_everywhere
from app.state import gateway
from app.storage.usage import audit_entries

USAGE_RANGES = ("1h", "24h", "7d", "30d")
OPEN_ENDPOINTS = ("dashboard.static", "dashboard.login_page", "dashboard.login_submit")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@bp.before_request
def _guard() -> Response | tuple[str, int] | None:
    gw = gateway()
    g.line.key = "dashboard"
    if request.endpoint == "dashboard.static":
        return None
    if not gw.settings.admin_password_hash:
        return render_template("dashboard/disabled.html"), 503
    if request.method == "POST" and not login.csrf_ok(request):
        return render_template("dashboard/message.html", title="Form expired", message=(
            "This form's security token is missing or out of date. Go back, reload the page and try again."
        )), 403  # fmt: skip
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    if not login.signed_in(gw):
        session.pop("sid", None)
        next_page = request.full_path.rstrip("?") if request.method == "GET" else None
        return redirect(url_for("dashboard.login_page", next=next_page))
    g.admin = Admin(gw, actor=f"dashboard:{login.USER}")
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.endpoint != "dashboard.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_context_processor
def _template_globals() -> dict[str, Any]:
    return {"csrf_token": login.csrf_token}


@bp.app_template_filter("when")
def _when(value: float | None) -> str:
    if value is None:
        return "-"
    try:
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):  # a time no calendar here can show
        return f"{value:.0f} (UNIX time)"


@bp.app_template_filter("ms")
def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


# sign-in
@bp.get("/login")
def login_page() -> str:
    """The sign-in form."""
    return render_template("dashboard/login.html", next=_safe_next(request.args.get("next")))


@bp.post("/login")
def login_submit() -> Response | tuple[str, int, dict[str, str]] | tuple[str, int]:
    """Check the password; at most 5 failures per minute per client address."""
    gw, address, now = gateway(), request.remote_addr or "-", time.time()
    wait = gw.login_throttle.admit(address, now)  # counts this attempt as failed until it succeeds
    if wait > 0:
        message = f"Too many failed sign-ins from your address. Try again in {int(wait) + 1} seconds."
        return render_template("dashboard/login.html", error=message), 429, {"Retry-After": str(int(wait) + 1)}
    admin = Admin(gw, actor=f"dashboard:{login.USER}")
    if not login.password_ok(gw, request.form.get("password", "")):
        admin.record("login.failed", address)
        return render_template("dashboard/login.html", error="Wrong password."), 401
    gw.login_throttle.succeeded(address)
    login.sign_in(gw)
    admin.record("login", address)
    return redirect(_safe_next(request.form.get("next")) or url_for("dashboard.overview_page"), 303)


@bp.post("/logout")
def logout() -> Response:
    """End this session everywhere."""
    login.sign_out(gateway())
    g.admin.record("logout", request.remote_addr or "-")
    return redirect(url_for("dashboard.login_page"), 303)


def _safe_next(target: str | None) -> str | None:
    """Only a path on this dashboard (no scheme, no host, no control characters): no open redirect."""
    if not target or "\\" in target or any(ord(c) < 32 or ord(c) == 127 for c in target):
        return None
    parts = urlsplit(target)
    path = posixpath.normpath(parts.path) if parts.path else ""
    if parts.scheme or parts.netloc or not (path == "/dashboard" or path.startswith("/dashboard/")):
        return None
    return path + (f"?{parts.query}" if parts.query else "")


# pages
@bp.get("")
def overview_page(error: str | None = None, status: int = 200) -> tuple[str, int]:
    """Request rate, errors, time to first byte, tokens; live streams; the config in force."""
    range_name = request.args.get("range", "1h")
    if range_name not in RANGES:
        range_name = "1h"
    view = overview(gateway().stats, range_name, time.time())
    labels = [_bucket_label(b.start, range_name) for b in view.buckets]
    minutes = view.bucket_seconds / 60
    charts = [
        column_chart("Requests per minute", labels, [("a", [b.requests / minutes for b in view.buckets])], "{:.1f}"),
        column_chart("Error rate (%)", labels, [("err", [b.error_rate for b in view.buckets])], "{:.1f}"),
        column_chart(
            "Time to first byte p95 / p50 (ms)",
            labels,
            [
                ("b", [b.ttfb_ms(95) for b in view.buckets]),
                ("a", [b.ttfb_ms(50) for b in view.buckets]),
            ],
        ),  # fmt: skip
        column_chart("Tokens", labels, [("a", [b.tokens for b in view.buckets])]),
    ]
    config = gateway().config
    page = render_template(
        "dashboard/overview.html", view=view, charts=charts, ranges=RANGES, records=config.gateway.usage_records,
        config=config, error=error,
    )  # fmt: skip
    return page, status


@bp.post("/reload")
def reload_config() -> Response | tuple[str, int]:
    """Re-read the config file in every worker; an invalid one changes nothing and is shown."""
    try:
        config = reload_everywhere(gateway())
    except ConfigError as exc:
        g.admin.record("config.reload_refused", gateway().config.source)
        return overview_page(error=f"Configuration error, nothing changed: {exc}", status=400)
    g.admin.record("config.reload", config.source)
    flash(f"Config reloaded from {config.source}: {len(config.upstreams)} upstreams, {len(config.models)} models.")
    return redirect(url_for("dashboard.overview_page"), 303)


def _bucket_label(start: float, range_name: str) -> str:
    return datetime.fromtimestamp(start, UTC).strftime("%H:%M" if range_name == "1h" else "%d %H:%M")


@bp.get("/usage")
def usage_page() -> str:
    """Usage per key, model and upstream over a range, and the top models."""
    range_name = request.args.get("range", "24h")
    if range_name not in USAGE_RANGES:
        range_name = "24h"
    since = parse_since(range_name, time.time()) // 3600 * 3600  # whole hours: the roll-up's grain
    tables = {by: gateway().stats.usage_by(since, by) for by in ("key", "model", "upstream")}
    chart = bar_list("Top models by requests", [(row["group"], row["requests"]) for row in tables["model"][:10]])
    return render_template("dashboard/usage.html", tables=tables, chart=chart, range=range_name, ranges=USAGE_RANGES)


@bp.get("/requests")
def requests_page() -> str:
    """The last 200 requests (never bodies or secrets)."""
    rows = gateway().usage.recent(200)
    return render_template("dashboard/requests.html", rows=rows, records=gateway().config.gateway.usage_records)


@bp.get("/audit")
def audit_page() -> str:
    """Every admin action, newest first."""
    before = request.args.get("before", "")
    valid = before.isascii() and before.isdecimal() and len(before) <= 15
    entries = audit_entries(gateway().db, 200, int(before) if valid else None)
    return render_template("dashboard/audit.html", entries=entries)


root = Blueprint("root", __name__)


@root.get("/")
def index() -> Response:
    """The dashboard is the front page."""
    return redirect(url_for("dashboard.overview_page"))
