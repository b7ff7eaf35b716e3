"""Dashboard sign-in state: sessions (stored as hashes, deleted at logout) and failed-login counts.

Both live in the shared database, so a logout or a throttle holds in every worker.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import delete, func, insert, select

from app.storage import schema
from app.storage.db import Database

_S, _F = schema.admin_sessions.c, schema.login_failures.c


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class SessionStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, now: float, ttl: float) -> str:
        """A new session; returns the random id for the cookie (only its hash is stored)."""
        raw = secrets.token_urlsafe(32)
        with self.db.write() as conn:
            row = {"id_hash": _digest(raw), "created_at": now, "expires_at": now + ttl}
            conn.execute(insert(schema.admin_sessions).values(**row))
        return raw

    def is_valid(self, raw: str, now: float) -> bool:
        with self.db.read() as conn:
            expires = conn.execute(select(_S.expires_at).where(_S.id_hash == _digest(raw))).scalar()
        return expires is not None and expires > now

    def end(self, raw: str) -> None:
        with self.db.write() as conn:
            conn.execute(delete(schema.admin_sessions).where(_S.id_hash == _digest(raw)))

    def prune(self, now: float) -> None:
        with self.db.write() as conn:
            conn.execute(delete(schema.admin_sessions).where(_S.expires_at <= now))


class LoginThrottle:
    """At most `limit` failed logins per client address in a sliding `window` seconds."""

    def __init__(self, db: Database, limit: int = 5, window: float = 60.0) -> None:
        self.db, self.limit, self.window = db, limit, window

    def retry_after(self, address: str, now: float) -> float:
        """Seconds until this address may try again (0: it may try now)."""
        since = now - self.window
        query = select(func.count(), func.min(_F.at)).where(_F.address_hash == _digest(address), _F.at > since)
        with self.db.read() as conn:
            count, oldest = conn.execute(query).one()
        if count < self.limit or oldest is None:
            return 0.0
        return max(0.001, oldest + self.window - now)

    def failed(self, address: str, now: float) -> None:
        with self.db.write() as conn:
            conn.execute(delete(schema.login_failures).where(_F.at <= now - self.window))
            conn.execute(insert(schema.login_failures).values(address_hash=_digest(address), at=now))

    def succeeded(self, address: str) -> None:
        with self.db.write() as conn:
            conn.execute(delete(schema.login_failures).where(_F.address_hash == _digest(address)))
