"""The per-process gateway state that views reach through `gateway()`."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import click
from flask import current_app, g

from app.config import Config, Settings
from app.services.accounting import Accounting
from app.services.alerts import Alerter
from app.services.load import Load
from app.services.router import ModelCatalog
from app.services.secrets import SecretBox
from app.services.tokens import TokenPool
from app.services.upstream import UpstreamClient
from app.storage.admin import LoginThrottle, SessionStore
from app.storage.db import Database, StorageError
from app.storage.keys import KeyRepo
from app.storage.limits import Limiter
from app.storage.stats import Stats
from app.storage.stored_responses import StoredResponses
from app.storage.usage import UsageRepo, UsageWriter
from app.version import __version__

log = logging.getLogger("sluice")


@dataclass(frozen=True)
class Routing:
    """What one config file builds: swapped as a whole by a reload; a request keeps the one it started with."""

    config: Config
    client: UpstreamClient
    catalog: ModelCatalog
    pool: TokenPool  # the config's tokens over the shared store (state is kept across reloads)


@dataclass
class Gateway:
    routing: Routing
    settings: Settings
    db: Database
    keys: KeyRepo
    box: SecretBox
    limiter: Limiter
    usage: UsageRepo
    writer: UsageWriter
    accounting: Accounting
    stats: Stats
    admin_sessions: SessionStore
    login_throttle: LoginThrottle
    worker: str  # "<host>:<pid>", this process's row in worker_status
    stored: StoredResponses  # which upstream and token created each stored Responses API response
    load: Load  # requests in flight and time to first event per token and target (kept across reloads)
    # Called with the new config before a reload swaps it in (app/services/reload.py): one line per area.
    on_reload: list[Callable[[Config], None]] = field(default_factory=list)
    # Pools of replaced configs, flushed until their requests must have ended: (until, pool).
    retired: list[tuple[float, TokenPool]] = field(default_factory=list)
    alerter: Alerter | None = None  # the [[alerts]] webhooks (app/__init__.py register_alerts)

    @property
    def config(self) -> Config:
        """The current config (a request reads its own snapshot through `routing()`)."""
        return self.routing.config

    @property
    def client(self) -> UpstreamClient:
        return self.routing.client

    @property
    def catalog(self) -> ModelCatalog:
        return self.routing.catalog

    @property
    def pool(self) -> TokenPool:
        return self.routing.pool

    def close(self) -> None:
        """Write pending usage records and give up what this worker holds in the shared store;
        called at worker exit (gunicorn hook and atexit)."""
        from app.storage.leases import PROBER_LEASE, Leases
        from app.storage.load import LoadRepo

        self.writer.close()  # first: the prober and the load report take no further turn
        if self.alerter is not None:
            self.alerter.close(timeout=2.0)
        try:
            self.stats.report_worker(self.worker, -1, time.time())  # no longer counts as live
        except StorageError as exc:
            log.warning("could not clear this worker's live status: %s", exc)
        try:  # another worker probes from its next turn, not 1.5 intervals later
            Leases(self.db).release(PROBER_LEASE, self.worker)
        except StorageError as exc:
            log.warning("could not give up the prober lease: %s", exc)
        try:  # this worker's requests in flight no longer count anywhere
            LoadRepo(self.db).clear(self.worker)
        except StorageError as exc:
            log.warning("could not clear this worker's load report: %s", exc)
        self.db.changes.close()  # PostgreSQL: stops the change listener and closes its connection


def gateway() -> Gateway:
    return current_app.extensions["sluice"]


def routing() -> Routing:
    """This request's config, client and catalog: the gateway's current ones, captured at first use."""
    snapshot = g.get("routing")
    if snapshot is None:
        snapshot = g.routing = gateway().routing
    return snapshot


def announce(config: Config, settings: Settings) -> None:
    """Log the start-up summary (never a secret) and how to fix a missing client key."""
    names = ", ".join(f"{u.name} ({len(u.tokens)} tokens)" for u in config.upstreams)
    backend = "redis" if settings.redis_url else "database"
    log.info("sluice %s config=%s limits=%s upstreams: %s", __version__, config.source, backend, names)
    if not settings.master_key and serving():
        log.warning(
            "no master key is configured: only managed keys (flask --app wsgi keys create) can call the API. "
            "Set SLUICE_MASTER_KEY (16+ characters) or SLUICE_MASTER_KEY_FILE."
        )


def serving() -> bool:
    """True unless a CLI command (other than `flask run`) built the app: gunicorn runs no click command.

    A CLI command never needs the master key (the server's environment may hold one that the
    shell running the command does not), so the warning about a missing one would be wrong there.
    """
    command = click.get_current_context(silent=True)
    return command is None or command.info_name == "run"
