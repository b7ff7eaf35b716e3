"""The Redis limiter against a real redis-server: the same windows, exact under concurrency."""

from __future__ import annotations

import time

import pytest

from app.storage.db import Database
from app.storage.keys import KeyRepo
from app.storage.limits import LimitExceeded
from app.storage.migrate import upgrade
from app.storage.redis_limits import RedisLimiter
from tests.services import race, redis_url, reset_redis


@pytest.fixture
def limiter(tmp_path):
    url = redis_url()
    reset_redis(url)
    db = Database(f"sqlite:///{tmp_path}/redis-limits.db")
    upgrade(db)
    yield RedisLimiter(url, db), KeyRepo(db)
    db.dispose()


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
    assert all(0 < exc.retry_after <= 60 for exc in refused)


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
    other, _ = keys.create("budget", now=0.0, monthly_tokens=50)
    redis_limiter.release(redis_limiter.admit(other, now), 60, now)
    with pytest.raises(LimitExceeded) as info:
        redis_limiter.admit(other, now)
    assert info.value.code == "insufficient_quota"
