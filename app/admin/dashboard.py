"""The admin dashboard (/dashboard): server-rendered pages over the Admin service.

Every state change is a POST carrying the session's CSRF token; every page is
autoescaped, served with a strict Content-Security-Policy and never shows a secret in
full (client keys once, at creation; upstream tokens only masked).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, flash, g, redirect, render_template, request, session, url_for

from app.admin import login
from app.admin.charts import bar_list, column_chart
from app.services.admin import Admin, AdminError, parse_since
from app.services.overview import RANGES, overview
from app.state import gateway
from app.storage.usage import GROUPS, audit_entries

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard", template_folder="templates", static_folder="static")
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
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


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
    wait = gw.login_throttle.retry_after(address, now)
    if wait > 0:
        message = f"Too many failed sign-ins from your address. Try again in {int(wait) + 1} seconds."
        return render_template("dashboard/login.html", error=message), 429, {"Retry-After": str(int(wait) + 1)}
    admin = Admin(gw, actor=f"dashboard:{login.USER}")
    if not login.password_ok(gw, request.form.get("password", "")):
        gw.login_throttle.failed(address, now)
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
    """Only a path on this dashboard (no scheme, no host): no open redirect."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/dashboard") or "\\" in target:
        return None
    return target


# pages
@bp.get("")
def overview_page() -> str:
    """Request rate, errors, time to first byte, tokens; live streams."""
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
                ("b", [_p(b.ttfb, 95) for b in view.buckets]),
                ("a", [_p(b.ttfb, 50) for b in view.buckets]),
            ],
        ),  # fmt: skip
        column_chart("Tokens", labels, [("a", [b.tokens for b in view.buckets])]),
    ]
    return render_template("dashboard/overview.html", view=view, charts=charts, ranges=RANGES)


def _p(values: list[float], q: float) -> float | None:
    from app.services.overview import percentile

    return percentile(values, q)


def _bucket_label(start: float, range_name: str) -> str:
    return datetime.fromtimestamp(start, UTC).strftime("%H:%M" if range_name == "1h" else "%d %H:%M")


@bp.get("/upstreams")
def upstreams_page(error: str | None = None, status: int = 200) -> tuple[str, int]:
    """Upstreams with their tokens (masked) and state."""
    tokens = g.admin.list_tokens()
    upstreams = g.admin.list_upstreams()
    for upstream in upstreams:
        upstream["tokens"] = [t for t in tokens if t["upstream"] == upstream["name"] and t["state"] != "removed"]
        upstream["removed"] = [t for t in tokens if t["upstream"] == upstream["name"] and t["state"] == "removed"]
        upstream["tokenless"] = not _config(upstream["name"]).tokens
    return render_template("dashboard/upstreams.html", upstreams=upstreams, now=time.time(), error=error), status


def _config(name: str):  # type: ignore[no-untyped-def]
    return next(u for u in gateway().config.upstreams if u.name == name)


@bp.post("/tokens")
def add_token() -> Response | tuple[str, int]:
    """Add a run-time token (stored encrypted; never echoed back)."""
    form = request.form

    def add() -> str:
        return f"Token {g.admin.add_token(form.get('upstream'), form.get('token'))['id']} added."

    return _act(upstreams_page, add)


@bp.post("/tokens/<token_id>/<action>")
def token_action(token_id: str, action: str) -> Response | tuple[str, int]:
    """Enable, disable, remove or validate an upstream token."""
    actions: dict[str, Callable[[], str]] = {
        "enable": lambda: (g.admin.set_token_enabled(token_id, True), f"Token {token_id} enabled.")[1],
        "disable": lambda: (g.admin.set_token_enabled(token_id, False), f"Token {token_id} disabled.")[1],
        "remove": lambda: (g.admin.remove_token(token_id), f"Token {token_id} removed.")[1],
        "validate": lambda: _validated(token_id),
    }
    if action not in actions:
        return upstreams_page(error=f"Unknown action {action!r}.", status=404)
    return _act(upstreams_page, actions[action])


def _validated(token_id: str) -> str:
    result = g.admin.validate_token(token_id)
    verdict = "valid" if result.ok else "NOT valid"
    return f"Token {token_id} is {verdict}: {result.detail} in {result.latency_ms:.0f} ms."


@bp.post("/upstreams/<name>")
def update_upstream(name: str) -> Response | tuple[str, int]:
    """Override the upstream's user agent and extra headers (one "Name: value" per line)."""
    form = request.form

    def change() -> str:
        headers = parse_header_lines(form.get("headers", ""))
        g.admin.set_overrides(name, user_agent=form.get("user_agent", "").strip() or None, headers=headers)
        return f"Upstream {name} updated."

    return _act(upstreams_page, change)


def parse_header_lines(text: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise AdminError(400, f"Header line {number} must look like 'Name: value'.", "headers")
        headers[name.strip()] = value.strip()
    return headers


@bp.get("/keys")
def keys_page(error: str | None = None, status: int = 200, created: tuple[Any, str] | None = None) -> tuple[str, int]:
    """Client keys with their state and last day's usage."""
    usage = {row["group"]: row for row in g.admin.usage("24h", "key")}
    keys = g.admin.list_keys()
    return render_template("dashboard/keys.html", keys=keys, usage=usage, error=error, created=created), status


@bp.post("/keys")
def create_key() -> tuple[str, int]:
    """Create a key and show its value, this once."""
    form = request.form
    try:
        options = {f: _int_field(form, f) for f in ("rpm", "tpm", "max_parallel", "monthly_tokens")}
        if form.get("models", "").strip():
            options["models"] = form["models"]
        if form.get("expires_at", "").strip():
            options["expires_at"] = form["expires_at"].strip()
        key, secret = g.admin.create_key(form.get("name"), **options)
    except AdminError as exc:
        return keys_page(error=exc.message, status=exc.status)
    return keys_page(created=(key.public(time.time()), secret), status=201)


def _int_field(form: Any, name: str) -> int | None:
    raw = form.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise AdminError(400, f"'{name}' must be a positive whole number or empty.", name)
    return int(raw)


@bp.post("/keys/<key_id>/<action>")
def key_action(key_id: str, action: str) -> Response | tuple[str, int]:
    """Enable, disable or revoke a client key."""
    actions: dict[str, Callable[[], str]] = {
        "enable": lambda: f"Key {g.admin.update_key(key_id, enabled=True).name} enabled.",
        "disable": lambda: f"Key {g.admin.update_key(key_id, enabled=False).name} disabled.",
        "revoke": lambda: f"Key {g.admin.revoke_key(key_id).name} revoked.",
    }
    if action not in actions:
        return keys_page(error=f"Unknown action {action!r}.", status=404)
    return _act(keys_page, actions[action])


@bp.get("/usage")
def usage_page() -> str:
    """Usage per key, model and upstream over a range, and the top models."""
    range_name = request.args.get("range", "24h")
    if range_name not in USAGE_RANGES:
        range_name = "24h"
    since = parse_since(range_name, time.time())
    tables = {by: gateway().usage.summary(since, by) for by in GROUPS if by != "day"}
    top = gateway().stats.top_models(since)
    chart = bar_list("Top models by requests", [(row["model"], row["requests"]) for row in top])
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
    entries = audit_entries(gateway().db, 200, int(before) if before.isdigit() else None)
    return render_template("dashboard/audit.html", entries=entries)


def _act(page: Callable[..., tuple[str, int]], action: Callable[[], str]) -> Response | tuple[str, int]:
    """Run a state change: flash its result and go back to `page` (POST-redirect-GET), or show the error."""
    try:
        message = action()
    except AdminError as exc:
        return page(error=exc.message, status=exc.status)
    flash(message)
    return redirect(url_for(f"dashboard.{page.__name__}"), 303)


root = Blueprint("root", __name__)


@root.get("/")
def index() -> Response:
    """The dashboard is the front page."""
    return redirect(url_for("dashboard.overview_page"))
