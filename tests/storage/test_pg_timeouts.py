"""PostgreSQL calls are bounded: a server that accepts connections and never answers fails a
call with a StorageError within the connect timeout, and a statement the server runs too long
(or a lock it waits for too long) is cancelled; migrations alone run without those limits."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import text

from app.storage import db as db_module
from app.storage.db import Database, StorageDataError, StorageError
from tests.services import postgres_url


@contextmanager
def silent_listener() -> Iterator[int]:
    """A TCP listener on 127.0.0.1 that accepts connections and never sends a byte; yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in [*held, listener]:
            conn.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    with silent_listener() as port:
        yield port


@pytest.mark.parametrize("call", ["quick", "read", "write"])
def test_a_server_that_never_answers_fails_the_call_within_the_connect_timeout(silent_server, monkeypatch, call):
    monkeypatch.setattr(db_module, "CONNECT_TIMEOUT", 2)  # libpq's smallest
    database = Database(f"postgresql+psycopg://sluice:sluice@127.0.0.1:{silent_server}/sluice")
    started = time.monotonic()
    try:
        with pytest.raises(StorageError) as raised, getattr(database, call)():
            pass
    finally:
        database.dispose()
    assert time.monotonic() - started < 2 + 3
    assert not isinstance(raised.value, StorageDataError)  # the database is away: retry later


@pytest.fixture
def pg(monkeypatch) -> Iterator[Database]:
    monkeypatch.setattr(db_module, "STATEMENT_TIMEOUT_MS", 300)
    database = Database(postgres_url())
    yield database
    database.dispose()


def test_a_statement_that_runs_too_long_is_cancelled(pg):
    started = time.monotonic()
    with pytest.raises(StorageError) as raised, pg.read() as conn:
        conn.execute(text("SELECT pg_sleep(5)"))
    assert time.monotonic() - started < 3
    assert not isinstance(raised.value, StorageDataError)
    with pytest.raises(StorageError), pg.quick() as q:
        q.cursor.execute("SELECT pg_sleep(5)")


def test_the_request_path_has_statement_and_lock_timeouts_and_migrations_have_none(pg):
    with pg.read() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "300ms"
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "5s"
    with pg.engine.connect() as conn:  # app/storage/migrate.py's connection
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "0"
        assert conn.execute(text("SHOW lock_timeout")).scalar() == "0"
        conn.execute(text("SELECT pg_sleep(0.5)"))  # longer than the request path's 300 ms: not cancelled


def test_options_in_the_database_url_are_kept():
    database = Database(postgres_url() + "?options=-c%20lock_timeout%3D7s")
    try:
        with database.read() as conn:
            assert conn.execute(text("SHOW lock_timeout")).scalar() == "7s"
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "10s"
    finally:
        database.dispose()
