"""The upstream token pool: stable ids, rotation, cooldowns, and the retry table.

The retry/cooldown policy is data (`RETRY_TABLE`) read by one pure function,
`classify`; the pool only keeps state. State is per process for now: the
persistent-state work moves `TokenState` into the shared store.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime

from app.config import UpstreamConfig

MAX_RETRY_AFTER = 3600.0

# status -> (retry on another token, cooldown seconds). For 429 the cooldown is
# Retry-After when the upstream sends one (capped at MAX_RETRY_AFTER).
RETRY_TABLE: dict[int, tuple[bool, float]] = {
    401: (True, 600.0),
    403: (True, 60.0),
    429: (True, 30.0),
    **{s: (True, 5.0) for s in (408, 500, 502, 503, 504, 520, 521, 522, 523, 524)},
}
TRANSPORT_COOLDOWN = 5.0  # connection error, connect or read timeout


@dataclass(frozen=True)
class Decision:
    """What one failed attempt means: retry elsewhere? cool the token down for how long?"""

    retry: bool
    cooldown: float
    reason: str


def is_retryable(status_or_error: int | str) -> bool:
    """True for the statuses in RETRY_TABLE and for every transport error kind."""
    if isinstance(status_or_error, str):
        return True
    return status_or_error in RETRY_TABLE


def classify(status: int | None, error_kind: str | None, retry_after: str | None, now: float) -> Decision:
    """Apply the retry table to one attempt's outcome (`error_kind` when no status)."""
    if status is None:
        return Decision(True, TRANSPORT_COOLDOWN, error_kind or "connect_error")
    if status not in RETRY_TABLE:
        return Decision(False, 0.0, f"http_{status}")
    retry, cooldown = RETRY_TABLE[status]
    if status == 429:
        parsed = parse_retry_after(retry_after, now)
        cooldown = cooldown if parsed is None else parsed
    return Decision(retry, cooldown, f"http_{status}")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), capped at 1 h."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(when - now, 0.0), MAX_RETRY_AFTER)


def token_id(upstream: str, value: str | None) -> str:
    """A stable, non-secret id: upstream name plus a short hash of the token."""
    if value is None:
        return f"{upstream}:none"
    return f"{upstream}:{hashlib.sha256(value.encode()).hexdigest()[:12]}"


def mask(value: str | None) -> str:
    """Display form of a secret: its last 4 characters at most, nothing under 12."""
    if not value:
        return "-"
    return f"...{value[-4:]}" if len(value) >= 12 else "***"


@dataclass(frozen=True)
class Token:
    id: str
    upstream: str
    value: str | None = field(repr=False)

    @property
    def masked(self) -> str:
        return mask(self.value) if self.value is not None else "(none)"


@dataclass
class TokenState:
    cooldown_until: float = 0.0
    last_status: int | None = None
    successes: int = 0
    failures: int = 0


class TokenPool:
    """Rotation over each upstream's tokens, skipping those cooling down."""

    def __init__(self, upstreams: Iterable[UpstreamConfig]) -> None:
        self._tokens: dict[str, list[Token]] = {}
        for up in upstreams:
            values: Sequence[str | None] = up.tokens or (None,)
            self._tokens[up.name] = [Token(token_id(up.name, v), up.name, v) for v in values]
        self._state = {t.id: TokenState() for ts in self._tokens.values() for t in ts}
        self._cursor = {name: 0 for name in self._tokens}
        self._lock = threading.Lock()

    def secrets(self) -> list[str]:
        return [t.value for ts in self._tokens.values() for t in ts if t.value]

    def pick(self, upstream: str, exclude: set[str], now: float) -> Token | None:
        """Next token of `upstream` in rotation that is not cooling down nor in `exclude`."""
        with self._lock:
            tokens = self._tokens[upstream]
            start = self._cursor[upstream]
            for offset in range(len(tokens)):
                index = (start + offset) % len(tokens)
                token = tokens[index]
                if token.id not in exclude and self._state[token.id].cooldown_until <= now:
                    self._cursor[upstream] = index + 1
                    return token
        return None

    def report(self, token: Token, *, status: int | None, ok: bool, cooldown: float, now: float) -> None:
        """Record an attempt's outcome; a positive cooldown benches the token until now+cooldown."""
        with self._lock:
            state = self._state[token.id]
            state.last_status = status
            if ok:
                state.successes += 1
            else:
                state.failures += 1
            if cooldown > 0:
                state.cooldown_until = max(state.cooldown_until, now + cooldown)

    def state(self, token_id: str) -> TokenState:
        """A copy of one token's state (for probes, the CLI and tests)."""
        with self._lock:
            return replace(self._state[token_id])

    def tokens(self, upstream: str) -> list[Token]:
        return list(self._tokens[upstream])

    def usable_count(self, upstream: str, now: float) -> int:
        return sum(1 for t in self._tokens[upstream] if self._state[t.id].cooldown_until <= now)

    def retry_after(self, upstreams: Iterable[str], now: float) -> int:
        """Whole seconds until the earliest cooldown among `upstreams` ends (at least 1)."""
        ends = [self._state[t.id].cooldown_until for name in upstreams for t in self._tokens[name]]
        return max(1, math.ceil(min(ends, default=now) - now))
