"""The limiter on Redis (SLUICE_REDIS_URL): the same windows, shared across machines.

One Lua script admits atomically (Redis runs scripts one at a time) using Redis's own
clock, so gateways on several machines agree. The monthly budget stays in the database.
`redis` is imported lazily: it is only needed when SLUICE_REDIS_URL is set.
"""

from __future__ import annotations

from typing import Any

from app import process
from app.storage.db import Database, StorageError
from app.storage.keys import ApiKey
from app.storage.limits import (
    STALE_INFLIGHT,
    WINDOW,
    Admission,
    LimitExceeded,
    Statements,
    Window,
    add_monthly,
    check_budget,
    decide,
    describe,
    month_of,
)

ADMIT = """
local req, tok, inf = KEYS[1], KEYS[2], KEYS[3]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local window, stale = tonumber(ARGV[1]), tonumber(ARGV[2])
local rpm, tpm, maxp, id = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
redis.call('ZREMRANGEBYSCORE', req, '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', tok, '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', inf, '-inf', now - stale)
if maxp >= 0 and redis.call('ZCARD', inf) >= maxp then
  return {'parallel', tostring(now), 0, '', 0, ''}
end
local count = redis.call('ZCARD', req)
local oldest_req = redis.call('ZRANGE', req, 0, 0, 'WITHSCORES')[2] or ''
local used = 0
local members = redis.call('ZRANGE', tok, 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do used = used + tonumber(string.match(members[i], ':(%d+)$')) end
local oldest_tok = members[2] or ''
local admitted = (rpm < 0 or count < rpm) and (tpm < 0 or used < tpm)
if admitted then
  if rpm >= 0 then redis.call('ZADD', req, now, id); redis.call('EXPIRE', req, math.ceil(window) + 1) end
  if maxp >= 0 then redis.call('ZADD', inf, now, id); redis.call('EXPIRE', inf, math.ceil(stale)) end
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

    def admit(self, key: ApiKey, now: float) -> Admission:
        if key.monthly_tokens is not None:
            with self.db.quick() as q:
                check_budget(q, self.sql, key, now)
        admission_id = process.unique_id()
        args = [WINDOW, STALE_INFLIGHT, _arg(key.rpm), _arg(key.tpm), _arg(key.max_parallel), admission_id]
        try:
            state, at, count, oldest_req, used, oldest_tok = self._admit(keys=_keys(key.id), args=args)
        except self._errors as exc:
            raise StorageError(f"redis admission failed: {type(exc).__name__}") from exc
        now = float(at)
        if state == b"parallel":
            message = f"This key allows {key.max_parallel} requests in flight; wait for one to finish."
            raise LimitExceeded("too_many_parallel_requests", message, 1.0)
        # `count` includes this request when admitted: decide() counts the window before it.
        before = int(count)
        window = decide(key, now, before, _float(oldest_req, None), int(used), _float(oldest_tok, None))
        return Admission(key, admission_id, window)

    def peek(self, key: ApiKey, now: float) -> Window:
        """The window as it stands, without counting anything."""
        req, tok, _ = _keys(key.id)
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
        key = admission.key
        req, tok, inf = _keys(key.id)
        pipe = self.redis.pipeline()
        if key.max_parallel is not None:
            pipe.zrem(inf, admission.admission_id)
        if tokens > 0 and key.tpm is not None:
            pipe.zadd(tok, {f"{admission.admission_id}:{tokens}": now})
            pipe.expire(tok, int(WINDOW) + 1)
        try:
            pipe.execute()
        except self._errors as exc:
            raise StorageError(f"redis release failed: {type(exc).__name__}") from exc
        if tokens > 0 and key.monthly_tokens is not None:
            with self.db.quick(write=True) as q:
                add_monthly(q, self.sql, key.id, month_of(now), tokens)


def _keys(key_id: str) -> list[str]:
    return [f"sluice:rl:{key_id}:req", f"sluice:rl:{key_id}:tok", f"sluice:rl:{key_id}:inflight"]


def _arg(limit: int | None) -> int:
    return -1 if limit is None else limit


def _float(value: Any, default: float | None) -> float | None:
    return float(value) if value not in (b"", "", None) else default
