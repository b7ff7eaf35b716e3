"""Sluice: an OpenAI-compatible streaming gateway. `create_app()` builds the Flask app.

Imports of Flask, requests and the services happen inside `create_app`, so that
gunicorn's master can read `app.config` without importing ssl before the gevent
worker monkey-patches it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import requests
    from flask import Flask

    from app.config import Config, Settings
    from app.logs import SecretRedactor
    from app.state import Gateway


def create_app(
    config: Config | None = None, settings: Settings | None = None, session: requests.Session | None = None
) -> Flask:
    """Build the app from the environment, or from `config`/`settings`/`session` (tests)."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    from app.admin.login import setup_sessions
    from app.bodylimit import register_body_limits
    from app.config import load_config, load_settings
    from app.errors import register_error_handlers
    from app.flaskapp import SluiceFlask
    from app.requestlog import register_request_line
    from app.state import announce
    from app.textguard import register_text_guard

    settings = settings or load_settings()
    config = config or load_config(settings.config_path, accepted=True)  # what gunicorn's master accepted
    app = SluiceFlask(__name__, static_folder=None)
    if settings.trusted_proxies:
        # Trust X-Forwarded-For/-Proto only as far as the configured number of hops.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]
    gw = build_gateway(config, settings, session)
    app.extensions["sluice"] = gw
    setup_sessions(app, settings.secret_key)
    register_error_handlers(app)
    register_request_line(app, on_end=gw.accounting.finish)
    register_body_limits(app)  # after the request line: a refused body is logged with its id
    register_text_guard(app)  # after the body limits: a form is bounded before it is read
    register_blueprints(app)
    register_cli(app)
    announce(config, settings)
    return app


def build_gateway(config: Config, settings: Settings, session: requests.Session | None) -> Gateway:
    """Storage, token pool, limiter, upstream client and accounting, wired once per process."""
    import atexit
    import os
    import socket
    import time

    from app.logs import setup_logging
    from app.services import metrics
    from app.services.accounting import Accounting
    from app.services.health import register_health
    from app.services.load import Load
    from app.services.reload import build_routing, flush_pools
    from app.services.secrets import SecretBox
    from app.state import Gateway
    from app.storage.admin import LoginThrottle, SessionStore
    from app.storage.db import Database
    from app.storage.keys import KeyRepo
    from app.storage.limiters import make_limiter
    from app.storage.limits import SqlLimiter
    from app.storage.stats import Stats
    from app.storage.stored_responses import StoredResponses
    from app.storage.tokens import TokenRepo
    from app.storage.usage import UsageRepo, UsageWriter

    known = [settings.master_key or "", settings.secret_key or "", os.environ.get("SLUICE_ADMIN_PASSWORD", "")]
    redactor = setup_logging(settings.log_level, known)
    db = Database(settings.database_url)
    if os.environ.get("SLUICE_MIGRATED") != settings.database_url:  # gunicorn's master migrated already
        from app.storage.migrate import upgrade  # Alembic (and Mako) only where a migration runs: ~10 MiB

        upgrade(db)
    box = SecretBox(settings.secret_key, settings.secret_key_previous)
    load = Load()
    routing = build_routing(config, TokenRepo(db), box, on_secret=lambda s: redactor.add([s]), load=load,
                            session=session)  # fmt: skip
    limiter = make_limiter(db, settings.redis_url)
    usage, stored = UsageRepo(db), StoredResponses(db)
    retention = config.gateway.usage_retention_days * 86400
    usage.prune(time.time() - retention)
    stored.prune(time.time() - retention)
    # One supervised scheduler runs every background chore of the process (app/scheduler.py);
    # the names are the `chore` label of sluice_background_errors_total.
    writer = UsageWriter(usage)
    if isinstance(limiter, SqlLimiter):
        writer.every(30.0, lambda: limiter.prune(time.time()), "limits_pruning", final=False)
    stats, sessions = Stats(db), SessionStore(db)
    worker = f"{socket.gethostname()}:{os.getpid()}"[:100]
    writer.every(2.0, lambda: stats.report_worker(worker, metrics.active_streams(), time.time()), "live_report")
    writer.every(600.0, lambda: sessions.prune(time.time()), "session_pruning", final=False)
    gw = Gateway(
        routing=routing, settings=settings, db=db, keys=KeyRepo(db), box=box, limiter=limiter, usage=usage,
        writer=writer, accounting=Accounting(limiter, writer, config.gateway.usage_records), stats=stats,
        admin_sessions=sessions, login_throttle=LoginThrottle(db), worker=worker, stored=stored, load=load,
    )  # fmt: skip
    # The current pool's counts, and those of pools a reload replaced while their requests run.
    writer.every(1.0, lambda: flush_pools(gw), "token_counts")
    kept = lambda: time.time() - gw.config.gateway.usage_retention_days * 86400  # noqa: E731  (as reloaded)
    writer.every(3600.0, lambda: usage.prune(kept()), "usage_pruning", final=False)
    writer.every(3600.0, lambda: stored.prune(kept()), "stored_responses_pruning", final=False)
    register_health(gw)
    register_alerts(gw, redactor)
    atexit.register(gw.close)
    return gw


def register_alerts(gw: Gateway, redactor: SecretRedactor) -> None:
    """The webhooks of [[alerts]]: every service event goes to them (app/services/events.py), off the
    request path; a reload gives them the new list. Webhook URLs (Slack's carry a secret) are redacted."""
    import time

    from app.services import events
    from app.services.alerts import Alerter
    from app.storage.alerts import AlertMarks, audit_to

    marks = AlertMarks(gw.db)
    gw.alerter = Alerter(gw.config.alerts, marks, audit_to(gw.db), redactor.redact)
    redactor.add(alert.url for alert in gw.config.alerts)

    def reconfigure(config: Config) -> None:
        redactor.add(alert.url for alert in config.alerts)
        gw.alerter.configure(config.alerts)

    gw.on_reload.append(reconfigure)
    events.connect(gw.alerter.emit)
    longest = lambda: max((a.repeat_after for a in gw.config.alerts), default=0.0)  # noqa: E731
    gw.writer.every(3600.0, lambda: marks.prune(time.time() - longest()), "alert_marks_pruning", final=False)


def register_blueprints(app: Flask) -> None:
    from app.admin import dashboard, manage, reload_api  # noqa: F401  (they add their routes to the blueprints)
    from app.admin.api import bp as admin_api
    from app.admin.blueprint import bp as dashboard_pages
    from app.api import register_api
    from app.health import bp as health_bp

    register_api(app)
    app.register_blueprint(health_bp)
    app.register_blueprint(admin_api, url_prefix="/admin/api")
    app.register_blueprint(dashboard_pages)  # dashboard.py and manage.py add their pages to it
    app.register_blueprint(dashboard.root)


def register_cli(app: Flask) -> None:
    from app.cli import register_commands

    register_commands(app)
