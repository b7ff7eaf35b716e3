"""Requests in flight and recent time to first event, per token and per routing target.

Each worker counts its own requests exactly (in memory); a background chore reports them to
the shared store and reads back the other workers' reports (`merge`), so `inflight(key)` is
the deployment-wide count as of the last second or two plus this worker's live one. Keys:
`token_key(token_id)` and `target_key(upstream, model)`. Next to them, per target, a short ring of
recent samples for `ttfe_p95` (the hedge delay "p95", app/services/hedging.py); a lost hedge's time is a
lower bound of its time to first event, kept only where it raises the estimate (`*_at_least`).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

EWMA_WEIGHT = 0.3  # of the newest sample: recent enough to notice a slowdown within a few requests
RING_SIZE = 64  # samples kept per key for the p95: recent, and cheap to sort
MIN_SAMPLES = 20  # below this a 95th percentile is one outlier's value: no p95 yet


def token_key(token_id: str) -> str:
    return f"token:{token_id}"


def target_key(upstream: str, model: str) -> str:
    return f"target:{upstream}/{model}"


@dataclass
class _Stat:
    inflight: int = 0
    ttfe: float | None = None  # seconds, exponentially weighted

    def add(self, seconds: float) -> None:
        self.ttfe = seconds if self.ttfe is None else self.ttfe + EWMA_WEIGHT * (seconds - self.ttfe)


class Load:
    def __init__(self) -> None:
        self._mine: dict[str, _Stat] = {}
        self._others: Mapping[str, tuple[int, float | None]] = {}
        self._rings: dict[str, deque[float]] = {}  # not in `snapshot`: the load table is unchanged
        self._lock = threading.Lock()

    def begin(self, *keys: str) -> None:
        """A request starts using these keys (its token and its target)."""
        with self._lock:
            for key in keys:
                self._mine.setdefault(key, _Stat()).inflight += 1

    def end(self, *keys: str) -> None:
        """The request that `begin` counted has ended (its answer finished, or its attempt failed)."""
        with self._lock:
            for key in keys:
                stat = self._mine.get(key)
                if stat is not None and stat.inflight > 0:
                    stat.inflight -= 1

    def first_event(self, seconds: float, *keys: str) -> None:
        """An attempt's time to its first event (or its plain answer's headers)."""
        with self._lock:
            for key in keys:
                self._mine.setdefault(key, _Stat()).add(seconds)

    def first_event_at_least(self, seconds: float, *keys: str) -> None:
        """No first event after `seconds` (a lost hedge): a sample for the keys with no estimate yet, or
        whose estimate (`ttfe`) is lower; a lower bound below the estimate says nothing."""
        with self._lock:
            for key in keys:
                known = self.ttfe(key)
                if known is None or seconds > known:
                    self._mine.setdefault(key, _Stat()).add(seconds)

    def ttfe_sample(self, seconds: float, key: str) -> None:
        """A time-to-first-event sample for `ttfe_p95(key)` only (any key, in the load table or not)."""
        with self._lock:
            self._ring(key).append(seconds)

    def ttfe_sample_at_least(self, seconds: float, key: str) -> None:
        """A lower bound for `key`'s ring: kept when the ring is empty or `seconds` exceeds its current 95th
        percentile (nearest rank over what it holds, however few)."""
        with self._lock:
            ring = self._ring(key)
            if not ring or seconds > _p95(ring):
                ring.append(seconds)

    def _ring(self, key: str) -> deque[float]:
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = deque(maxlen=RING_SIZE)
        return ring

    def ttfe_p95(self, key: str) -> float | None:
        """The 95th percentile of the last RING_SIZE samples of `key` (nearest rank), None with fewer than
        MIN_SAMPLES. This worker's samples only: the other workers report their EWMA, not their samples."""
        with self._lock:
            ring = self._rings.get(key)
            return _p95(ring) if ring is not None and len(ring) >= MIN_SAMPLES else None

    def inflight(self, key: str) -> int:
        """Requests in flight on `key` across every worker (others as last reported)."""
        mine = self._mine.get(key)
        others = self._others.get(key)
        return (mine.inflight if mine else 0) + (others[0] if others else 0)

    def ttfe(self, key: str) -> float | None:
        """Recent time to first event in seconds: this worker's when it has one, else the others'."""
        mine = self._mine.get(key)
        if mine is not None and mine.ttfe is not None:
            return mine.ttfe
        others = self._others.get(key)
        return others[1] if others else None

    def snapshot(self) -> dict[str, tuple[int, float | None]]:
        """This worker's own figures, to report: key -> (in flight, ttfe seconds)."""
        with self._lock:
            return {key: (stat.inflight, stat.ttfe) for key, stat in self._mine.items()}

    def merge(self, others: Mapping[str, tuple[int, float | None]]) -> None:
        """The other workers' figures as last reported: key -> (in flight summed, ttfe seconds)."""
        self._others = dict(others)


def _p95(samples: deque[float]) -> float:
    """The nearest-rank 95th percentile of a non-empty ring."""
    ordered = sorted(samples)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]
