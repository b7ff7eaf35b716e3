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


def create_app(
    config: Config | None = None, settings: Settings | None = None, session: requests.Session | None = None
) -> Flask:
    """Build the app from the environment, or from `config`/`settings`/`session` (tests)."""
    from flask import Flask
    from werkzeug.middleware.proxy_fix import ProxyFix

    from app.config import load_config, load_settings
    from app.errors import register_error_handlers
    from app.logs import setup_logging
    from app.requestlog import register_request_line
    from app.services.router import ModelCatalog
    from app.services.tokens import TokenPool
    from app.services.upstream import UpstreamClient
    from app.state import Gateway, announce

    settings = settings or load_settings()
    config = config or load_config(settings.config_path)
    app = Flask(__name__, static_folder=None)
    if settings.trusted_proxies:
        # Trust X-Forwarded-For/-Proto only as far as the configured number of hops.
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n)  # type: ignore[method-assign]
    pool = TokenPool(config.upstreams)
    setup_logging(settings.log_level, [*pool.secrets(), settings.master_key or ""])
    client = UpstreamClient(config, pool, session=session)
    app.extensions["sluice"] = Gateway(config, settings, pool, client, ModelCatalog(config.upstreams, client))
    register_error_handlers(app)
    register_request_line(app)
    register_blueprints(app)
    announce(config, settings)
    return app


def register_blueprints(app: Flask) -> None:
    from app.api import register_api
    from app.health import bp as health_bp

    register_api(app)
    app.register_blueprint(health_bp)
