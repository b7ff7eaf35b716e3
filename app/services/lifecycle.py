"""Graceful stop: when the worker is told to stop, running streams learn by when to end.

The gunicorn worker (app/worker.py) calls `begin_shutdown(grace)` on SIGTERM. Streams still
running `SHUTDOWN_MARGIN` seconds before the grace period ends end with their dialect's error
event themselves, so no client sees a stream cut without a word, and usage is
flushed before the worker exits.
"""

from __future__ import annotations

import math
import threading
import time

SHUTDOWN_MARGIN = 2.0
SHUTDOWN_MESSAGE = "The gateway is restarting; retry the request."
_deadline = [math.inf]
_drains = [0]
_drains_changed = threading.Condition()


def begin_shutdown(grace: float, now: float) -> None:
    _deadline[0] = min(_deadline[0], now + max(0.0, grace - SHUTDOWN_MARGIN))


def shutdown_deadline() -> float:
    return _deadline[0]


def reset() -> None:
    """For tests."""
    _deadline[0] = math.inf


def drain_started() -> None:
    with _drains_changed:
        _drains[0] += 1


def drain_finished() -> None:
    with _drains_changed:
        _drains[0] -= 1
        _drains_changed.notify_all()


def wait_for_drains(timeout: float) -> bool:
    """At worker exit: let streams still draining (on_client_disconnect = "drain") record their usage."""
    end = time.monotonic() + timeout
    with _drains_changed:
        while _drains[0] > 0 and (left := end - time.monotonic()) > 0:
            _drains_changed.wait(left)
        return _drains[0] == 0
