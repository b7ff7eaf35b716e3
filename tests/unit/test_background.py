"""Background chores survive any exception: logged, counted in a metric, run again at their turn."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from app.scheduler import Scheduler
from app.storage.db import Database, StorageError
from app.storage.migrate import upgrade
from app.storage.usage import UsageRepo, UsageWriter

RECORD = {"at": 1.0, "request_id": "r", "key_id": None, "key_name": "m", "model": "x", "endpoint": "chat",
          "upstream": None, "upstreams": "", "token_ids": "", "status": 200, "outcome": "ok", "streamed": False,
          "attempts": 1, "duration_ms": 1.0}  # fmt: skip


def errors(chore: str) -> float:
    return REGISTRY.get_sample_value("sluice_background_errors_total", {"chore": chore}) or 0.0


def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the background work did not happen in time"
        time.sleep(0.02)


class Flaky:
    """A chore whose first `failures` runs raise `exc`; counts every run."""

    def __init__(self, exc: BaseException, failures: int = 1) -> None:
        self.exc, self.failures, self.runs = exc, failures, 0

    def __call__(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise self.exc


SURROGATE_ERROR = UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")


@pytest.mark.parametrize(
    "exc", [RuntimeError("injected"), SURROGATE_ERROR, StorageError("database write failed: OperationalError")]
)
def test_a_chore_that_raises_runs_again_and_is_counted(exc, caplog):
    scheduler = Scheduler()
    name = f"flaky_{type(exc).__name__}"
    flaky, steady = Flaky(exc, failures=2), Flaky(RuntimeError(), failures=0)
    scheduler.every(0.02, flaky, name)
    scheduler.every(0.02, steady, "steady")
    before = errors(name)
    scheduler.start()
    try:
        wait_until(lambda: flaky.runs >= 4 and steady.runs >= 4)  # past its failures, it keeps its turns
    finally:
        scheduler.close()
    assert errors(name) == before + 2
    failures = [r for r in caplog.records if name in r.getMessage() and "failed" in r.getMessage()]
    assert len(failures) == 2
    assert sum(r.exc_info is not None for r in failures) == (0 if isinstance(exc, StorageError) else 1)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the SystemExit, on purpose
def test_a_scheduler_whose_thread_ended_is_started_again():
    """Even a BaseException (a killed greenlet) only ends the thread: the next start() replaces it."""
    scheduler = Scheduler()
    killer = Flaky(SystemExit(), failures=1)
    scheduler.every(0.02, killer, "killer")
    scheduler.start()
    try:
        wait_until(lambda: killer.runs == 1 and not scheduler._thread.is_alive())
        scheduler.start()
        wait_until(lambda: killer.runs >= 3)
    finally:
        scheduler.close()


@pytest.fixture
def repo(tmp_path) -> UsageRepo:
    db = Database(f"sqlite:///{tmp_path}/usage.db")
    upgrade(db)
    yield UsageRepo(db)
    db.dispose()


def test_a_record_that_cannot_be_stored_is_dropped_alone_and_the_writer_carries_on(repo):
    """A lone surrogate in a record (UnicodeEncodeError) killed the writer thread for good."""
    writer = UsageWriter(repo, interval=0.05)
    before = errors(UsageWriter.CHORE)
    try:
        writer.add({**RECORD, "request_id": "good-1"})
        writer.add({**RECORD, "request_id": "bad", "model": "\ud800"})
        writer.add({**RECORD, "request_id": "good-2"})
        wait_until(lambda: len(repo.recent()) == 2)
        writer.add({**RECORD, "request_id": "next-batch"})  # the writer still runs
        wait_until(lambda: len(repo.recent()) == 3)
    finally:
        writer.close()
    assert sorted(r["request_id"] for r in repo.recent()) == ["good-1", "good-2", "next-batch"]
    assert errors(UsageWriter.CHORE) == before + 1


def test_an_insert_that_raises_once_loses_no_record(repo, monkeypatch):
    writer = UsageWriter(repo, interval=0.05)
    insert, calls = repo.insert_many, []

    def fails_first(records) -> None:
        calls.append(len(records))
        if len(calls) == 1:
            raise RuntimeError("injected")
        insert(records)

    monkeypatch.setattr(repo, "insert_many", fails_first)
    before = errors(UsageWriter.CHORE)
    try:
        for index in range(3):
            writer.add({**RECORD, "request_id": f"r{index}"})
        wait_until(lambda: len(repo.recent()) == 3)
        writer.add({**RECORD, "request_id": "r3"})
        wait_until(lambda: len(repo.recent()) == 4)
    finally:
        writer.close()
    assert errors(UsageWriter.CHORE) == before + 1


CHORES = {"usage_records", "token_counts", "usage_pruning", "limits_pruning", "live_report", "session_pruning"}


def test_every_gateway_chore_survives_an_injected_error(app):
    """Every chore of a real gateway's scheduler is made to raise once; its thread runs each again."""
    scheduler = app.extensions["sluice"].writer.scheduler
    assert {chore.name for chore in scheduler._chores} >= CHORES  # one scheduler runs them all
    runs: dict[str, int] = {}
    before = {chore.name: errors(chore.name) for chore in scheduler._chores}
    for chore in scheduler._chores:
        chore.run = _failing_once(chore.name, chore.run, runs)
    for turn in (1, 2):  # the first raises, the second does the real work
        for chore in scheduler._chores:
            scheduler.wake(chore.name)
        wait_until(lambda turn=turn: all(runs.get(c.name, 0) >= turn for c in scheduler._chores))
    assert {name: errors(name) - count for name, count in before.items()} == {name: 1.0 for name in before}


def _failing_once(name: str, real: Callable[[], None], runs: dict[str, int]) -> Callable[[], None]:
    def run() -> None:
        runs[name] = runs.get(name, 0) + 1
        if runs[name] == 1:
            raise RuntimeError(f"injected into {name}")
        real()

    return run


def test_close_never_raises_and_writes_late_records(repo, monkeypatch):
    """worker_exit and atexit close the writer: a failing database is logged and counted there too."""
    writer = UsageWriter(repo, interval=60)
    writer.add({**RECORD, "request_id": "before-close"})
    insert = repo.insert_many

    def unreachable(records) -> None:
        raise StorageError("database write failed: OperationalError")

    monkeypatch.setattr(repo, "insert_many", unreachable)
    before = errors(UsageWriter.CHORE)
    writer.close()  # does not raise; the record stays queued
    assert errors(UsageWriter.CHORE) == before + 1
    monkeypatch.setattr(repo, "insert_many", insert)
    writer.add({**RECORD, "request_id": "late"})  # a drain that ended after the first close
    writer.close()
    assert sorted(r["request_id"] for r in repo.recent()) == ["before-close", "late"]


def test_close_runs_the_final_chores_once_and_skips_pruning():
    """A worker's exit writes what is pending; pruning waits for the next worker's turn."""
    scheduler = Scheduler()
    flush, prune = Flaky(RuntimeError(), failures=0), Flaky(RuntimeError(), failures=0)
    scheduler.every(60, flush, "flush")
    scheduler.every(60, prune, "prune", final=False)
    scheduler.close()
    scheduler.close()
    assert (flush.runs, prune.runs) == (1, 0)
