"""Each worker's in-flight counts and time to first event (table `target_load`), so every worker
sees the deployment's load: a worker writes its own rows and reads the others' fresh ones."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import delete, select

from app.storage import schema
from app.storage.db import Database

c = schema.target_load.c
Figures = Mapping[str, tuple[int, float | None]]  # key -> (in flight, ttfe seconds or None)


class LoadRepo:
    def __init__(self, db: Database) -> None:
        self.db = db

    def report(self, worker: str, figures: Figures, now: float) -> None:
        """Replace `worker`'s rows with `figures` (ttfe stored in milliseconds)."""
        rows = [
            {"worker": worker, "target": key[:300], "inflight": inflight, "updated_at": now,
             "ttfe_ms": None if ttfe is None else round(ttfe * 1000, 1)}
            for key, (inflight, ttfe) in figures.items()
        ]  # fmt: skip
        with self.db.write() as conn:
            conn.execute(delete(schema.target_load).where(c.worker == worker))
            if rows:
                conn.execute(schema.target_load.insert(), rows)

    def others(self, worker: str, since: float) -> dict[str, tuple[int, float | None]]:
        """The other workers' rows updated at `since` or later: in flight summed per key, ttfe
        (seconds) the mean of those that have one."""
        query = select(c.target, c.inflight, c.ttfe_ms).where(c.worker != worker, c.updated_at >= since)
        with self.db.read() as conn:
            rows = conn.execute(query).fetchall()
        inflight: dict[str, int] = {}
        samples: dict[str, list[float]] = {}
        for row in rows:
            inflight[row.target] = inflight.get(row.target, 0) + row.inflight
            if row.ttfe_ms is not None:
                samples.setdefault(row.target, []).append(row.ttfe_ms / 1000)
        return {key: (count, _mean(samples.get(key))) for key, count in inflight.items()}

    def prune(self, before: float) -> int:
        """Drop the rows of workers silent since `before` (exited or killed); returns how many."""
        with self.db.write() as conn:
            return conn.execute(delete(schema.target_load).where(c.updated_at < before)).rowcount

    def clear(self, worker: str) -> None:
        """Drop `worker`'s rows (at its exit: its requests no longer count)."""
        with self.db.write() as conn:
            conn.execute(delete(schema.target_load).where(c.worker == worker))


def _mean(values: list[float] | None) -> float | None:
    return sum(values) / len(values) if values else None
