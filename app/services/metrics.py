"""Prometheus metrics, counted in every gunicorn worker (prometheus-client's multiprocess mode).

gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a fresh directory before the workers
start; each worker writes its samples there and /metrics merges them. Without it (tests, the
Flask CLI) the registry is the ordinary in-process one. Label values that come from clients
(model names) are bounded so a caller cannot create unlimited time series.
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

_models: set[str] = set()
_lock = threading.Lock()


def model_label(model: str) -> str:
    """The model as a label value, or "other" once MAX_MODELS distinct ones have been seen."""
    if model in _models:
        return model
    with _lock:
        if len(_models) < MAX_MODELS and len(model) <= 100:
            _models.add(model)
            return model
    return "other"


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
