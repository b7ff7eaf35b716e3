"""The Redis limiter against a real redis-server: the same windows as the database's (per second,
case for case), exact under concurrency, and an admission that reads at most 61 fields per window."""

from __future__ import annotations

import time

import pytest

from app.storage.db import Database
from app.storage.keys import KeyRepo
from app.storage.limits import LimitExceeded, SqlLimiter
from app.storage.migrate import upgrade
from app.storage.redis_limits import RedisLimiter
from tests.services import race, redis_url, reset_redis


@pytest.fixture
def limiter(tmp_path):
    url = redis_url()
    reset_redis(url)
    db = Database(f"sqlite:///{tmp_path}/redis-limits.db")
    upgrade(db)
    redis_limiter = RedisLimiter(url, db)
    yield redis_limiter, KeyRepo(db)
    redis_limiter.redis.close()
    db.dispose()


@pytest.fixture
def on_caller_clock(db):
    """A Redis limiter counting on the times it is given, as SqlLimiter does (the storage suite's db)."""
    url = redis_url()
    reset_redis(url)
    redis_limiter = RedisLimiter(url, db, caller_clock=True)
    yield redis_limiter
    redis_limiter.redis.close()


def test_rpm_is_exact_under_concurrency(limiter):
    redis_limiter, keys = limiter
    key, _ = keys.create("k", now=0.0, rpm=10)

    def attempt():
        try:
            return redis_limiter.admit(key, time.time())
        except LimitExceeded as exc:
            return exc

    results = race(50, attempt)
    admitted = [r for r in results if not isinstance(r, LimitExceeded)]
    refused = [r for r in results if isinstance(r, LimitExceeded)]
    assert (len(admitted), len(refused)) == (10, 40)
    assert sorted(a.window.remaining_requests for a in admitted) == list(range(10))
    assert all(0 < exc.retry_after <= 61 for exc in refused)  # a second's events count until it + 61


def test_tpm_parallel_and_budget(limiter):
    redis_limiter, keys = limiter
    key, _ = keys.create("k", now=0.0, tpm=100, max_parallel=2, monthly_tokens=1000)
    now = time.time()
    a = redis_limiter.admit(key, now)
    b = redis_limiter.admit(key, now)
    with pytest.raises(LimitExceeded) as info:
        redis_limiter.admit(key, now)
    assert info.value.code == "too_many_parallel_requests"
    redis_limiter.release(a, 60, now)
    redis_limiter.release(b, 60, now)
    with pytest.raises(LimitExceeded) as info:
        redis_limiter.admit(key, now)
    assert info.value.code == "rate_limit_exceeded" and info.value.window.remaining_tokens == 0
    assert redis_limiter.peek(key, now).remaining_tokens == 0
    other, _ = keys.create("budget", now=0.0, monthly_tokens=50)
    redis_limiter.release(redis_limiter.admit(other, now), 60, now)
    with pytest.raises(LimitExceeded) as info:
        redis_limiter.admit(other, now)
    assert info.value.code == "insufficient_quota"


# Steps: ("admit", at), ("hold", at), ("admit held", n, at), ("release", n, tokens, at) of the
# n-th admission or hold, ("peek", at). Every admission's window or refusal and every peek is compared.
CASES = {
    "the rpm window slides per second": (
        {"rpm": 2},
        [("admit", 1000.0), ("admit", 1010.0), ("admit", 1020.0), ("admit", 1060.9), ("admit", 1061.0),
         ("peek", 1061.5), ("admit", 1071.0)],
    ),
    "tpm refuses once full and frees a minute after its second": (
        {"tpm": 100},
        [("admit", 1000.0), ("admit", 1000.1), ("release", 0, 80, 1001.0), ("release", 1, 80, 1001.0),
         ("admit", 1002.0), ("peek", 1030.0), ("admit", 1061.99), ("admit", 1062.0)],
    ),
    "tokens count until their second + 61, to the edge": (
        {"tpm": 1000, "rpm": 100},
        [("admit", 1000.2), ("release", 0, 50, 1000.9), ("admit", 1005.5), ("release", 1, 70, 1030.0),
         ("peek", 1060.999), ("admit", 1061.0), ("peek", 1090.999), ("peek", 1091.0), ("admit", 1200.0)],
    ),
    "rpm and tpm together, a refusal counts nothing": (
        {"rpm": 3, "tpm": 250},
        [("admit", 1000.0), ("release", 0, 100, 1000.5), ("admit", 1001.0), ("release", 1, 160, 1002.0),
         ("admit", 1003.0), ("admit", 1004.0), ("peek", 1010.0), ("admit", 1061.5), ("admit", 1062.0),
         ("admit", 1063.0)],
    ),
    "a held slot is admitted once, a release with no tokens records none": (
        {"rpm": 5, "tpm": 100, "max_parallel": 2},
        [("hold", 1000.0), ("admit held", 0, 1000.5), ("admit", 1001.0), ("hold", 1001.5),
         ("release", 0, 0, 1002.0), ("release", 1, 90, 1002.0), ("hold", 1003.0), ("admit held", 2, 1003.5),
         ("peek", 1004.0), ("admit", 1005.0)],
    ),
    "a key with no window limits": (
        {"max_parallel": 1},
        [("admit", 1000.0), ("admit", 1000.5), ("release", 0, 40, 1001.0), ("admit", 1001.0), ("peek", 1001.0)],
    ),
}  # fmt: skip


def _play(limiter, key, steps: list[tuple]) -> list[tuple]:
    """Run `steps` against `limiter`; what each admission, hold and peek gave."""
    seen, admissions = [], []
    for step in steps:
        kind, at = step[0], step[-1]
        try:
            if kind == "peek":
                seen.append(("peek", limiter.peek(key, at)))
            elif kind == "release":
                limiter.release(admissions[step[1]], step[2], at)
            else:
                held = admissions[step[1]] if kind == "admit held" else None
                call = limiter.hold if kind == "hold" else limiter.admit
                admission = call(key, at, at + 600) if held is None else limiter.admit(key, at, at + 600, held)
                admissions.append(admission)
                seen.append(("ok", admission.window))
        except LimitExceeded as exc:
            seen.append((exc.code, exc.retry_after, exc.window))
    return seen


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_redis_gives_the_databases_answers_case_for_case(case, db, on_caller_clock):
    limits, steps = CASES[case]
    keys = KeyRepo(db)
    on_sql, _ = keys.create("sql", now=0.0, **limits)
    on_redis, _ = keys.create("redis", now=0.0, **limits)
    expected = _play(SqlLimiter(db), on_sql, steps)
    assert _play(on_caller_clock, on_redis, steps) == expected


def test_an_admission_reads_one_field_per_second_whatever_the_rate(limiter):
    """50 requests a second for 2.5 minutes: the token hash never holds more than the window's 61 seconds."""
    redis_limiter, keys = limiter
    on_caller_clock = RedisLimiter(redis_url(), redis_limiter.db, caller_clock=True)
    key, _ = keys.create("busy", now=0.0, tpm=10**9)
    tokens_hash = f"sluice:rl:{key.id}:tokens"
    for second in range(1000, 1150):
        for i in range(50):
            now = second + i / 50
            on_caller_clock.release(on_caller_clock.admit(key, now, now + 60), 3, now)
        assert on_caller_clock.redis.hlen(tokens_hash) <= 61
    window = on_caller_clock.admit(key, 1150.0, 1210.0).window
    assert window.remaining_tokens == 10**9 - 60 * 50 * 3  # seconds 1090..1149
    assert on_caller_clock.redis.hlen(tokens_hash) == 60
    on_caller_clock.redis.close()


def test_a_repeated_release_counts_its_tokens_once(limiter):
    """A release whose reply was lost is retried (app/services/releases.py): the retry adds nothing."""
    redis_limiter, keys = limiter
    key, _ = keys.create("k", now=0.0, tpm=1000, max_parallel=1)
    now = time.time()
    admission = redis_limiter.admit(key, now, now + 60)
    for _ in range(3):
        redis_limiter.release(admission, 300, now)
    assert redis_limiter.peek(key, time.time()).remaining_tokens == 700
    redis_limiter.release(redis_limiter.admit(key, now, now + 60), 300, now)  # another request: counted
    assert redis_limiter.peek(key, time.time()).remaining_tokens == 400


def test_tokens_released_after_their_window_record_nothing(limiter):
    """A release retried long after its request ended (the store was down): its second no longer counts."""
    redis_limiter, keys = limiter
    key, _ = keys.create("k", now=0.0, tpm=1000)
    time.sleep(1.1 - time.time() % 1)  # early in a second: the script runs within the same one
    now = time.time()
    late, edge, recent = (redis_limiter.admit(key, now, now + 600) for _ in range(3))
    redis_limiter.release(late, 300, now - 61)  # second now - 61: out of the window since this second began
    assert redis_limiter.redis.keys(f"sluice:rl:{key.id}:tokens*") == []
    redis_limiter.release(edge, 200, now - 60)  # counts until the end of this second
    assert redis_limiter.peek(key, now).remaining_tokens == 800
    redis_limiter.release(recent, 300, now - 30)  # counts 31 s more, and its marker lives as long
    assert redis_limiter.peek(key, now).remaining_tokens == 500
    assert 29 <= redis_limiter.redis.ttl(f"sluice:rl:{key.id}:tokens:released:{recent.admission_id}") <= 31
    assert 29 <= redis_limiter.redis.ttl(f"sluice:rl:{key.id}:tokens") <= 61


def _paused(url: str, milliseconds: int):
    """Redis answers no command from any client for `milliseconds` (CLIENT PAUSE, from a connection of its own)."""
    import redis

    client = redis.Redis.from_url(url)
    client.execute_command("CLIENT", "PAUSE", milliseconds, "ALL")
    return client


@pytest.fixture
def pooled(tmp_path):
    """make(max_connections, pause_ms): a limiter with that pool, a key, and Redis paused for everyone; all closed
    at the end."""
    url, opened = redis_url(), []
    reset_redis(url)
    db = Database(f"sqlite:///{tmp_path}/pool.db")
    upgrade(db)

    def make(max_connections: int, pause_ms: int):
        redis_limiter = RedisLimiter(f"{url}?max_connections={max_connections}", db)
        key, _ = KeyRepo(db).create("k", now=0.0, rpm=1000)
        pausing = _paused(url, pause_ms)
        opened.extend([pausing, redis_limiter.redis])
        return redis_limiter, key, pausing

    yield make
    for client in opened:
        client.close()
    db.dispose()


def test_a_burst_past_the_pool_waits_for_a_connection_instead_of_failing(pooled):
    # redis-py's default pool fails the 101st concurrent command at once ("Too many connections"); a gevent worker
    # starting a burst of streams runs that many scripts together. Here 3 connections serve 30 admissions that
    # all start while Redis is paused: 27 wait for a connection, none fails, no fourth connection is opened.
    redis_limiter, key, pausing = pooled(3, 300)
    results = race(30, lambda: redis_limiter.admit(key, time.time()))
    assert [type(r).__name__ for r in results] == ["Admission"] * 30
    own, db_index = pausing.client_id(), pausing.connection_pool.connection_kwargs.get("db", 0)
    clients = [c for c in pausing.client_list() if int(c["db"]) == db_index and int(c["id"]) != own]
    assert 1 <= len(clients) <= 3, clients


def test_a_request_that_waits_past_the_pool_wait_is_a_storage_error(pooled, monkeypatch):
    from app.storage import redis_limits
    from app.storage.db import StorageError

    monkeypatch.setattr(redis_limits, "POOL_WAIT", 0.2)
    redis_limiter, key, _ = pooled(1, 1500)
    results = race(3, lambda: _admit_or_error(redis_limiter, key))
    assert sorted(type(r).__name__ for r in results) == ["Admission", "StorageError", "StorageError"]
    assert all("redis admission failed" in str(r) for r in results if isinstance(r, StorageError))


def _admit_or_error(redis_limiter, key):
    from app.storage.db import StorageError

    try:
        return redis_limiter.admit(key, time.time())
    except StorageError as exc:
        return exc
