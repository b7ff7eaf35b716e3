"""The PostgreSQL change signal (app/storage/notify.py): two Database handles stand for two processes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, text, update

from app.storage import notify, schema
from app.storage.changes import MAX_AGE, TOPICS
from app.storage.db import Database
from app.storage.keys import KeyRepo
from app.storage.migrate import upgrade
from app.storage.notify import PgChanges, SignalError
from app.storage.tokens import TokenRepo
from tests.services import postgres_url, reset_postgres

SOON = 0.5  # seconds: far more than a notification takes, well under MAX_AGE (which would hide a lost one)


def until(check: Callable[[], bool], within: float) -> bool:
    """Poll `check` every millisecond for up to `within` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


@pytest.fixture
def pair() -> Iterator[tuple[Database, Database]]:
    """Two handles on one migrated PostgreSQL database, both listening."""
    url = postgres_url()
    reset_postgres(url)
    a, b = Database(url), Database(url)
    try:
        upgrade(a)
        for db in (a, b):
            db.changes.mark("keys")  # starts the listener
            assert until(lambda db=db: db.changes.mark("keys") is not None, 5)
        yield a, b
    finally:
        a.dispose()
        b.dispose()


def listeners(url: str) -> list[int]:
    """Backend pids of this database's listening connections."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %'"
            return list(conn.execute(text(query)).scalars())
    finally:
        engine.dispose()


def test_a_signal_on_one_process_moves_the_mark_on_the_other(pair):
    a, b = pair
    before = {topic: b.changes.mark(topic) for topic in TOPICS}
    a.changes.signal("keys")
    assert until(lambda: b.changes.mark("keys") != before["keys"], SOON)
    assert b.changes.mark("tokens") == before["tokens"]  # one topic's change keeps the other's cache


def test_a_cached_key_is_read_again_after_another_process_revokes_it(pair):
    a, b = pair
    theirs, mine = KeyRepo(a), KeyRepo(b)
    before = b.changes.mark("keys")
    key, secret = theirs.create("shared", now=1000.0, rpm=5)
    assert until(lambda: b.changes.mark("keys") != before, SOON)  # the creation's signal is in
    assert mine.by_secret(secret).rpm == 5
    with a.write() as conn:  # no signal: the cache on `b` is real, it does not see this
        conn.execute(update(schema.api_keys).where(schema.api_keys.c.id == key.id).values(rpm=9))
    assert mine.by_secret(secret).rpm == 5
    theirs.update(key.id, revoked_at=1001.0)
    assert until(lambda: mine.by_secret(secret).state(1002.0) == "revoked", SOON)
    assert mine.by_secret(secret).rpm == 9


def test_a_token_disabled_by_another_process_is_not_chosen_from_the_cache(pair):
    a, b = pair
    theirs, mine = TokenRepo(a), TokenRepo(b)
    theirs.seed([("up:aaa", "up", "...aaaa")], now=1.0)
    assert until(lambda: [row.enabled for row in mine.states("up")] == [True], SOON)
    theirs.set_flags("up:aaa", enabled=False)
    assert until(lambda: mine.states("up")[0].enabled is False, SOON)


def test_the_listener_reconnects_and_caches_nothing_meanwhile(pair, caplog):
    a, b = pair
    url = postgres_url()
    old = b.changes.mark("tokens")
    killed = listeners(url)
    assert len(killed) == 2  # one per handle ("process")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM unnest(CAST(:pids AS int[])) AS pid"),
                         {"pids": killed})  # fmt: skip
    finally:
        engine.dispose()
    assert until(lambda: b.changes.mark("tokens") is None, 2)  # lost: nothing may be cached
    assert until(lambda: b.changes.mark("tokens") is not None, 5)  # back, with new marks
    assert b.changes.mark("tokens") != old
    assert set(listeners(url)).isdisjoint(killed) and len(listeners(url)) == 2
    before = b.changes.mark("keys")
    a.changes.signal("keys")
    assert until(lambda: b.changes.mark("keys") != before, SOON)
    assert "change listener" in caplog.text


def test_close_ends_the_listener_and_its_connection():
    url = postgres_url()
    db = Database(url)
    db.changes.mark("keys")
    assert until(lambda: db.changes.mark("keys") is not None, 5)
    assert len(listeners(url)) == 1
    db.dispose()
    assert db.changes.mark("keys") is None  # closed: never starts again
    assert not [t for t in threading.enumerate() if t.name == "sluice-changes"]
    assert until(lambda: listeners(url) == [], 2)


def test_no_database_means_no_marks_a_failed_signal_is_logged_and_close_is_prompt(caplog):
    """Without PostgreSQL (no connection, no notification) nothing is cached and nothing raises."""

    def connect() -> None:
        raise OSError("no database")

    def notify(topic: str) -> None:
        raise SignalError("OperationalError")

    changes = PgChanges(connect, notify)
    with caplog.at_level(logging.WARNING, logger="sluice.storage"):
        assert changes.mark("keys") is None
        changes.signal("keys")
        with pytest.raises(ValueError):
            changes.signal("no-such-topic")
        # The listener's thread imports psycopg before it connects: in a process that had not imported it yet,
        # that took longer than the 0.05 s this test used to sleep (under `make test` without PostgreSQL).
        assert until(lambda: "no database" in caplog.text, 5)
    started = time.monotonic()
    changes.close()
    assert time.monotonic() - started < 0.5
    assert "change signal 'keys' not sent" in caplog.text and "no database" in caplog.text
    assert not [t for t in threading.enumerate() if t.name == "sluice-changes"]


def test_an_entry_still_expires_after_max_age(pair):
    """A change made without a signal (psql) is read once MAX_AGE has passed."""
    a, b = pair
    before = b.changes.mark("keys")
    key, secret = KeyRepo(a).create("aged", now=1000.0, rpm=5)
    assert until(lambda: b.changes.mark("keys") != before, SOON)  # the creation's signal is in
    mine = KeyRepo(b)
    assert mine.by_secret(secret).rpm == 5
    with a.write() as conn:
        conn.execute(update(schema.api_keys).where(schema.api_keys.c.id == key.id).values(rpm=9))
    assert mine.by_secret(secret).rpm == 5
    time.sleep(MAX_AGE)
    assert mine.by_secret(secret).rpm == 9


def test_an_unexpected_error_in_the_listener_is_logged_and_retried_and_stop_never_raises(caplog, monkeypatch):
    monkeypatch.setattr(notify, "FIRST_DELAY", 0.02)
    calls: list[float] = []

    def connect():
        calls.append(time.monotonic())
        raise RuntimeError("not a psycopg error")

    owner = SimpleNamespace(marks={"keys": object()}, moved=lambda topic: None)
    listener = notify._Listener(owner, connect)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="sluice.storage"):
        assert until(lambda: len(calls) >= 3, 5)  # tried again, not ended
        assert listener._thread.is_alive() and owner.marks == {}
        listener.stop()
    assert not listener._thread.is_alive()
    assert "RuntimeError (not a psycopg error)" in caplog.text and "Traceback" in caplog.text


def test_stop_of_a_listener_whose_thread_has_ended_does_not_raise(caplog):
    listener = notify._Listener(SimpleNamespace(marks={}, moved=lambda topic: None), lambda: None)  # type: ignore[arg-type]
    listener._stopping = True  # its thread ends at once and closes its end of the pipe
    listener._thread.join(5)
    assert not listener._thread.is_alive()
    listener.stop()
    assert "already stopped" in caplog.text


def test_the_listener_works_above_descriptor_1024():
    """A worker holding thousands of streams opens the listener's connection on a high descriptor."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the open-file limit ({hard}) is below 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    url = postgres_url()
    spare = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:  # the spare descriptors are closed whatever happens: left open, they break later tests' select()
        a, b = Database(url), Database(url)
        try:
            for db in (a, b):
                db.changes.mark("keys")
                assert until(lambda db=db: db.changes.mark("keys") is not None, 5)
            before = b.changes.mark("keys")
            a.changes.signal("keys")
            assert until(lambda: b.changes.mark("keys") != before, SOON)
        finally:
            try:
                a.dispose()
            finally:
                b.dispose()
    finally:
        for fd in spare:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
