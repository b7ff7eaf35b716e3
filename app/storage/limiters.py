"""The limiter of a deployment, for the workers and the reaper alike (limits on Redis or on the database)."""

from __future__ import annotations

from app.storage.db import Database
from app.storage.limits import Limiter, SqlLimiter


def make_limiter(db: Database, redis_url: str | None) -> Limiter:
    """The limiter of a deployment: on Redis when SLUICE_REDIS_URL is set, else on the database
    (the workers' and the reaper's choice alike)."""
    if redis_url:
        from app.storage.redis_limits import RedisLimiter  # lazy: only with SLUICE_REDIS_URL

        return RedisLimiter(redis_url, db)
    return SqlLimiter(db)
