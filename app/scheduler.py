"""One supervised scheduler per process for the background chores (usage records, token
counts, pruning, the live-stream report).

Chores run in turn from one background thread (a greenlet under gevent). A chore that raises
anything is logged (with its traceback the first time it fails in a row), counted in
`sluice_background_errors_total{chore}`, and runs again at its next turn: one bad record or
one bug must not stop a worker's background work for good. Should the thread itself end
(killed), the next `start()` (called by every usage record) starts another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.services import metrics
from app.storage.db import StorageError

log = logging.getLogger("sluice.scheduler")
TICK = 1.0  # the longest the loop sleeps: a chore added or woken late waits at most this


@dataclass
class Chore:
    name: str
    every: float
    run: Callable[[], None]
    due: float = 0.0  # time.monotonic() of its next turn
    final: bool = True  # run once more at close
    failures: int = 0  # in a row


class Scheduler:
    def __init__(self) -> None:
        self._chores: list[Chore] = []
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    def every(self, seconds: float, run: Callable[[], None], name: str | None = None, final: bool = True) -> None:
        """Run `run` every `seconds` (first after `seconds`), and once more at close if `final`
        (pruning need not delay a worker's exit). `name` (by default the function's qualified
        name) becomes a metric label: a fixed string, never data."""
        name = name or getattr(run, "__qualname__", "chore")
        self._chores.append(Chore(name, seconds, run, due=time.monotonic() + seconds, final=final))

    def wake(self, name: str) -> None:
        """Run the chore `name` at once instead of at its turn."""
        for chore in self._chores:
            if chore.name == name:
                chore.due = 0.0
        self._wake.set()

    def start(self) -> None:
        """Start the background thread, or a new one if the last has ended (cheap when running)."""
        thread = self._thread
        if (thread is not None and thread.is_alive()) or self._closed:
            return
        with self._lock:
            if (self._thread is None or not self._thread.is_alive()) and not self._closed:
                self._thread = threading.Thread(target=self._loop, name="sluice-scheduler", daemon=True)
                self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop the loop and run the final chores once more (pending usage records, token counts).
        A second call does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set()
        for chore in self._chores:
            if chore.final:
                self._run(chore)

    def run(self, name: str) -> None:
        """Run the chore `name` now, in the caller's thread, guarded like a turn of the loop."""
        for chore in self._chores:
            if chore.name == name:
                self._run(chore)

    def run_due(self) -> float:
        """Run the chores whose turn has come; returns the seconds until the next one."""
        for chore in self._chores:
            if time.monotonic() >= chore.due:
                chore.due = time.monotonic() + chore.every
                self._run(chore)
        now = time.monotonic()
        return min((chore.due - now for chore in self._chores), default=TICK)

    def _loop(self) -> None:
        while not self._closed:
            try:
                pause = self.run_due()
            except Exception:  # a bug in the loop itself (each chore is guarded in _run): keep going
                log.exception("background scheduler failed; carrying on")
                metrics.BACKGROUND_ERRORS.labels(chore="scheduler").inc()
                pause = TICK
            self._wake.wait(min(max(pause, 0.0), TICK))
            self._wake.clear()

    @staticmethod
    def _run(chore: Chore) -> None:
        try:
            chore.run()
        except Exception as exc:
            chore.failures += 1
            metrics.BACKGROUND_ERRORS.labels(chore=chore.name).inc()
            if isinstance(exc, StorageError):  # the database is away: expected, and said in one line
                log.error("background chore %s failed (will retry): %s", chore.name, exc)
            elif chore.failures == 1:
                log.exception("background chore %s failed (will retry)", chore.name)
            else:
                log.error("background chore %s failed again (%d in a row): %r", chore.name, chore.failures, exc)
        else:
            if chore.failures:
                log.info("background chore %s works again after %d failures", chore.name, chore.failures)
            chore.failures = 0
