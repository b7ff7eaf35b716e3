"""Per-upstream circuit breakers: stop sending to an upstream that keeps failing.

A breaker opens after `failures` consecutive failed attempts on its upstream (server errors,
connection errors and timeouts: 401/403/429 describe one token, not the upstream), lets one
trial request through after `cooldown` seconds (half-open), and closes on its success.
State is per worker process: each worker learns an upstream's health from its own traffic; a
config reload keeps it for the upstreams still configured (`configure`). Opening (closed -> open)
and closing (a trial's success) are `breaker_open` / `breaker_closed` events (app/services/events.py).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.services import events


@dataclass(frozen=True)
class Pass:
    """An attempt `allow` let through; `trial` numbers the half-open trial it claimed (0: none claimed)."""

    trial: int = 0


@dataclass
class _State:
    failures: int = 0
    opened_at: float | None = None
    trial: int = 0  # the half-open trial in flight (its number), 0: none


class Breakers:
    def __init__(self, failures: int, cooldown: float) -> None:
        self.failures, self.cooldown = failures, cooldown
        self._states: dict[str, _State] = {}
        self._trials = 0  # the last trial number given out
        self._lock = threading.Lock()

    def configure(self, failures: int, cooldown: float, upstreams: Iterable[str]) -> None:
        """A reload's settings: the state of `upstreams` is kept, that of upstreams no longer configured dropped."""
        keep = set(upstreams)
        with self._lock:
            self.failures, self.cooldown = failures, cooldown
            self._states = {name: state for name, state in self._states.items() if name in keep}

    def allow(self, upstream: str, now: float) -> Pass | None:
        """May an attempt go to `upstream` now (None: no)? Claims the half-open trial when it is due: only
        the holder of that Pass may `release` it."""
        with self._lock:
            state = self._states.setdefault(upstream, _State())
            if state.opened_at is None:
                return Pass()
            if now < state.opened_at + self.cooldown or state.trial:
                return None
            self._trials += 1
            state.trial = self._trials
            return Pass(state.trial)

    def record(self, upstream: str, *, fault: bool, now: float) -> None:
        with self._lock:
            state = self._states.setdefault(upstream, _State())
            state.trial = 0  # any verdict settles the half-open state (a leaked trial cannot block it)
            was_open = state.opened_at is not None
            if not fault:
                state.failures, state.opened_at = 0, None
            else:
                state.failures += 1
                if was_open or state.failures >= self.failures:
                    state.opened_at = now  # (re)open: a failed trial waits a full cooldown again
            failures, is_open = state.failures, state.opened_at is not None
        if is_open and not was_open:
            text = f"Circuit breaker open for upstream {upstream} after {failures} failed attempts in a row."
            events.emit("breaker_open", upstream, text, {"upstream": upstream, "failures": failures})
        elif was_open and not is_open:
            events.emit("breaker_closed", upstream, f"Circuit breaker closed for upstream {upstream}: a trial "
                        "request succeeded.", {"upstream": upstream})  # fmt: skip

    def release(self, upstream: str, trial: int) -> None:
        """The attempt holding half-open trial number `trial` ended without a verdict (client gone, deadline,
        a lost hedge): free that trial. Any other (an attempt let through while closed, or an older trial
        already settled by a verdict) frees nothing: another attempt may hold the current trial."""
        with self._lock:
            state = self._states.get(upstream)
            if state is not None and trial and state.trial == trial:
                state.trial = 0

    def view(self, upstream: str, now: float) -> dict[str, Any]:
        """The breaker as the admin API shows it: closed, open (until a trial is let through), or half-open
        (opened, cooled down: the next attempt is a trial)."""
        state = self._states.get(upstream)
        if state is None or state.opened_at is None:
            return {"state": "closed", "until": None}
        until = state.opened_at + self.cooldown
        return {"state": "open", "until": until} if now < until else {"state": "half_open", "until": None}

    def is_open(self, upstream: str, now: float) -> bool:
        state = self._states.get(upstream)
        return state is not None and state.opened_at is not None and now < state.opened_at + self.cooldown

    def retry_after(self, upstreams: Iterable[str], now: float) -> int | None:
        """Seconds until the first of `upstreams` half-opens, when all of them are open."""
        ends = []
        for name in upstreams:
            state = self._states.get(name)
            if state is None or state.opened_at is None:
                return None
            ends.append(state.opened_at + self.cooldown)
        return max(1, math.ceil(min(ends) - now)) if ends else None
