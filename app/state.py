"""The per-process gateway state that views reach through `gateway()`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import current_app

from app.config import Config, Settings
from app.services.router import ModelCatalog
from app.services.tokens import TokenPool
from app.services.upstream import UpstreamClient
from app.version import __version__

log = logging.getLogger("sluice")


@dataclass
class Gateway:
    config: Config
    settings: Settings
    pool: TokenPool
    client: UpstreamClient
    catalog: ModelCatalog


def gateway() -> Gateway:
    return current_app.extensions["sluice"]


def announce(config: Config, settings: Settings) -> None:
    """Log the start-up summary (never a secret) and how to fix a missing client key."""
    names = ", ".join(f"{u.name} ({len(u.tokens)} tokens)" for u in config.upstreams)
    log.info("sluice %s config=%s upstreams: %s", __version__, config.source, names)
    if not settings.master_key:
        log.warning(
            "no client key is configured: every API request will get 401. "
            "Set SLUICE_MASTER_KEY (16+ characters) or SLUICE_MASTER_KEY_FILE."
        )
