"""The database handle: one SQLAlchemy engine per process, read and write transactions.

SQLite (the default) runs in WAL mode; write transactions start with BEGIN IMMEDIATE,
so a read-check-write sequence (a rate-limit admission) is atomic across processes.
PostgreSQL write transactions lock the rows they read with SELECT ... FOR UPDATE.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError


class StorageError(Exception):
    """The database could not be reached or refused an operation."""


class Conflict(StorageError):
    """A write broke a uniqueness constraint."""


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = _engine(url)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StorageError(f"database read failed: {type(exc).__name__}") from exc

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that is committed at the end of the block (rolled back on error)."""
        try:
            with self.engine.connect().execution_options(sluice_write=True) as conn, conn.begin():
                yield conn
        except IntegrityError as exc:
            raise Conflict("a unique value is already taken") from exc
        except SQLAlchemyError as exc:
            raise StorageError(f"database write failed: {type(exc).__name__}") from exc

    def insert(self, table: Table) -> Any:
        """An INSERT in this backend's dialect, so it can say ON CONFLICT (both backends support it)."""
        return (sqlite if self.is_sqlite else postgresql).insert(table)

    def add_counts(self, conn: Connection, table: Table, rows: list[dict[str, Any]], keys: list[str]) -> None:
        """Insert `rows`, or add their other columns to the stored row with the same `keys` (one upsert),
        so writers counting into the same row never race."""
        statement = self.insert(table)
        sums = {c.name: c + statement.excluded[c.name] for c in table.c if c.name not in keys}
        conn.execute(statement.on_conflict_do_update(index_elements=keys, set_=sums), rows)

    def dispose(self) -> None:
        self.engine.dispose()


def _engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url, pool_size=10, max_overflow=40, pool_pre_ping=True)
    path = url.removeprefix("sqlite:///")
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # SQLite calls block the gevent loop of their worker while they run, including while they
    # wait for another process's write lock: keep that wait short (transactions here last
    # about a millisecond) and far below gunicorn's 30 s worker timeout.
    engine = create_engine(url, connect_args={"timeout": 5, "check_same_thread": False}, pool_size=10)

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sluice_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
