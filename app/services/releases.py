"""Giving admissions back: a release the store refused is retried off the request path.

A release frees the key's max_parallel slot and records the request's tokens. When the store
fails at that moment (Redis paused, SQLite locked by another process), the slot would stay
taken until it expires; instead the release waits here and the usage writer's thread retries
it every RETRY_EVERY seconds (and once at exit), in order, until it lands or its slot has
expired anyway (the request's deadline plus a margin: by then the slot is free, and the tokens
are dropped with a log line).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from app.storage.db import StorageError
from app.storage.limits import Admission, Limiter

log = logging.getLogger("sluice.accounting")
MAX_PENDING = 10_000  # releases kept while the store is unreachable (each is a few hundred bytes)
RETRY_EVERY = 2.0  # seconds; a failed SQLite attempt blocks its worker for up to 5 s: not every second


@dataclass(frozen=True)
class _Pending:
    admission: Admission
    tokens: int
    ended_at: float  # the tokens count in the window at the time the request ended


class Releases:
    def __init__(self, limiter: Limiter, clock: Callable[[], float] = time.time) -> None:
        self.limiter, self.clock = limiter, clock
        self._pending: deque[_Pending] = deque()
        self._lock = threading.Lock()  # one retry pass at a time (close() may race the writer thread)

    def release(self, admission: Admission, tokens: int, request_id: str) -> None:
        """Release now; on a StorageError keep it for `retry`."""
        now = self.clock()
        try:
            self.limiter.release(admission, tokens, now)
        except StorageError as exc:
            log.error("could not release admission request_id=%s (will retry): %s", request_id, exc)
            self._keep(_Pending(admission, tokens, now))

    def pending(self) -> int:
        return len(self._pending)

    def retry(self) -> None:
        """Retry the kept releases, oldest first; stop at the first failure (the store is still down)."""
        if not self._pending or not self._lock.acquire(blocking=False):
            return
        try:
            while self._pending:
                item = self._pending.popleft()  # taken out while tried: _keep may drop the oldest meanwhile
                if self.clock() >= item.admission.expires_at:
                    log.warning(
                        "gave up releasing admission %s: its slot has expired (%d tokens not recorded)",
                        item.admission.admission_id, item.tokens,
                    )  # fmt: skip
                elif not self._released(item):
                    self._pending.appendleft(item)
                    return
        finally:
            self._lock.release()

    def _released(self, item: _Pending) -> bool:
        try:
            self.limiter.release(item.admission, item.tokens, item.ended_at)
        except StorageError as exc:
            log.warning("release of admission %s failed again (will retry): %s", item.admission.admission_id, exc)
            return False
        log.info("released admission %s after a retry", item.admission.admission_id)
        return True

    def _keep(self, item: _Pending) -> None:
        if len(self._pending) >= MAX_PENDING:
            dropped = self._pending.popleft()  # the oldest expires first anyway
            log.error("too many releases waiting; dropped admission %s", dropped.admission.admission_id)
        self._pending.append(item)
