"""On both backends: a usage record the database cannot take is dropped alone; the writer carries on."""

from __future__ import annotations

import time

from prometheus_client import REGISTRY

from app.storage.usage import UsageRepo, UsageWriter

RECORD = {"at": 1.0, "request_id": "r", "key_id": None, "key_name": "m", "model": "x", "endpoint": "chat",
          "upstream": None, "upstreams": "", "token_ids": "", "status": 200, "outcome": "ok", "streamed": False,
          "attempts": 1, "duration_ms": 1.0}  # fmt: skip


def stored(usage: UsageRepo, count: int) -> list[str]:
    deadline = time.monotonic() + 5
    while len(rows := usage.recent()) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return sorted(r["request_id"] for r in rows)


def test_a_lone_surrogate_in_a_record_does_not_stop_the_writer(db):
    usage = UsageRepo(db)
    writer = UsageWriter(usage, interval=0.05)
    before = REGISTRY.get_sample_value("sluice_background_errors_total", {"chore": UsageWriter.CHORE}) or 0.0
    try:
        for request_id, model in (("good-1", "x"), ("bad", "\ud800"), ("good-2", "y")):
            writer.add({**RECORD, "request_id": request_id, "model": model})
        assert stored(usage, 2) == ["good-1", "good-2"]
        writer.add({**RECORD, "request_id": "next"})
        assert stored(usage, 3) == ["good-1", "good-2", "next"]
    finally:
        writer.close()
    after = REGISTRY.get_sample_value("sluice_background_errors_total", {"chore": UsageWriter.CHORE})
    assert after == before + 1
