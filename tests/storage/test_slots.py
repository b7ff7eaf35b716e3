"""max_parallel slots (issue #10 items 2, 4 and 13): they expire with their request, a dead
worker's are freed by the reaper, a slot held before admission is reused by it; revision 0004."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from sqlalchemy import text

from app.storage.db import Database
from app.storage.keys import KeyRepo
from app.storage.limits import LimitExceeded, SqlLimiter, worker_name
from app.storage.migrate import MIGRATIONS, upgrade
from app.storage.redis_limits import RedisLimiter
from tests.services import redis_url, reset_redis


@pytest.fixture(params=["sql", "redis"])
def limiter(request, db):
    """Each limiter on the storage suite's databases (SQLite and PostgreSQL)."""
    if request.param == "sql":
        return SqlLimiter(db)
    url = redis_url()
    reset_redis(url)
    return RedisLimiter(url, db)


def _refused(limiter, key, now: float) -> str:
    with pytest.raises(LimitExceeded) as info:
        limiter.admit(key, now, now + 60)
    return info.value.code


def test_a_slot_frees_itself_when_its_request_deadline_has_passed(limiter, db):
    key, _ = KeyRepo(db).create("k", now=0.0, max_parallel=1)
    now = time.time()
    limiter.admit(key, now, expires_at=now + 1.5)  # never released: its worker was killed
    assert _refused(limiter, key, now + 0.1) == "too_many_parallel_requests"
    time.sleep(1.6)  # Redis expires on its own clock
    limiter.admit(key, time.time(), time.time() + 60)


def test_the_reaper_frees_the_slots_of_a_dead_worker_only(limiter, db, monkeypatch):
    key, _ = KeyRepo(db).create("k", now=0.0, max_parallel=3)
    now = time.time()
    monkeypatch.setattr("app.process.pid", lambda: 4242)
    dead = [limiter.admit(key, now, now + 600), limiter.admit(key, now, now + 600)]
    monkeypatch.setattr("app.process.pid", lambda: 4343)
    alive = limiter.admit(key, now, now + 600)
    assert {a.worker for a in dead} == {worker_name(4242)} and alive.worker == worker_name(4343)
    assert _refused(limiter, key, now) == "too_many_parallel_requests"
    assert limiter.free_worker(worker_name(4242)) == 2
    assert limiter.free_worker(worker_name(4242)) == 0
    limiter.admit(key, now, now + 600)
    limiter.admit(key, now, now + 600)
    assert _refused(limiter, key, now) == "too_many_parallel_requests"  # the live worker's slot stayed


def test_a_held_slot_is_reused_by_the_admission_and_released_once(limiter, db):
    key, _ = KeyRepo(db).create("k", now=0.0, max_parallel=2, rpm=10)
    now = time.time()
    held = limiter.hold(key, now, now + 600)
    assert held.window is None
    admitted = limiter.admit(key, now, now + 600, held=held)
    assert admitted.admission_id == held.admission_id and admitted.window.remaining_requests == 9
    other = limiter.admit(key, now, now + 600)  # the second slot: one slot per request, not two
    with pytest.raises(LimitExceeded) as info:
        limiter.hold(key, now, now + 600)
    assert info.value.code == "too_many_parallel_requests"
    limiter.release(admitted, 0, now)
    limiter.release(admitted, 0, now)  # a retried release frees nothing else
    limiter.admit(key, now, now + 600)
    assert _refused(limiter, key, now) == "too_many_parallel_requests"  # `other` still holds its slot
    limiter.release(other, 0, now)


def test_the_first_request_resets_its_window_a_minute_later(limiter, db):
    """Issue #10 item 13, on both limiters: reset is when the admitted request leaves."""
    key, _ = KeyRepo(db).create("k", now=0.0, rpm=3)
    now = time.time()
    first = limiter.admit(key, now, now + 60).window
    assert first.remaining_requests == 2 and 59.0 <= first.reset_requests <= 61.0


def test_revision_0004_gives_old_slots_an_hour_and_goes_back(empty_db):
    """0003's rows keep its rule (they expire an hour after their start); the downgrade drops the columns."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    upgrade(empty_db, "0003")
    with empty_db.write() as conn:
        conn.execute(text("INSERT INTO inflight (key_id, request_id, started_at) VALUES ('k1', 'r1', 100.0)"))
    upgrade(empty_db)
    with empty_db.read() as conn:
        assert conn.execute(text("SELECT worker, expires_at FROM inflight")).all() == [("", 3700.0)]
    with empty_db.quick() as q:
        assert q.one(SqlLimiter(empty_db).sql.running, {"key_id": "k1", "now": 3699.0}) == (1,)
        assert q.one(SqlLimiter(empty_db).sql.running, {"key_id": "k1", "now": 3700.0}) == (0,)
    with empty_db.write() as conn:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
    with empty_db.read() as conn:
        columns = conn.execute(text("SELECT * FROM inflight")).keys()
        assert sorted(columns) == ["key_id", "request_id", "started_at"]
        assert conn.execute(text("SELECT request_id FROM inflight")).all() == [("r1",)]
    upgrade(empty_db)  # and up again


def test_the_reaper_command_frees_a_worker_by_pid(tmp_path, monkeypatch, capsys):
    from app.storage import reaper

    url = f"sqlite:///{tmp_path}/reaper.db"
    db = Database(url)
    upgrade(db)
    key, _ = KeyRepo(db).create("k", now=0.0, max_parallel=1)
    monkeypatch.setattr("app.process.pid", lambda: 777)
    SqlLimiter(db).admit(key, time.time(), time.time() + 600)
    monkeypatch.setenv("SLUICE_DATABASE_URL", url)
    monkeypatch.delenv("SLUICE_REDIS_URL", raising=False)
    reaper.main(["--pid", "777"])
    assert f"freed 1 in-flight slot(s) of worker {worker_name(777)}" in capsys.readouterr().err
    SqlLimiter(db).admit(key, time.time(), time.time() + 600)
    db.dispose()


def _gone_pid() -> int:
    """The pid of a process that has exited (and been waited for)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_start_up_frees_the_slots_of_this_hosts_dead_workers_only(limiter, db, monkeypatch):
    """After a whole gateway was killed no master freed its workers' slots: the next start does."""
    from app.storage.reaper import dead_workers, free_dead

    key, _ = KeyRepo(db).create("k", now=0.0, max_parallel=3)
    now, gone = time.time(), _gone_pid()
    for pid in (gone, os.getpid()):  # a dead worker and a live one of this host
        monkeypatch.setattr("app.process.pid", lambda pid=pid: pid)
        limiter.admit(key, now, now + 600)
    with monkeypatch.context() as elsewhere:  # the same pid on another host: not ours to judge
        elsewhere.setattr("app.storage.limits._MACHINE", "another-host/1")
        elsewhere.setattr("app.process.pid", lambda: gone)
        limiter.admit(key, now, now + 600)
    assert dead_workers(limiter) == [worker_name(gone)]
    free_dead(limiter)
    assert limiter.workers(worker_name(0).removesuffix("0")) == {worker_name(os.getpid())}
    assert limiter.workers("another-host/1:") == {f"another-host/1:{gone}"}
    limiter.admit(key, now, now + 600)  # one slot freed; the live worker's and the other host's stay
    assert _refused(limiter, key, now) == "too_many_parallel_requests"


def test_worker_listing_treats_names_literally(limiter, db, monkeypatch):
    key, _ = KeyRepo(db).create("k", now=0.0, max_parallel=3)
    now = time.time()
    monkeypatch.setattr("app.process.pid", lambda: 5)
    limiter.admit(key, now, now + 600)
    assert limiter.workers(worker_name(5)) == {worker_name(5)}
    assert limiter.workers("*") == set() and limiter.workers("%") == set()


def test_the_start_up_step_migrates_and_frees_dead_workers_slots(tmp_path, monkeypatch, capsys):
    from app.storage import startup

    url = f"sqlite:///{tmp_path}/startup.db"
    db = Database(url)
    upgrade(db)
    key, _ = KeyRepo(db).create("k", now=0.0, max_parallel=1)
    gone = _gone_pid()
    monkeypatch.setattr("app.process.pid", lambda: gone)
    SqlLimiter(db).admit(key, time.time(), time.time() + 600)
    monkeypatch.setenv("SLUICE_DATABASE_URL", url)
    monkeypatch.delenv("SLUICE_REDIS_URL", raising=False)
    startup.main()
    assert f"freed 1 in-flight slot(s) of worker {worker_name(gone)}" in capsys.readouterr().err
    SqlLimiter(db).admit(key, time.time(), time.time() + 600)
    db.dispose()
