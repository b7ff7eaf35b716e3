"""Dashboard pages that change state: upstreams and their tokens, client keys.

Each action is a POST (the CSRF token is checked in dashboard._guard) that calls the
Admin service, flashes the result and redirects back; an AdminError re-renders the page
with the message and the error's status.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flask import Response, flash, g, redirect, render_template, request, url_for

from app.admin.blueprint import bp
from app.services.admin import LIMIT_MAX, AdminError
from app.state import gateway

Page = tuple[str, int]


@bp.get("/upstreams")
def upstreams_page(error: str | None = None, status: int = 200) -> Page:
    """Upstreams with their breaker, probe and tokens (masked): state, in flight, ttfe, last probe."""
    health = {h["name"]: h for h in g.admin.health()}
    upstreams = g.admin.list_upstreams()
    tokenless = {u.name for u in gateway().config.upstreams if not u.tokens}
    for upstream in upstreams:
        view = health[upstream["name"]]
        upstream["tokens"] = sorted(view["tokens"], key=lambda t: t["state"] == "removed")  # removed ones last
        upstream.update(breaker=view["breaker"], probe=view["probe"], inflight=view["inflight"])
        upstream["tokenless"] = upstream["name"] in tokenless
    return render_template("dashboard/upstreams.html", upstreams=upstreams, error=error), status


@bp.post("/tokens")
def add_token() -> Response | Page:
    """Add a run-time token (stored encrypted; never echoed back)."""

    def add() -> str:
        added = g.admin.add_token(request.form.get("upstream"), request.form.get("token"))
        return f"Token {added['id']} added."

    return _act(upstreams_page, add)


@bp.post("/tokens/<token_id>/<action>")
def token_action(token_id: str, action: str) -> Response | Page:
    """Enable, disable, remove or validate an upstream token."""

    def enable() -> str:
        g.admin.set_token_enabled(token_id, True)
        return f"Token {token_id} enabled."

    def disable() -> str:
        g.admin.set_token_enabled(token_id, False)
        return f"Token {token_id} disabled."

    def remove() -> str:
        g.admin.remove_token(token_id)
        return f"Token {token_id} removed."

    def validate() -> str:
        result = g.admin.validate_token(token_id)
        verdict = "valid" if result.ok else "NOT valid"
        return f"Token {token_id} is {verdict}: {result.detail} in {result.latency_ms:.0f} ms."

    actions = {"enable": enable, "disable": disable, "remove": remove, "validate": validate}
    if action not in actions:
        return upstreams_page(error=f"Unknown action {action!r}.", status=404)
    return _act(upstreams_page, actions[action])


@bp.post("/upstreams/<name>")
def update_upstream(name: str) -> Response | Page:
    """Override the upstream's user agent and extra headers (one "Name: value" per line)."""

    def change() -> str:
        headers = parse_header_lines(request.form.get("headers", ""))
        user_agent = request.form.get("user_agent", "").strip() or None
        g.admin.set_overrides(name, user_agent=user_agent, headers=headers)
        return f"Upstream {name} updated."

    return _act(upstreams_page, change)


@bp.post("/upstreams/<name>/reset")
def reset_upstream(name: str) -> Response | Page:
    """Drop the run-time overrides: back to the config file's user agent and headers."""

    def reset() -> str:
        g.admin.reset_overrides(name)
        return f"Upstream {name} uses the config file's headers again."

    return _act(upstreams_page, reset)


def parse_header_lines(text: str) -> dict[str, str]:
    """The headers textarea ("Name: value" per line, blank lines ignored) as a dict."""
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
def keys_page(error: str | None = None, status: int = 200, created: tuple[Any, str] | None = None) -> Page:
    """Client keys with their state and last day's usage."""
    since = (time.time() // 3600 - 23) * 3600  # the last 24 whole hours, this one included
    usage = {row["group"]: row for row in gateway().stats.usage_by(since, "key")}
    keys = g.admin.list_keys()
    return render_template("dashboard/keys.html", keys=keys, usage=usage, error=error, created=created), status


@bp.post("/keys")
def create_key() -> Page:
    """Create a key and show its value, this once."""
    form = request.form
    try:
        options: dict[str, Any] = {f: _int_field(f) for f in ("rpm", "tpm", "max_parallel", "monthly_tokens")}
        if form.get("models", "").strip():
            options["models"] = form["models"]
        if form.get("expires_at", "").strip():
            options["expires_at"] = form["expires_at"].strip()
        key, secret = g.admin.create_key(form.get("name"), **options)
    except AdminError as exc:
        return keys_page(error=exc.message, status=exc.status)
    return keys_page(created=(key.public(time.time()), secret), status=201)


def _int_field(name: str) -> int | None:
    raw = request.form.get(name, "").strip()
    if not raw:
        return None
    if not (raw.isascii() and raw.isdecimal()) or len(raw) > len(str(LIMIT_MAX[name])):
        # The length is checked first: int() refuses more than 4,300 digits with a ValueError.
        raise AdminError(400, f"'{name}' must be a whole number from 1 to {LIMIT_MAX[name]}, or empty.", name)
    return int(raw)


@bp.post("/keys/<key_id>/<action>")
def key_action(key_id: str, action: str) -> Response | Page:
    """Enable, disable or revoke a client key."""

    def enable() -> str:
        return f"Key {g.admin.update_key(key_id, enabled=True).name} enabled."

    def disable() -> str:
        return f"Key {g.admin.update_key(key_id, enabled=False).name} disabled."

    def revoke() -> str:
        return f"Key {g.admin.revoke_key(key_id).name} revoked."

    actions = {"enable": enable, "disable": disable, "revoke": revoke}
    if action not in actions:
        return keys_page(error=f"Unknown action {action!r}.", status=404)
    return _act(keys_page, actions[action])


def _act(page: Callable[..., Page], action: Callable[[], str]) -> Response | Page:
    """Run a state change: flash its result and go back to `page` (POST-redirect-GET), or show the error."""
    try:
        message = action()
    except AdminError as exc:
        return page(error=exc.message, status=exc.status)
    flash(message)
    return redirect(url_for(f"dashboard.{page.__name__}"), 303)
