"""The upstream token pool: stable ids, rotation, cooldowns, and the retry table.

The retry/cooldown policy is data (`RETRY_TABLE`) read by one pure function,
`classify`; the pool applies it to state kept in the shared store.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from app.config import UpstreamConfig
from app.services import events
from app.services.secrets import (
    SecretBox,
    SecretsUnavailable,
    is_secret_header,
    open_headers,
    reseal_headers,
    seal_headers,
)
from app.storage.tokens import TokenRepo, TokenRow

log = logging.getLogger("sluice.tokens")


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


class TokenPool:
    """Rotation over each upstream's usable tokens; state lives in the shared store.

    Config tokens' values come from the config file, run-time tokens' from their
    ciphertext (decrypted once per process). Cooldowns, disabled/removed flags and
    counts are read from and written to the database, so every worker sees them.
    """

    def __init__(
        self,
        upstreams: Iterable[UpstreamConfig],
        repo: TokenRepo,
        box: SecretBox,
        on_secret: Callable[[str], None] = lambda _: None,
        now: float | None = None,
        auto_disable_after: int = 3,
    ) -> None:
        self.repo, self.box, self.on_secret = repo, box, on_secret
        self.auto_disable_after = auto_disable_after  # [gateway] auto_disable_after; 0: never
        self.upstreams = {u.name: u for u in upstreams}
        self._values: dict[str, str | None] = {}
        for up in self.upstreams.values():
            for value in up.tokens or (None,):
                self._values[token_id(up.name, value)] = value
        self._order = {tid: i for i, tid in enumerate(self._values)}  # config order first, then run-time ones
        seeds = [(tid, tid.split(":", 1)[0], mask(v) if v else "(none)") for tid, v in self._values.items()]
        repo.seed(seeds, time.time() if now is None else now)
        self._cursor: dict[str, int] = {}
        self._lock = threading.Lock()
        self._successes: dict[str, tuple[int, int | None, float]] = {}
        self._overrides: tuple[float, Mapping[str, tuple]] = (float("-inf"), {})
        self._candidates: dict[str, tuple[list[TokenRow], int, list[tuple[Token, TokenRow]]]] = {}

    def secrets(self) -> list[str]:
        """Token values and the config file's secret-looking header values (for the log redactor)."""
        headers = [v for u in self.upstreams.values() for k, v in u.headers.items() if _redactable(k, v)]
        return [v for v in self._values.values() if v] + headers

    def candidates(self, upstream: str) -> list[tuple[Token, TokenRow]]:
        """Enabled tokens of `upstream` whose value is known, in a stable order (not to be changed by the caller).

        Worked out again only when the stored rows are new (SQLite's cache hands out the same list until a
        token changes: app/storage/changes.py) or a value was learnt since; a value that could not be read
        is tried again on the next call, as before."""
        rows, known = self.repo.states(upstream), len(self._values)
        memo = self._candidates.get(upstream)
        if memo is not None and memo[0] is rows and memo[1] == known:
            return memo[2]
        result, whole = [], True
        for row in self._sorted(rows):
            if row.enabled and not row.removed:
                value = self._value(row)
                if value is not False:
                    result.append((Token(row.id, upstream, value), row))  # type: ignore[arg-type]
                else:
                    whole = False
        if whole:
            self._candidates[upstream] = (rows, len(self._values), result)
        return result

    def rows(self, upstream: str | None = None) -> list[TokenRow]:
        """Stored token rows in config order (config tokens first, then run-time ones by age)."""
        return self._sorted(self.repo.rows(upstream))

    def _sorted(self, rows: list[TokenRow]) -> list[TokenRow]:
        return sorted(rows, key=lambda r: (r.upstream, self._order.get(r.id, len(self._order)), r.created_at))

    def value_of(self, row: TokenRow) -> str | None | bool:
        """The token's value (None: a token-less upstream; False: unknown) for an admin probe."""
        return self._value(row)

    def _value(self, row: TokenRow) -> str | None | bool:
        """The token's value; False when unknown (a config token no longer in the file, or undecryptable)."""
        if row.id in self._values:
            return self._values[row.id]
        if row.source != "runtime" or row.secret is None:
            return False
        try:
            value = self.box.decrypt(row.secret)
        except SecretsUnavailable as exc:
            log.warning("token %s skipped: %s", row.id, exc)
            return False
        self.on_secret(value)
        with self._lock:
            self._values[row.id] = value
        return value

    def find(self, token_id: str) -> Token | None:
        """An enabled token by id (its upstream is the id's prefix), or None."""
        upstream = token_id.split(":", 1)[0]
        return next((token for token, _ in self.candidates(upstream) if token.id == token_id), None)

    def pick(self, upstream: str, exclude: set[str], now: float) -> Token | None:
        """Next usable token of `upstream` in rotation, skipping cooling and `exclude`d ones."""
        candidates = self.candidates(upstream)
        with self._lock:
            start = self._cursor.get(upstream, 0)
            for offset in range(len(candidates)):
                index = (start + offset) % len(candidates)
                token, row = candidates[index]
                if row.cooldown_until <= now and token.id not in exclude:
                    self._cursor[upstream] = index + 1
                    return token
        return None

    def report(self, token: Token, *, status: int | None, ok: bool, cooldown: float, now: float) -> None:
        """Record an attempt's outcome. A failure is written at once (a cooldown benches the token
        for every worker); successes are counted here and written by `flush` about once a second."""
        if ok and cooldown <= 0:
            with self._lock:
                count, _, _ = self._successes.get(token.id, (0, None, 0.0))
                self._successes[token.id] = (count + 1, status, now)
            return
        after = self.auto_disable_after
        if self.repo.report(token.id, status=status, ok=ok, cooldown=cooldown, now=now, disable_after=after):
            announce_disabled(token.id, token.upstream, status, after)

    def flush(self) -> None:
        """Write the success counts gathered since the last flush."""
        with self._lock:
            pending, self._successes = self._successes, {}
        for tid, (count, status, at) in pending.items():
            self.repo.add_successes(tid, count, status, at)

    def overrides(self, now: float) -> Mapping[str, tuple]:
        """Run-time upstream overrides, re-read at most once a second."""
        if now - self._overrides[0] >= 1.0:
            self._overrides = (now, self.stored_overrides())
        return self._overrides[1]

    def stored_overrides(self) -> dict[str, tuple[str | None, dict[str, str] | None]]:
        """Run-time overrides as read now, secret header values opened (and given to the redactor)."""
        opened = {}
        for upstream, (user_agent, stored) in self.repo.overrides().items():
            headers = None
            if stored is not None:
                headers = {}
                for name, value in stored.items():
                    try:
                        headers[name] = open_headers(self.box, {name: value})[name]
                    except SecretsUnavailable as exc:
                        log.warning("header %s of upstream %s not sent: %s", name, upstream, exc)
                        continue
                    if _redactable(name, headers[name]):
                        self.on_secret(headers[name])
            opened[upstream] = (user_agent, headers)
        return opened

    def save_override(self, upstream: str, user_agent: str | None, headers: dict[str, str] | None, now: float) -> None:
        """Store overrides with secret-looking header values sealed (SecretsUnavailable without a key)."""
        sealed = None if headers is None else seal_headers(self.box, headers)
        for name, value in (headers or {}).items():
            if _redactable(name, value):
                self.on_secret(value)
        self.repo.set_override(upstream, user_agent, sealed, now)

    def reseal_overrides(self) -> int:
        """Re-encrypt stored header overrides under the current key (sealing plain secret ones); the count."""
        count = 0
        for upstream, (user_agent, stored) in self.repo.overrides().items():
            if stored:
                self.repo.set_override(upstream, user_agent, reseal_headers(self.box, stored), time.time())
                count += 1
        return count

    def usable_count(self, upstream: str, now: float) -> int:
        return sum(1 for _, row in self.candidates(upstream) if row.cooldown_until <= now)

    def retry_after(self, upstreams: Iterable[str], now: float) -> int:
        """Whole seconds until the earliest cooldown among `upstreams` ends (at least 1)."""
        ends = [row.cooldown_until for name in upstreams for _, row in self.candidates(name)]
        return max(1, math.ceil(min(ends, default=now) - now))

    def effective(self, upstream: UpstreamConfig, overrides: Mapping[str, tuple]) -> UpstreamConfig:
        """The upstream with its run-time overrides (user agent, extra headers) applied."""
        user_agent, headers = overrides.get(upstream.name, (None, None))
        if user_agent is None and headers is None:
            return upstream
        return replace(
            upstream,
            user_agent=user_agent or upstream.user_agent,
            headers=upstream.headers if headers is None else headers,
        )


def announce_disabled(tid: str, upstream: str, status: int | None, after: int) -> None:
    """Log and emit `token_auto_disabled` (by id: never the value) for the one caller that disabled it."""
    text = f"token {tid} of {upstream} auto-disabled after {after} answers of HTTP 401/403 in a row (last: {status})"
    log.warning("%s", text)
    events.emit("token_auto_disabled", tid, text, {"upstream": upstream, "token": tid, "status": status})


def _redactable(name: str, value: str) -> bool:
    """A header value the log redactor should hide: a secret-looking name and a value long enough
    not to be an ordinary word ("on", "true") that would be masked everywhere."""
    return is_secret_header(name) and len(value) >= 8
