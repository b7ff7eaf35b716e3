"""Operational events (a pool ran dry, a breaker opened, a token was auto-disabled, ...) as one hook.

Services call `emit`; the gateway points the hook at the alerter (app/services/alerts.py) and
it is a no-op until then (tests, the CLI). An event names a subject (an upstream, a token id, a
key name), never a secret.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("sluice.events")

Sink = Callable[[str, str, str, Mapping[str, Any]], None]
_sink: list[Sink] = []  # the gateway's alerter: one per process
_listeners: list[Sink] = []  # more (tests)


def connect(sink: Sink | None) -> None:
    """Send every event to `sink` (None: nowhere): the process's gateway points it at its alerter."""
    _sink[:] = [sink] if sink is not None else []


@contextmanager
def listening(listener: Sink) -> Iterator[None]:
    """Also send every event to `listener` while the block runs, whichever sink is connected."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def emit(event: str, subject: str, text: str, fields: Mapping[str, Any] | None = None) -> None:
    """Report an event; never raises and never blocks (the alerter only queues)."""
    # DEBUG: every 503 and every request past 80 % of a budget emits (the alerter logs deliveries).
    # %r: a subject may hold a client's text (a model name), whose newline must not forge a log line.
    log.debug("event %s subject=%r: %r", event, subject, text)
    for sink in [*_sink, *_listeners]:
        try:
            sink(event, subject, text, fields or {})
        except Exception:  # an alerting bug must never fail the request that noticed the event
            log.exception("event sink failed for %s", event)
