"""A change signal every process of one SQLite database reads in nanoseconds.

Workers read the key row and the token states on every request. Those rows change rarely
(a key revoked, a token cooled down), so each process caches them, and whoever changes
them moves a mark in a small file mapped into every process (`<database>-changes`): a
cache entry is used only while the mark it was read under still stands. Mark first, read
second: a change that lands in between moves the mark again, so it is never missed.

SQLite in WAL mode is one host by construction, so the file reaches every process that
can reach the database. PostgreSQL serves several hosts, which a file cannot signal: there
the signal is LISTEN/NOTIFY (app/storage/notify.py, same interface). An entry also expires
after MAX_AGE seconds, which bounds staleness from a writer that does not signal (a change
made with the sqlite3 shell or psql, or a process killed between its commit and its signal).
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Generic, Protocol, TypeVar

TOPICS = ("keys", "tokens")
MAX_AGE = 1.0
_SLOT = 8
log = logging.getLogger("sluice.storage")
V = TypeVar("V")


class Signal(Protocol):
    """What a Cache reads: `mark(topic)` is None when nothing may be cached."""

    def mark(self, topic: str) -> bytes | None: ...


class Changes:
    """Marks per topic; `mark` is None when no signal is available (nothing may be cached)."""

    def __init__(self, database: Path | None) -> None:
        """The signal beside the SQLite file `database` (None: no signal)."""
        self._map: mmap.mmap | None = None
        if database is not None:
            try:
                self._map = _open(database)
            except OSError as exc:
                log.warning("change signal of %s unavailable (%s): every request reads the database", database, exc)

    def mark(self, topic: str) -> bytes | None:
        if self._map is None:
            return None
        start = TOPICS.index(topic) * _SLOT
        return self._map[start : start + _SLOT]

    def signal(self, topic: str) -> None:
        """Call after committing a change to `topic`'s rows: every cached copy is dropped."""
        if self._map is not None:
            start = TOPICS.index(topic) * _SLOT
            self._map[start : start + _SLOT] = secrets.token_bytes(_SLOT)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


class Cache(Generic[V]):
    """Values read under one topic's mark, used while that mark stands and for at most MAX_AGE
    seconds; at most `size` of them (the cache starts over when full). Without a signal
    nothing is kept. A `load` that finds nothing (None) is not kept either."""

    def __init__(self, changes: Signal, topic: str, size: int = 10_000) -> None:
        self._changes, self._topic, self._size = changes, topic, size
        self._entries: dict[Hashable, tuple[bytes, float, V]] = {}  # key -> (mark, read at, value)

    def get(self, key: Hashable, load: Callable[[], V | None]) -> V | None:
        mark, now = self._changes.mark(self._topic), time.monotonic()  # the mark first, the rows second
        hit = self._entries.get(key)
        if hit is not None and hit[0] == mark and now - hit[1] < MAX_AGE:
            return hit[2]
        value = load()
        if mark is not None and value is not None:
            if len(self._entries) >= self._size:
                self._entries.clear()
            self._entries[key] = (mark, now, value)
        return value


def for_sqlite(database: str) -> Changes:
    """The signal beside an SQLite database file (none for an in-memory database)."""
    if not database or database == ":memory:":
        return Changes(None)
    return Changes(Path(database))


def _open(database: Path) -> mmap.mmap:
    """Map `<database>-changes`, creating it with the database file's owner and mode (as SQLite
    does for its -wal and -shm files), so the CLI run as root does not lock out the server's user."""
    size = len(TOPICS) * _SLOT
    path = Path(f"{database}-changes")
    mode = database.stat().st_mode & 0o666 if database.exists() else 0o644
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
            if os.geteuid() == 0 and database.exists():
                owner = database.stat()
                os.fchown(fd, owner.st_uid, owner.st_gid)
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)
