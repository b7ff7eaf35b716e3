"""Per-key admission limits in the shared store: rpm, tpm, max_parallel, monthly budget.

Counters are written at admission time inside one transaction (BEGIN IMMEDIATE on
SQLite, a row lock on the key in PostgreSQL), so N workers admit exactly `rpm`
requests per sliding 60 s window. The window is kept per second (rate_seconds): an event
counts from its second until 61 s later, so the window is exact to the second, never lets a
request go early, and an admission reads at most 61 rows whatever the request rate.
Token counts are only known when a response ends: `release` records them, and `tpm` admits
while the window's recorded tokens are under the limit (overshoot is bounded by the requests
already in flight).

A max_parallel slot (an `inflight` row) names the worker holding it ("<instance id>:<pid>")
and frees itself at its request's deadline plus SLOT_MARGIN: a release that never lands (a
worker killed, the store down while the request ended) cannot keep the slot longer, and
`free_worker` frees a dead worker's slots at once (app/storage/reaper.py, run by gunicorn's
master; its start-up frees every slot of its instance; a whole crashed instance's are freed by
the others' liveness sweeps within seconds, app/storage/liveness.py).
"""

from __future__ import annotations

import math
import os
import re
import secrets
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import bindparam, case, delete, func, insert, select

from app import process
from app.config import Settings
from app.storage import schema
from app.storage.db import Database, Quick
from app.storage.keys import ApiKey

WINDOW = 60.0
# A slot outlives its request's deadline by this much: a stream's end (its last write to the
# client, the usage chunk, the release itself) comes just after the deadline at the latest.
SLOT_MARGIN = 10.0
DEFAULT_SLOT_TTL = 3600.0  # for callers that know no deadline (the CLI, tests)


INSTANCE_FILE = "instance-id"  # in SLUICE_DATA_DIR: this gateway's name in its slots
_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class InstanceIdError(ValueError):
    """SLUICE_INSTANCE_ID (or the instance-id file) holds no usable id, or the file cannot be made."""


def instance_id(env: Mapping[str, str]) -> str:
    """This gateway instance's name: SLUICE_INSTANCE_ID, else the id kept in
    `<SLUICE_DATA_DIR>/instance-id` (made on first use). Not the host name or the pid
    namespace: a restarted container has a new pid namespace (so its start-up would not
    recognise its own slots), and hosts of the same name share the root one."""
    given = env.get("SLUICE_INSTANCE_ID")
    if given:
        return _checked(given, "SLUICE_INSTANCE_ID")
    return kept_id(Path(env.get("SLUICE_DATA_DIR") or Settings.data_dir) / INSTANCE_FILE)


def kept_id(path: Path) -> str:
    """The id in `path`, or a new random one written there first; concurrent first calls (the
    start-up step, workers, the CLI) agree, because the file appears whole or not at all."""
    try:
        return _checked(path.read_text(encoding="utf-8").strip(), str(path))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _unkept(path, exc) from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".instance-id.", delete=False) as tmp:
            tmp.write(secrets.token_hex(8) + "\n")
        os.chmod(tmp.name, 0o644)  # not a secret; readable by whoever runs the CLI
        try:
            os.link(tmp.name, path)  # fails if another process made it meanwhile: theirs wins
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp.name)
        return _checked(path.read_text(encoding="utf-8").strip(), str(path))
    except OSError as exc:
        raise _unkept(path, exc) from None


def _unkept(path: Path, exc: OSError) -> InstanceIdError:
    message = f"cannot keep the instance id in {path} ({exc.strerror}): make SLUICE_DATA_DIR writable"
    return InstanceIdError(f"{message} or set SLUICE_INSTANCE_ID")


def _checked(value: str, source: str) -> str:
    if not _INSTANCE_ID.fullmatch(value):
        raise InstanceIdError(f"{source}: {value[:80]!r} is not 1-64 letters, digits, '.', '_' or '-'")
    return value


_instance: str | None = None  # this process's instance id, read once (this_instance)


def this_instance() -> str:
    """The instance id of this process, from its environment (the same in gunicorn's master,
    its start-up step, its workers and its reaper: they share the environment and data dir)."""
    global _instance
    if _instance is None:
        _instance = instance_id(os.environ)
    return _instance


def worker_name(pid: int | None = None) -> str:
    """A worker's name in the slots it holds: "<instance id>:<pid>" (this process's by default)."""
    return f"{this_instance()}:{process.pid() if pid is None else pid}"


def instance_prefix() -> str:
    """What the names of this instance's workers start with."""
    return f"{this_instance()}:"


@dataclass(frozen=True)
class Window:
    """What the x-ratelimit-* headers say after an admission (or a refusal)."""

    limit_requests: int | None = None
    remaining_requests: int = 0
    reset_requests: float = 0.0
    limit_tokens: int | None = None
    remaining_tokens: int = 0
    reset_tokens: float = 0.0


@dataclass(frozen=True)
class Admission:
    """A request's hold on its key: the slot (max_parallel) and, once admitted, its window.

    `hold` gives one with no window yet (a slot taken while the body still arrives);
    `admit(..., held=...)` completes it under the same id."""

    key: ApiKey
    admission_id: str
    window: Window | None
    expires_at: float  # the slot frees itself then, released or not
    worker: str  # the process holding the slot (worker_name)
    budget_used: int | None = None  # the key's tokens this month when admitted (keys with a monthly budget)


def new_admission(key: ApiKey, now: float, expires_at: float | None = None) -> Admission:
    """A new hold on `key` by this worker; its slot expires at `expires_at` (or DEFAULT_SLOT_TTL from now)."""
    expires = now + DEFAULT_SLOT_TTL if expires_at is None else expires_at
    return Admission(key, process.unique_id(), None, expires, worker_name())


class LimitExceeded(Exception):
    def __init__(self, code: str, message: str, retry_after: float, window: Window | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after, self.window = code, message, retry_after, window


class Limiter(Protocol):
    def hold(self, key: ApiKey, now: float, expires_at: float) -> Admission: ...

    def admit(
        self, key: ApiKey, now: float, expires_at: float | None = None, held: Admission | None = None
    ) -> Admission: ...

    def peek(self, key: ApiKey, now: float) -> Window: ...

    def release(self, admission: Admission, tokens: int, now: float) -> None: ...

    def free_worker(self, worker: str) -> int: ...

    def workers(self, prefix: str) -> set[str]: ...


def month_of(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m")


def seconds_to_next_month(now: float) -> float:
    moment = datetime.fromtimestamp(now, UTC)
    first = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
    return first.timestamp() - now


_R, _INF, _M = schema.rate_seconds.c, schema.inflight.c, schema.monthly_usage.c
_KEY, _SINCE, _NOW = bindparam("key_id"), bindparam("since"), bindparam("now")
_RUNNING = select(func.count()).where(_INF.key_id == _KEY, _INF.expires_at > _NOW)
# One round trip for the whole window (at most 61 rows of rate_seconds).
_WINDOW_QUERY = select(
    _RUNNING.scalar_subquery(),
    func.coalesce(func.sum(_R.requests), 0),
    func.min(case((_R.requests > 0, _R.second))),
    func.coalesce(func.sum(_R.tokens), 0),
    func.min(case((_R.tokens > 0, _R.second))),
).where(_R.key_id == _KEY, _R.second >= _SINCE)


class Statements:
    """The admission's statements, prepared once for one database (see `Database.quick`)."""

    def __init__(self, db: Database) -> None:
        self.window = db.prepare(_WINDOW_QUERY)
        self.running = db.prepare(_RUNNING)
        self.lock_key = db.prepare(select(schema.api_keys.c.id).where(schema.api_keys.c.id == _KEY).with_for_update())
        self.add_inflight = db.prepare(insert(schema.inflight))
        self.end_inflight = db.prepare(
            delete(schema.inflight).where(_INF.key_id == _KEY, _INF.request_id == bindparam("admission_id"))
        )
        self.free_worker = db.prepare(delete(schema.inflight).where(_INF.worker == bindparam("worker")))
        self.count = db.prepare(db.upsert(schema.rate_seconds, ["key_id", "second"]))
        self.monthly = db.prepare(select(_M.tokens).where(_M.key_id == _KEY, _M.month == bindparam("month")))
        self.add_monthly = db.prepare(db.upsert(schema.monthly_usage, ["key_id", "month"]))


def _end(second: int | None) -> float | None:
    """When the oldest second's events leave the window, as the time of an event leaving at +WINDOW."""
    return None if second is None else float(second) + 1.0


def window_start(now: float) -> int:
    """The first second still in the window at `now`: events of second S count until S + 61,
    so the window holds at least the last 60 s and lets nothing go early."""
    return math.floor(now) - int(WINDOW)


class SqlLimiter:
    """The limiter on the database itself (the default: no Redis needed)."""

    def __init__(self, db: Database) -> None:
        self.db, self.sql = db, Statements(db)

    def hold(self, key: ApiKey, now: float, expires_at: float) -> Admission:
        """Take one of the key's max_parallel slots (before its request is admitted), or refuse."""
        admission = new_admission(key, now, expires_at)
        with self.db.quick(write=True) as q:
            self._lock(q, key)
            check_parallel(key, q.one(self.sql.running, {"key_id": key.id, "now": now})[0])
            self._add_slot(q, admission, now)
        return admission

    def admit(
        self, key: ApiKey, now: float, expires_at: float | None = None, held: Admission | None = None
    ) -> Admission:
        """Count the request, or refuse it (LimitExceeded); with `held`, its slot is taken already."""
        sql, admission = self.sql, held or new_admission(key, now, expires_at)
        with self.db.quick(write=True) as q:
            self._lock(q, key)
            budget_used = check_budget(q, sql, key, now)
            params = {"key_id": key.id, "since": window_start(now), "now": now}
            running, count, oldest_req, used, oldest_tok = q.one(sql.window, params)
            if held is None:
                check_parallel(key, running)
            this = math.floor(now) + 1.0  # the admitted request's own second, as `_end` gives it
            window = decide(key, now, int(count), _end(oldest_req), int(used), _end(oldest_tok), this)
            if key.rpm is not None:
                q.execute(sql.count, _second(key.id, now, requests=1, tokens=0))
            if held is None:
                self._add_slot(q, admission, now)
        return replace(admission, window=window, budget_used=budget_used)

    def _lock(self, q: Quick, key: ApiKey) -> None:
        if not self.db.is_sqlite:  # serialise admissions per key; SQLite's BEGIN IMMEDIATE already does
            q.execute(self.sql.lock_key, {"key_id": key.id})

    def _add_slot(self, q: Quick, admission: Admission, now: float) -> None:
        if admission.key.max_parallel is not None:
            row = {"request_id": admission.admission_id, "key_id": admission.key.id, "started_at": now}
            q.execute(self.sql.add_inflight, {**row, "worker": admission.worker, "expires_at": admission.expires_at})

    def peek(self, key: ApiKey, now: float) -> Window:
        """The window as it stands, without counting anything (for responses that were not admitted)."""
        params = {"key_id": key.id, "since": window_start(now), "now": now}
        with self.db.quick() as q:
            _, count, oldest_req, used, oldest_tok = q.one(self.sql.window, params)
        return describe(key, now, int(count), _end(oldest_req), int(used), _end(oldest_tok))

    def release(self, admission: Admission, tokens: int, now: float) -> None:
        """Free the slot and record the tokens. Safe to repeat after a StorageError (it rolled back)."""
        key, sql = admission.key, self.sql
        if key.max_parallel is None and (tokens <= 0 or (key.tpm is None and key.monthly_tokens is None)):
            return  # nothing to record: no write transaction at all
        with self.db.quick(write=True) as q:
            if not self.db.is_sqlite and key.monthly_tokens is not None:
                q.execute(sql.lock_key, {"key_id": key.id})
            if key.max_parallel is not None:
                q.execute(sql.end_inflight, {"key_id": key.id, "admission_id": admission.admission_id})
            if tokens > 0 and key.tpm is not None:
                q.execute(sql.count, _second(key.id, now, requests=0, tokens=tokens))
            if tokens > 0 and key.monthly_tokens is not None:
                add_monthly(q, sql, key.id, month_of(now), tokens)

    def free_worker(self, worker: str) -> int:
        """Free every slot `worker` holds (it died: its releases will never come); returns how many."""
        with self.db.quick(write=True) as q:
            return q.execute(self.sql.free_worker, {"worker": worker})

    def workers(self, prefix: str) -> set[str]:
        """The workers whose names start with `prefix` that hold slots now."""
        query = select(_INF.worker).where(_INF.worker.startswith(prefix, autoescape=True)).distinct()
        with self.db.read() as conn:
            return {row.worker for row in conn.execute(query)}

    def prune(self, now: float) -> None:
        """Drop window rows that can no longer count (the queries ignore them anyway)."""
        with self.db.write() as conn:
            conn.execute(delete(schema.rate_seconds).where(_R.second < window_start(now)))
            conn.execute(delete(schema.inflight).where(_INF.expires_at <= now))


def _second(key_id: str, now: float, *, requests: int, tokens: int) -> dict[str, int | str]:
    """A row for this second's counters of the key (added by the `count` upsert)."""
    return {"key_id": key_id, "second": math.floor(now), "requests": requests, "tokens": tokens}


def describe(
    key: ApiKey, now: float, count: int, oldest_req: float | None, used: int, oldest_tok: float | None
) -> Window:
    """The window holding `count` requests and `used` tokens; the oldest of each counts until oldest + WINDOW."""
    reset_req = (oldest_req + WINDOW - now) if oldest_req is not None else 0.0
    reset_tok = (oldest_tok + WINDOW - now) if oldest_tok is not None else 0.0
    return Window(
        limit_requests=key.rpm,
        remaining_requests=max(0, (key.rpm or 0) - count),
        reset_requests=max(0.0, reset_req),
        limit_tokens=key.tpm,
        remaining_tokens=max(0, (key.tpm or 0) - used),
        reset_tokens=max(0.0, reset_tok),
    )


def decide(
    key: ApiKey,
    now: float,
    count: int,
    oldest_req: float | None,
    used: int,
    oldest_tok: float | None,
    this_req: float,
) -> Window:
    """Refuse (LimitExceeded) or describe the window after admitting one more request.

    `this_req` is where the admitted request itself counts from (as an `oldest_req`): in an
    empty window it is the oldest, so the window resets when it leaves, not now."""
    first = oldest_req if oldest_req is not None else this_req
    window = describe(key, now, count + 1, first, used, oldest_tok)
    reset_req, reset_tok = window.reset_requests, window.reset_tokens
    if key.rpm is not None and count >= key.rpm:
        refused = Window(key.rpm, 0, window.reset_requests, key.tpm, window.remaining_tokens, window.reset_tokens)
        message = f"Rate limit reached: {key.rpm} requests per minute for this key."
        raise LimitExceeded("rate_limit_exceeded", message, max(reset_req, 0.001), refused)
    if key.tpm is not None and used >= key.tpm:
        message = f"Rate limit reached: {key.tpm} tokens per minute for this key."
        raise LimitExceeded("rate_limit_exceeded", message, max(reset_tok, 0.001), window)
    return window


def check_parallel(key: ApiKey, running: int) -> None:
    if key.max_parallel is not None and running >= key.max_parallel:
        raise too_many_parallel(key)


def too_many_parallel(key: ApiKey) -> LimitExceeded:
    message = f"This key allows {key.max_parallel} requests in flight; wait for one to finish."
    return LimitExceeded("too_many_parallel_requests", message, 1.0)


def check_budget(q: Quick, sql: Statements, key: ApiKey, now: float) -> int | None:
    """Refuse a key whose monthly budget is spent; else its tokens this month (None: no budget)."""
    if key.monthly_tokens is None:
        return None
    found = q.rows(sql.monthly, {"key_id": key.id, "month": month_of(now)})
    used = int(found[0].tokens) if found else 0
    if used >= key.monthly_tokens:
        message = f"This key has used its monthly budget of {key.monthly_tokens} tokens."
        raise LimitExceeded("insufficient_quota", message, seconds_to_next_month(now))
    return used


def add_monthly(q: Quick, sql: Statements, key_id: str, month: str, tokens: int) -> None:
    """Add to the key's tokens of `month` (one upsert: concurrent first records of a month don't collide)."""
    q.execute(sql.add_monthly, {"key_id": key_id, "month": month, "tokens": tokens})


def format_reset(seconds: float) -> str:
    """OpenAI's duration format for x-ratelimit-reset-*: "20ms", "6s", "1m30s", "1h0m5s"."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"
