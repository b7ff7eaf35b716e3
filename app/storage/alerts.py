"""Alert de-duplication marks (table `alert_marks`, revision 0006) and the alerts' audit rows.

A mark says when an (event, subject) alert was last sent by any worker of any instance; the
claim that moves it is one atomic statement, so of several workers raising the same alert at
once exactly one wins and sends.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import delete, update

from app.storage import schema
from app.storage.db import Database
from app.storage.usage import audit_log

m = schema.alert_marks.c
ACTOR = "alerts"  # the audit rows' actor


class AlertMarks:
    def __init__(self, db: Database) -> None:
        self.db = db

    def claim(self, event: str, subject: str, now: float, repeat_after: float) -> bool:
        """True if the caller may send the (event, subject) alert now: no mark yet, or the last
        one is at least `repeat_after` seconds old. A True claim stamps the mark with `now`.

        Atomic across processes: the INSERT ... ON CONFLICT DO NOTHING or the conditional UPDATE
        changes a row for one caller only (SQLite: BEGIN IMMEDIATE; PostgreSQL: the row lock,
        after which READ COMMITTED re-checks the UPDATE's condition against the winner's stamp).
        Raises StorageError if the database cannot be reached."""
        with self.db.write() as conn:
            insert = self.db.insert(schema.alert_marks).values(event=event, subject=subject, sent_at=now)
            insert = insert.on_conflict_do_nothing(index_elements=["event", "subject"]).returning(m.event)
            if conn.execute(insert).first() is not None:  # RETURNING: this INSERT's rowcount is -1 on PostgreSQL
                return True
            stamp = (
                update(schema.alert_marks)
                .where(m.event == event, m.subject == subject, m.sent_at <= now - repeat_after)
                .values(sent_at=now)
            )
            return conn.execute(stamp).rowcount == 1

    def prune(self, before: float) -> int:
        """Drop marks last stamped before `before` (older than every `repeat_after`); returns how many."""
        with self.db.write() as conn:
            return conn.execute(delete(schema.alert_marks).where(m.sent_at < before)).rowcount


def audit_to(db: Database, clock: Callable[[], float] = time.time) -> Callable[[str, str], None]:
    """The `audit(action, target)` callable an Alerter takes: one audit row, actor "alerts"."""

    def audit(action: str, target: str) -> None:
        audit_log(db, at=clock(), actor=ACTOR, action=action, target=target)

    return audit
