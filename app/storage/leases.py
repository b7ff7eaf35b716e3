"""Deployment-wide leases (table `leases`): one holder at a time, taken over once it expires.

The health prober holds lease "prober" so that one process of the whole deployment probes,
whatever the number of workers and instances sharing the database.
"""

from __future__ import annotations

from sqlalchemy import delete, select, update

from app.storage import schema
from app.storage.db import Database

c = schema.leases.c
PROBER_LEASE = "prober"  # the health prober's (app/services/prober.py); released at a worker's exit (Gateway.close)


class Leases:
    def __init__(self, db: Database) -> None:
        self.db = db

    def take(self, name: str, holder: str, now: float, ttl: float) -> bool:
        """True if `holder` holds `name` until now + ttl: it was free, expired, or already its own.

        Atomic across processes: the INSERT ... ON CONFLICT DO NOTHING or the conditional UPDATE
        changes the row for one caller only (SQLite: BEGIN IMMEDIATE; PostgreSQL: the row lock,
        after which READ COMMITTED re-checks the condition against the winner's expiry)."""
        with self.db.write() as conn:
            insert = self.db.insert(schema.leases).values(name=name, holder=holder, expires_at=now + ttl)
            insert = insert.on_conflict_do_nothing(index_elements=["name"]).returning(c.name)
            if conn.execute(insert).first() is not None:
                return True
            renew = (
                update(schema.leases)
                .where(c.name == name, (c.holder == holder) | (c.expires_at < now))
                .values(holder=holder, expires_at=now + ttl)
            )
            return conn.execute(renew).rowcount == 1

    def release(self, name: str, holder: str) -> bool:
        """Give `name` up at once (a worker's exit) if `holder` holds it; True if it did."""
        with self.db.write() as conn:
            return conn.execute(delete(schema.leases).where(c.name == name, c.holder == holder)).rowcount == 1

    def holder(self, name: str, now: float) -> str | None:
        """Who holds `name` now (None: nobody, or the lease expired)."""
        with self.db.read() as conn:
            row = conn.execute(select(c.holder, c.expires_at).where(c.name == name)).first()
        return row.holder if row is not None and row.expires_at >= now else None
