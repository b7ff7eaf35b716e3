"""The selector: which upstream and token an attempt goes to, and what an attempt's outcome
teaches it (circuit breakers, token cooldowns), plus the per-worker queue for requests that
find no usable token. The retry loop (app/services/attempts.py) is handed one; routing policy
lives here and nowhere else.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from app.config import GatewayConfig, UpstreamConfig
from app.services import events, strategies
from app.services.breaker import Breakers
from app.services.calls import Hop, Route
from app.services.load import Load, token_key
from app.services.outcomes import Decision
from app.services.tokens import Token, TokenPool


@dataclass(frozen=True)
class Choice:
    """Where one attempt goes: the route, its upstream (run-time overrides applied) and the token."""

    upstream: UpstreamConfig
    token: Token
    route: Route
    trial: int = 0  # the breaker's half-open trial this attempt claimed (0: none), released only by it

    def load_keys(self) -> tuple[str, ...]:
        """The Load keys this attempt counts on: its token, and its target when it sends a model."""
        if self.route.model is None:
            return (token_key(self.token.id),)
        return token_key(self.token.id), self.route.load_key


class Selector:
    def __init__(
        self,
        settings: GatewayConfig,
        pool: TokenPool,
        load: Load,
        clock: Callable[[], float],
        rng: random.Random | None = None,
        breakers: Breakers | None = None,
    ) -> None:
        """`breakers`: the ones a reload carries over (configured already); None: new ones."""
        self.pool, self.load, self.clock = pool, load, clock
        self.rng = rng or random.Random()
        self.breakers = breakers or Breakers(settings.breaker_failures, settings.breaker_cooldown)
        self.queue_timeout, self.max_queued = settings.queue_timeout, settings.max_queued
        self._waiting: set[int] = set()
        self._queue_lock = threading.Lock()

    def overrides(self) -> Mapping[str, tuple]:
        """The run-time upstream overrides, read once per request."""
        return self.pool.overrides(self.clock())

    def order(self, hop: Hop, failed: set[str]) -> list[Route]:
        """The hop's routes in the order its strategy prefers now (app/services/strategies.py)."""
        return strategies.order(
            hop.strategy, hop.routes, failed=failed, rng=self.rng,
            inflight=lambda r: self.load.inflight(r.load_key), ttfe=lambda r: self.load.ttfe(r.load_key),
        )  # fmt: skip

    def pick(
        self,
        routes: Sequence[Route],
        tried: Mapping[str, set[str]],
        overrides: Mapping[str, tuple],
        pinned: str | None = None,
    ) -> Choice | None:
        """The next attempt's route and token: routes in the order given, skipping open breakers and the
        tokens `tried` on that route (or the `pinned` token alone, cooling down or not: no other can serve)."""
        now = self.clock()
        if pinned is not None:
            token = self.pool.find(pinned)
            route = next((r for r in routes if token is not None and r.upstream.name == token.upstream), None)
            if token is None or route is None or token.id in tried.get(route.key, ()):
                return None
            return Choice(self.pool.effective(route.upstream, overrides), token, route)
        for route in routes:
            name = route.upstream.name
            if self.breakers.is_open(name, now):
                continue
            token = self.pool.pick(name, self._busier(name, tried.get(route.key, set()), now), now)
            admitted = self.breakers.allow(name, now) if token is not None else None
            if token is not None and admitted is not None:
                return Choice(self.pool.effective(route.upstream, overrides), token, route, admitted.trial)
        return None

    def _busier(self, upstream: str, tried: set[str], now: float) -> set[str]:
        """`tried` plus the usable tokens with more requests in flight than the least busy one, so the
        pool's rotation picks among the least busy (with equal load: plain rotation)."""
        usable = [t.id for t, row in self.pool.candidates(upstream) if row.cooldown_until <= now and t.id not in tried]
        if len(usable) < 2:
            return tried
        counts = {tid: self.load.inflight(token_key(tid)) for tid in usable}
        least = min(counts.values())
        return tried | {tid for tid, count in counts.items() if count > least}

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
        """An attempt ended without a verdict (client gone, deadline, a lost hedge): nothing is learnt; the
        breaker's half-open trial is freed when this attempt claimed it (not one another attempt holds)."""
        self.breakers.release(choice.upstream.name, choice.trial)

    def exhausted(self, hop: Hop) -> None:
        """The pool_exhausted event of a client's call that found no usable token. Its subject is configured
        text, never the client's (a glob route serves any model name): the alias, else the routed upstreams."""
        if not hop.name:  # the gateway's own call (the /v1/models fetch): no client was refused
            return
        upstreams = ",".join(sorted(u.name for u in hop.chain_upstreams()))
        events.emit(
            "pool_exhausted", subject=hop.name if hop.alias else upstreams,
            text="No upstream could take the request: every token is cooling down or every breaker is open.",
            fields={"alias": hop.name, "upstreams": upstreams} if hop.alias else {"upstreams": upstreams},
        )  # fmt: skip

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
