"""The dashboard's state in the shared store: sessions, the login throttle, series and live streams."""

from __future__ import annotations

from app.storage.admin import LoginThrottle, SessionStore
from app.storage.stats import Stats
from app.storage.usage import UsageRepo


def record(at: float, **fields) -> dict:
    base = {
        "at": at, "request_id": f"r{at}", "key_id": None, "key_name": "master", "model": "m", "endpoint": "chat",
        "upstream": "u", "upstreams": "u", "token_ids": "t", "status": 200, "outcome": "ok", "streamed": True,
        "attempts": 1, "prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "ttfb_ms": 10.0,
        "duration_ms": 20.0, "bytes_sent": 5,
    }  # fmt: skip
    return {**base, **fields}


def test_sessions_are_stored_hashed_expire_and_end(db):
    store = SessionStore(db)
    raw = store.create(now=1000.0, ttl=60.0)
    assert store.is_valid(raw, 1001.0)
    assert not store.is_valid(raw, 1060.0)  # expired
    assert not store.is_valid(raw + "x", 1001.0)
    with db.read() as conn:
        assert raw not in str(conn.exec_driver_sql("SELECT * FROM admin_sessions").all())
    store.end(raw)
    assert not store.is_valid(raw, 1001.0)
    old = store.create(now=0.0, ttl=1.0)
    store.prune(100.0)
    assert not store.is_valid(old, 0.5)


def test_login_throttle_counts_failures_per_address_in_a_sliding_minute(db):
    throttle = LoginThrottle(db, limit=5, window=60.0)
    for i in range(4):
        throttle.failed("10.0.0.1", 1000.0 + i)
    assert throttle.retry_after("10.0.0.1", 1004.0) == 0.0
    throttle.failed("10.0.0.1", 1004.0)
    assert throttle.retry_after("10.0.0.1", 1005.0) == 55.0  # the oldest failure leaves at 1060
    assert throttle.retry_after("10.0.0.2", 1005.0) == 0.0  # another address
    assert throttle.retry_after("10.0.0.1", 1060.5) == 0.0
    throttle.failed("10.0.0.2", 1005.0)
    throttle.succeeded("10.0.0.2")
    assert throttle.retry_after("10.0.0.2", 1005.0) == 0.0


def test_series_buckets_requests_errors_tokens_and_ttfb(db):
    UsageRepo(db).insert_many([
        record(1000.0), record(1030.0, outcome="upstream_error", status=502, ttfb_ms=None, total_tokens=0),
        record(1065.0, outcome="rate_limited", status=429, ttfb_ms=None), record(1130.0, ttfb_ms=30.0),
        record(900.0),  # before the range
    ])  # fmt: skip
    stats = Stats(db)
    series = stats.series(since=1000.0, bucket=60.0)
    assert series[0] == {"b": 0, "requests": 2, "errors": 1, "tokens": 3}
    assert series[1]["requests"] == 1 and series[1]["errors"] == 0  # a refusal is not an error
    assert series[2]["requests"] == 1
    assert sorted(stats.ttfb_samples(1000.0, 60.0)) == [(0, 10.0), (2, 30.0)]
    assert stats.top_models(1000.0) == [{"model": "m", "requests": 4, "tokens": 9}]


def test_live_streams_add_up_fresh_worker_reports(db):
    stats = Stats(db)
    stats.report_worker("host-a:1", 3, now=1000.0)
    stats.report_worker("host-b:2", 4, now=1001.0)
    stats.report_worker("host-c:3", 9, now=980.0)  # stale: that worker stopped reporting
    assert stats.live(now=1002.0) == (7, 2)
    stats.report_worker("host-a:1", 1, now=1003.0)  # a new report replaces the old one
    assert stats.live(now=1004.0) == (5, 2)
    stats.report_worker("host-b:2", -1, now=1004.0)  # a worker that exits removes its row
    assert stats.live(now=1004.0) == (1, 1)
