"""The limiter on Redis (SLUICE_REDIS_URL): the same windows, shared across machines.

One Lua script admits atomically (Redis runs scripts one at a time) using Redis's own
clock, so gateways on several machines agree. The monthly budget stays in the database.
`redis` is imported lazily: it is only needed when SLUICE_REDIS_URL is set.
"""

from __future__ import annotations

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
)

# KEYS: the key's requests, tokens and in-flight zsets, and the worker's hash of the slots it
# holds (slot id -> in-flight zset). ARGV: window, slot ttl, rpm, tpm, max_parallel (-1: none,
# or the slot is held already), slot id. An in-flight entry's score is when it expires.
ADMIT = """
local req, tok, inf, owner = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local rpm, tpm, maxp, id = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local function keep(name, seconds)
  if redis.call('TTL', name) < seconds then redis.call('EXPIRE', name, seconds) end
end
if maxp >= 0 then
  redis.call('ZREMRANGEBYSCORE', inf, '-inf', now)
  if redis.call('ZCARD', inf) >= maxp then return {'parallel', tostring(now), 0, '', 0, ''} end
end
local count, oldest_req, used, oldest_tok = 0, '', 0, ''
if rpm >= 0 or tpm >= 0 then
  redis.call('ZREMRANGEBYSCORE', req, '-inf', now - window)
  redis.call('ZREMRANGEBYSCORE', tok, '-inf', now - window)
  count = redis.call('ZCARD', req)
  oldest_req = redis.call('ZRANGE', req, 0, 0, 'WITHSCORES')[2] or ''
  local members = redis.call('ZRANGE', tok, 0, -1, 'WITHSCORES')
  for i = 1, #members, 2 do used = used + tonumber(string.match(members[i], ':(%d+)$')) end
  oldest_tok = members[2] or ''
end
local admitted = (rpm < 0 or count < rpm) and (tpm < 0 or used < tpm)
if admitted then
  if rpm >= 0 then redis.call('ZADD', req, now, id); redis.call('EXPIRE', req, math.ceil(window) + 1) end
  if maxp >= 0 then
    local seconds = math.ceil(ttl) + 1
    redis.call('ZADD', inf, now + ttl, id)
    keep(inf, seconds)
    redis.call('HSET', owner, id, inf)
    keep(owner, seconds)
  end
end
return {admitted and 'ok' or 'limited', tostring(now), count, oldest_req, used, oldest_tok}
"""


class RedisLimiter:
    def __init__(self, url: str, db: Database) -> None:
        import redis  # lazy: only with SLUICE_REDIS_URL

        self.redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.db, self.sql = db, Statements(db)
        self._admit = self.redis.register_script(ADMIT)
        self._errors = redis.RedisError

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
        # `count` and `used` are the window before this request: decide() adds it.
        window = decide(key, at, count, _float(oldest_req), used, _float(oldest_tok), at)
        return replace(admission, window=window, budget_used=budget_used)

    def _run(self, admission: Admission, now: float, rpm: int, tpm: int, parallel: int) -> tuple:
        """Run the admission script: Redis's clock, the window's counts; LimitExceeded for no free slot."""
        key = admission.key
        ttl = max(1.0, admission.expires_at - now)  # the slot's life, on Redis's clock
        args = [WINDOW, ttl, rpm, tpm, parallel, admission.admission_id]
        try:
            state, at, count, oldest_req, used, oldest_tok = self._admit(_keys(key.id, admission.worker), args)
        except self._errors as exc:
            raise StorageError(f"redis admission failed: {type(exc).__name__}") from exc
        if state == b"parallel":
            raise too_many_parallel(key)
        return float(at), int(count), oldest_req, int(used), oldest_tok

    def peek(self, key: ApiKey, now: float) -> Window:
        """The window as it stands, without counting anything."""
        req, tok = _keys(key.id, "")[:2]
        try:
            seconds, micros = self.redis.time()
            now = seconds + micros / 1_000_000
            since = f"({now - WINDOW}"
            pipe = self.redis.pipeline()
            pipe.zrangebyscore(req, since, "+inf", start=0, num=1, withscores=True)
            pipe.zcount(req, since, "+inf")
            pipe.zrangebyscore(tok, since, "+inf", withscores=True)
            first, count, tokens = pipe.execute()
        except self._errors as exc:
            raise StorageError(f"redis read failed: {type(exc).__name__}") from exc
        used = sum(int(member.rsplit(b":", 1)[1]) for member, _ in tokens)
        oldest_req = first[0][1] if first else None
        return describe(key, now, int(count), oldest_req, used, tokens[0][1] if tokens else None)

    def release(self, admission: Admission, tokens: int, now: float) -> None:
        """Free the slot and record the tokens. Safe to repeat after a StorageError (every step is)."""
        key = admission.key
        _, tok, inf, owner = _keys(key.id, admission.worker)
        pipe = self.redis.pipeline()
        if key.max_parallel is not None:
            pipe.zrem(inf, admission.admission_id)
            pipe.hdel(owner, admission.admission_id)
        if tokens > 0 and key.tpm is not None:
            pipe.zadd(tok, {f"{admission.admission_id}:{tokens}": now})  # the same member if repeated
            pipe.expire(tok, int(WINDOW) + 1)
        try:
            pipe.execute()
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
    return [f"sluice:rl:{key_id}:req", f"sluice:rl:{key_id}:tok", f"sluice:rl:{key_id}:inflight", _owner(worker)]


OWNER_PREFIX, OWNER_SUFFIX = "sluice:worker:", ":slots"  # around a worker's name (app/storage/liveness.py)


def _owner(worker: str) -> str:
    """The hash of the slots `worker` holds: slot id -> its key's in-flight zset."""
    return f"{OWNER_PREFIX}{worker}{OWNER_SUFFIX}"


def _arg(limit: int | None) -> int:
    return -1 if limit is None else limit


def _float(value: Any) -> float | None:
    return float(value) if value not in (b"", "", None) else None
