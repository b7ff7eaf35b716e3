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
from app.storage.liveness import ALIVE, STALE, Liveness, liveness_for
from tests.services import redis_url, reset_redis

DEAD, LIVE, SILENT = "crashed:101", "running:202", "old-version:303"
Age = Callable[[str, float], None]  # moves a worker's last beat `seconds` into the past


@pytest.fixture(params=["sql", "redis"])
def store(request, db) -> Iterator[tuple[Limiter, Liveness, Age]]:
    if request.param == "sql":
        limiter: Limiter = SqlLimiter(db)
        yield limiter, liveness_for(limiter), lambda worker, seconds: _age_row(db, worker, seconds)
        return
    if not db.is_sqlite:
        pytest.skip("on Redis the slots and records are in Redis whatever the database: once is enough")
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
    with db.read() as conn:
        rows = conn.execute(select(schema.worker_liveness)).all()
    assert [row.worker for row in rows] == [LIVE]
    assert before - 1 <= rows[0].seen_at <= time.time() + 1
