"""Usage records: written in batches off the request path, summarised, pruned, and the audit log."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select

from app.storage import schema
from app.storage.db import Database, StorageError
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


class UsageWriter:
    """Queues usage records and writes them in batches from a background thread (a greenlet under gevent).

    `close()` writes what is pending: gunicorn's worker_exit hook and atexit call it, so
    a graceful stop loses nothing. A hard kill loses at most the last `interval` seconds.
    """

    def __init__(self, repo: UsageRepo, interval: float = 1.0) -> None:
        self.repo, self.interval = repo, interval
        self._chores: list[tuple[float, Callable[[], None]]] = []  # (every seconds, function)
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def add(self, record: dict[str, Any]) -> None:
        with self._lock:
            if len(self._pending) < MAX_PENDING:
                self._pending.append(record)
            full = len(self._pending) == BATCH
        self._ensure_thread()
        if full:
            self._wake.set()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="sluice-usage", daemon=True)
                self._thread.start()

    def every(self, seconds: float, chore: Callable[[], None]) -> None:
        """Also run `chore` from the writer's thread every `seconds` (and once at close)."""
        self._chores.append((seconds, chore))
        self._ensure_thread()

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        try:
            self.repo.insert_many(batch)
        except StorageError as exc:
            log.error("could not write %d usage records (will retry): %s", len(batch), exc)
            with self._lock:
                self._pending[:0] = batch[: MAX_PENDING - len(self._pending)]

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self.flush()
        for _, chore in self._chores:
            self._run_chore(chore)

    def _run(self) -> None:
        last_run = {id(chore): time.monotonic() for _, chore in self._chores}
        while not self._closed:
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush()
            for every, chore in self._chores:
                if time.monotonic() - last_run.get(id(chore), 0.0) >= every:
                    last_run[id(chore)] = time.monotonic()
                    self._run_chore(chore)

    @staticmethod
    def _run_chore(chore: Callable[[], None]) -> None:
        try:
            chore()
        except StorageError as exc:
            log.error("background write failed (will retry): %s", exc)


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
