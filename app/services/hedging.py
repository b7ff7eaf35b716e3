"""The attempts one client request has running at once, and when the next hedge starts (issue 14 part 1).

The retry loop (app/services/attempts.py) holds one `Hedging`: it adds each attempt it starts and
removes each one that ends; this module waits on them all (one exchange alone, or several through one
waker event), says which attempt is past its first-byte limit, when a hedge is due (`hedge_after`
from the latest start, or the target's recent p95), which routes a hedge tries first, which
attempts lost to the winner, and how long a decisive failure waits for the others (`hold`).
Recording attempts and teaching the selector stay with the loop.

The p95 rings: a plain request's first event is its 2xx status, which an upstream sends once the
whole answer is generated, so plain and streamed attempts keep separate rings per target (a plain
request's "p95" is that of plain requests): plain times never raise a stream's hedge delay.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from app.config_routing import Hedge
from app.dialects.base import Leg
from app.services import metrics
from app.services.calls import Route
from app.services.exchange import Exchange, Message
from app.services.load import Load
from app.services.selector import Choice


@dataclass
class Running:
    """One attempt in progress: its pick, its exchange, when it started and its first-byte limit."""

    choice: Choice
    leg: Leg
    exchange: Exchange
    started: float
    first_byte_timeout: float
    first_byte_deadline: float
    hedge: bool = False  # started as a hedge beside a late attempt
    response: requests.Response | None = None
    prefix: list[bytes] = field(default_factory=list)  # events up to and including the first data event


def hedge_delay(hedge: Hedge, p95: float | None, first_byte_timeout: float) -> float | None:
    """Seconds without a first event before a hedge starts: `hedge_after`, or for "p95" the target's recent
    95th percentile within the attempt's first-byte limit; None when there are too few samples to know."""
    if hedge.after is not None:
        return hedge.after
    return None if p95 is None else min(p95, first_byte_timeout)


def ring_key(route: Route, streaming: bool) -> str:
    """The p95 ring of `route`'s target for streamed attempts, or for plain ones."""
    return route.load_key if streaming else f"{route.load_key}#plain"


def count(current: Running, result: str) -> None:
    """sluice_hedges_total for a hedge that won (counted once its answer is recorded) or lost; a first
    attempt is no hedge."""
    if current.hedge:
        metrics.HEDGES.labels(upstream=current.choice.upstream.name, result=result).inc()


class Hedging:
    """The running set: `running[0]` is the primary (its route and hedge settings time the hedges)."""

    def __init__(self, load: Load, clock: Callable[[], float], streaming: bool = True) -> None:
        self.load, self.clock, self.streaming = load, clock, streaming
        self.running: list[Running] = []  # one attempt, or more while hedging
        self.started = 0  # hedges started
        self.due = math.inf  # when the next hedge starts, unless a running attempt has its first event
        self.delay = 0.0  # the hedge delay last worked out (how long `hold` waits)
        self.decide_by = math.inf  # held: when a decisive failure answers, whatever still runs (see hold)
        self._on = True  # False once no token was left for a hedge: none for this request then
        self.waker: threading.Event | None = None  # wakes the wait on several attempts (made for the first hedge)

    def add(self, current: Running, hop_hedge: Hedge | None, room: bool) -> None:
        """`current` runs, in the in-flight counts until end() (the winner's: until the loop's finish()); the
        next hedge is due after it (`room`: max_attempts allows one more attempt)."""
        self.load.begin(*current.choice.load_keys())
        self.running.append(current)
        self.decide_by = math.inf
        self.due = self._next(current.started, hop_hedge, room)
        if current.hedge:
            if self.waker is None:
                self.waker = threading.Event()
            for each in self.running:
                each.exchange.waker = self.waker

    def _next(self, now: float, hop_hedge: Hedge | None, room: bool) -> float:
        """When a hedge starts if no running attempt has had its first event by then (inf: never): the
        hop's Hedge, else the primary's upstream's; each hedge waits from the latest start, so
        max_hedges > 1 staggers them."""
        primary = self.running[0]
        hedge = hop_hedge or primary.choice.upstream.hedge
        if hedge is None or not self._on or self.started >= hedge.max_hedges or not room:
            return math.inf
        p95 = self.load.ttfe_p95(ring_key(primary.choice.route, self.streaming)) if hedge.after is None else None
        after = hedge_delay(hedge, p95, primary.first_byte_timeout)
        if after is None:
            return math.inf
        self.delay = after
        return now + after

    def routes(self, ordered: list[Route]) -> list[Route]:
        """A hedge's routes: the primary's first (the pick skips the tokens tried on it), then the hop's order."""
        route = self.running[0].choice.route
        return sorted(ordered, key=lambda r: r.key != route.key)

    def starting(self, choice: Choice | None) -> bool:
        """Count a hedge about to start on `choice`; None (no token left) means no hedge for this request."""
        if choice is None:
            self._on, self.due = False, math.inf
            return False
        self.started += 1
        metrics.HEDGES.labels(upstream=choice.upstream.name, result="started").inc()
        return True

    def hold(self, now: float) -> None:
        """A non-retryable failure came beside running attempts: no hedge until the next attempt starts, and
        the failure answers at `decide_by` unless a running one has its first event first. That wait is
        the hedge delay (the time one hedge was given to beat the others), not the others' first-byte
        limit (120 s by default): the client would have had the failure at once without the hedge."""
        self.due = math.inf
        self.decide_by = now + self.delay

    def remove(self, current: Running) -> None:
        """`current` runs no more: accepted (its exchange goes on, not waking the wait), or see end()."""
        self.running.remove(current)
        current.exchange.waker = None

    def end(self, current: Running) -> None:
        """`current` failed or was dropped: out of the set, its exchange closed, out of the in-flight counts."""
        self.remove(current)
        current.exchange.close()
        self.load.end(*current.choice.load_keys())

    def first_event(self, current: Running) -> None:
        """The attempt's time to its first event (or a plain answer's headers), for the latency strategy and
        the hedge delay "p95" (kept per target, also for a route that sends no model; see `ring_key`)."""
        seconds = self.clock() - current.started
        self.load.first_event(seconds, *current.choice.load_keys())
        self.load.ttfe_sample(seconds, ring_key(current.choice.route, self.streaming))

    def won(self, winner: Running | None) -> list[Running]:
        """`winner` had its first event first (None: a decisive failure): no hedge starts after it, and no
        held failure cuts it short (a plain winner still reads its body); the others, to be closed as lost."""
        self.due = self.decide_by = math.inf
        return [each for each in self.running if each is not winner]

    def lost(self, loser: Running) -> None:
        """`loser` (already ended) lost: no first event after this long is a lower bound of its time to first
        event, a sample only where it raises the estimate (one that lost a few ms after it started says
        nothing). Without it, a token that always loses keeps its old (fast) samples, and `latency` and the
        p95 never learn it is slow."""
        seconds = self.clock() - loser.started
        self.load.first_event_at_least(seconds, *loser.choice.load_keys())
        self.load.ttfe_sample_at_least(seconds, ring_key(loser.choice.route, self.streaming))
        count(loser, "lost")

    def late(self, now: float) -> Running | None:
        """A running attempt past its first-byte limit, if any."""
        return next((each for each in self.running if now >= each.first_byte_deadline), None)

    def wait(self, until: float, deadline: float) -> tuple[Running, Message] | None:
        """The next message of any running attempt; None when `until`, the deadline, a first-byte limit or
        the next hedge came first (the caller's timers say which)."""
        if len(self.running) == 1:
            current = self.running[0]
            message = current.exchange.next(self._wake(until, deadline) - self.clock())
            return None if message is None else (current, message)
        waker = self.waker
        assert waker is not None  # several attempts run only once a hedge started
        while True:  # each round returns, or waits on the waker, which only a new message sets
            waker.clear()  # before polling: a message queued after its poll sets it again, so none is missed
            for current in self.running:
                message = current.exchange.next(0)
                if message is not None:
                    return current, message
            now, wake = self.clock(), self._wake(until, deadline)
            if wake <= now or not waker.wait(wake - now):
                return None

    def _wake(self, until: float, deadline: float) -> float:
        return min(until, deadline, self.due, self.decide_by, *(each.first_byte_deadline for each in self.running))
