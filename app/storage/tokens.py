"""Upstream token state and run-time overrides, shared by every worker through the database."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update

from app.storage import schema
from app.storage.changes import Cache
from app.storage.db import Database

t = schema.upstream_tokens.c
TOKEN_STATES = ("healthy", "cooling", "auto_disabled", "disabled", "removed")
AUTH_STATUSES = (401, 403)  # answers that say the token itself is refused


@dataclass(frozen=True)
class TokenRow:
    id: str
    upstream: str
    source: str
    secret: str | None
    masked: str
    enabled: bool
    removed: bool
    cooldown_until: float
    last_status: int | None
    last_at: float | None
    successes: int
    failures: int
    created_at: float
    disabled_by: str | None = None  # "operator" | "auto" (revision 0006)
    disabled_at: float | None = None
    auth_failures: int = 0
    last_error: str | None = None
    last_probe_at: float | None = None
    last_probe_ok: bool | None = None
    last_probe_detail: str | None = None

    def state(self, now: float) -> str:
        """The one reading of a token's flags, shown by the admin API, the dashboard and the gauges:
        one of TOKEN_STATES. A disabled token without `disabled_by` predates revision 0006: the
        operator's (the migration marks those too)."""
        if self.removed:
            return "removed"
        if not self.enabled:
            return "auto_disabled" if self.disabled_by == "auto" else "disabled"
        return "cooling" if self.cooldown_until > now else "healthy"

    def public(self, now: float) -> dict[str, Any]:
        """The JSON view: masked, never the value or its ciphertext."""
        return {
            "id": self.id, "upstream": self.upstream, "source": self.source, "masked": self.masked,
            "state": self.state(now), "cooldown_until": self.cooldown_until if self.cooldown_until > now else None,
            "last_status": self.last_status, "last_at": self.last_at,
            "successes": self.successes, "failures": self.failures, "created_at": self.created_at,
            "disabled_by": None if self.enabled else self.disabled_by, "disabled_at": self.disabled_at,
            "auth_failures": self.auth_failures, "last_error": self.last_error,
            "last_probe": None if self.last_probe_at is None else {
                "at": self.last_probe_at, "ok": self.last_probe_ok, "detail": self.last_probe_detail,
            },
        }  # fmt: skip


class TokenRepo:
    def __init__(self, db: Database) -> None:
        self.db = db
        every = select(schema.upstream_tokens).order_by(t.upstream, t.created_at, t.id)
        self._all, self._of = db.prepare(every), db.prepare(every.where(t.upstream == bindparam("upstream")))
        self._cache: Cache[list[TokenRow]] = Cache(db.changes, "tokens")  # by upstream, per process
        # Success counts are written from the event loop about once a second: prepared statements.
        table, at, count = schema.upstream_tokens, bindparam("at"), bindparam("count")
        mine = t.id == bindparam("token_id")
        # A success newer than the last answer ends any run of 401/403s (auth_failures).
        self._newer = db.prepare(
            update(table).where(mine, t.last_at.is_(None) | (t.last_at <= at))
            .values(successes=t.successes + count, last_status=bindparam("status"), last_at=at, auth_failures=0)
        )  # fmt: skip
        self._older = db.prepare(update(table).where(mine, t.last_at > at).values(successes=t.successes + count))

    def seed(self, tokens: list[tuple[str, str, str]], now: float) -> None:
        """Insert rows for config tokens (id, upstream, masked) not yet known; keeps existing state.

        Workers start together: a row another worker inserted meanwhile is left alone (ON CONFLICT
        DO NOTHING), so a fresh database never fails a worker's start-up.
        """
        with self.db.write() as conn:
            known = set(conn.execute(select(t.id)).scalars())
            rows = [_new_row(tid, upstream, masked, now) for tid, upstream, masked in tokens if tid not in known]
            if rows:
                conn.execute(self.db.insert(schema.upstream_tokens).on_conflict_do_nothing(index_elements=["id"]), rows)
        self.db.changes.signal("tokens")

    def rows(self, upstream: str | None = None) -> list[TokenRow]:
        """Every token's row (of one upstream), as stored now."""
        with self.db.quick() as q:
            found = q.rows(self._all) if upstream is None else q.rows(self._of, {"upstream": upstream})
        return [_token(row) for row in found]

    def states(self, upstream: str) -> list[TokenRow]:
        """The rows as `rows`, for choosing a token on every request: cached while no process has
        changed a token's state since (app/storage/changes.py). Success counts don't signal, so
        the counts in these rows may lag; flags, cooldowns and values never do."""
        return self._cache.get(upstream, lambda: self.rows(upstream)) or []

    def get(self, token_id: str) -> TokenRow | None:
        with self.db.read() as conn:
            row = conn.execute(select(schema.upstream_tokens).where(t.id == token_id)).first()
        return TokenRow(**row._mapping) if row else None

    def report(
        self, token_id: str, *, status: int | None, ok: bool, cooldown: float, now: float, disable_after: int = 0
    ) -> bool:
        """Record an attempt's outcome; True when this call auto-disabled the token: its
        `disable_after`-th 401/403 in a row (0: never). Any other HTTP answer resets that count."""
        values: dict[str, Any] = {"last_status": status, "last_at": now, **_auth_count(status)}
        if ok:
            values["successes"] = t.successes + 1
        else:
            values["failures"] = t.failures + 1
            values["last_error"] = _error_text(status)
        if cooldown > 0:
            values["cooldown_until"] = (
                func.max(t.cooldown_until, now + cooldown)
                if self.db.is_sqlite
                else func.greatest(t.cooldown_until, now + cooldown)
            )
        with self.db.write() as conn:
            conn.execute(update(schema.upstream_tokens).where(t.id == token_id).values(**values))
            disabled = status in AUTH_STATUSES and _auto_disable(conn, token_id, disable_after, now)
        self.db.changes.signal("tokens")
        return disabled

    def record_probe(
        self, token_id: str, *, status: int | None, ok: bool, detail: str, now: float, disable_after: int = 0
    ) -> tuple[bool, bool]:
        """Record a background probe: (recovered, auto_disabled). A passing probe brings back what
        Sluice itself took out (auto-disabled, cooling), never a token the operator disabled or
        removed; a 401/403 counts towards auto-disable like a client's. Never touches the usage counts."""
        probe = {"last_probe_at": now, "last_probe_ok": ok, "last_probe_detail": detail[:200]}
        mine = t.id == token_id
        with self.db.write() as conn:
            conn.execute(update(schema.upstream_tokens).where(mine).values(**probe, **_auth_count(status)))
            recovered = disabled = False
            if ok:
                out = (~t.enabled & (t.disabled_by == "auto")) | (t.enabled & (t.cooldown_until > now))
                back = {"enabled": True, "disabled_by": None, "disabled_at": None, "cooldown_until": 0.0}
                recovered = conn.execute(update(schema.upstream_tokens).where(mine, ~t.removed, out).values(**back))
                recovered = recovered.rowcount == 1
            elif status in AUTH_STATUSES:
                conn.execute(update(schema.upstream_tokens).where(mine).values(last_error=_error_text(status)))
                disabled = _auto_disable(conn, token_id, disable_after, now)
        self.db.changes.signal("tokens")
        return recovered, disabled

    def add_successes(self, token_id: str, count: int, status: int | None, at: float) -> None:
        params = {"token_id": token_id, "count": count, "status": status, "at": at}
        with self.db.quick(write=True) as q:
            q.execute(self._newer, params)
            q.execute(self._older, {"token_id": token_id, "count": count, "at": at})

    def add_runtime(self, token_id: str, upstream: str, cipher: str, masked: str, now: float) -> None:
        with self.db.write() as conn:
            row = _new_row(token_id, upstream, masked, now, source="runtime", secret=cipher)
            conn.execute(insert(schema.upstream_tokens).values(**row))
        self.db.changes.signal("tokens")

    def set_flags(self, token_id: str, **flags: bool | float | str | None) -> bool:
        with self.db.write() as conn:
            changed = conn.execute(update(schema.upstream_tokens).where(t.id == token_id).values(**flags)).rowcount
        self.db.changes.signal("tokens")
        return changed > 0

    def delete(self, token_id: str) -> None:
        with self.db.write() as conn:
            conn.execute(delete(schema.upstream_tokens).where(t.id == token_id))
        self.db.changes.signal("tokens")

    def set_cipher(self, token_id: str, cipher: str) -> None:
        with self.db.write() as conn:
            conn.execute(update(schema.upstream_tokens).where(t.id == token_id).values(secret=cipher))
        self.db.changes.signal("tokens")

    def overrides(self) -> dict[str, tuple[str | None, dict[str, str] | None]]:
        o = schema.upstream_overrides.c
        with self.db.read() as conn:
            rows = conn.execute(select(o.upstream, o.user_agent, o.headers)).fetchall()
        return {r.upstream: (r.user_agent, json.loads(r.headers) if r.headers else None) for r in rows}

    def set_override(self, upstream: str, user_agent: str | None, headers: dict[str, str] | None, now: float) -> None:
        o = schema.upstream_overrides
        values = {"user_agent": user_agent, "headers": None if headers is None else json.dumps(headers)}
        with self.db.write() as conn:
            if conn.execute(update(o).where(o.c.upstream == upstream).values(**values, updated_at=now)).rowcount == 0:
                conn.execute(insert(o).values(upstream=upstream, **values, updated_at=now))

    def delete_override(self, upstream: str) -> bool:
        o = schema.upstream_overrides
        with self.db.write() as conn:
            return conn.execute(delete(o).where(o.c.upstream == upstream)).rowcount > 0


def _auth_count(status: int | None) -> dict[str, Any]:
    """The 401/403-in-a-row count after an answer: one more, back to 0, or unchanged (no answer)."""
    if status in AUTH_STATUSES:
        return {"auth_failures": t.auth_failures + 1}
    return {} if status is None else {"auth_failures": 0}


def _auto_disable(conn: Any, token_id: str, disable_after: int, now: float) -> bool:
    """Take the token out if it has reached `disable_after` auth failures in a row; True for the one
    caller whose statement did (the row lock orders concurrent workers), never an operator's choice."""
    if disable_after <= 0:
        return False
    done = conn.execute(
        update(schema.upstream_tokens)
        .where(t.id == token_id, t.enabled, ~t.removed, t.auth_failures >= disable_after)
        .values(enabled=False, disabled_by="auto", disabled_at=now)
    )
    return done.rowcount == 1


def _error_text(status: int | None) -> str:
    return f"HTTP {status}" if status is not None else "no HTTP answer (connection error or timeout)"


def _token(row: Any) -> TokenRow:
    """A row as read by a quick transaction (SQLite returns its booleans as 0 and 1)."""
    probe_ok = None if row.last_probe_ok is None else bool(row.last_probe_ok)
    return TokenRow(
        **{**row._asdict(), "enabled": bool(row.enabled), "removed": bool(row.removed), "last_probe_ok": probe_ok}
    )


def _new_row(
    token_id: str, upstream: str, masked: str, now: float, *, source: str = "config", secret: str | None = None
) -> dict[str, Any]:
    """A fresh token row: enabled, never used, no cooldown."""
    return {
        "id": token_id, "upstream": upstream, "source": source, "secret": secret, "masked": masked,
        "enabled": True, "removed": False, "cooldown_until": 0.0, "successes": 0, "failures": 0, "created_at": now,
        "auth_failures": 0,
    }  # fmt: skip
