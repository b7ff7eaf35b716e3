"""Prometheus metrics, counted in every gunicorn worker (prometheus-client's multiprocess mode).

gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers
start; each worker writes its samples there and /metrics merges them. Without it (tests, the
Flask CLI) the registry is the ordinary in-process one. No label carries a string a client
chose freely: a request that reached no upstream counts under the model "unrouted", and the
model names of routed requests (they matched a configured glob, which may be "*") are
bounded per process, so a caller cannot create unlimited time series.
"""

from __future__ import annotations

import os
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess, values

from app import process

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Each sample update asks for the process id (to notice a fork); the default, os.getpid, is a
    # system call, ten of them per request. The documented hook takes a cheaper function.
    values.ValueClass = values.MultiProcessValue(process_identifier=process.pid)

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
MAX_MODELS = 200  # distinct model label values per process; the rest are "other"
UNROUTED = "unrouted"  # the model label of requests that reached no upstream (unknown model, refused)

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

_models: set[str] = set()
_lock = threading.Lock()


def model_label(model: str, routed: bool) -> str:
    """The label value of a request's model: "unrouted" when no upstream was tried, else the
    model, or "other" once MAX_MODELS distinct ones have been seen (or for a name no exposition
    can carry: too long, or not encodable as UTF-8, which made /metrics answer 500)."""
    if not routed:
        return UNROUTED
    if model in _models:
        return model
    with _lock:
        if len(_models) < MAX_MODELS and len(model) <= 100 and _encodable(model):
            _models.add(model)
            return model
    return "other"


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON)
        return False
    return True


def render() -> bytes:
    """The exposition text, merged across workers when running under gunicorn."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest()


def active_streams() -> int:
    """This process's open streams (the gauge's own value; prometheus-client has no public getter)."""
    return int(ACTIVE_STREAMS._value.get())
