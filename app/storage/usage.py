"""Usage records: written in batches off the request path, summarised, pruned, and the audit log."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select

from app.scheduler import Scheduler
from app.storage import schema
from app.storage.db import Database, StorageDataError, StorageError
from app.storage.rollups import Rollups

log = logging.getLogger("sluice.usage")
u = schema.usage.c
GROUPS = ("key", "model", "upstream", "day")
MAX_PENDING = 100_000  # records kept in memory while the database is unreachable
BATCH = 200  # records that wake the writer before its interval ends (short transactions, short stalls)
# A record's columns, with the defaults of those a record may leave out.
FIELDS = {c.name: (c.default.arg if c.default is not None else None) for c in schema.usage.c if c.name != "id"}


class UsageRepo:
    def __init__(self, db: Database) -> None:
        self.db, self.rollups = db, Rollups(db)
        self._insert = db.prepare(insert(schema.usage).values({name: bindparam(name) for name in FIELDS}))

    def insert_many(self, records: Sequence[dict[str, Any]]) -> None:
        """Store a batch of records and add them to the roll-ups, in one transaction."""
        if records:
            with self.db.quick(write=True) as q:
                q.execute_many(self._insert, [{**FIELDS, **record} for record in records])
                self.rollups.add(q, records)

    def summary(self, since: float, by: str) -> list[dict[str, Any]]:
        """Requests and prompt/completion/total tokens since `since`, grouped `by` key|model|upstream|day."""
        column = self._group_column(by)
        query = (
            select(
                column.label("group"),
                func.count().label("requests"),
                func.coalesce(func.sum(u.prompt_tokens), 0).label("prompt_tokens"),
                func.coalesce(func.sum(u.completion_tokens), 0).label("completion_tokens"),
                func.coalesce(func.sum(u.total_tokens), 0).label("total_tokens"),
            )
            .where(u.at >= since)
            .group_by(column)
            .order_by(column)
        )
        with self.db.read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def _group_column(self, by: str) -> Any:
        if by == "key":
            return u.key_name
        if by == "model":
            return u.model
        if by == "upstream":
            return func.coalesce(u.upstream, "-")
        if self.db.is_sqlite:
            return func.strftime("%Y-%m-%d", u.at, "unixepoch")
        return func.to_char(func.to_timestamp(u.at).op("AT TIME ZONE")("UTC"), "YYYY-MM-DD")

    def recent(self, limit: int = 200) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = conn.execute(select(schema.usage).order_by(u.at.desc()).limit(limit))
            return [dict(row._mapping) for row in rows]

    def prune(self, before: float) -> int:
        """Drop records (and roll-ups) older than `before`; returns the number of records dropped."""
        with self.db.write() as conn:
            conn.execute(delete(schema.usage_minutes).where(schema.usage_minutes.c.minute <= before - 60))
            conn.execute(delete(schema.usage_hours).where(schema.usage_hours.c.hour <= before - 3600))
            return conn.execute(delete(schema.usage).where(u.at < before)).rowcount


class RecordsDropped(Exception):
    """A batch of usage records failed and was written one by one; `dropped` records were refused."""

    def __init__(self, dropped: int, batch: int) -> None:
        super().__init__(f"dropped {dropped} of {batch} usage records that cannot be stored (logged above)")
        self.dropped = dropped


class UsageWriter:
    """Queues usage records and writes them in batches from the process's background scheduler.

    `close()` closes the scheduler, whose last turn writes what is pending: gunicorn's
    worker_exit hook and atexit call it, so a graceful stop loses nothing. A hard kill loses
    at most the last `interval` seconds.
    """

    CHORE = "usage_records"

    def __init__(self, repo: UsageRepo, interval: float = 1.0, scheduler: Scheduler | None = None) -> None:
        self.repo, self.interval = repo, interval
        self.scheduler = scheduler or Scheduler()
        self.scheduler.every(interval, self.flush, name=self.CHORE)
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            if len(self._pending) < MAX_PENDING:
                self._pending.append(record)
            full = len(self._pending) == BATCH
        self.scheduler.start()  # the scheduler's thread, or a new one should it have ended
        if full:
            self.scheduler.wake(self.CHORE)

    def every(self, seconds: float, chore: Callable[[], None], name: str | None = None, final: bool = True) -> None:
        """Also run `chore` from the scheduler every `seconds` (and once at close if `final`)."""
        self.scheduler.every(seconds, chore, name, final)
        self.scheduler.start()

    def flush(self) -> None:
        """Write the pending records; raises what went wrong (the scheduler logs and counts it).

        The database being away keeps the batch for the next turn. A record the database refuses
        (StorageDataError) or cannot even be sent (any other exception) must not take its batch
        with it, nor stay queued for ever: the records are then written one by one and those
        that still fail so are dropped, each logged once.
        """
        with self._lock:
            batch, self._pending = self._pending, []
        try:
            self.repo.insert_many(batch)
        except StorageDataError as exc:  # first: it is a StorageError too, but no retry can fix it
            raise RecordsDropped(self._write_one_by_one(batch), len(batch)) from exc
        except StorageError:
            self._requeue(batch)
            raise
        except Exception as exc:
            raise RecordsDropped(self._write_one_by_one(batch), len(batch)) from exc

    def _write_one_by_one(self, batch: list[dict[str, Any]]) -> int:
        """Write each record alone; returns how many were dropped (a StorageError requeues the rest)."""
        dropped = 0
        for index, record in enumerate(batch):
            try:
                self.repo.insert_many([record])
            except StorageDataError as exc:
                dropped += 1
                log.error(
                    "dropped a usage record the database refused request_id=%s: %s", record.get("request_id"), exc
                )
            except StorageError:
                self._requeue(batch[index:])
                raise
            except Exception:
                dropped += 1
                log.exception("dropped a usage record that cannot be stored request_id=%s", record.get("request_id"))
        return dropped

    def _requeue(self, batch: list[dict[str, Any]]) -> None:
        log.error("could not write %d usage records (will retry)", len(batch))
        with self._lock:
            self._pending[:0] = batch[: MAX_PENDING - len(self._pending)]

    def close(self) -> None:
        """Write what is pending (never raises: a failure is logged and counted like any turn)."""
        if self.scheduler.closed:  # a second close: records added since (a drain that ended late)
            self.scheduler.run(self.CHORE)
        else:
            self.scheduler.close()  # its last turn writes what is pending


def record_audit(conn: Connection, *, at: float, actor: str, action: str, target: str) -> None:
    conn.execute(insert(schema.audit).values(at=at, actor=actor, action=action, target=target[:200]))


def audit_log(db: Database, *, at: float, actor: str, action: str, target: str) -> None:
    with db.write() as conn:
        record_audit(conn, at=at, actor=actor, action=action, target=target)


def audit_entries(db: Database, limit: int = 500, before: int | None = None) -> list[dict[str, Any]]:
    """The newest audit entries first (ids below `before` when paging)."""
    a = schema.audit.c
    query = select(schema.audit).order_by(a.id.desc()).limit(limit)
    if before is not None:
        query = query.where(a.id < before)
    with db.read() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
