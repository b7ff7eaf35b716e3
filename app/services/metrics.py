"""Prometheus metrics, counted in every gunicorn worker (prometheus-client's multiprocess mode).

gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers
start; each worker writes its samples there and /metrics merges them. Without it (tests, the
Flask CLI) the registry is the ordinary in-process one. No label carries a string a client
chose: the model label is what the operator configured (`configure`): a model id the matched
upstream lists literally, else the glob of its `models` that matched ("*", "gpt-4*"), or
"unrouted" for a request that reached no upstream. So the series are bounded by the config,
whatever names clients send, in every worker and across recycled workers.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values

from app import process

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from app.config import UpstreamConfig

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Each sample update asks for the process id (to notice a fork); the default, os.getpid, is a
    # system call, ten of them per request. The documented hook takes a cheaper function.
    values.ValueClass = values.MultiProcessValue(process_identifier=process.pid)

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
UNROUTED = "unrouted"  # the model label of requests that reached no upstream (unknown model, refused)
OTHER = "other"  # the model label under an upstream this process was not configured with

REQUESTS = Counter("sluice_requests_total", "Client requests by route, status, model and upstream",
                   ["route", "status", "model", "upstream"])  # fmt: skip
ATTEMPTS = Counter("sluice_upstream_attempts_total", "Upstream attempts by upstream, outcome and reason",
                   ["upstream", "outcome", "reason"])  # fmt: skip
COOLDOWNS = Counter("sluice_token_cooldowns_total", "Upstream tokens put in cooldown", ["upstream", "reason"])
RATE_LIMITED = Counter("sluice_rate_limited_total", "Requests refused by a key's limits", ["code"])
ACTIVE_STREAMS = Gauge("sluice_active_streams", "Streams being relayed now", multiprocess_mode="livesum")
TTFB = Histogram("sluice_time_to_first_byte_seconds", "Time to the first byte sent to the client", ["route"],
                 buckets=BUCKETS)  # fmt: skip
DURATION = Histogram("sluice_request_duration_seconds", "Client request duration", ["route", "streamed"],
                     buckets=BUCKETS)  # fmt: skip
BACKGROUND_ERRORS = Counter("sluice_background_errors_total", "Background chores that raised (they carry on)",
                            ["chore"])  # fmt: skip
# result: started | won (the accepted attempt was a hedge) | lost (a hedge closed because another attempt won).
HEDGES = Counter("sluice_hedges_total", "Hedged attempts (issue 14) by upstream and result", ["upstream", "result"])
# result: resumed | refused (a broken stream that could not be resumed).
RESUMES = Counter("sluice_resumes_total", "Mid-stream resumes by upstream and result", ["upstream", "result"])
# Each worker sets its own breakers' view; "livemax": open if open in any live worker.
BREAKER_OPEN = Gauge("sluice_upstream_breaker_open", "1 while a worker's circuit breaker of the upstream is open",
                     ["upstream"], multiprocess_mode="livemax")  # fmt: skip

_configured: dict[str, tuple[str, ...]] = {}  # upstream name -> its `models`, as configured
_aliases: set[str] = set()  # [[models]] names: configured too, so a label value of their own
_at_scrape: list[Collector] = []  # gauges computed when scraped (app/services/health.py)


def configure(upstreams: Iterable[UpstreamConfig], aliases: Iterable[str] = ()) -> None:
    """Learn each upstream's `models` and the alias names: with "unrouted" and "other", the only model
    label values. When a process's gateway is built, and again at each config reload."""
    _configured.clear()
    _configured.update((upstream.name, tuple(upstream.models)) for upstream in upstreams)
    _aliases.clear()
    _aliases.update(aliases)


def model_label(model: str, upstream: str | None) -> str:
    """The label value of a request's model, served (last tried) by `upstream` (None: no upstream
    was tried): the model itself if that upstream lists it literally, else the first of its
    patterns that matches it, as the router matched it (fnmatchcase), never the client's name."""
    if upstream is None:
        return UNROUTED
    if model in _aliases:
        return model
    patterns = _configured.get(upstream, ())
    if model in patterns:
        return model
    return next((pattern for pattern in patterns if fnmatch.fnmatchcase(model, pattern)), OTHER)


def at_scrape(collector: Collector | None) -> None:
    """Add `collector`'s metrics to every scrape (None: none); once per process, like `configure`."""
    _at_scrape[:] = [collector] if collector is not None else []


def render() -> bytes:
    """The exposition text, merged across workers when running under gunicorn, plus the
    scrape-time gauges (read from the shared store: the same in every worker)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        text = generate_latest(registry)
    else:
        text = generate_latest()
    for collector in _at_scrape:
        extra = CollectorRegistry()
        extra.register(collector)
        text += generate_latest(extra)
    return text


def active_streams() -> int:
    """This process's open streams (the gauge's own value; prometheus-client has no public getter)."""
    return int(ACTIVE_STREAMS._value.get())
