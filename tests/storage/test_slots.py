"""max_parallel slots (issue #10 items 2, 4 and 13): they expire with their request, a dead
worker's are freed by the reaper, a slot held before admission is reused by it; revision 0004.
Slots name their worker "<instance id>:<pid>"; the instance id is kept in the data dir, so a
gateway restarted in a new container (new pids, new pid namespace) frees its own old slots."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from app.storage import limits
from app.storage.db import Database
from app.storage.keys import KeyRepo
from app.storage.limits import InstanceIdError, LimitExceeded, SqlLimiter, this_instance, worker_name
from app.storage.migrate import MIGRATIONS, upgrade
from app.storage.redis_limits import RedisLimiter
from tests.services import redis_url, reset_redis


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch) -> Path:
    """This test's own data dir, so its own instance id (the process's is read once, then cached)."""
    path = tmp_path / "data"
    monkeypatch.setenv("SLUICE_DATA_DIR", str(path))
    monkeypatch.delenv("SLUICE_INSTANCE_ID", raising=False)
    monkeypatch.setattr(limits, "_instance", None)
    return path


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


def test_start_up_frees_every_slot_of_this_instance_and_no_other(limiter, db, monkeypatch):
    """After a whole gateway was killed no master freed its workers' slots: the next start frees
    all of its instance's, whatever their pids (a restarted container has new pids, and may even
    reuse an old one), and none of another instance's (another host, container or gateway)."""
    from app.storage.reaper import free_instance

    key, _ = KeyRepo(db).create("k", now=0.0, max_parallel=4)
    now, pids = time.time(), (_gone_pid(), os.getpid(), 1)  # dead, alive, and a new namespace's first
    for pid in pids:
        monkeypatch.setattr("app.process.pid", lambda pid=pid: pid)
        limiter.admit(key, now, now + 600)
    with monkeypatch.context() as elsewhere:  # the same pid in another instance: not ours to free
        elsewhere.setattr(limits, "_instance", "another-instance")
        limiter.admit(key, now, now + 600)
    assert limiter.workers(f"{this_instance()}:") == {worker_name(pid) for pid in pids}
    free_instance(limiter)
    assert limiter.workers(f"{this_instance()}:") == set()
    assert limiter.workers("another-instance:") == {"another-instance:1"}
    for _ in range(3):
        limiter.admit(key, now, now + 600)  # three slots freed; the other instance's stays
    assert _refused(limiter, key, now) == "too_many_parallel_requests"


def test_worker_listing_treats_names_literally(limiter, db, monkeypatch):
    key, _ = KeyRepo(db).create("k", now=0.0, max_parallel=3)
    now = time.time()
    monkeypatch.setattr("app.process.pid", lambda: 5)
    limiter.admit(key, now, now + 600)
    assert limiter.workers(worker_name(5)) == {worker_name(5)}
    assert limiter.workers("*") == set() and limiter.workers("%") == set()


def test_the_start_up_step_in_a_new_process_frees_this_instances_slots(tmp_path, data_dir):
    """The start-up step runs in a fresh process (as after a container restart: other pids, maybe
    another pid namespace) and still recognises the slots of the earlier run, live pid or not."""
    url = f"sqlite:///{tmp_path}/startup.db"
    db = Database(url)
    upgrade(db)
    key, _ = KeyRepo(db).create("k", now=0.0, max_parallel=1)
    held = SqlLimiter(db).admit(key, time.time(), time.time() + 600)  # this (live) process's pid
    assert held.worker == worker_name() and (data_dir / "instance-id").is_file()
    env = {**os.environ, "SLUICE_DATABASE_URL": url, "SLUICE_DATA_DIR": str(data_dir)}
    env.pop("SLUICE_REDIS_URL", None)
    done = subprocess.run([sys.executable, "-m", "app.storage.startup"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"freed 1 in-flight slot(s) of worker {held.worker}" in done.stderr
    SqlLimiter(db).admit(key, time.time(), time.time() + 600)
    db.dispose()


def test_the_instance_id_is_kept_in_the_data_dir(data_dir, monkeypatch):
    first = this_instance()
    assert (data_dir / "instance-id").read_text().strip() == first and len(first) == 16
    monkeypatch.setattr(limits, "_instance", None)  # a later run, or another process
    assert this_instance() == first and worker_name(7) == f"{first}:7"
    monkeypatch.setenv("SLUICE_DATA_DIR", str(data_dir.parent / "elsewhere"))
    monkeypatch.setattr(limits, "_instance", None)
    assert this_instance() != first  # another data dir is another instance


def test_processes_starting_together_agree_on_the_instance_id(data_dir):
    code = "from app.storage.limits import this_instance; print(this_instance())"
    env = {**os.environ, "SLUICE_DATA_DIR": str(data_dir)}
    runs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(4)
    ]
    ids = {run.communicate(timeout=60)[0].strip() for run in runs}
    assert ids == {(data_dir / "instance-id").read_text().strip()}
    assert [p.name for p in data_dir.iterdir()] == ["instance-id"]  # no temporary file left


def test_sluice_instance_id_wins(data_dir, monkeypatch):
    monkeypatch.setenv("SLUICE_INSTANCE_ID", "gw-blue.1")
    assert this_instance() == "gw-blue.1" and worker_name(42) == "gw-blue.1:42"
    assert not data_dir.exists()


@pytest.mark.parametrize("bad", ["a:b", "has space", "-leading", "x" * 65, "ü"])
def test_an_unusable_instance_id_stops_start_up(bad, tmp_path, monkeypatch):
    from app.storage import startup

    monkeypatch.setenv("SLUICE_INSTANCE_ID", bad)
    with pytest.raises(InstanceIdError):
        this_instance()
    monkeypatch.setenv("SLUICE_DATABASE_URL", f"sqlite:///{tmp_path}/startup.db")
    monkeypatch.delenv("SLUICE_REDIS_URL", raising=False)
    with pytest.raises(SystemExit, match="SLUICE_INSTANCE_ID"):
        startup.main()


def test_an_unwritable_data_dir_stops_start_up_with_a_way_out(tmp_path, monkeypatch):
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the data dir should be: nothing can be made under it
    monkeypatch.setenv("SLUICE_DATA_DIR", str(blocked / "data"))
    with pytest.raises(InstanceIdError, match="set SLUICE_INSTANCE_ID"):
        this_instance()
