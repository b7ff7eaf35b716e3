"""Hot reload of the config file: validate it, build its Routing beside the running one, swap in one step.

A request reads one Routing snapshot (app/state.py `routing()`), so a request in flight finishes on
the config it started with and the next one reads the new config. Token state lives in the shared
store, keyed by token id, so a new TokenPool over the same repo keeps the cooldowns, counters, flags,
run-time tokens and overrides of every token still configured. Circuit breakers (per worker) are
carried over for the upstreams still configured. Settings from the environment (SLUICE_*) are not
part of the file and need a restart (docs/reload.md).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping

import requests

from app.config import Config, ConfigError, load_config
from app.services import metrics
from app.services.breaker import Breakers
from app.services.load import Load
from app.services.router import ModelCatalog
from app.services.secrets import SecretBox
from app.services.tokens import TokenPool
from app.services.upstream import UpstreamClient
from app.state import Gateway, Routing
from app.storage.tokens import TokenRepo

log = logging.getLogger("sluice.reload")
RETIRE_MARGIN = 60.0  # seconds past a request's deadline (drains, slow records) before a replaced pool is dropped
MASTER_PID = "SLUICE_MASTER_PID"  # set by gunicorn.conf.py in the master, inherited by its workers
_one_at_a_time = threading.Lock()  # two reloads at once would both replace the same routing


def reload(gw: Gateway) -> Config:
    """Re-read and validate the config file and swap it in; raises ConfigError (nothing changed) if invalid."""
    with _one_at_a_time:
        try:
            config = load_config(gw.settings.config_path)
        except ConfigError as exc:  # logged here, once, for the signal and the API alike
            log.error("sluice: configuration error: %s (reload refused: the running config stays)", exc)
            raise
        swap(gw, config)
    return config


def reload_everywhere(gw: Gateway) -> Config:
    """Reload this process at once and, under gunicorn, have the master tell every worker (SIGHUP)."""
    config = reload(gw)
    master = gunicorn_master(os.environ, os.getppid())
    if master is not None:
        os.kill(master, signal.SIGHUP)  # the master validates again and signals each worker, this one too
    return config


def gunicorn_master(env: Mapping[str, str], parent: int) -> int | None:
    """The gunicorn master's pid when it is this process's parent (never signal a stranger)."""
    pid = env.get(MASTER_PID, "")
    return parent if pid.isdecimal() and int(pid) == parent else None


def swap(gw: Gateway, config: Config, now: float | None = None) -> Routing:
    """Build `config`'s Routing, run the on_reload hooks, then make it the gateway's current one."""
    old = gw.routing
    session = old.client.session if old.client.session.trust_env == config.gateway.trust_env else None
    new = build_routing(
        config, old.pool.repo, gw.box, on_secret=old.pool.on_secret, load=gw.load, session=session,
        breakers=old.client.selector.breakers,
    )  # fmt: skip
    gw.accounting.records = config.gateway.usage_records
    run_hooks(gw.on_reload, config)
    now = time.time() if now is None else now
    gw.routing = new  # the switch: one assignment; requests that started before keep `old`
    gw.retired.append((now + old.config.gateway.deadline + RETIRE_MARGIN, old.pool))
    old.pool.flush()
    log.info("config reloaded source=%s upstreams=%d models=%d", config.source, len(config.upstreams),
             len(config.models))  # fmt: skip
    return new


def build_routing(
    config: Config,
    repo: TokenRepo,
    box: SecretBox,
    *,
    on_secret: Callable[[str], None],
    load: Load,
    session: requests.Session | None = None,
    breakers: Breakers | None = None,
) -> Routing:
    """What `config` builds: its token pool, upstream client and model catalog (at start-up and on reload);
    its token values and secret-looking header values go to `on_secret` (the log redactor), its upstreams'
    models and its aliases become the metrics' model labels (what the config names, never what clients send).

    `breakers` (a reload's) are kept, with the new settings, for the upstreams still configured; they
    are changed last, once nothing else can fail.
    """
    pool = TokenPool(config.upstreams, repo, box, on_secret=on_secret,
                     auto_disable_after=config.gateway.auto_disable_after)  # fmt: skip
    for secret in pool.secrets():
        on_secret(secret)
    metrics.configure(config.upstreams, (alias.name for alias in config.models))
    if breakers is not None:
        gateway = config.gateway
        breakers.configure(gateway.breaker_failures, gateway.breaker_cooldown, (u.name for u in config.upstreams))
    client = UpstreamClient(config, pool, session=session, load=load, breakers=breakers)
    return Routing(config, client, ModelCatalog(config.upstreams, client), pool)


def run_hooks(hooks: Iterable[Callable[[Config], None]], config: Config) -> None:
    """Each area's reaction to the new config; one that fails is logged and does not stop the reload
    (the config is valid and the other areas, and the other workers, take it)."""
    for hook in hooks:
        try:
            hook(config)
        except Exception:  # a hook's own bug must not leave this worker half-reloaded
            log.exception("a reload hook failed (%s); the new config is in force without it", _name(hook))


def flush_pools(gw: Gateway, now: float | None = None) -> None:
    """The token_counts chore: write the success counts of the current pool and of replaced pools whose
    requests may still run (dropped once past their deadline)."""
    now = time.time() if now is None else now
    gw.pool.flush()
    for entry in list(gw.retired):
        until, pool = entry
        pool.flush()
        if until <= now:
            gw.retired.remove(entry)


def _name(hook: Callable[..., object]) -> str:
    return getattr(hook, "__qualname__", None) or repr(hook)
