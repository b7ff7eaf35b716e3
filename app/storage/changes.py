"""A change signal every process of one SQLite database reads in nanoseconds.

Workers read the key row and the token states on every request. Those rows change rarely
(a key revoked, a token cooled down), so each process caches them, and whoever changes
them moves a mark in a small file mapped into every process (`<database>-changes`): a
cache entry is used only while the mark it was read under still stands. Mark first, read
second: a change that lands in between moves the mark again, so it is never missed.

SQLite in WAL mode is one host by construction, so the file reaches every process that
can reach the database. PostgreSQL serves several hosts, which a file cannot signal: there
the signal is off and every request reads the rows, as before. An entry also expires after
MAX_AGE seconds, which bounds staleness from a writer that does not signal (a change made
with the sqlite3 shell, or a process killed between its commit and its signal).
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets
from pathlib import Path

TOPICS = ("keys", "tokens")
MAX_AGE = 1.0
_SLOT = 8
log = logging.getLogger("sluice.storage")


class Changes:
    """Marks per topic; `mark` is None when no signal is available (nothing may be cached)."""

    def __init__(self, path: Path | None) -> None:
        self._map: mmap.mmap | None = None
        if path is not None:
            try:
                self._map = _open(path)
            except OSError as exc:
                log.warning("change signal %s unavailable (%s): every request reads the database", path, exc)

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


def for_sqlite(database: str) -> Changes:
    """The signal beside an SQLite database file (none for an in-memory database)."""
    if not database or database == ":memory:":
        return Changes(None)
    return Changes(Path(f"{database}-changes"))


def _open(path: Path) -> mmap.mmap:
    """Map the signal file, creating it with the database file's owner and mode (as SQLite does
    for its -wal and -shm files), so the CLI run as root does not lock out the server's user."""
    size = len(TOPICS) * _SLOT
    database = Path(str(path).removesuffix("-changes"))
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
