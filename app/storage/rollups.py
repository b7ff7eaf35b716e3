"""Per-minute and per-hour roll-ups of the usage records, added in the records' own transaction.

Each batch is summed in Python and upserted with one statement per table (INSERT ... ON
CONFLICT DO UPDATE adds to the stored sums), so workers writing the same minute never race.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from app.storage import schema

CLIENT_OUTCOMES = ("ok", "client_error", "rate_limited", "quota_exceeded", "client_disconnect")
BOUNDS = schema.TTFB_BOUNDS_MS
HISTOGRAM = [f"ttfb_{i}" for i in range(len(BOUNDS) + 1)]


def is_error(outcome: str) -> bool:
    """A failure on the gateway's or an upstream's side (refusals and client faults are not errors)."""
    return outcome not in CLIENT_OUTCOMES


def ttfb_bucket(ms: float) -> int:
    """Index of the histogram bucket holding `ms` (buckets are upper-bound inclusive)."""
    return bisect.bisect_left(BOUNDS, ms)


def add_rollups(conn: Connection, records: Sequence[dict[str, Any]], is_sqlite: bool) -> None:
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
    dialect = sqlite if is_sqlite else postgresql
    if minutes:
        rows = [{"minute": minute, **sums} for minute, sums in minutes.items()]
        _upsert(conn, dialect, schema.usage_minutes, rows, ["minute"])
    if hours:
        names = ("hour", "key_name", "model", "upstream")
        rows = [{**dict(zip(names, key, strict=True)), **sums} for key, sums in hours.items()]
        _upsert(conn, dialect, schema.usage_hours, rows, list(names))


def _upsert(conn: Connection, dialect: Any, table: Any, rows: list[dict[str, int]], keys: list[str]) -> None:
    statement = dialect.insert(table)
    sums = {c.name: c + statement.excluded[c.name] for c in table.c if c.name not in keys}
    conn.execute(statement.on_conflict_do_update(index_elements=keys, set_=sums), rows)
