"""Figures for the dashboard: request series from the usage records, live streams per worker."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Integer, and_, case, cast, delete, func, insert, not_, select

from app.storage import schema
from app.storage.db import Database

u, w = schema.usage.c, schema.worker_status.c
# Outcomes that are the client's own doing; every other outcome that is not "ok" is an error.
CLIENT_OUTCOMES = ("ok", "client_error", "rate_limited", "quota_exceeded", "client_disconnect")
MAX_TTFB_SAMPLES = 100_000  # the most recent samples used for the percentiles of one range
LIVE_FOR = 10.0  # a worker's report counts for this long (it reports every 2 s)


class Stats:
    def __init__(self, db: Database) -> None:
        self.db = db

    def series(self, since: float, bucket: float) -> dict[int, dict[str, Any]]:
        """Per bucket index (0 = the bucket starting at `since`): requests, errors, tokens."""
        index = self._bucket(since, bucket)
        is_error = case((not_(u.outcome.in_(CLIENT_OUTCOMES)), 1), else_=0)
        query = (
            select(
                index.label("b"),
                func.count().label("requests"),
                func.coalesce(func.sum(is_error), 0).label("errors"),
                func.coalesce(func.sum(u.total_tokens), 0).label("tokens"),
            )
            .where(u.at >= since)
            .group_by(index)
        )
        with self.db.read() as conn:
            return {int(row.b): dict(row._mapping) for row in conn.execute(query)}

    def ttfb_samples(self, since: float, bucket: float) -> list[tuple[int, float]]:
        """(bucket index, time to first byte in ms) of the most recent answered requests."""
        index = self._bucket(since, bucket)
        query = (
            select(index, u.ttfb_ms)
            .where(and_(u.at >= since, u.ttfb_ms.is_not(None)))
            .order_by(u.at.desc())
            .limit(MAX_TTFB_SAMPLES)
        )
        with self.db.read() as conn:
            return [(int(b), float(ms)) for b, ms in conn.execute(query)]

    def _bucket(self, since: float, bucket: float) -> Any:
        offset = (u.at - since) / bucket
        return cast(offset, Integer) if self.db.is_sqlite else func.floor(offset)

    def top_models(self, since: float, limit: int = 10) -> list[dict[str, Any]]:
        query = (
            select(u.model, func.count().label("requests"), func.coalesce(func.sum(u.total_tokens), 0).label("tokens"))
            .where(u.at >= since)
            .group_by(u.model)
            .order_by(func.count().desc(), u.model)
            .limit(limit)
        )
        with self.db.read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    # live streams
    def report_worker(self, worker: str, active_streams: int, now: float) -> None:
        with self.db.write() as conn:
            conn.execute(delete(schema.worker_status).where(w.worker == worker))
            if active_streams >= 0:
                conn.execute(
                    insert(schema.worker_status).values(worker=worker, active_streams=active_streams, updated_at=now)
                )
            conn.execute(delete(schema.worker_status).where(w.updated_at < now - 3600))

    def live(self, now: float) -> tuple[int, int]:
        """(active streams, workers reporting) across every worker that reported in the last LIVE_FOR s."""
        query = select(func.coalesce(func.sum(w.active_streams), 0), func.count()).where(w.updated_at > now - LIVE_FOR)
        with self.db.read() as conn:
            streams, workers = conn.execute(query).one()
        return int(streams), int(workers)
