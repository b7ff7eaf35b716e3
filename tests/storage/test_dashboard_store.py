"""The dashboard's state in the shared store: sessions, the login throttle, series and live streams."""

from __future__ import annotations

from sqlalchemy import column, insert, table

from app.storage.admin import LoginThrottle, SessionStore
from app.storage.migrate import upgrade
from app.storage.stats import Stats
from app.storage.usage import UsageRepo
from tests.services import race


def record(at: float, **fields) -> dict:
    base = {
        "at": at, "request_id": f"r{at}", "key_id": None, "key_name": "master", "model": "m", "endpoint": "chat",
        "upstream": "u", "upstreams": "u", "token_ids": "t", "status": 200, "outcome": "ok", "streamed": True,
        "attempts": 1, "prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "ttfb_ms": 10.0,
        "duration_ms": 20.0, "bytes_sent": 5,
    }  # fmt: skip
    return {**base, **fields}


def test_sessions_are_stored_hashed_expire_end_and_belong_to_a_password(db):
    store = SessionStore(db)
    raw = store.create(now=1000.0, ttl=60.0, password_mark="mark-1")
    assert store.is_valid(raw, 1001.0, "mark-1")
    assert not store.is_valid(raw, 1001.0, "mark-2")  # signed in under another password
    assert not store.is_valid(raw, 1060.0, "mark-1")  # expired
    assert not store.is_valid(raw + "x", 1001.0, "mark-1")
    with db.read() as conn:
        assert raw not in str(conn.exec_driver_sql("SELECT * FROM admin_sessions").all())
    store.end(raw)
    assert not store.is_valid(raw, 1001.0, "mark-1")
    old = store.create(now=0.0, ttl=1.0, password_mark="mark-1")
    store.prune(100.0)
    with db.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM admin_sessions").scalar() == 0
    assert not store.is_valid(old, 0.5, "mark-1")


def test_login_throttle_counts_attempts_per_address_in_a_sliding_minute(db):
    throttle = LoginThrottle(db, limit=5, window=60.0)
    assert [throttle.admit("10.0.0.1", 1000.0 + i) for i in range(5)] == [0.0] * 5
    assert throttle.admit("10.0.0.1", 1005.0) == 55.0  # the oldest attempt leaves the window at 1060
    assert throttle.admit("10.0.0.2", 1005.0) == 0.0  # another address
    assert throttle.admit("10.0.0.1", 1060.5) == 0.0
    throttle.succeeded("10.0.0.2")
    assert [throttle.admit("10.0.0.2", 1006.0) for _ in range(5)] == [0.0] * 5


def test_parallel_sign_in_attempts_cannot_pass_the_limit(db):
    """The count and the reservation are one transaction: 30 at once, 5 admitted."""
    throttle = LoginThrottle(db, limit=5, window=60.0)
    results = race(30, lambda: throttle.admit("10.0.0.9", 2000.0))
    assert sorted(r == 0.0 for r in results).count(True) == 5


def test_rollups_bucket_requests_errors_tokens_and_ttfb(db):
    UsageRepo(db).insert_many([
        record(1020.0), record(1079.9, outcome="upstream_error", status=502, ttfb_ms=None, total_tokens=0),
        record(1080.0, outcome="rate_limited", status=429, ttfb_ms=None), record(1150.5, ttfb_ms=30.0),
    ])  # fmt: skip
    UsageRepo(db).insert_many([record(1030.0, ttfb_ms=20000.0, key_name="other")])  # adds to the stored minute
    minutes = {row["minute"]: row for row in Stats(db).minutes(since=1020.0)}
    assert sorted(minutes) == [1020, 1080, 1140]  # whole minutes; 1079.9 is still in the first
    first = minutes[1020]
    assert (first["requests"], first["errors"], first["tokens"]) == (3, 1, 6)  # a refusal is not an error
    assert first["ttfb_0"] == 1 and first["ttfb_12"] == 1  # 10 ms and 20 s (past the last bound)
    assert minutes[1080]["errors"] == 0 and minutes[1140]["ttfb_1"] == 1  # 30 ms: the (25, 50] bucket
    by_key = Stats(db).usage_by(0.0, "key")
    assert by_key[0] == {"group": "master", "requests": 4, "prompt_tokens": 4, "completion_tokens": 8,
                         "total_tokens": 9}  # fmt: skip
    assert [(r["group"], r["requests"]) for r in Stats(db).usage_by(0.0, "upstream")] == [("u", 5)]
    assert Stats(db).usage_by(3600.0, "model") == []  # whole hours from `since` on
    UsageRepo(db).prune(before=1080.0)
    assert sorted(row["minute"] for row in Stats(db).minutes(0.0)) == [1080, 1140]


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


def test_upgrading_rolls_up_the_records_already_stored(empty_db):
    upgrade(empty_db, "0001")
    usage_0001 = table("usage", *(column(name) for name in record(0.0)))  # the columns revision 0001 has
    with empty_db.write() as conn:
        conn.execute(insert(usage_0001), [record(1020.5), record(1030.0, ttfb_ms=600.0, outcome="timeout_idle"),
                                          record(7300.0, model="other", upstream=None)])  # fmt: skip
    upgrade(empty_db)
    stats = Stats(empty_db)
    minutes = {row["minute"]: row for row in stats.minutes(0.0)}
    assert sorted(minutes) == [1020, 7260]
    assert (minutes[1020]["requests"], minutes[1020]["errors"], minutes[1020]["tokens"]) == (2, 1, 6)
    assert minutes[1020]["ttfb_0"] == 1 and minutes[1020]["ttfb_6"] == 1  # 10 ms; 600 ms in (500, 750]
    assert [(r["group"], r["requests"]) for r in stats.usage_by(0.0, "model")] == [("m", 2), ("other", 1)]
    assert [(r["group"], r["requests"]) for r in stats.usage_by(3600.0, "upstream")] == [("-", 1)]
