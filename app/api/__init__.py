"""The OpenAI-compatible API blueprint, mounted at /v1 and /api/v1."""

from __future__ import annotations

from flask import Flask


def register_api(app: Flask) -> None:
    from app.api import media, messages, responses_api, views  # noqa: F401  (each adds its routes to the blueprint)
    from app.api.blueprint import bp, error_dialect

    app.register_blueprint(bp, url_prefix="/v1")
    app.register_blueprint(bp, url_prefix="/api/v1", name="api_alias")
    app.extensions["sluice.error_dialect"] = error_dialect
