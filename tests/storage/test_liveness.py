"""Worker liveness records (issue 15 part 4; revision 0007) on SQLite, PostgreSQL and Redis: the
slots of workers silent for over STALE seconds are freed by a sweep, a live worker's never."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from unittest import mock

import pytest
from sqlalchemy import select, update

from app.storage import schema
from app.storage.db import Database
from app.storage.keys import ApiKey, KeyRepo
from app.storage.limits import Admission, Limiter, LimitExceeded, SqlLimiter
from app.storage.liveness import ALIVE, STALE, Keeper, Liveness, liveness_for
from tests.services import redis_url, reset_redis

DEAD, LIVE, SILENT = "crashed:101", "running:202", "old-version:303"
Age = Callable[[str, float], None]  # moves a worker's last beat `seconds` into the past


@pytest.fixture(params=["sql", "redis"])
def store(request, db) -> Iterator[tuple[Limiter, Liveness, Age]]:
    if request.param == "sql":
        limiter: Limiter = SqlLimiter(db)
        liveness = liveness_for(limiter)
        yield limiter, liveness, lambda worker, seconds: _age_row(db, worker, seconds)
        liveness.close()
        return
    # On Redis the slots and records are in Redis whatever the database: the Redis cases run beside both
    # databases (a skip would be a test skipped in CI).
    from app.storage.redis_limits import RedisLimiter

    url = redis_url()
    reset_redis(url)
    redis_limiter = RedisLimiter(url, db)
    yield redis_limiter, liveness_for(redis_limiter), lambda w, seconds: redis_limiter.redis.zincrby(ALIVE, -seconds, w)
    redis_limiter.redis.close()


def _age_row(db: Database, worker: str, seconds: float) -> None:
    c = schema.worker_liveness.c
    with db.write() as conn:
        conn.execute(update(schema.worker_liveness).where(c.worker == worker).values(seen_at=c.seen_at - seconds))


def _hold(limiter: Limiter, key: ApiKey, worker: str) -> Admission:
    """Take one of `key`'s slots as `worker` (slots name the worker of the process taking them)."""
    with mock.patch("app.storage.limits.worker_name", return_value=worker):
        now = time.time()
        return limiter.hold(key, now, now + 3600)


def _taken(limiter: Limiter, key: ApiKey) -> bool:
    """Whether the key's (max_parallel=1) slot is taken."""
    try:
        admission = limiter.hold(key, time.time(), time.time() + 60)
    except LimitExceeded:
        return True
    limiter.release(admission, 0, time.time())
    return False


def _keys(db: Database, *names: str) -> list[ApiKey]:
    return [KeyRepo(db).create(name, now=0.0, max_parallel=1)[0] for name in names]


def test_a_stale_worker_loses_its_slots_and_a_live_one_keeps_them(store, db):
    limiter, liveness, age = store
    dead_key, live_key, silent_key = _keys(db, "dead", "live", "silent")
    for worker, key in ((DEAD, dead_key), (LIVE, live_key), (SILENT, silent_key)):
        _hold(limiter, key, worker)
    liveness.beat(DEAD)
    liveness.beat(LIVE)
    assert liveness.sweep() == {}  # both beat just now
    age(DEAD, STALE + 1)
    age(LIVE, STALE - 3)  # late, not dead
    assert liveness.sweep() == {DEAD: 1}
    assert not _taken(limiter, dead_key)
    assert _taken(limiter, live_key)
    assert _taken(limiter, silent_key)  # never beat (an older version): left to its deadline
    assert liveness.sweep() == {}  # its record went with its slots


def test_a_beat_brings_a_late_worker_back(store, db):
    limiter, liveness, age = store
    (key,) = _keys(db, "k")
    _hold(limiter, key, LIVE)
    liveness.beat(LIVE)
    age(LIVE, STALE + 5)
    liveness.beat(LIVE)  # its loop was blocked for a while; now it beats again
    assert liveness.sweep() == {} and _taken(limiter, key)


def test_a_dead_worker_without_slots_is_only_forgotten(store, db):
    _, liveness, age = store
    liveness.beat(DEAD)
    age(DEAD, STALE + 1)
    assert liveness.sweep() == {DEAD: 0}
    assert liveness.sweep() == {}


def test_a_sweep_takes_at_most_its_limit(store, db):
    limiter, liveness, age = store
    keys = _keys(db, *(f"k{i}" for i in range(5)))
    for i, key in enumerate(keys):
        _hold(limiter, key, f"gone:{i}")
        liveness.beat(f"gone:{i}")
        age(f"gone:{i}", STALE + 10 + i)
    first = liveness.sweep(limit=3)
    assert first == {"gone:4": 1, "gone:3": 1, "gone:2": 1}  # the longest silent first
    assert liveness.sweep(limit=3) == {"gone:1": 1, "gone:0": 1}
    assert not any(_taken(limiter, key) for key in keys)


def test_forget_drops_the_record(store, db):
    _, liveness, age = store
    liveness.beat(DEAD)
    age(DEAD, STALE + 1)
    liveness.forget(DEAD)
    liveness.forget(DEAD)  # twice is fine
    assert liveness.sweep() == {}


def test_the_beat_is_on_the_databases_clock(db):
    """seen_at is the database's time (the same as this host's here), not a value the worker sends."""
    liveness = liveness_for(SqlLimiter(db))
    before = time.time()
    liveness.beat(LIVE)
    liveness.beat(LIVE)  # the second updates the row
    liveness.close()
    with db.read() as conn:
        rows = conn.execute(select(schema.worker_liveness)).all()
    assert [row.worker for row in rows] == [LIVE]
    assert before - 1 <= rows[0].seen_at <= time.time() + 1


def test_an_sqlite_beat_gives_up_quickly_behind_a_long_write_lock(tmp_path):
    """SQLite calls block the worker's event loop: a beat must not wait the usual 5 s for the lock."""
    import sqlite3

    from app.storage.db import StorageError
    from app.storage.migrate import upgrade

    db = Database(f"sqlite:///{tmp_path}/lock.db")
    upgrade(db)
    liveness = liveness_for(SqlLimiter(db))
    locker = sqlite3.connect(tmp_path / "lock.db", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(StorageError):
            liveness.beat(LIVE)
        assert time.monotonic() - started < 1.0
        assert liveness.sweep() == {}  # a read: WAL readers never wait
    finally:
        locker.execute("ROLLBACK")
        locker.close()
        liveness.close()
        db.dispose()


class _Records:
    def __init__(self) -> None:
        self.beats, self.sweeps = 0, 0

    def beat(self, worker: str) -> None:
        self.beats += 1

    def sweep(self, stale: float = STALE, limit: int = 50) -> dict[str, int]:
        self.sweeps += 1
        return {}


STEADY = [float(t) for t in range(0, 31)]


@pytest.mark.parametrize(
    ("beats", "sweep_at", "sweeps"),
    [
        ([0.0, 1.0, 2.0], 2.5, False),  # just started: not yet STALE seconds of beats
        (STEADY[:11], 10.0, True),  # steady for STALE seconds
        (STEADY[:11] + [12.0, 13.0], 13.0, True),  # a missed beat is no gap
        (STEADY[:21] + [36.0, 37.0], 37.0, False),  # the store was away 16 s: the others have not beaten yet
        (STEADY[:21] + list(range(36, 47)), 46.0, True),  # ... until STALE seconds after it came back
        (STEADY[:21], 26.0, False),  # this worker's own beats stopped landing: it may be the one cut off
    ],
)
def test_a_worker_sweeps_only_while_its_own_beats_land_steadily(beats, sweep_at, sweeps):
    records, now = _Records(), [0.0]
    keeper = Keeper(records, "w:1", clock=lambda: now[0])  # type: ignore[arg-type]
    for at in beats:
        now[0] = at
        keeper.beat()
    now[0] = sweep_at
    keeper.sweep()
    assert records.sweeps == int(sweeps)
