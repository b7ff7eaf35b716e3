"""The database handle: one SQLAlchemy engine per process, read and write transactions.

SQLite (the default) runs in WAL mode; write transactions start with BEGIN IMMEDIATE,
so a read-check-write sequence (a rate-limit admission) is atomic across processes.
PostgreSQL write transactions lock the rows they read with SELECT ... FOR UPDATE.

The few statements every request runs (key lookup, admission, token rows, release) are
`Prepared` once and run in `quick` transactions on a DBAPI connection: the same SQL without
SQLAlchemy's per-call work (building and compiling the statement, the pool checkout, result
processing), which was about 90 % of their cost on SQLite (docs/benchmarks.md).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Executable, Table, create_engine, event, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError

from app import process
from app.storage import changes, notify

# SQLite write transactions start with BEGIN IMMEDIATE, which waits while another process holds the
# write lock. SQLite's own wait (busy_timeout) sleeps inside the C call: under gevent the worker's whole
# event loop stops, every stream in it (a worker opening streams lost over a second that way in a minute,
# docs/benchmarks.md "Capacity"). So BEGIN IMMEDIATE asks without waiting and, while the lock is taken,
# sleeps with time.sleep (gevent's sleep in a worker: the other greenlets run) and asks again, up to
# LOCK_WAIT seconds in all; then the transaction fails as before (a StorageError). Reads never wait in
# WAL mode; for the rare case that does (recovery of a crashed writer's WAL), BUSY_TIMEOUT_MS stays set.
LOCK_WAIT = 5.0
LOCK_POLL = (0.0005, 0.02)  # the first and the longest sleep between two asks, seconds
BUSY_TIMEOUT_MS = 5000


class StorageError(Exception):
    """The database could not be reached or refused an operation."""


class StorageDataError(StorageError):
    """The database refused a value (a NUL character in PostgreSQL text, a number out of range, a
    broken constraint): retrying the same rows cannot succeed, unlike an unreachable database.
    A StorageError still, so callers that only tell "storage failed" keep working."""


class Conflict(StorageDataError):
    """A write broke a uniqueness (or other integrity) constraint."""


def _refused(action: str, exc: BaseException) -> StorageDataError:
    """A StorageDataError with the driver's reason: its first line (it may quote the value, never the SQL)."""
    cause = getattr(exc, "orig", None) or exc
    reason = (str(cause).strip().splitlines() or [""])[0][:200]
    return StorageDataError(f"database {action} refused a value: {type(cause).__name__}: {reason}")


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.serving = _engine(url, limited=True)  # the request path's and the background chores'
        self._dbapi = self.serving.dialect.dbapi
        self._held: tuple[int, Any, threading.Lock] | None = None  # SQLite: (pid, pooled connection, lock)
        self.changes: changes.Changes | notify.PgChanges = (
            changes.for_sqlite(self.serving.url.database or "")
            if self.is_sqlite
            else notify.for_postgres(self.serving, _postgres_connect_args(url, limited=False))
        )

    @cached_property
    def engine(self) -> Engine:
        """The engine for migrations (app/storage/migrate.py) and tools: on PostgreSQL its sessions
        have no statement or lock timeout, since a migration may rewrite a large table or wait for
        another process's migration lock. Made on first use (most processes never migrate)."""
        return self.serving if self.is_sqlite else _engine(self.url, limited=False)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        try:
            with self.serving.connect() as conn:
                yield conn
        except DataError as exc:
            raise _refused("read", exc) from exc
        except SQLAlchemyError as exc:
            raise StorageError(f"database read failed: {type(exc).__name__}") from exc

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that is committed at the end of the block (rolled back on error)."""
        try:
            with self.serving.connect().execution_options(sluice_write=True) as conn, conn.begin():
                yield conn
        except IntegrityError as exc:
            raise Conflict("a unique value is already taken") from exc
        except DataError as exc:
            raise _refused("write", exc) from exc
        except SQLAlchemyError as exc:
            raise StorageError(f"database write failed: {type(exc).__name__}") from exc

    def insert(self, table: Table) -> Any:
        """An INSERT in this backend's dialect, so it can say ON CONFLICT (both backends support it)."""
        return (sqlite if self.is_sqlite else postgresql).insert(table)

    def upsert(self, table: Table, keys: Sequence[str]) -> Any:
        """INSERT `table`'s row, or add its other columns to the stored row with the same `keys`,
        so writers counting into the same row never race (callers prepare it once)."""
        statement = self.insert(table)
        sums = {c.name: c + statement.excluded[c.name] for c in table.c if c.name not in keys}
        return statement.on_conflict_do_update(index_elements=list(keys), set_=sums)

    def prepare(self, statement: Executable) -> Prepared:
        return Prepared(statement, self.serving.dialect)

    @contextmanager
    def quick(self, *, write: bool = False, lock_wait: float = LOCK_WAIT) -> Iterator[Quick]:
        """A transaction for `Prepared` statements on a DBAPI connection, committed at the end.

        On SQLite each process keeps one connection for these (SQLite calls never yield to
        gevent, so greenlets take turns without waiting); a read runs without BEGIN, each
        statement in its own snapshot. PostgreSQL takes a pooled connection per transaction.
        """
        try:
            if self.is_sqlite:
                connection, lock = self._sqlite_connection()
                with lock:
                    yield from _transaction(connection, begin_immediate if write else None, lock_wait)
            else:
                raw = self.serving.raw_connection()
                try:
                    yield from _transaction(raw.driver_connection, None, lock_wait)
                finally:
                    raw.close()
        except self._dbapi.IntegrityError as exc:
            raise Conflict("a unique value is already taken") from exc
        except self._dbapi.DataError as exc:
            raise _refused("write" if write else "read", exc) from exc
        except self._dbapi.Error as exc:
            raise StorageError(f"database {'write' if write else 'read'} failed: {type(exc).__name__}") from exc

    def _sqlite_connection(self) -> tuple[Any, threading.Lock]:
        """This process's connection for quick transactions (a forked worker opens its own)."""
        held = self._held
        if held is None or held[0] != process.pid():
            # Configured by the engine's connect hook. The pool's handle is kept with it: dropped,
            # it would check the connection back in for SQLAlchemy to share while we use it.
            raw = self.serving.raw_connection()
            held = self._held = (process.pid(), raw, threading.Lock())
        return held[1].driver_connection, held[2]

    def dispose(self) -> None:
        held, self._held = self._held, None
        if held is not None and held[0] == process.pid():
            with held[2]:  # after a transaction another thread runs on it (closed mid-call, SQLite crashes)
                held[1].close()
        self.changes.close()
        self.serving.dispose()
        if self.__dict__.get("engine") not in (None, self.serving):
            self.engine.dispose()


class Prepared:
    """A statement compiled once for one dialect; its parameters are the names of its bindparams
    (an INSERT's are its columns), plus any literal values the statement holds."""

    def __init__(self, statement: Executable, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = str(compiled)
        self.names: tuple[str, ...] | None = tuple(compiled.positiontup) if compiled.positional else None
        self.defaults = {name: value for name, value in compiled.params.items() if value is not None}
        self.row_type: Any = None

    def args(self, params: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        values = {**self.defaults, **params} if self.defaults else params
        return values if self.names is None else tuple(values[name] for name in self.names)


class Quick:
    """The cursor of a `Database.quick` transaction."""

    def __init__(self, cursor: Any) -> None:
        self.cursor = cursor

    def execute(self, statement: Prepared, params: Mapping[str, Any] | None = None) -> int:
        """Run `statement`; returns the number of rows it changed."""
        self.cursor.execute(statement.sql, statement.args(params or {}))
        return self.cursor.rowcount

    def execute_many(self, statement: Prepared, rows: Sequence[Mapping[str, Any]]) -> None:
        self.cursor.executemany(statement.sql, [statement.args(row) for row in rows])

    def one(self, statement: Prepared, params: Mapping[str, Any] | None = None) -> tuple:
        """The first row's values, as a plain tuple (the statement must return a row)."""
        self.cursor.execute(statement.sql, statement.args(params or {}))
        return tuple(self.cursor.fetchone())

    def rows(self, statement: Prepared, params: Mapping[str, Any] | None = None) -> list[Any]:
        """All rows, as named tuples (fields named as the statement's columns)."""
        self.cursor.execute(statement.sql, statement.args(params or {}))
        if statement.row_type is None:
            statement.row_type = namedtuple("Row", [d[0] for d in self.cursor.description])
        make = statement.row_type._make
        return [make(row) for row in self.cursor.fetchall()]


def _transaction(connection: Any, begin: Callable[[Any, float], None] | None, lock_wait: float) -> Iterator[Quick]:
    """Yield a Quick cursor inside a transaction that commits, or rolls back on any error
    (both are no-ops on an SQLite connection that began none); `begin` waits `lock_wait` s at most for the lock."""
    cursor = connection.cursor()
    try:
        if begin is not None:
            begin(cursor, lock_wait)
        yield Quick(cursor)
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    finally:
        cursor.close()


def begin_immediate(cursor: Any, lock_wait: float = LOCK_WAIT) -> None:
    """BEGIN IMMEDIATE on an SQLite cursor, waiting for another process's write lock cooperatively, `lock_wait` s
    at most."""
    cursor.execute("PRAGMA busy_timeout=0")
    try:
        delay, deadline = LOCK_POLL[0], time.monotonic() + lock_wait
        while True:
            try:
                cursor.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, LOCK_POLL[1])
    finally:
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


# PostgreSQL: how long a call may wait before it fails with a StorageError instead of hanging its
# request (or the start-up) for ever.
CONNECT_TIMEOUT = 5  # seconds to connect and log in; a server that accepts and never answers fails here
# Request-path statements take milliseconds; one still running after 10 s is a server in trouble
# (and the request's client is long gone). Lock waits: the 5 s the SQLite backend waits too.
STATEMENT_TIMEOUT_MS = 10_000
LOCK_TIMEOUT_MS = 5_000
# A server that vanished (host down, network cut, no RST) is noticed on an idle pooled connection
# after 30 + 3 x 10 s of unanswered keepalives, and on a busy one once data sent stays
# unacknowledged for 15 s (Linux's tcp_user_timeout), instead of TCP's ~15 minutes.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}
TCP_USER_TIMEOUT_MS = 15_000


def _postgres_connect_args(url: str, limited: bool) -> dict[str, Any]:
    """The settings above; a value the URL's query sets itself wins (its `options` come after ours)."""
    query = make_url(url).query
    args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, "tcp_user_timeout": TCP_USER_TIMEOUT_MS, **KEEPALIVES}
    args = {name: value for name, value in args.items() if name not in query}
    if limited:
        given = query.get("options")
        ours = f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c lock_timeout={LOCK_TIMEOUT_MS}"
        args["options"] = f"{ours} {given}" if isinstance(given, str) else ours
    return args


def _engine(url: str, *, limited: bool) -> Engine:
    """`limited`: PostgreSQL sessions get the statement and lock timeouts above (not for migrations)."""
    if not url.startswith("sqlite"):
        connect_args = _postgres_connect_args(url, limited)
        return create_engine(url, pool_size=10, max_overflow=40, pool_pre_ping=True, connect_args=connect_args)
    path = url.removeprefix("sqlite:///")
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # SQLite calls block the gevent loop of their worker while they run; a write waits for another
    # process's lock in begin_immediate (cooperatively, LOCK_WAIT at most), far below gunicorn's 30 s
    # worker timeout. Transactions here last about a millisecond.
    engine = create_engine(url, connect_args={"timeout": 5, "check_same_thread": False}, pool_size=10)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        if conn.get_execution_options().get("sluice_write"):
            cursor = conn.connection.driver_connection.cursor()
            try:
                begin_immediate(cursor)
            finally:
                cursor.close()
        else:
            conn.exec_driver_sql("BEGIN")

    return engine
