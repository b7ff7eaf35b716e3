"""Dashboard sign-in: the session cookie, CSRF tokens, the password check and its throttle.

The Flask session is a signed cookie holding a CSRF token and, once signed in, a random
session id whose hash must be in the shared store (so logout ends it in every worker).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from datetime import timedelta

from flask import Flask, Request, g, request, session
from flask.sessions import SecureCookieSessionInterface
from werkzeug.security import check_password_hash

from app.state import Gateway

SESSION_TTL = 12 * 3600.0  # absolute lifetime of a sign-in
USER = "admin"


class DashboardSessionInterface(SecureCookieSessionInterface):
    """`Secure` on the cookie exactly when this request came over HTTPS.

    `request.is_secure` honours X-Forwarded-Proto only within SLUICE_TRUSTED_PROXIES
    (ProxyFix is installed with that many hops, or not at all).
    """

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(request) and request.is_secure


def setup_sessions(app: Flask, secret_key: str | None) -> None:
    if secret_key:
        # A key of its own, derived from SLUICE_SECRET_KEY: the token-encryption key never signs cookies.
        app.secret_key = hmac.new(secret_key.encode(), b"sluice dashboard session", hashlib.sha256).hexdigest()
    app.config.update(
        SESSION_COOKIE_NAME="sluice_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PATH="/dashboard",
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=SESSION_TTL),
    )
    app.session_interface = DashboardSessionInterface()


def csrf_token() -> str:
    """This session's CSRF token (created on first use)."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def csrf_ok(req: Request) -> bool:
    expected = session.get("csrf")
    given = req.form.get("csrf_token") or req.headers.get("X-CSRF-Token") or ""
    return bool(expected) and hmac.compare_digest(given.encode(), str(expected).encode())


def signed_in(gw: Gateway) -> bool:
    """Whether this request carries a live sign-in; looked up once per request (the body limit
    asks before the dashboard's guard does)."""
    if "signed_in" not in g:
        sid = session.get("sid")
        g.signed_in = isinstance(sid, str) and gw.admin_sessions.is_valid(sid, time.time(), _password_mark(gw))
    return g.signed_in


def _password_mark(gw: Gateway) -> str:
    """Which password a session signed in under (see Settings.admin_password_mark)."""
    settings = gw.settings
    if settings.admin_password_mark:
        return settings.admin_password_mark
    return hashlib.sha256((settings.admin_password_hash or "").encode()).hexdigest()[:48]


def password_ok(gw: Gateway, password: str) -> bool:
    stored = gw.settings.admin_password_hash
    return bool(stored) and check_password_hash(stored, password)  # type: ignore[arg-type]


def sign_in(gw: Gateway) -> None:
    session.clear()
    session.permanent = True
    session["sid"] = gw.admin_sessions.create(time.time(), SESSION_TTL, _password_mark(gw))
    session["csrf"] = secrets.token_urlsafe(32)  # a fresh token after sign-in
    g.pop("signed_in", None)


def sign_out(gw: Gateway) -> None:
    sid = session.get("sid")
    if isinstance(sid, str):
        gw.admin_sessions.end(sid)
    session.clear()
    g.pop("signed_in", None)
