"""The change signal of a PostgreSQL database: LISTEN/NOTIFY (app/storage/changes.py has the SQLite one).

`signal(topic)` sends `NOTIFY sluice_changes, '<topic>'` right after the writer's commit (the
repositories signal once their write block has committed) on a pooled connection, and moves
this process's own mark at once. Every process that caches keeps one listener: a dedicated
connection, waited on in a daemon thread (a greenlet under gevent's monkey-patching), which
moves a topic's mark on each notification. PostgreSQL delivers a notification only after its
transaction commits, so a process never drops its cache before the rows it would re-read exist;
"mark first, rows second" then holds as on SQLite, with the delivery delay (well under a
millisecond on one host) as the only window a cached row may lag a change.

Why PostgreSQL and not Redis pub/sub: PostgreSQL is always there on this path while Redis is
optional, and the CLI and every instance already reach the database they write to.

Why after the commit and not inside the writer's transaction: the callers signal after their
write block (the SQLite signal works the same way), so no writer changes; the cost is that a
process killed between its commit and its NOTIFY signals nothing, and an entry then lags for
at most changes.MAX_AGE (the bound that already covers any writer that does not signal).

While the listener is not listening (starting, reconnecting after a lost connection, closed)
`mark` is None: nothing is cached and every request reads the rows, as without a signal.
Notifications sent meanwhile are lost, so every mark is new once it listens again.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from app import process
from app.storage.changes import TOPICS

CHANNEL = "sluice_changes"
FIRST_DELAY, MAX_DELAY = 0.1, 5.0  # seconds between reconnection attempts, doubling
PING_EVERY = 10.0  # seconds of silence after which the listener checks its connection
STOP_WAIT = 2.0  # seconds close() waits for the listener to end
log = logging.getLogger("sluice.storage")


class SignalError(Exception):
    """The notification could not be sent."""


def _new() -> bytes:
    return secrets.token_bytes(8)


class PgChanges:
    """Marks per topic, moved by PostgreSQL notifications; `mark` is None while this process's
    listener is not listening (nothing may be cached then). Same interface as changes.Changes."""

    def __init__(self, connect: Callable[[], Any], notify: Callable[[str], None]) -> None:
        """`connect()`: a new autocommit psycopg connection for the listener (raises psycopg.Error or
        OSError when it cannot); `notify(topic)`: send the notification (raises SignalError)."""
        self._connect, self._notify = connect, notify
        self.marks: dict[str, bytes] = {}  # replaced whole by the listener, topics moved in place
        self._listener: _Listener | None = None
        self._lock = threading.Lock()
        self._closed = False

    def mark(self, topic: str) -> bytes | None:
        listener = self._listener
        if listener is None or listener.pid != process.pid():
            self._start()  # the first call in this process (a forked worker inherits no thread)
        return self.marks.get(topic)

    def signal(self, topic: str) -> None:
        """Call after committing a change to `topic`'s rows: every process's cached copy is dropped.
        A failed notification is logged, not raised: the change itself is committed."""
        TOPICS.index(topic)  # a typo fails loudly, as on SQLite
        self.moved(topic)
        try:
            self._notify(topic)
        except SignalError as exc:  # the write stands: other processes' entries expire within MAX_AGE
            log.warning("change signal %r not sent (%s): other processes may serve the old rows for up to 1 s",
                        topic, exc)  # fmt: skip

    def moved(self, topic: str) -> None:
        """Move `topic`'s mark (every mark for a topic this version does not know)."""
        marks = self.marks  # in place: a dict the listener replaced meanwhile is not brought back
        for name in (topic,) if topic in TOPICS else TOPICS:
            if name in marks:
                marks[name] = _new()

    def close(self) -> None:
        self._closed = True
        listener, self._listener = self._listener, None
        self.marks = {}
        if listener is not None and listener.pid == process.pid():
            listener.stop()

    def _start(self) -> None:
        with self._lock:
            if self._closed or (self._listener is not None and self._listener.pid == process.pid()):
                return
            self.marks = {}  # a forked child's copy of its parent's marks stands for no listener of its own
            self._listener = _Listener(self, self._connect)


class _Listener:
    """One process's listening connection, in a daemon thread; `stop` ends it at once (a pipe wakes it)."""

    def __init__(self, owner: PgChanges, connect: Callable[[], Any]) -> None:
        self.pid = process.pid()
        self._owner, self._connect = owner, connect
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="sluice-changes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except OSError as exc:  # the thread has ended and closed its end: nothing to wake, and no reason to fail
            log.warning("change listener: already stopped when asked to (%s)", exc)
        finally:
            os.close(self._wake_w)
        self._thread.join(STOP_WAIT)

    def _run(self) -> None:
        import psycopg  # here, in the worker: imported after gevent's monkey-patching

        delay = FIRST_DELAY
        try:
            while not self._stopping:
                try:
                    self._listen()
                    delay = FIRST_DELAY
                except Exception as exc:  # psycopg's errors and OSError, and anything else: the listener never dies
                    self._owner.marks = {}
                    if self._stopping:
                        break
                    expected = isinstance(exc, (psycopg.Error, OSError))
                    log.warning("change listener: %s (%s); every request reads the rows until it listens again "
                                "(retry in %.1f s)", type(exc).__name__, _first_line(exc), delay,
                                exc_info=not expected)  # fmt: skip
                    self._wait([], delay)
                    delay = min(delay * 2, MAX_DELAY)
        finally:
            self._owner.marks = {}
            os.close(self._wake_r)

    def _listen(self) -> None:
        """Listen until stopped (returns) or the connection fails (raises)."""
        conn = self._connect()
        try:  # not `with conn`: its exit would try a rollback on a connection the server cut
            conn.execute(f"LISTEN {CHANNEL}")
            # Listening from here: a change committed before is in the rows any reader reads next.
            self._owner.marks = {topic: _new() for topic in TOPICS}
            log.info("change listener: listening on %s", CHANNEL)
            while True:
                readable = self._wait([conn.fileno()], PING_EVERY)
                if self._stopping:
                    break
                if not readable:
                    conn.execute("SELECT 1")  # a silent server shows up here (or in the TCP keep-alives)
                for note in conn.notifies(timeout=0):  # also those that came with the ping
                    self._owner.moved(note.payload)
            self._owner.marks = {}
        finally:
            conn.close()

    def _wait(self, fds: list[int], timeout: float) -> bool:
        """Wait for one of `fds` (True), for `timeout` (False) or for stop (False). poll, not select:
        a worker holding thousands of streams gives this connection a descriptor above select's 1024."""
        poller = select.poll()  # gevent's under its monkey-patching: waits in the loop
        for fd in (*fds, self._wake_r):
            poller.register(fd, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(timeout * 1000)}
        return bool(ready) and self._wake_r not in ready


def for_postgres(engine: Any, connect_args: dict[str, Any]) -> PgChanges:
    """The signal of the PostgreSQL database behind `engine` (a SQLAlchemy engine on psycopg): the
    listener connects with the engine's own URL and `connect_args`, notifications go through its pool."""
    dialect = engine.dialect
    _, params = dialect.create_connect_args(engine.url)

    def connect() -> Any:
        return dialect.loaded_dbapi.connect(**params, **connect_args, autocommit=True)

    def notify(topic: str) -> None:
        try:
            raw = engine.raw_connection()
            try:
                raw.driver_connection.execute("SELECT pg_notify(%s, %s)", (CHANNEL, topic))
                raw.driver_connection.commit()
            finally:
                raw.close()
        except (SQLAlchemyError, dialect.loaded_dbapi.Error) as exc:
            raise SignalError(type(exc).__name__) from exc

    return PgChanges(connect, notify)


def _first_line(exc: BaseException) -> str:
    """The driver's reason, one line (libpq adds a second one of advice)."""
    return (str(exc).strip().splitlines() or [""])[0][:200]
