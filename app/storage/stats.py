"""Figures for the dashboard, read from the usage roll-ups (a few rows per minute or hour, never
a scan of the records), and live streams as each worker reports them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select

from app.storage import schema
from app.storage.db import Database

w, m, h = schema.worker_status.c, schema.usage_minutes.c, schema.usage_hours.c
LIVE_FOR = 10.0  # a worker's report counts for this long (it reports every 2 s)
GROUP_COLUMNS = {"key": h.key_name, "model": h.model, "upstream": h.upstream}


class Stats:
    def __init__(self, db: Database) -> None:
        self.db = db
        # The worker's report runs on its event loop every 2 s: prepared, it blocks it for microseconds.
        self._forget = db.prepare(delete(schema.worker_status).where(w.worker == bindparam("worker")))
        self._report = db.prepare(insert(schema.worker_status))
        self._expire = db.prepare(delete(schema.worker_status).where(w.updated_at < bindparam("before")))

    def minutes(self, since: float) -> list[dict[str, Any]]:
        """Per minute from `since` on: requests, errors, tokens and the TTFB histogram (ttfb_0..)."""
        query = select(schema.usage_minutes).where(m.minute >= since).order_by(m.minute)
        with self.db.read() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def usage_by(self, since: float, by: str) -> list[dict[str, Any]]:
        """Requests and tokens per key|model|upstream over the whole hours starting at or after `since`."""
        column = GROUP_COLUMNS[by]
        query = (
            select(
                column.label("group"),
                func.sum(h.requests).label("requests"),
                func.sum(h.prompt_tokens).label("prompt_tokens"),
                func.sum(h.completion_tokens).label("completion_tokens"),
                func.sum(h.total_tokens).label("total_tokens"),
            )
            .where(h.hour >= since)
            .group_by(column)
            .order_by(func.sum(h.requests).desc(), column)
        )
        with self.db.read() as conn:
            return [{k: _number(v) for k, v in row._mapping.items()} for row in conn.execute(query)]

    # live streams
    def report_worker(self, worker: str, active_streams: int, now: float) -> None:
        """Replace this worker's report; -1 removes it (the worker is exiting)."""
        with self.db.quick(write=True) as q:
            q.execute(self._forget, {"worker": worker})
            if active_streams >= 0:
                q.execute(self._report, {"worker": worker, "active_streams": active_streams, "updated_at": now})
            q.execute(self._expire, {"before": now - 3600})

    def live(self, now: float) -> tuple[int, int]:
        """(active streams, workers reporting) across every worker that reported in the last LIVE_FOR s."""
        query = select(func.coalesce(func.sum(w.active_streams), 0), func.count()).where(w.updated_at > now - LIVE_FOR)
        with self.db.read() as conn:
            streams, workers = conn.execute(query).one()
        return int(streams), int(workers)


def _number(value: Any) -> Any:
    """PostgreSQL sums of BIGINT come back as Decimal; the pages want plain ints."""
    return int(value) if value is not None and not isinstance(value, str) else value
