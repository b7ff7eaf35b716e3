"""Background health probes: one prober for the whole deployment, holder of lease "prober".

Every worker's scheduler calls `Prober.tick` every second; the tick reads the current
`[gateway] probe_interval` (a reload applies at once), renews or tries to take the lease at most
four times per interval, and while it holds the lease probes each upstream with `probe` set about
once per interval (jittered by +-20% so that upstreams and restarted deployments drift apart).
The probes themselves run in one thread of their own, so a slow upstream never delays the
scheduler's other chores. A worker gives the lease up at exit (Gateway.close).

A probe goes out on the worker's session but never through the client request path: no usage
record, no key's limits, no success or failure count. It records `last_probe_*` on the token;
a passing probe brings back what Sluice itself took out (auto-disabled, cooling), never what the
operator disabled or removed (those are not probed at all); a 401/403 counts towards auto-disable.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable

from app.config import UpstreamConfig
from app.services import events
from app.services.probe import ProbeResult, probe
from app.services.tokens import TokenPool, announce_disabled, mask
from app.state import Gateway
from app.storage.leases import PROBER_LEASE, Leases
from app.storage.tokens import TokenRow

log = logging.getLogger("sluice.prober")
LEASE = PROBER_LEASE
PERIOD = 1.0  # seconds between the scheduler's calls of `tick` (the interval is read at each)
JITTER = 0.2  # each upstream's next probe: interval * (1 +- JITTER)
LEASE_SPAN = 1.5  # the lease outlives the holder by this many intervals: a dead holder is replaced soon
READ_TIMEOUT = 10.0  # a probe is small: an upstream that cannot answer it in this long is not healthy
PROBED_STATES = ("healthy", "cooling", "auto_disabled")  # never "disabled" (the operator's) or "removed"

Spawn = Callable[[Callable[[], None]], threading.Thread | None]


def _thread(run: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=run, name="sluice-prober", daemon=True)
    thread.start()
    return thread


class Prober:
    def __init__(
        self,
        gw: Gateway,
        leases: Leases,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = lambda: random.uniform(-JITTER, JITTER),
        spawn: Spawn = _thread,
        started: float | None = None,
    ) -> None:
        """`started`: a worker that has just started first tries for the lease a quarter interval
        later, as its later turns come (None: at the first tick)."""
        self.gw, self.leases, self.clock, self.jitter, self.spawn = gw, leases, clock, jitter, spawn
        # upstream -> (when this process last probed it, its jitter): due again interval * (1 + jitter) later
        self._probed: dict[str, tuple[float, float]] = {}
        self._running: threading.Thread | None = None
        self._touched = started if started is not None else -math.inf  # when the lease was last taken or tried
        self._span = math.inf  # the interval then (so that a shorter one applies at once)
        self._holds = False

    def tick(self) -> None:
        """The scheduler's turn: renew or take the lease when it is time; if held, start the probes that are due."""
        config = self.gw.config
        probed = [u for u in config.upstreams if u.probe is not None]
        if not probed:
            return
        interval, now = config.gateway.probe_interval, self.clock()
        if not self._holding(interval, now):
            return
        if self._running is not None and self._running.is_alive():
            return  # the last round is still going: its upstreams come round again next turn
        due = [u for u in probed if self._due(u.name, interval) <= now]
        for upstream in due:
            self._probed[upstream.name] = (now, self.jitter())
        if due:
            self._running = self.spawn(lambda: self.run(due))

    def _holding(self, interval: float, now: float) -> bool:
        """Whether this process holds the lease, asking the store at most every interval / 4 (the
        shorter of the current interval and the one the lease was last taken for): the lease lasts
        1.5 intervals, so between two asks it cannot have passed to another process."""
        if 0 <= now - self._touched < min(interval, self._span) / 4:  # (a clock set back asks at once)
            return self._holds
        self._touched, self._span = now, interval
        self._holds = self.leases.take(LEASE, self.gw.worker, now, interval * LEASE_SPAN)
        if not self._holds:
            self._probed.clear()  # another process probes; should this one take over, it starts afresh
        return self._holds

    def _due(self, upstream: str, interval: float) -> float:
        """When `upstream` is next due by the current interval (at once if this process never probed it)."""
        at, jitter = self._probed.get(upstream, (-math.inf, 0.0))
        return at + interval * (1 + jitter)

    def run(self, upstreams: list[UpstreamConfig]) -> None:
        """Probe each upstream in turn; one upstream's trouble never stops the others'."""
        for upstream in upstreams:
            try:
                self.probe_upstream(upstream)
            except Exception:  # a storage or programming error: logged, the next round tries again
                log.exception("probe of upstream %s failed", upstream.name)

    def probe_upstream(self, upstream: UpstreamConfig) -> int:
        """Probe every token of `upstream` that Sluice may bring back or keep; returns how many it re-enabled."""
        pool = self.gw.pool
        dry = pool.usable_count(upstream.name, self.clock()) == 0
        effective = pool.effective(upstream, pool.stored_overrides())
        recovered = 0
        for row in pool.rows(upstream.name):
            if row.state(self.clock()) in PROBED_STATES:
                recovered += self._probe_token(pool, effective, row)
        if dry and recovered and pool.usable_count(upstream.name, self.clock()) > 0:
            text = f"upstream {upstream.name} has usable tokens again ({recovered} brought back by a probe)"
            log.warning("%s", text)
            events.emit("upstream_recovered", upstream.name, text, {"upstream": upstream.name, "tokens": recovered})
        return recovered

    def _probe_token(self, pool: TokenPool, upstream: UpstreamConfig, row: TokenRow) -> int:
        value = pool.value_of(row)
        if value is False:
            return 0  # no known value (a config token gone from the file, undecryptable): nothing to send
        result = probe(self.gw.client.session, upstream, value, upstream.probe, READ_TIMEOUT)  # type: ignore[arg-type]
        after = pool.auto_disable_after
        back, disabled = pool.repo.record_probe(
            row.id, status=result.status, ok=result.ok, detail=result.detail, now=self.clock(), disable_after=after
        )
        log_probe(upstream.name, row, value, result, back)  # type: ignore[arg-type]
        if disabled:
            announce_disabled(row.id, upstream.name, result.status, after)
        return int(back)


def log_probe(upstream: str, row: TokenRow, value: str | None, result: ProbeResult, back: bool) -> None:
    """One line per probe, marked as a probe (never a client request), the token masked."""
    log.info(
        "probe upstream=%s token=%s id=%s status=%s ok=%s latency_ms=%.0f detail=%r%s",
        upstream, mask(value) if value else "(none)", row.id, result.status if result.status is not None else "-",
        str(result.ok).lower(), result.latency_ms, result.detail, " re-enabled" if back else "",
    )  # fmt: skip
