"""Storage behaviour, identical on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from app.storage import schema
from app.storage.keys import KeyConflict, KeyNotFound, KeyRepo, hash_key
from app.storage.limits import LimitExceeded, SqlLimiter, format_reset, seconds_to_next_month
from app.storage.migrate import upgrade
from app.storage.tokens import TokenRepo
from app.storage.usage import UsageRepo, UsageWriter
from tests.services import race


def test_migrations_are_idempotent(db):
    upgrade(db)
    with db.read() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0007"


def test_migrations_match_the_schema(db):
    """The frozen revisions build exactly the tables app/storage/schema.py declares."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with db.read() as conn:
        assert compare_metadata(MigrationContext.configure(conn), schema.metadata) == []


def test_keys_are_stored_hashed_and_found_by_value(db):
    keys = KeyRepo(db)
    key, secret = keys.create("team-a", now=1000.0, models=("gpt-*",), rpm=5)
    assert secret.startswith("sk-sluice-") and len(secret) >= len("sk-sluice-") + 43
    with db.read() as conn:
        row = conn.execute(select(schema.api_keys)).one()
    assert secret not in str(tuple(row))
    assert row.key_hash == hash_key(secret)
    assert key.prefix == secret[:14]
    assert keys.by_secret(secret).id == key.id
    assert keys.by_secret(secret + "x") is None
    assert keys.find("team-a").id == keys.find(key.prefix).id == keys.find(key.id).id == key.id
    with pytest.raises(KeyNotFound):
        keys.find("nobody")
    with pytest.raises(KeyConflict):
        keys.create("team-a", now=1.0)


def test_key_state(db):
    keys = KeyRepo(db)
    key, _ = keys.create("k", now=0.0, expires_at=100.0)
    assert key.state(50.0) == "active" and key.state(100.0) == "expired"
    assert keys.update(key.id, enabled=False).state(0) == "disabled"
    assert keys.update(key.id, revoked_at=1.0).state(0) == "revoked"


def test_rpm_window_slides(db):
    key, _ = KeyRepo(db).create("k", now=0.0, rpm=2)
    limiter = SqlLimiter(db)
    first = limiter.admit(key, 1000.0)
    assert (first.window.limit_requests, first.window.remaining_requests) == (2, 1)
    second = limiter.admit(key, 1010.0)
    assert second.window.remaining_requests == 0
    with pytest.raises(LimitExceeded) as info:
        limiter.admit(key, 1020.0)
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.retry_after == pytest.approx(41.0)  # the request of second 1000 counts until 1061
    with pytest.raises(LimitExceeded):
        limiter.admit(key, 1060.9)  # never early
    assert limiter.admit(key, 1061.0).window.remaining_requests == 0  # one slot freed


def test_tpm_admits_while_under_and_refuses_once_full(db):
    key, _ = KeyRepo(db).create("k", now=0.0, tpm=100)
    limiter = SqlLimiter(db)
    a = limiter.admit(key, 1000.0)
    b = limiter.admit(key, 1000.1)  # in flight together: overshoot bounded by these
    limiter.release(a, 80, 1001.0)
    limiter.release(b, 80, 1001.0)
    with pytest.raises(LimitExceeded) as info:
        limiter.admit(key, 1002.0)
    assert info.value.window.remaining_tokens == 0
    assert info.value.retry_after == pytest.approx(60.0)  # tokens of second 1001 count until 1062
    assert limiter.admit(key, 1062.0).window.remaining_tokens == 100


def test_max_parallel_and_release(db):
    key, _ = KeyRepo(db).create("k", now=0.0, max_parallel=1)
    limiter = SqlLimiter(db)
    first = limiter.admit(key, 1000.0)
    with pytest.raises(LimitExceeded) as info:
        limiter.admit(key, 1000.5)
    assert info.value.code == "too_many_parallel_requests"
    limiter.release(first, 0, 1001.0)
    limiter.admit(key, 1001.5)


def test_monthly_budget(db):
    key, _ = KeyRepo(db).create("k", now=0.0, monthly_tokens=100)
    limiter = SqlLimiter(db)
    now = time.time()
    limiter.release(limiter.admit(key, now), 120, now)
    with pytest.raises(LimitExceeded) as info:
        limiter.admit(key, now + 1)
    assert info.value.code == "insufficient_quota"
    assert 0 < info.value.retry_after <= seconds_to_next_month(now)


def test_rpm_is_exact_under_concurrency(db):
    """50 threads, each with its own connection, race for 10 slots: exactly 10 win."""
    key, _ = KeyRepo(db).create("k", now=0.0, rpm=10)
    limiter = SqlLimiter(db)

    def attempt():
        try:
            return limiter.admit(key, time.time())
        except LimitExceeded as exc:
            return exc

    results = race(50, attempt)
    assert sum(not isinstance(r, LimitExceeded) for r in results) == 10


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.02, "20ms"), (0.0, "0ms"), (6, "6s"), (5.2, "6s"), (90, "1m30s"), (3605, "1h0m5s")]
)
def test_format_reset(seconds, text):
    assert format_reset(seconds) == text


def test_token_state_and_overrides(db):
    repo = TokenRepo(db)
    repo.seed([("up:aaa", "up", "...aaaa"), ("up:bbb", "up", "...bbbb")], now=1.0)
    repo.seed([("up:aaa", "up", "...aaaa")], now=2.0)  # idempotent
    repo.report("up:aaa", status=429, ok=False, cooldown=30, now=100.0)
    repo.report("up:aaa", status=429, ok=False, cooldown=5, now=101.0)  # never shortens a cooldown
    repo.report("up:bbb", status=200, ok=True, cooldown=0, now=100.0)
    a, b = repo.rows("up")
    assert (a.cooldown_until, a.failures, a.last_status) == (130.0, 2, 429)
    assert (b.successes, b.cooldown_until) == (1, 0.0)
    assert a.public(120.0)["state"] == "cooling" and b.public(120.0)["state"] == "healthy"
    repo.set_flags("up:bbb", removed=True, enabled=False)
    assert repo.get("up:bbb").public(0)["state"] == "removed"
    repo.add_runtime("up:ccc", "up", "ciphertext", "...cccc", now=3.0)
    assert repo.get("up:ccc").source == "runtime"
    repo.set_override("up", "agent/1", {"X-A": "1"}, now=1.0)
    repo.set_override("up", "agent/2", None, now=2.0)
    assert repo.overrides() == {"up": ("agent/2", None)}


def test_usage_summary_and_prune(db):
    usage = UsageRepo(db)
    base = {"request_id": "r", "endpoint": "chat", "upstreams": "u", "token_ids": "u:1", "status": 200,
            "outcome": "ok", "streamed": False, "attempts": 1, "duration_ms": 5.0, "bytes_sent": 10}  # fmt: skip
    day = 86400 * 20000  # 2024-10-04 UTC
    usage.insert_many([
        {**base, "at": day + 10, "key_id": "k1", "key_name": "alpha", "model": "m1", "upstream": "u",
         "prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
        {**base, "at": day + 20, "key_id": "k1", "key_name": "alpha", "model": "m2", "upstream": "v",
         "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        {**base, "at": day + 86400, "key_id": None, "key_name": "master", "model": "m1", "upstream": "u",
         "prompt_tokens": 10, "completion_tokens": 0, "total_tokens": 10},
    ])  # fmt: skip
    by_key = usage.summary(day, "key")
    assert by_key == [
        {"group": "alpha", "requests": 2, "prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9},
        {"group": "master", "requests": 1, "prompt_tokens": 10, "completion_tokens": 0, "total_tokens": 10},
    ]
    assert [r["group"] for r in usage.summary(day, "day")] == ["2024-10-04", "2024-10-05"]
    assert [(r["group"], r["requests"]) for r in usage.summary(day, "upstream")] == [("u", 2), ("v", 1)]
    assert [r["total_tokens"] for r in usage.summary(day, "model")] == [17, 2]
    assert usage.prune(day + 100) == 2
    assert len(usage.recent()) == 1


def test_usage_writer_batches_and_flushes_on_close(db):
    usage = UsageRepo(db)
    writer = UsageWriter(usage, interval=60)
    record = {"at": 1.0, "request_id": "r", "key_id": None, "key_name": "m", "model": "x", "endpoint": "chat",
              "upstream": None, "upstreams": "", "token_ids": "", "status": 200, "outcome": "ok", "streamed": True,
              "attempts": 1, "duration_ms": 1.0, "bytes_sent": 0}  # fmt: skip
    for _ in range(5):
        writer.add(dict(record))
    assert usage.recent() == []  # not on the request path
    writer.close()
    assert len(usage.recent()) == 5


def test_a_full_batch_is_written_before_the_interval_ends(db):
    """BATCH pending records wake the writer: its transactions (and stalls) stay short."""
    from app.storage.usage import BATCH

    usage = UsageRepo(db)
    writer = UsageWriter(usage, interval=60)
    record = {"at": 1.0, "request_id": "r", "key_id": None, "key_name": "m", "model": "x", "endpoint": "chat",
              "upstream": None, "upstreams": "", "token_ids": "", "status": 200, "outcome": "ok", "streamed": False,
              "attempts": 1, "duration_ms": 1.0}  # fmt: skip
    try:
        for _ in range(BATCH):
            writer.add(dict(record))
        deadline = time.monotonic() + 10
        while len(usage.recent(limit=BATCH + 1)) < BATCH and time.monotonic() < deadline:
            time.sleep(0.05)
        stored = usage.recent(limit=BATCH + 1)
        assert len(stored) == BATCH and stored[0]["bytes_sent"] == 0  # a left-out column takes its default
    finally:
        writer.close()


def test_token_counts_and_budgets_past_32_bits(db):
    """A busy key's month passes 2**31 tokens: budgets and counters are 64-bit on every backend."""
    keys, limiter = KeyRepo(db), SqlLimiter(db)
    key, _ = keys.create("big", now=1000.0, tpm=10**12, monthly_tokens=5 * 10**9)
    for _ in range(2):
        limiter.release(limiter.admit(key, 1000.0), 3 * 10**9, 1000.0)
    with pytest.raises(LimitExceeded) as refused:
        limiter.admit(keys.find("big"), 1001.0)
    assert refused.value.code == "insufficient_quota"
    with db.read() as conn:
        assert conn.execute(select(schema.monthly_usage.c.tokens)).scalar() == 6 * 10**9


def test_quick_transactions_commit_or_leave_nothing(db):
    """The request path's prepared statements: committed at the end, rolled back on any error,
    and a broken unique constraint is a Conflict, on both backends."""
    from sqlalchemy import insert

    from app.storage.db import Conflict

    key, _ = KeyRepo(db).create("quick", now=1000.0, max_parallel=5)
    add = db.prepare(insert(schema.inflight))
    count = db.prepare(select(schema.inflight.c.request_id).where(schema.inflight.c.key_id == key.id))
    with db.quick(write=True) as q:
        q.execute(add, {"request_id": "a", "key_id": key.id, "started_at": 1.0, "worker": "w", "expires_at": 2.0})
    with pytest.raises(LimitExceeded), db.quick(write=True) as q:
        q.execute(add, {"request_id": "b", "key_id": key.id, "started_at": 1.0, "worker": "w", "expires_at": 2.0})
        raise LimitExceeded("rate_limit_exceeded", "refused after a write", 1.0)
    with pytest.raises(Conflict), db.quick(write=True) as q:
        q.execute(add, {"request_id": "c", "key_id": key.id, "started_at": 1.0, "worker": "w", "expires_at": 2.0})
        q.execute(add, {"request_id": "a", "key_id": key.id, "started_at": 1.0, "worker": "w", "expires_at": 2.0})
    with db.quick() as q:
        assert [row.request_id for row in q.rows(count)] == ["a"]
    assert SqlLimiter(db).admit(key, 1000.0).window.limit_requests is None  # the connection is still usable


def test_cached_key_and_token_state_follow_changes_made_by_another_process(db):
    """Two handles on one database stand for two workers: what one changes, the other's next
    read sees: on SQLite at once (the mapped file), on PostgreSQL once its notification has
    arrived (app/storage/notify.py: within milliseconds, checked well under MAX_AGE)."""
    from app.storage.db import Database

    other_db = Database(db.url)

    def seen(check, within: float = 0.0 if db.is_sqlite else 0.5) -> bool:
        deadline = time.monotonic() + within
        while not check():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    try:
        for handle in (db, other_db):  # both listening (PostgreSQL), so the caches are on
            handle.changes.mark("keys")
            assert seen(lambda handle=handle: handle.changes.mark("keys") is not None, within=5.0)
        mine, theirs = KeyRepo(db), KeyRepo(other_db)
        key, secret = theirs.create("shared", now=1000.0, rpm=5)
        assert seen(lambda: mine.by_secret(secret) is not None)
        assert mine.by_secret(secret).state(1000.0) == "active"
        theirs.update(key.id, enabled=False)
        assert seen(lambda: mine.by_secret(secret).state(1000.0) == "disabled")
        theirs.update(key.id, enabled=True, rpm=7)
        assert seen(lambda: mine.by_secret(secret).rpm == 7)
        theirs.update(key.id, revoked_at=1001.0)
        assert seen(lambda: mine.by_secret(secret).state(1002.0) == "revoked")

        tokens, their_tokens = TokenRepo(db), TokenRepo(other_db)
        tokens.seed([("up:aaa", "up", "...aaaa")], now=1.0)
        assert tokens.states("up")[0].cooldown_until == 0.0
        their_tokens.report("up:aaa", status=403, ok=False, cooldown=60, now=100.0)
        assert seen(lambda: tokens.states("up")[0].cooldown_until == 160.0)
        their_tokens.set_flags("up:aaa", enabled=False)
        assert seen(lambda: tokens.states("up")[0].enabled is False)
    finally:
        other_db.dispose()


def test_sqlite_caches_rows_until_the_signal_moves(tmp_path):
    """The cache is real: a change that bypasses the repositories (no signal) is not read
    until a signal moves the mark (or MAX_AGE passes)."""
    from sqlalchemy import update

    from app.storage.db import Database

    db = Database(f"sqlite:///{tmp_path}/cache.db")
    try:
        upgrade(db)
        keys = KeyRepo(db)
        key, secret = keys.create("cached", now=1000.0, rpm=5)
        assert keys.by_secret(secret).rpm == 5
        with db.write() as conn:
            conn.execute(update(schema.api_keys).where(schema.api_keys.c.id == key.id).values(rpm=9))
        assert keys.by_secret(secret).rpm == 5
        db.changes.signal("keys")
        assert keys.by_secret(secret).rpm == 9
        assert (tmp_path / "cache.db-changes").stat().st_size == 16
    finally:
        db.dispose()


def test_revision_0003_keeps_the_windows_and_goes_back(empty_db):
    """rate_seconds and inflight are rebuilt (SQLite: WITHOUT ROWID) with their rows kept;
    the downgrade restores 0002's tables, rows included."""
    from alembic import command
    from alembic.config import Config as AlembicConfig
    from sqlalchemy import text

    from app.storage.migrate import MIGRATIONS

    upgrade(empty_db, "0002")
    with empty_db.write() as conn:
        conn.execute(text("INSERT INTO rate_seconds VALUES ('k1', 100, 2, 30)"))
        conn.execute(text("INSERT INTO inflight (request_id, key_id, started_at) VALUES ('r1', 'k1', 99.5)"))
    upgrade(empty_db)
    limiter = SqlLimiter(empty_db)
    with empty_db.quick() as q:
        assert q.one(limiter.sql.window, {"key_id": "k1", "since": 50, "now": 0.0}) == (1, 2, 100, 30, 100)
    if empty_db.is_sqlite:
        with empty_db.read() as conn:
            sql = dict(conn.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'table'").all())
        assert "WITHOUT ROWID" in sql["rate_seconds"] and "WITHOUT ROWID" in sql["inflight"]
    with empty_db.write() as conn:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
    with empty_db.read() as conn:
        assert conn.execute(text("SELECT request_id, key_id FROM inflight")).all() == [("r1", "k1")]
        assert conn.execute(text("SELECT requests, tokens FROM rate_seconds")).all() == [(2, 30)]


def test_success_counts_add_up_and_never_move_last_seen_back(db):
    repo = TokenRepo(db)
    repo.seed([("up:aaa", "up", "...aaaa")], now=1.0)
    repo.add_successes("up:aaa", 3, 200, at=100.0)
    repo.add_successes("up:aaa", 2, 201, at=90.0)  # an older batch from a slower worker
    row = repo.get("up:aaa")
    assert (row.successes, row.last_status, row.last_at) == (5, 200, 100.0)


def test_the_quick_connection_is_never_lent_to_the_pool(tmp_path):
    """SQLite's quick transactions keep their own connection checked out: if the pool got it
    back, SQLAlchemy could begin (or roll back) on it in the middle of a quick transaction."""
    import gc

    from app.storage.db import Database

    db = Database(f"sqlite:///{tmp_path}/held.db")
    try:
        with db.quick() as q:
            quick_connection = q.cursor.connection
        gc.collect()
        for _ in range(3):
            with db.read() as conn:
                assert conn.connection.driver_connection is not quick_connection
    finally:
        db.dispose()
