"""Per-minute and per-hour roll-ups of the usage records, added in the records' own transaction.

Each batch is summed in Python and added with one upsert per table (Database.upsert), so
workers writing the same minute never race.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from app.services.outcomes import RequestOutcome  # pure: the one taxonomy of request outcomes
from app.storage import schema
from app.storage.db import Database, Quick

BOUNDS = schema.TTFB_BOUNDS_MS
HISTOGRAM = [f"ttfb_{i}" for i in range(len(BOUNDS) + 1)]
HOUR_KEYS = ("hour", "key_name", "model", "upstream")


def is_error(outcome: str) -> bool:
    """A failure on the gateway's or an upstream's side (refusals and client faults are not errors)."""
    try:
        return RequestOutcome(outcome).is_error
    except ValueError:  # a record written by another version: an error unless it says otherwise
        return True


def ttfb_bucket(ms: float) -> int:
    """Index of the histogram bucket holding `ms` (buckets are upper-bound inclusive)."""
    return bisect.bisect_left(BOUNDS, ms)


class Rollups:
    """The roll-ups' upserts, prepared once for one database."""

    def __init__(self, db: Database) -> None:
        self.minutes = db.prepare(db.upsert(schema.usage_minutes, ["minute"]))
        self.hours = db.prepare(db.upsert(schema.usage_hours, HOUR_KEYS))

    def add(self, q: Quick, records: Sequence[dict[str, Any]]) -> None:
        """Add a batch of usage records to the minute and hour roll-ups (in the caller's transaction)."""
        minutes, hours = summed(records)
        if minutes:
            q.execute_many(self.minutes, [{"minute": minute, **sums} for minute, sums in minutes.items()])
        if hours:
            rows = [{**dict(zip(HOUR_KEYS, key, strict=True)), **sums} for key, sums in hours.items()]
            q.execute_many(self.hours, rows)


def summed(records: Sequence[dict[str, Any]]) -> tuple[dict[int, dict[str, int]], dict[tuple, dict[str, int]]]:
    """The records' counts per minute, and per (hour, key, model, upstream)."""
    minutes: dict[int, dict[str, int]] = {}
    hours: dict[tuple, dict[str, int]] = {}
    for r in records:
        m = minutes.setdefault(int(r["at"] // 60 * 60), dict.fromkeys(["requests", "errors", "tokens", *HISTOGRAM], 0))
        m["requests"] += 1
        m["errors"] += is_error(r["outcome"])
        m["tokens"] += r.get("total_tokens", 0)
        if r.get("ttfb_ms") is not None:
            m[HISTOGRAM[ttfb_bucket(r["ttfb_ms"])]] += 1
        key = (int(r["at"] // 3600 * 3600), r["key_name"], r["model"], r.get("upstream") or "-")
        h = hours.setdefault(key, dict.fromkeys(["requests", "prompt_tokens", "completion_tokens", "total_tokens"], 0))
        h["requests"] += 1
        for field in ("prompt_tokens", "completion_tokens", "total_tokens"):
            h[field] += r.get(field, 0)
    return minutes, hours
