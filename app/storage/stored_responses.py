"""Stored Responses API responses: which upstream and token created each, kept like usage records."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update

from app.storage import schema
from app.storage.db import Database

c = schema.stored_responses.c


@dataclass(frozen=True)
class StoredResponse:
    id: str
    upstream: str
    token_id: str
    key_id: str | None
    model: str
    created_at: float
    counted: bool = True  # False: a background response whose usage is counted when first seen finished


class StoredResponses:
    def __init__(self, db: Database) -> None:
        self.db = db

    def remember(self, row: StoredResponse) -> None:
        """Record a new response (an id seen again, e.g. a retried request, keeps its first record)."""
        with self.db.write() as conn:
            if conn.execute(select(c.id).where(c.id == row.id)).first() is None:
                conn.execute(insert(schema.stored_responses).values(**row.__dict__))

    def find(self, response_id: str) -> StoredResponse | None:
        with self.db.read() as conn:
            found = conn.execute(select(schema.stored_responses).where(c.id == response_id)).first()
        return StoredResponse(**found._mapping) if found is not None else None

    def mark_counted(self, response_id: str) -> bool:
        """Mark a background response's usage counted; False if it already was (another call got there first)."""
        with self.db.write() as conn:
            changed = conn.execute(
                update(schema.stored_responses).where(c.id == response_id, c.counted.is_(False)).values(counted=True)
            )
            return changed.rowcount == 1

    def forget(self, response_id: str) -> None:
        with self.db.write() as conn:
            conn.execute(delete(schema.stored_responses).where(c.id == response_id))

    def prune(self, before: float) -> int:
        with self.db.write() as conn:
            return conn.execute(delete(schema.stored_responses).where(c.created_at < before)).rowcount
