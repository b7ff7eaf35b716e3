"""Background health probes: one prober for the whole deployment, holder of lease "prober".

Every worker's scheduler calls `Prober.tick` about four times per `[gateway] probe_interval`;
only the lease holder probes, each upstream with `probe` set about once per interval (jittered
by +-20% so that upstreams and restarted deployments drift apart). The probes themselves run in
one thread of their own, so a slow upstream never delays the scheduler's other chores.

A probe goes out on the worker's session but never through the client request path: no usage
record, no key's limits, no success or failure count. It records `last_probe_*` on the token;
a passing probe brings back what Sluice itself took out (auto-disabled, cooling), never what the
operator disabled or removed (those are not probed at all); a 401/403 counts towards auto-disable.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from app.config import UpstreamConfig
from app.services import events
from app.services.probe import ProbeResult, probe
from app.services.tokens import TokenPool, announce_disabled, mask
from app.state import Gateway
from app.storage.leases import Leases
from app.storage.tokens import TokenRow

log = logging.getLogger("sluice.prober")
LEASE = "prober"
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
    ) -> None:
        self.gw, self.leases, self.clock, self.jitter, self.spawn = gw, leases, clock, jitter, spawn
        self._due: dict[str, float] = {}  # upstream -> time of its next probe (while this process holds the lease)
        self._running: threading.Thread | None = None

    def tick(self) -> None:
        """The scheduler's turn: renew or take the lease; if held, start the probes that are due."""
        config = self.gw.config
        probed = [u for u in config.upstreams if u.probe is not None]
        if not probed:
            return
        interval, now = config.gateway.probe_interval, self.clock()
        if not self.leases.take(LEASE, self.gw.worker, now, interval * LEASE_SPAN):
            self._due.clear()  # another process probes; should this one take over, it starts afresh
            return
        if self._running is not None and self._running.is_alive():
            return  # the last round is still going: its upstreams come round again next turn
        due = [u for u in probed if self._due.get(u.name, 0.0) <= now]
        for upstream in due:
            self._due[upstream.name] = now + interval * (1 + self.jitter())
        if due:
            self._running = self.spawn(lambda: self.run(due))

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
