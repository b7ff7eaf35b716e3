"""A key with max_parallel takes its in-flight slot while its request body is still arriving.

The slot is otherwise taken at admission, after the body is read and checked: a client could
hold any number of connections by sending its bodies slowly. Taking the slot before every
read would cost each request of such a key one more write transaction (see docs/benchmarks.md),
though the usual body arrives with its headers. So the body is read as before, and only if it
is still arriving after SLOW_BODY_AFTER seconds does a helper greenlet take the slot meanwhile;
the admission then reuses it. With no free slot the helper interrupts the read with the 429:
gunicorn then closes the connection (it never reuses one whose body read failed).

This needs gevent's cooperative sockets (gunicorn's gevent workers, how Sluice runs); under
another server the body is simply read first.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

SLOW_BODY_AFTER = 0.05  # seconds: a body not read by then takes its slot while it arrives


def read_holding_slot(read: Callable[[], bytes], take: Callable[[], None], after: float = SLOW_BODY_AFTER) -> bytes:
    """`read()` the body; if it is still reading after `after` seconds, `take()` the slot in
    another greenlet. An exception from `take` interrupts the read and is raised here."""
    if not cooperative():
        return read()
    import gevent

    race = _Race(gevent.getcurrent(), take)
    timer = gevent.get_hub().loop.timer(after)  # a bare timer: a greenlet only if it fires
    timer.start(race.start, update=True)  # the loop's cached time may be stale: timers count from it
    try:
        body = read()
    finally:
        race.reading = False
        timer.close()
        if race.helper is not None:  # take() ran or is under way (waiting on the store): let it finish
            race.helper.join()
    if race.error is not None:
        raise race.error
    return body


def cooperative() -> bool:
    """Whether sockets are gevent's (monkey-patched), so a helper greenlet runs during a read."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("socket")


class _Race:
    """The helper's side: take the slot; on failure, stop the reader if it is still reading."""

    def __init__(self, reader: Any, take: Callable[[], None]) -> None:
        self.reader, self.take = reader, take
        self.reading = True
        self.helper: Any = None  # the greenlet running take(), once the timer fired
        self.error: Exception | None = None

    def start(self) -> None:
        import gevent

        self.helper = gevent.spawn(self.run)

    def run(self) -> None:
        try:
            self.take()
        except Exception as exc:  # noqa: BLE001 - not handled here: handed over to the reader, raised there
            self.error = exc
            if self.reading:
                import gevent

                # From the hub, as gevent.Timeout does, so this greenlet ends normally.
                gevent.get_hub().loop.run_callback(self._interrupt)

    def _interrupt(self) -> None:
        if self.reading and self.error is not None:
            self.reader.throw(self.error)
