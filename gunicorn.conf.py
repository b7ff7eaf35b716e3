"""gunicorn settings for Sluice: gevent workers for many concurrent long-lived streams.

Every value comes from a SLUICE_* variable (see app/config.py and the README).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time

from app import metrics_dir
from app.config import ConfigError, accept_config, load_settings

# prometheus-client's multiprocess mode: every worker writes its samples here, /metrics
# merges them. Set before the workers start (they inherit it); emptied in on_starting,
# removed in on_exit (app/metrics_dir.py).
_metrics_dir = metrics_dir.choose(os.environ, os.getpid())

try:
    _settings = load_settings()
except ConfigError as _exc:
    sys.exit(f"sluice: configuration error: {_exc}")

bind = _settings.bind
workers = _settings.workers
# gunicorn's gevent worker, but a graceful stop waits for running requests only, not for idle
# keep-alive connections (app/worker.py).
worker_class = "app.worker.GracefulGeventWorker"
# Descriptors per worker (each worker is a process with its own open-file limit): two per stream (the
# client's socket and the upstream's) and a reserve. An idle worker on SQLite holds ~26 (the listener,
# logs, the database and its WAL files, the metrics files, the event loop's own); PostgreSQL adds up to
# 51 (a pool of 10 + 40 overflow and the change listener), Redis its connections.
FDS_PER_STREAM = 2
FD_RESERVE = 128
# The default's cap: past it a worker's event loop, not its descriptors, is the limit (issue 15).
MAX_WORKER_CONNECTIONS = 10_000


def fds_needed(connections: int) -> int:
    """The open-file soft limit a worker holding `connections` streams needs."""
    return connections * FDS_PER_STREAM + FD_RESERVE


def connections_allowed(hard: int) -> int:
    """The most streams a worker can hold under the open-file hard limit, at most MAX_WORKER_CONNECTIONS."""
    if hard == resource.RLIM_INFINITY:
        return MAX_WORKER_CONNECTIONS
    return max(0, min(MAX_WORKER_CONNECTIONS, (hard - FD_RESERVE) // FDS_PER_STREAM))


def choose_worker_connections(setting: str | None, hard: int) -> tuple[int, str]:
    """(worker_connections, why, for the start-up log): SLUICE_WORKER_CONNECTIONS when set (not empty), else
    as many as the open-file hard limit allows. ValueError names what is wrong."""
    if setting and setting.strip():
        if not setting.strip().isdigit() or int(setting) < 1:
            raise ValueError(f"SLUICE_WORKER_CONNECTIONS must be a whole number above 0, not {setting!r}")
        chosen = int(setting)
        return chosen, f"worker_connections={chosen} from SLUICE_WORKER_CONNECTIONS ({fds_needed(chosen)} descriptors)"
    chosen = connections_allowed(hard)
    limit = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    if chosen < 1:
        raise ValueError(
            f"the open-file hard limit ({limit}) leaves no room for a stream beside the {FD_RESERVE} descriptors "
            "a worker keeps; raise it (ulimit -n, LimitNOFILE=) or set SLUICE_WORKER_CONNECTIONS"
        )
    why = (
        f"worker_connections={chosen} from the open-file hard limit {limit}: "
        f"{FDS_PER_STREAM} per stream + {FD_RESERVE} reserve, capped at {MAX_WORKER_CONNECTIONS}"
    )
    return chosen, why


try:
    worker_connections, _connections_why = choose_worker_connections(
        os.environ.get("SLUICE_WORKER_CONNECTIONS"), resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    )
except ValueError as _exc:
    sys.exit(f"sluice: configuration error: {_exc}")
# Recycling workers is off by default; when set, a recycled worker stops gracefully (within
# graceful_timeout below), so it never cuts a running stream.
max_requests = int(os.environ.get("SLUICE_MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 10


def _raise_open_file_limit(connections: int) -> None:
    """Two sockets per stream (client and upstream) plus files: raise the soft limit or say why not."""
    needed = fds_needed(connections)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        sys.exit(
            f"sluice: the open-file limit ({hard}) is below the {needed} that SLUICE_WORKER_CONNECTIONS="
            f"{connections} needs (a client and an upstream socket per stream). Raise it (ulimit -n, "
            "LimitNOFILE=, docker --ulimit nofile=...) or lower SLUICE_WORKER_CONNECTIONS."
        )


_raise_open_file_limit(worker_connections)
# gevent workers heartbeat from their own loop, so `timeout` only kills a worker whose
# loop is blocked, never a long but healthy stream.
timeout = 30
graceful_timeout = int(os.environ.get("SLUICE_GRACE_SECONDS", "30"))
keepalive = 75  # longer than nginx's upstream keepalive_timeout (60 s) avoids races
accesslog = None  # the app logs one line per request itself
errorlog = "-"
loglevel = "info"
# gunicorn 27 opens a control socket in ~/.gunicorn by default; parallel instances
# (tests, several gateways on one host) would fight over it.
control_socket_disable = True
# X-Forwarded-* is trusted by the app itself, per SLUICE_TRUSTED_PROXIES hops (werkzeug's
# ProxyFix); gunicorn trusts it from nobody, so the two cannot disagree.
forwarded_allow_ips = ""


def on_starting(server):
    """In the master, before any worker: validate the config file, migrate the schema once and free
    the slots of workers of an earlier run that was killed whole (app/storage/startup.py)."""
    try:
        accept_config(_settings.config_path)  # workers start on this text (app/config.py ACCEPTED_CONFIG)
    except ConfigError as exc:
        sys.exit(f"sluice: configuration error: {exc}")
    # In a child process, so the master never imports the database drivers (or ssl)
    # before the gevent workers monkey-patch them. Its calls time out on their own (5 s to
    # connect); this bound is for what they cannot see, such as a server that stopped mid-call.
    # Generous, as a migration may rewrite a large table: SLUICE_STARTUP_TIMEOUT seconds.
    try:
        limit = float(os.environ.get("SLUICE_STARTUP_TIMEOUT") or "600")
    except ValueError:
        sys.exit("sluice: configuration error: SLUICE_STARTUP_TIMEOUT must be a number of seconds")
    try:
        done = subprocess.run([sys.executable, "-m", "app.storage.startup"], check=False, timeout=limit)
    except subprocess.TimeoutExpired:  # run() killed it
        sys.exit(f"sluice: database start-up took over {limit:g} s (SLUICE_STARTUP_TIMEOUT); is the database up?")
    if done.returncode != 0:
        sys.exit("sluice: database migration failed (see above)")
    os.environ["SLUICE_MIGRATED"] = _settings.database_url  # workers skip their own check
    # Workers signal this pid (SIGHUP) after a reload through the API (app/services/reload.py MASTER_PID).
    os.environ["SLUICE_MASTER_PID"] = str(os.getpid())
    for stale in metrics_dir.remove_stale():
        server.log.info("removed %s (its gunicorn master is gone)", stale)
    metrics_dir.prepare(_metrics_dir)


def when_ready(server):
    """Say how many streams a worker holds and why; take over SIGHUP: gunicorn's own replaces every worker,
    cutting streams that outlive graceful_timeout."""
    server.log.info("sluice: %s", _connections_why)
    server.handle_hup = lambda: reload_workers(server)


def reload_workers(server) -> None:
    """SIGHUP in the master: validate the config file; valid, each worker swaps it in (SIGHUP, app/worker.py)
    and keeps its running requests; invalid, the one-line error is logged and nothing changes. Settings from
    the environment (bind, workers, SLUICE_*) stay as they are until a restart (docs/reload.md)."""
    try:
        accept_config(_settings.config_path)  # a worker forked from now on starts on it too
    except ConfigError as exc:
        # Refused: workers forked later (a crash, a recycled worker) still start on the accepted text.
        server.log.error("sluice: configuration error: %s (reload refused: the running config stays)", exc)
        return
    workers = list(server.WORKERS)
    for pid in workers:
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            pass  # it exited meanwhile; a worker forked from now on starts on the accepted text
    server.log.info("config valid: %d workers reload it", len(workers))


def on_exit(server):
    """In the master, last: remove this run's metrics directory."""
    metrics_dir.remove(_metrics_dir)


# The garbage collector's thresholds in a worker (CPython's default: 700, 10, 10). A full collection
# walks every object the worker holds with its event loop stopped: about 0.9 s at 5,000 open streams
# (~200 objects each) on the benchmark machine. CPython runs one every 10 young collections once the
# objects promoted since the last reach a quarter of the old generation, and a held stream's timers and
# waiters (alive across its 2 s waits, then dropped) are promoted too: with the default, a worker opening
# streams stalled like that every 2-3 s (docs/benchmarks.md "Capacity"). 100 makes full collections ten
# times rarer. What a request leaves is freed by reference counting, not by collections: its objects
# form no cycle (tests/unit/test_no_cycles.py), so waiting longer for a full collection holds no more memory.
GC_THRESHOLDS = (700, 10, 100)


def post_worker_init(worker):
    """Keep the garbage collector's pauses short on a worker holding thousands of streams."""
    import gc

    import gevent

    # The app, its libraries and their caches (~10^5 objects) never die: without this, every
    # full collection walks them all, a stall of milliseconds on the worker's event loop.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    # gevent records each greenlet's spawning stack and tree (about 7 frame records per greenlet, two
    # greenlets per stream) for debugging tools; Sluice reads none of it, and spawns faster without.
    gevent.config.track_greenlet_tree = False


def child_exit(server, worker):
    """Drop a dead worker's live gauges (active streams) from the merged metrics, and free the
    max_parallel slots it still holds (a killed worker never releases them)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    # Not while the whole server stops (no listeners left): its workers release their own slots
    # on the way out, and a worker killed at the end of the grace period leaves slots that
    # expire at their requests' deadlines; a reaper per worker would only delay the exit.
    _collect_reapers(server)
    if server.LISTENERS:
        # In a child process, like the migration: the master must not import the drivers. Not
        # waited for: the master spawns the replacement worker only after this hook returns, and
        # the reaper may wait seconds for a busy database. It reports to the master's stderr.
        reaper = [sys.executable, "-m", "app.storage.reaper", "--pid", str(worker.pid)]
        _reapers.append((subprocess.Popen(reaper), time.monotonic(), worker.pid))


# Reapers started by child_exit and not seen to end yet. gunicorn's master reaps every child
# (waitpid(-1) on SIGCHLD), so they leave no zombie; polling them here covers any that it did not.
_reapers: list[tuple[subprocess.Popen, float, int]] = []  # (reaper, started, dead worker's pid)
REAPER_LIMIT = 60.0  # seconds; its database calls time out well before (5 s lock or connect waits)


def _collect_reapers(server) -> None:
    """Forget the reapers that ended (logging a failure); stop one that outlived REAPER_LIMIT."""
    for entry in list(_reapers):
        process, started, pid = entry
        if process.poll() is None and time.monotonic() - started < REAPER_LIMIT:
            continue
        if process.returncode is None:
            process.kill()
            process.wait()
            server.log.error("freeing the slots of worker %s took too long; they expire on their own", pid)
        elif process.returncode != 0:
            server.log.error("could not free the slots of worker %s (see above)", pid)
        _reapers.remove(entry)


def worker_exit(server, worker):
    """Write the worker's pending usage records before it exits (graceful stop, max_requests)."""
    from app.services.lifecycle import SHUTDOWN_MARGIN, wait_for_drains

    wait_for_drains(SHUTDOWN_MARGIN)  # drains end by the shutdown deadline; give them time to record
    gateway = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("sluice")
    if gateway is not None:
        gateway.close()
