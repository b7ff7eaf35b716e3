"""Alert de-duplication marks (table `alert_marks`, revision 0006) and the alerts' audit rows.

A mark says when an (event, subject) alert was last sent by any worker of any instance; the
claim that moves it is one atomic statement, so of several workers raising the same alert at
once exactly one wins and sends. A claim whose send failed is given back (`release`), so the
alert goes out once the webhook works instead of `repeat_after` later.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from sqlalchemy import delete, select, update

from app.storage import schema
from app.storage.db import Database
from app.storage.usage import audit_log

m = schema.alert_marks.c
ACTOR = "alerts"  # the audit rows' actor
CLAIMS_KEPT = 256  # own claims remembered for `release` (one delivery thread per process uses the newest)


class AlertMarks:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._claims: OrderedDict[tuple[str, str, float], float | None] = OrderedDict()  # own claim -> the stamp before
        self._lock = threading.Lock()

    def claim(self, event: str, subject: str, now: float, repeat_after: float) -> bool:
        """True if the caller may send the (event, subject) alert now: no mark yet, or the last
        one is at least `repeat_after` seconds old. A True claim stamps the mark with `now`.

        Atomic across processes: the INSERT ... ON CONFLICT DO NOTHING or the conditional UPDATE
        changes a row for one caller only (SQLite: BEGIN IMMEDIATE; PostgreSQL: the row lock,
        taken by the SELECT ... FOR UPDATE that reads the stamp being replaced).
        Raises StorageError if the database cannot be reached."""
        key = (m.event == event, m.subject == subject)
        with self.db.write() as conn:
            insert = self.db.insert(schema.alert_marks).values(event=event, subject=subject, sent_at=now)
            insert = insert.on_conflict_do_nothing(index_elements=["event", "subject"]).returning(m.event)
            if conn.execute(insert).first() is not None:  # RETURNING: this INSERT's rowcount is -1 on PostgreSQL
                won, before = True, None
            else:
                before = conn.execute(select(m.sent_at).where(*key).with_for_update()).scalar_one_or_none()
                stamp = update(schema.alert_marks).where(*key, m.sent_at <= now - repeat_after).values(sent_at=now)
                won = conn.execute(stamp).rowcount == 1
        if won:
            self._remember((event, subject, now), before)
        return won

    def _remember(self, claim: tuple[str, str, float], before: float | None) -> None:
        with self._lock:
            self._claims[claim] = before
            while len(self._claims) > CLAIMS_KEPT:
                self._claims.popitem(last=False)

    def release(self, event: str, subject: str, claimed_at: float) -> bool:
        """Undo this object's claim stamped `claimed_at` (its alert could not be sent): the mark
        gets its previous stamp back, or goes if there was none. Nothing changes if the claim was
        not this object's or another claim has moved the mark since. True if it was undone.
        Raises StorageError if the database cannot be reached (the mark then stays as claimed)."""
        with self._lock:
            if (event, subject, claimed_at) not in self._claims:
                return False
            before = self._claims.pop((event, subject, claimed_at))
        own = (m.event == event, m.subject == subject, m.sent_at == claimed_at)
        if before is None:
            undo = delete(schema.alert_marks).where(*own)
        else:
            undo = update(schema.alert_marks).where(*own).values(sent_at=before)
        with self.db.write() as conn:
            return conn.execute(undo).rowcount == 1

    def prune(self, before: float) -> int:
        """Drop marks last stamped before `before` (older than every `repeat_after`); returns how many."""
        with self.db.write() as conn:
            return conn.execute(delete(schema.alert_marks).where(m.sent_at < before)).rowcount


def audit_to(db: Database, clock: Callable[[], float] = time.time) -> Callable[[str, str], None]:
    """The `audit(action, target)` callable an Alerter takes: one audit row, actor "alerts"."""

    def audit(action: str, target: str) -> None:
        audit_log(db, at=clock(), actor=ACTOR, action=action, target=target)

    return audit
