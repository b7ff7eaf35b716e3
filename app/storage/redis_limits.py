"""The limiter on Redis (SLUICE_REDIS_URL): the same windows, shared across machines.

One Lua script admits atomically (Redis runs scripts one at a time) using Redis's own
clock, so gateways on several machines agree. The windows are kept per second, as on the
database (app/storage/limits.py): a hash per key and counter, second -> requests or tokens,
where an event of second S counts until S + 61. An admission reads at most 61 fields of each
and drops the older ones, whatever the request rate. The monthly budget stays in the database.
`redis` is imported lazily: it is only needed when SLUICE_REDIS_URL is set.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from app.storage.db import Database, StorageError
from app.storage.keys import ApiKey
from app.storage.limits import (
    WINDOW,
    Admission,
    Statements,
    Window,
    add_monthly,
    check_budget,
    decide,
    describe,
    month_of,
    new_admission,
    too_many_parallel,
    window_start,
)

# The start of both scripts. ARGV[1] is the time ('' for Redis's own clock, which every
# gateway shares); `second` is the second events are counted in now; keep() only ever
# lengthens a key's life.
CLOCK = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local second = math.floor(now)
local function keep(name, seconds)
  if redis.call('TTL', name) < seconds then redis.call('EXPIRE', name, seconds) end
end
"""

# KEYS: the key's requests and tokens per second (hashes: second -> count), its in-flight zset,
# and the worker's hash of the slots it holds (slot id -> in-flight zset). ARGV: now, window,
# slot ttl, rpm, tpm, max_parallel (-1: none, or the slot is held already), slot id. An
# in-flight entry's score is when it expires. Returns the state, now, and for each window its
# total before this request and its oldest second with events ('' if none).
ADMIT = (
    CLOCK
    + """
local req, tok, inf, owner = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local window, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local rpm, tpm, maxp, id = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local start, stamp = second - window, string.format('%.17g', now)
-- at most 61 fields count (seconds start..now); older ones are dropped here, so the hash stays that small
local function total(name)
  local sum, oldest, fields = 0, nil, redis.call('HGETALL', name)
  for i = 1, #fields, 2 do
    local s, n = tonumber(fields[i]), tonumber(fields[i + 1])
    if s < start then
      redis.call('HDEL', name, fields[i])
    else
      sum = sum + n
      if n > 0 and (oldest == nil or s < oldest) then oldest = s end
    end
  end
  return sum, oldest and string.format('%d', oldest) or ''
end
if maxp >= 0 then
  redis.call('ZREMRANGEBYSCORE', inf, '-inf', now)
  if redis.call('ZCARD', inf) >= maxp then return {'parallel', stamp, 0, '', 0, ''} end
end
local count, oldest_req, used, oldest_tok = 0, '', 0, ''
if rpm >= 0 or tpm >= 0 then
  count, oldest_req = total(req)
  used, oldest_tok = total(tok)
end
local admitted = (rpm < 0 or count < rpm) and (tpm < 0 or used < tpm)
if admitted then
  if rpm >= 0 then
    redis.call('HINCRBY', req, string.format('%d', second), 1)
    redis.call('EXPIRE', req, window + 1)
  end
  if maxp >= 0 then
    local seconds = math.ceil(ttl) + 1
    redis.call('ZADD', inf, now + ttl, id)
    keep(inf, seconds)
    redis.call('HSET', owner, id, inf)
    keep(owner, seconds)
  end
end
return {admitted and 'ok' or 'limited', stamp, count, oldest_req, used, oldest_tok}
"""
)

# KEYS: the key's tokens per second, this release's marker, the key's in-flight zset, the
# worker's slot hash. ARGV: now, window, slot id, the second the tokens count in, the tokens
# (0: none to record). The marker lives as long as the tokens count: a release repeated after
# a reply was lost adds them once; one repeated later finds them out of the window anyway.
RELEASE = (
    CLOCK
    + """
local tok, marker, inf, owner = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local window, id, at, tokens = tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
redis.call('ZREM', inf, id)
redis.call('HDEL', owner, id)
local left = tonumber(at) + window + 1 - second
if tokens ~= '0' and left > 0 and redis.call('SET', marker, '1', 'NX', 'EX', left) then
  redis.call('HINCRBY', tok, at, tokens)
  keep(tok, left)
end
return 0
"""
)


# A worker's connections to Redis, at most (`?max_connections=N` in SLUICE_REDIS_URL sets it): a request past them
# waits up to POOL_WAIT seconds for one to come back. redis-py's own pool would fail it at once ("Too many
# connections", at 100), and a gevent worker starting a burst of streams runs that many scripts at a time.
POOL_SIZE = 32
POOL_WAIT = 5.0


class RedisLimiter:
    def __init__(self, url: str, db: Database, *, caller_clock: bool = False) -> None:
        """`caller_clock`: count on the `now` each call is given, as SqlLimiter does (for tests)."""
        import redis  # lazy: only with SLUICE_REDIS_URL

        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_SIZE, timeout=POOL_WAIT, socket_timeout=5, socket_connect_timeout=5
        )
        self.redis = redis.Redis.from_pool(pool)  # closing the client closes the pool
        self.db, self.sql = db, Statements(db)
        self._admit = self.redis.register_script(ADMIT)
        self._release = self.redis.register_script(RELEASE)
        self._errors = redis.RedisError
        self.caller_clock = caller_clock

    def hold(self, key: ApiKey, now: float, expires_at: float) -> Admission:
        """Take one of the key's max_parallel slots (before its request is admitted), or refuse."""
        admission = new_admission(key, now, expires_at)
        self._run(admission, now, -1, -1, _arg(key.max_parallel))
        return admission

    def admit(
        self, key: ApiKey, now: float, expires_at: float | None = None, held: Admission | None = None
    ) -> Admission:
        """Count the request, or refuse it (LimitExceeded); with `held`, its slot is taken already."""
        budget_used = None
        if key.monthly_tokens is not None:
            with self.db.quick() as q:
                budget_used = check_budget(q, self.sql, key, now)
        admission = held or new_admission(key, now, expires_at)
        parallel = _arg(key.max_parallel) if held is None else -1
        at, count, oldest_req, used, oldest_tok = self._run(admission, now, _arg(key.rpm), _arg(key.tpm), parallel)
        # `count` and `used` are the window before this request: decide() adds it, in its own second.
        window = decide(key, at, count, _end(oldest_req), used, _end(oldest_tok), math.floor(at) + 1.0)
        return replace(admission, window=window, budget_used=budget_used)

    def _run(self, admission: Admission, now: float, rpm: int, tpm: int, parallel: int) -> tuple:
        """Run the admission script: the time, the window's counts; LimitExceeded for no free slot."""
        key = admission.key
        ttl = max(1.0, admission.expires_at - now)  # the slot's life, on the script's clock
        args = [self._now(now), WINDOW, ttl, rpm, tpm, parallel, admission.admission_id]
        try:
            state, at, count, oldest_req, used, oldest_tok = self._admit(_keys(key.id, admission.worker), args)
        except self._errors as exc:
            raise StorageError(f"redis admission failed: {type(exc).__name__}") from exc
        if state == b"parallel":
            raise too_many_parallel(key)
        return float(at), int(count), _int(oldest_req), int(used), _int(oldest_tok)

    def _now(self, now: float) -> str:
        return repr(now) if self.caller_clock else ""

    def peek(self, key: ApiKey, now: float) -> Window:
        """The window as it stands, without counting anything."""
        req, tok = _keys(key.id, "")[:2]
        try:
            pipe = self.redis.pipeline()  # MULTI: the clock and both hashes at one moment
            pipe.time()
            pipe.hgetall(req)
            pipe.hgetall(tok)
            (seconds, micros), requests, tokens = pipe.execute()
        except self._errors as exc:
            raise StorageError(f"redis read failed: {type(exc).__name__}") from exc
        if not self.caller_clock:
            now = seconds + micros / 1_000_000
        count, oldest_req = _total(requests, window_start(now))
        used, oldest_tok = _total(tokens, window_start(now))
        return describe(key, now, count, _end(oldest_req), used, _end(oldest_tok))

    def release(self, admission: Admission, tokens: int, now: float) -> None:
        """Free the slot and record the tokens. Safe to repeat after a StorageError (the script
        runs whole or not at all, and adds a release's tokens once)."""
        key = admission.key
        record = tokens if tokens > 0 and key.tpm is not None else 0
        if key.max_parallel is not None or record:
            _, tok, inf, owner = _keys(key.id, admission.worker)
            marker = f"{tok}:released:{admission.admission_id}"
            args = [self._now(now), WINDOW, admission.admission_id, math.floor(now), record]
            try:
                self._release([tok, marker, inf, owner], args)
            except self._errors as exc:
                raise StorageError(f"redis release failed: {type(exc).__name__}") from exc
        if tokens > 0 and key.monthly_tokens is not None:
            with self.db.quick(write=True) as q:
                add_monthly(q, self.sql, key.id, month_of(now), tokens)

    def free_worker(self, worker: str) -> int:
        """Free every slot `worker` holds (it died: its releases will never come); returns how many."""
        owner = _owner(worker)
        try:
            slots = self.redis.hgetall(owner)
            pipe = self.redis.pipeline()
            for slot, inflight in slots.items():
                pipe.zrem(inflight, slot)
            pipe.delete(owner)
            pipe.execute()
        except self._errors as exc:
            raise StorageError(f"redis release failed: {type(exc).__name__}") from exc
        return len(slots)

    def workers(self, prefix: str) -> set[str]:
        """The workers whose names start with `prefix` that hold slots now (a SCAN of their hashes)."""
        head, tail = _owner("").removesuffix(":slots"), ":slots"
        pattern = _owner(_glob_escape(prefix) + "*")
        try:
            names = {name.decode() for name in self.redis.scan_iter(match=pattern, count=1000)}
        except self._errors as exc:
            raise StorageError(f"redis read failed: {type(exc).__name__}") from exc
        return {name[len(head) : -len(tail)] for name in names if name.startswith(head) and name.endswith(tail)}


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def _keys(key_id: str, worker: str) -> list[str]:
    """The key's requests and tokens per second (not the zsets of before: new names, no WRONGTYPE
    while old and new gateways run side by side), its in-flight zset, and `worker`'s slot hash."""
    head = f"sluice:rl:{key_id}"
    return [f"{head}:requests", f"{head}:tokens", f"{head}:inflight", _owner(worker)]


OWNER_PREFIX, OWNER_SUFFIX = "sluice:worker:", ":slots"  # around a worker's name (app/storage/liveness.py)


def _owner(worker: str) -> str:
    """The hash of the slots `worker` holds: slot id -> its key's in-flight zset."""
    return f"{OWNER_PREFIX}{worker}{OWNER_SUFFIX}"


def _arg(limit: int | None) -> int:
    return -1 if limit is None else limit


def _int(value: Any) -> int | None:
    return int(value) if value not in (b"", "", None) else None


def _end(second: int | None) -> float | None:
    """The oldest second's events as `describe` takes them: they leave the window WINDOW after this
    (the same as limits.py's `_end`)."""
    return None if second is None else float(second) + 1.0


def _total(fields: dict[bytes, bytes], start: int) -> tuple[int, int | None]:
    """A per-second hash's total from second `start` on, and its oldest second with events."""
    counting = [(int(second), int(n)) for second, n in fields.items() if int(second) >= start]
    return sum(n for _, n in counting), min((s for s, n in counting if n > 0), default=None)
