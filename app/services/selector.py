"""The selector: which upstream and token an attempt goes to, and what an attempt's outcome
teaches it (circuit breakers, token cooldowns), plus the per-worker queue for requests that
find no usable token. The retry loop (app/services/attempts.py) is handed one; routing policy
lives here and nowhere else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from app.config import GatewayConfig, UpstreamConfig
from app.services.breaker import Breakers
from app.services.load import Load
from app.services.outcomes import Decision
from app.services.tokens import Token, TokenPool


@dataclass(frozen=True)
class Choice:
    """Where one attempt goes: the upstream (run-time overrides applied) and the token."""

    upstream: UpstreamConfig
    token: Token


class Selector:
    def __init__(self, settings: GatewayConfig, pool: TokenPool, load: Load, clock: Callable[[], float]) -> None:
        self.pool, self.load, self.clock = pool, load, clock
        self.breakers = Breakers(settings.breaker_failures, settings.breaker_cooldown)
        self.queue_timeout, self.max_queued = settings.queue_timeout, settings.max_queued
        self._waiting: set[int] = set()
        self._queue_lock = threading.Lock()

    def overrides(self) -> Mapping[str, tuple]:
        """The run-time upstream overrides, read once per request."""
        return self.pool.overrides(self.clock())

    def pick(
        self,
        upstreams: Sequence[UpstreamConfig],
        tried: set[str],
        overrides: Mapping[str, tuple],
        pinned: str | None = None,
    ) -> Choice | None:
        """The next attempt's target: config order, skipping open breakers and tried tokens
        (or the `pinned` token alone, cooling down or not: no other can serve the call)."""
        now = self.clock()
        if pinned is not None:
            token = self.pool.find(pinned)
            if token is None or token.id in tried:
                return None
            upstream = next((u for u in upstreams if u.name == token.upstream), None)
            return Choice(self.pool.effective(upstream, overrides), token) if upstream is not None else None
        for upstream in upstreams:
            if self.breakers.is_open(upstream.name, now):
                continue
            token = self.pool.pick(upstream.name, tried, now)
            if token is not None and self.breakers.allow(upstream.name, now):
                return Choice(self.pool.effective(upstream, overrides), token)
        return None

    def record(self, choice: Choice, decision: Decision) -> None:
        """Learn from an attempt's outcome: the breaker first (in memory, it must learn the verdict even
        if the store fails), then the token's state for every worker."""
        now = self.clock()
        policy = decision.policy
        self.breakers.record(choice.upstream.name, fault=policy.upstream_fault, now=now)
        self.pool.report(
            choice.token, status=decision.status, ok=not policy.token_fault, cooldown=decision.cooldown, now=now
        )

    def release(self, choice: Choice) -> None:
        """An attempt ended without a verdict (client gone, deadline): nothing is learnt, the trial is freed."""
        self.breakers.release(choice.upstream.name)

    def retry_after(self, upstreams: Sequence[UpstreamConfig]) -> int:
        """Seconds until a routed upstream may take an attempt again (a breaker or a cooldown)."""
        names = [u.name for u in upstreams]
        now = self.clock()
        breaker_wait = self.breakers.retry_after(names, now)
        if breaker_wait is not None:
            return breaker_wait
        return self.pool.retry_after([n for n in names if not self.breakers.is_open(n, now)], now)

    def enter_queue(self, waiter: object) -> bool:
        """Join the per-worker queue of requests waiting for a token (False: queueing off or full)."""
        with self._queue_lock:
            if id(waiter) in self._waiting:
                return True
            if self.queue_timeout <= 0 or len(self._waiting) >= self.max_queued:
                return False
            self._waiting.add(id(waiter))
            return True

    def leave_queue(self, waiter: object) -> None:
        with self._queue_lock:
            self._waiting.discard(id(waiter))
