"""Graceful stop: when the worker is told to stop, running streams learn by when to end.

gunicorn's `post_worker_init` hook wraps the worker's SIGTERM handler to call
`begin_shutdown(grace)`. Streams still running `SHUTDOWN_MARGIN` seconds before the grace
period ends send the error event and `data: [DONE]` themselves, so no client sees a
stream cut without a word, and usage is flushed before the worker exits.
"""

from __future__ import annotations

import math

SHUTDOWN_MARGIN = 2.0
_deadline = [math.inf]


def begin_shutdown(grace: float, now: float) -> None:
    _deadline[0] = min(_deadline[0], now + max(0.0, grace - SHUTDOWN_MARGIN))


def shutdown_deadline() -> float:
    return _deadline[0]


def reset() -> None:
    """For tests."""
    _deadline[0] = math.inf
