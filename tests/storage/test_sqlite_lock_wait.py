"""SQLite: a write waits for another process's write lock by sleeping between asks (gevent's sleep in a worker,
so the worker's other streams go on), not inside SQLite's C call, and gives up after LOCK_WAIT."""

from __future__ import annotations

import sqlite3
import threading
import time
from types import SimpleNamespace

import pytest
from sqlalchemy import text

from app.storage import db as dbmodule
from app.storage.db import BUSY_TIMEOUT_MS, LOCK_POLL, Database, StorageError
from app.storage.migrate import upgrade


@pytest.fixture
def sqlite_db(tmp_path):
    database = Database(f"sqlite:///{tmp_path}/locks.db")
    upgrade(database)
    yield database
    database.dispose()


@pytest.fixture
def other_process(sqlite_db):
    """Another writer on the same file (a second connection stands for another worker) holding the write lock."""
    other = sqlite3.connect(sqlite_db.url.removeprefix("sqlite:///"), isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    yield other
    if other.in_transaction:
        other.rollback()
    other.close()


def sleeps_releasing(monkeypatch, other: sqlite3.Connection, after: int) -> list[float]:
    """Record each sleep of the lock wait; the other writer commits during the `after`-th (as another greenlet
    would run while this one sleeps)."""
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == after:
            other.commit()

    monkeypatch.setattr(dbmodule, "time", SimpleNamespace(monotonic=time.monotonic, sleep=sleep))
    return slept


def test_a_quick_write_sleeps_until_the_lock_is_free_then_writes(sqlite_db, other_process, monkeypatch):
    slept = sleeps_releasing(monkeypatch, other_process, after=4)
    with sqlite_db.quick(write=True) as q:
        q.cursor.execute("INSERT INTO worker_liveness (worker, seen_at) VALUES ('w1', 1.0)")
    assert slept == [LOCK_POLL[0], LOCK_POLL[0] * 2, LOCK_POLL[0] * 4, LOCK_POLL[0] * 8]
    with sqlite_db.quick() as q:
        assert q.cursor.execute("SELECT worker FROM worker_liveness").fetchall() == [("w1",)]
        # SQLite's own wait is back for the rare read that meets a lock
        assert q.cursor.execute("PRAGMA busy_timeout").fetchone() == (BUSY_TIMEOUT_MS,)


def test_an_engine_write_waits_the_same_way(sqlite_db, other_process, monkeypatch):
    slept = sleeps_releasing(monkeypatch, other_process, after=2)
    with sqlite_db.write() as conn:
        conn.execute(text("INSERT INTO worker_liveness (worker, seen_at) VALUES ('w2', 2.0)"))
    assert len(slept) == 2
    with sqlite_db.read() as conn:
        assert conn.execute(text("SELECT worker FROM worker_liveness")).scalars().all() == ["w2"]


def test_the_sleeps_grow_to_the_longest_and_the_wait_ends_with_a_storage_error(sqlite_db, other_process, monkeypatch):
    slept: list[float] = []
    clock = [0.0]

    def sleep(seconds: float) -> None:  # a fake clock: LOCK_WAIT passes without waiting for it
        slept.append(seconds)
        clock[0] += seconds

    monkeypatch.setattr(dbmodule, "time", SimpleNamespace(monotonic=lambda: clock[0], sleep=sleep))
    with pytest.raises(StorageError, match="database write failed"), sqlite_db.quick(write=True):
        pass
    assert max(slept) == LOCK_POLL[1] and dbmodule.LOCK_WAIT - LOCK_POLL[1] <= sum(slept) <= dbmodule.LOCK_WAIT
    other_process.rollback()
    with sqlite_db.quick(write=True) as q:  # nothing was left half-done: the next write goes through at once
        q.cursor.execute("INSERT INTO worker_liveness (worker, seen_at) VALUES ('w3', 3.0)")
        assert q.cursor.execute("PRAGMA busy_timeout").fetchone() == (BUSY_TIMEOUT_MS,)


def test_dispose_waits_for_a_transaction_another_thread_runs_on_the_shared_connection(sqlite_db):
    """A background chore's transaction (the scheduler's thread) still running when the app is disposed: the
    connection is closed after it, not in the middle of an SQLite call (which crashed the process)."""
    inside, errors = threading.Event(), []

    def chore() -> None:
        try:
            with sqlite_db.quick(write=True) as quick:
                inside.set()
                time.sleep(0.3)
                quick.cursor.execute("SELECT 1")
        except Exception as exc:  # noqa: BLE001 - the test reports whatever the thread met
            errors.append(exc)

    thread = threading.Thread(target=chore)
    thread.start()
    assert inside.wait(5)
    started = time.monotonic()
    sqlite_db.dispose()
    assert time.monotonic() - started >= 0.2
    thread.join(5)
    assert errors == []
