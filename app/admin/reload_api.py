"""POST /admin/api/reload: re-read the config file in every worker (master key, as the rest of the admin API)."""

from __future__ import annotations

from flask import Response, g, jsonify

from app.admin.api import bp
from app.config import Config, ConfigError
from app.errors import ApiError
from app.services.reload import reload_everywhere
from app.state import gateway


@bp.post("/reload")
def reload_config() -> Response:
    """Validate and swap in the config file; 400 invalid_config (nothing changed) with the one-line error."""
    try:
        config = reload_everywhere(gateway())
    except ConfigError as exc:
        g.admin.record("config.reload_refused", gateway().config.source)
        raise ApiError(400, str(exc), code="invalid_config", type="invalid_request_error") from None
    g.admin.record("config.reload", config.source)
    return jsonify(summary(config))


def summary(config: Config) -> dict[str, object]:
    """What a reload answers: where the config came from, when it was read, what it routes to."""
    return {
        "source": config.source,
        "loaded_at": config.loaded_at,
        "upstreams": [u.name for u in config.upstreams],
        "models": [m.name for m in config.models],
    }
