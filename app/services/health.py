"""Credential and upstream health: the one view the admin API, the dashboard and the gauges share,
and `register_health`, which wires the background chores of a process:

- "prober": the deployment's background probes (app/services/prober.py), lease "prober";
- "load_report": this worker's in-flight counts and time to first event to the shared store, the
  other workers' back into `gw.load`, and the breaker gauge of this worker;
- the scrape-time gauges (token state, in flight, ttfe, last probe) added to /metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.services import metrics
from app.services.load import target_key, token_key
from app.services.prober import PERIOD, Prober
from app.state import Gateway
from app.storage.db import StorageError
from app.storage.leases import Leases
from app.storage.load import LoadRepo
from app.storage.tokens import TOKEN_STATES

log = logging.getLogger("sluice.health")
LOAD_EVERY = 1.5  # seconds between a worker's load reports
FRESH = 5.0  # a worker's report older than this no longer counts (it exited, or hangs)
FORGET = 60.0  # rows of workers silent this long are pruned


def register_health(gw: Gateway, clock: Callable[[], float] = time.time) -> Prober:
    """Wire the prober, the load report and the gauges into `gw`'s scheduler; once per process."""
    prober = Prober(gw, Leases(gw.db), clock, started=clock())
    repo = LoadRepo(gw.db)
    # A fixed short period: the tick reads the current probe_interval, so a reload changes it at once.
    gw.writer.every(PERIOD, prober.tick, "prober", final=False)
    gw.writer.every(LOAD_EVERY, lambda: report_load(gw, repo, clock()), "load_report", final=False)
    gw.writer.every(FORGET, lambda: repo.prune(clock() - FORGET), "load_pruning", final=False)
    metrics.at_scrape(HealthCollector(gw, clock))
    return prober


def report_load(gw: Gateway, repo: LoadRepo, now: float) -> None:
    """Write this worker's figures, read the other live workers' back, and set the breaker gauge."""
    repo.report(gw.worker, gw.load.snapshot(), now)
    gw.load.merge(repo.others(gw.worker, now - FRESH))
    breakers = gw.client.selector.breakers
    for upstream in gw.config.upstreams:
        metrics.BREAKER_OPEN.labels(upstream=upstream.name).set(1 if breakers.is_open(upstream.name, now) else 0)


def upstream_health(gw: Gateway, now: float) -> list[dict[str, Any]]:
    """Per upstream: probe setting, breaker (this worker's view), in flight, and its tokens with
    their state, in flight and recent time to first event (masked; never a value)."""
    rows = gw.pool.rows()
    breakers = gw.client.selector.breakers
    result = []
    for upstream in gw.config.upstreams:
        tokens = [_token_health(gw, row.public(now)) for row in rows if row.upstream == upstream.name]
        probe = upstream.probe
        result.append({
            "name": upstream.name,
            "probe": None if probe is None else (probe.kind if probe.kind == "models" else {
                "model": probe.model, "max_tokens": probe.max_tokens}),
            "breaker": breakers.view(upstream.name, now),  # this worker's
            "inflight": sum(t["inflight"] for t in tokens),
            "tokens": tokens,
        })  # fmt: skip
    return result


def _token_health(gw: Gateway, public: dict[str, Any]) -> dict[str, Any]:
    key = token_key(public["id"])
    ttfe = gw.load.ttfe(key)
    return {**public, "inflight": gw.load.inflight(key), "ttfe_ms": None if ttfe is None else round(ttfe * 1000, 1)}


class HealthCollector(Collector):
    """Gauges computed at scrape time from the shared store and the merged load, so every worker
    answers alike (the multiprocess files hold counters; these need no per-worker samples).
    Labels are upstream names, token ids and configured target models: never token values."""

    def __init__(self, gw: Gateway, clock: Callable[[], float]) -> None:
        self.gw, self.clock = gw, clock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            rows = self.gw.pool.rows()
        except StorageError as exc:  # the counters still answer; these come back with the database
            log.warning("health gauges left out of this scrape: %s", exc)
            return
        now, load = self.clock(), self.gw.load
        state = GaugeMetricFamily(
            "sluice_token_state", "1 for the token's current state", labels=["upstream", "token", "state"]
        )
        inflight = GaugeMetricFamily(
            "sluice_token_inflight", "Requests in flight on the token", labels=["upstream", "token"]
        )
        ttfe = GaugeMetricFamily(
            "sluice_token_ttfe_seconds", "Recent time to first event", labels=["upstream", "token"]
        )
        probe = GaugeMetricFamily(
            "sluice_token_last_probe_ok", "1 if the last probe passed", labels=["upstream", "token"]
        )
        targets = GaugeMetricFamily(
            "sluice_target_inflight", "Requests in flight on an alias target", labels=["upstream", "model"]
        )
        for row in rows:
            current = row.state(now)
            for name in TOKEN_STATES:
                state.add_metric([row.upstream, row.id, name], 1 if name == current else 0)
            inflight.add_metric([row.upstream, row.id], load.inflight(token_key(row.id)))
            if (seconds := load.ttfe(token_key(row.id))) is not None:
                ttfe.add_metric([row.upstream, row.id], seconds)
            if row.last_probe_ok is not None:
                probe.add_metric([row.upstream, row.id], 1 if row.last_probe_ok else 0)
        known = {(t.upstream, t.model) for alias in self.gw.config.models for t in alias.targets}
        for upstream, model in sorted(known):
            targets.add_metric([upstream, model], load.inflight(target_key(upstream, model)))
        yield from (state, inflight, ttfe, probe, targets)
