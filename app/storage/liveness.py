"""Worker liveness: a crashed instance's max_parallel slots are freed within seconds by the others.

A slot names the worker holding it ("<instance id>:<pid>", app/storage/limits.py). When one
worker dies, its gunicorn master frees its slots (app/storage/reaper.py); when a whole instance
dies (SIGKILL of the process group, out of memory, a host lost), no master is left to do it, and
the slots stayed taken until their requests' deadlines (up to an hour). So every gunicorn worker
(app/worker.py):

- beats every BEAT seconds: it records "alive now" for its name, on the store that holds its
  slots (a `worker_liveness` row on the database, a member of the `sluice:alive` sorted set on
  Redis), starting before it accepts its first request;
- sweeps every SWEEP_EVERY seconds: a worker whose last beat is more than STALE seconds old is
  dead; its slots are freed and its record dropped, at most SWEEP_LIMIT workers per sweep.

A worker sweeps only while its own beats land steadily (for the last STALE seconds, no gap over
STALE / 2): after an outage of the store every record is old, and sweeping before the others
have beaten again would free the slots of live workers. On SQLite a beat's or sweep's write waits
at most LOCK_WAIT for another process's write lock (cooperatively, as every write does: db.py
`begin_immediate`), not the 5 s of a request's: a beat that cannot land soon fails, and the next
one comes a second later.

"Now" is always the store's clock (the database's, or Redis's TIME), never the worker's, so
clock skew between hosts cannot make a live worker look stale. A live worker is only taken for
dead if it cannot beat for STALE seconds (its event loop blocked that long, or the store
unreachable from it): then its slots are freed early and its key may briefly run more than
max_parallel requests; its next beat makes it live again. A worker that never beat (older
versions during a rolling upgrade, tools) is never swept: its slots expire as before.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from sqlalchemy import Float, bindparam, cast, delete, extract, func, literal, select

from app.storage import schema
from app.storage.db import Database, Quick, StorageError
from app.storage.limits import Limiter, SqlLimiter

BEAT = 1.0  # seconds between a worker's beats
STALE = 10.0  # a worker silent this long is dead (ten missed beats: a busy store or loop is not death)
SWEEP_EVERY = 2.0  # seconds between sweeps: a crashed instance's slots free STALE to STALE + 2 s after its last beat
SWEEP_LIMIT = 50  # dead workers freed per sweep (bounded work; the next sweep takes the rest)
# Seconds an SQLite beat or sweep waits for another process's write lock (transactions take ms), instead of
# the 5 s of a request's: a beat that cannot land soon fails, and the next one comes a second later.
LOCK_WAIT = 0.1


class Liveness(Protocol):
    def beat(self, worker: str) -> None: ...

    def forget(self, worker: str) -> None: ...

    def sweep(self, stale: float = STALE, limit: int = SWEEP_LIMIT) -> dict[str, int]: ...

    def close(self) -> None: ...


def liveness_for(limiter: Limiter) -> Liveness:
    """The liveness records beside `limiter`'s slots: on its database, or on its Redis."""
    if isinstance(limiter, SqlLimiter):
        return SqlLiveness(limiter.db)
    return RedisLiveness(limiter.redis)  # type: ignore[attr-defined]  # a RedisLimiter


_L, _INF = schema.worker_liveness.c, schema.inflight.c
_WORKER, _STALE = bindparam("worker"), bindparam("stale")


def store_clock(db: Database) -> Any:
    """The database server's time in UNIX seconds (SQLite: this host's, the only one using the file)."""
    if db.is_sqlite:
        return (func.julianday(literal("now")) - 2440587.5) * 86400.0
    return cast(extract("epoch", func.clock_timestamp()), Float)


class SqlLiveness:
    """Liveness records in the `worker_liveness` table, timed by the database's clock."""

    def __init__(self, db: Database) -> None:
        self.db, now = db, store_clock(db)
        upsert = db.insert(schema.worker_liveness).values(worker=_WORKER, seen_at=now)
        self._beat = db.prepare(upsert.on_conflict_do_update(index_elements=["worker"], set_={"seen_at": now}))
        self._forget = db.prepare(delete(schema.worker_liveness).where(_L.worker == _WORKER))
        stale = select(_L.worker).where(_L.seen_at < now - _STALE).order_by(_L.seen_at).limit(bindparam("limit"))
        self._stale = db.prepare(stale)
        self._claim = db.prepare(delete(schema.worker_liveness).where(_L.worker == _WORKER, _L.seen_at < now - _STALE))
        self._free = db.prepare(delete(schema.inflight).where(_INF.worker == _WORKER))

    def beat(self, worker: str) -> None:
        """Record that `worker` is alive now (StorageError if the database fails)."""
        with self._quick(write=True) as q:
            q.execute(self._beat, {"worker": worker})

    def forget(self, worker: str) -> None:
        """Drop `worker`'s record (it has exited and holds no slot)."""
        with self._quick(write=True) as q:
            q.execute(self._forget, {"worker": worker})

    def sweep(self, stale: float = STALE, limit: int = SWEEP_LIMIT) -> dict[str, int]:
        """Free the slots of up to `limit` workers silent for over `stale` seconds and drop their
        records; returns {worker: slots freed}. A read alone while every worker is alive."""
        params = {"stale": stale, "limit": limit}
        with self._quick() as q:
            if not q.rows(self._stale, params):
                return {}
        freed: dict[str, int] = {}
        with self._quick(write=True) as q:
            for row in q.rows(self._stale, params):
                # Claimed by deleting its record while still stale: a beat that landed meanwhile
                # (PostgreSQL re-checks the row) keeps the worker's slots; two sweepers free once.
                if q.execute(self._claim, {"worker": row.worker, "stale": stale}):
                    freed[row.worker] = q.execute(self._free, {"worker": row.worker})
        return freed

    def close(self) -> None:
        """Nothing of its own to close: it works on the database's connections."""

    def _quick(self, write: bool = False) -> AbstractContextManager[Quick]:
        """The database's quick transaction, a write waiting LOCK_WAIT at most for SQLite's write lock."""
        return self.db.quick(write=write, lock_wait=LOCK_WAIT)


class Keeper:
    """A worker's side: its beats, and sweeps only while those land steadily (see above)."""

    def __init__(self, liveness: Liveness, worker: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.liveness, self.worker, self.clock = liveness, worker, clock
        self._last_beat = -math.inf  # when the last beat landed (this process's clock)
        self._steady_since = math.inf  # the first of the beats since landing with no gap over STALE / 2

    def beat(self) -> None:
        """Beat (StorageError if the store fails)."""
        self.liveness.beat(self.worker)
        now = self.clock()
        if now - self._last_beat > STALE / 2:
            self._steady_since = now
        self._last_beat = now

    def sweep(self) -> dict[str, int]:
        """Sweep (liveness.sweep), unless this worker's own beats have not landed steadily for STALE s."""
        now = self.clock()
        if now - self._steady_since < STALE or now - self._last_beat > STALE / 2:
            return {}
        return self.liveness.sweep()


# KEYS[1]: the sorted set of workers scored by their last beat (Redis's clock). ARGV: the worker.
BEAT_SCRIPT = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], tonumber(t[1]) + tonumber(t[2]) / 1000000, ARGV[1])
"""
# ARGV: stale seconds, limit, and the prefix and suffix of a worker's slot hash (redis_limits.py).
# Returns {worker, slots freed, ...}. Atomic: no beat lands between the check and the frees.
# The hashes and in-flight sets it touches are not declared in KEYS: one Redis, not a cluster.
SWEEP_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1])), 'LIMIT', 0, ARGV[2])
local freed = {}
for _, worker in ipairs(dead) do
  local owner = ARGV[3] .. worker .. ARGV[4]
  local slots = redis.call('HGETALL', owner)
  for i = 1, #slots, 2 do redis.call('ZREM', slots[i + 1], slots[i]) end
  redis.call('DEL', owner)
  redis.call('ZREM', KEYS[1], worker)
  freed[#freed + 1] = worker
  freed[#freed + 1] = #slots / 2
end
return freed
"""
ALIVE = "sluice:alive"


class RedisLiveness:
    """Liveness records in one Redis sorted set, timed by Redis's clock."""

    def __init__(self, client: Any) -> None:
        import redis  # lazy: only with SLUICE_REDIS_URL

        self.redis, self._errors = client, redis.RedisError
        self._beat = client.register_script(BEAT_SCRIPT)
        self._sweep = client.register_script(SWEEP_SCRIPT)

    def beat(self, worker: str) -> None:
        """Record that `worker` is alive now (StorageError if Redis fails)."""
        self._call(self._beat, [worker])

    def forget(self, worker: str) -> None:
        """Drop `worker`'s record (it has exited and holds no slot)."""
        try:
            self.redis.zrem(ALIVE, worker)
        except self._errors as exc:
            raise StorageError(f"redis write failed: {type(exc).__name__}") from exc

    def sweep(self, stale: float = STALE, limit: int = SWEEP_LIMIT) -> dict[str, int]:
        """Free the slots of up to `limit` workers silent for over `stale` seconds and drop their
        records; returns {worker: slots freed}."""
        from app.storage.redis_limits import OWNER_PREFIX, OWNER_SUFFIX

        found = self._call(self._sweep, [stale, limit, OWNER_PREFIX, OWNER_SUFFIX])
        return {found[i].decode(): int(found[i + 1]) for i in range(0, len(found), 2)}

    def close(self) -> None:
        """Nothing to close: the limiter's client is shared."""

    def _call(self, script: Any, args: list[Any]) -> Any:
        try:
            return script([ALIVE], args)
        except self._errors as exc:
            raise StorageError(f"redis liveness failed: {type(exc).__name__}") from exc
