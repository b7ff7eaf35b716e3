"""Dashboard sign-in state: sessions (stored as hashes, deleted at logout) and failed-login counts.

Both live in the shared database, so a logout or a throttle holds in every worker.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import delete, func, insert, select

from app.storage import schema
from app.storage.db import Database

_S, _F = schema.admin_sessions.c, schema.login_failures.c
_LOCK_BASE = 727_101  # PostgreSQL advisory lock class for sign-in attempts (cf. migrate.py's 727_100)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class SessionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, now: float, ttl: float, password_mark: str) -> str:
        """A new session under the password `password_mark` identifies; returns the random id for
        the cookie (only its hash is stored)."""
        raw = secrets.token_urlsafe(32)
        row = {"id_hash": _digest(raw), "password_mark": password_mark, "created_at": now, "expires_at": now + ttl}
        with self.db.write() as conn:
            conn.execute(insert(schema.admin_sessions).values(**row))
        return raw

    def is_valid(self, raw: str, now: float, password_mark: str) -> bool:
        """The session exists, has not expired and was signed in under the current password."""
        query = select(_S.expires_at, _S.password_mark).where(_S.id_hash == _digest(raw))
        with self.db.read() as conn:
            row = conn.execute(query).first()
        return row is not None and row.expires_at > now and hmac.compare_digest(row.password_mark, password_mark)

    def end(self, raw: str) -> None:
        with self.db.write() as conn:
            conn.execute(delete(schema.admin_sessions).where(_S.id_hash == _digest(raw)))

    def prune(self, now: float) -> None:
        with self.db.write() as conn:
            conn.execute(delete(schema.admin_sessions).where(_S.expires_at <= now))


class LoginThrottle:
    """At most `limit` failed sign-ins per client address in a sliding `window` seconds.

    `admit` counts an attempt as failed *before* the password is checked, in the same write
    transaction that checks the count, so parallel attempts cannot slip past the limit;
    `succeeded` then clears the address's count.
    """

    def __init__(self, db: Database, limit: int = 5, window: float = 60.0) -> None:
        self.db, self.limit, self.window = db, limit, window

    def admit(self, address: str, now: float) -> float:
        """0 when this attempt may go ahead (and is counted); else the seconds to wait."""
        digest = _digest(address)
        query = select(func.count(), func.min(_F.at)).where(_F.address_hash == digest, _F.at > now - self.window)
        with self.db.write() as conn:
            if not self.db.is_sqlite:  # serialise per address; SQLite's BEGIN IMMEDIATE already does
                conn.execute(select(func.pg_advisory_xact_lock(_LOCK_BASE, func.hashtext(digest))))
            count, oldest = conn.execute(query).one()
            if count >= self.limit:
                return max(0.001, oldest + self.window - now)
            conn.execute(delete(schema.login_failures).where(_F.at <= now - self.window))
            conn.execute(insert(schema.login_failures).values(address_hash=digest, at=now))
        return 0.0

    def succeeded(self, address: str) -> None:
        with self.db.write() as conn:
            conn.execute(delete(schema.login_failures).where(_F.address_hash == _digest(address)))
