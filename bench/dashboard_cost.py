"""What a dashboard page costs as usage records pile up: roll-ups versus scanning the records.

    python bench/dashboard_cost.py --records 1000000

Seeds SQLite with `--records` usage records spread over 30 days (written the way the gateway
writes them: batches through UsageRepo.insert_many, which also fills the roll-ups), then
times, in the same run, what the pages read (the overview's 24 h series and the usage page's
30-day tables, from the roll-ups) against the same figures computed by scanning the records
(UsageRepo.summary, as the admin API does). The page work must not grow with the records.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.services.overview import overview
from app.storage.db import Database
from app.storage.migrate import upgrade
from app.storage.stats import Stats
from app.storage.usage import UsageRepo

MODELS = ("gpt-4o", "gpt-4o-mini", "o3", "mock-gpt", "llama-3-70b")
OUTCOMES = ("ok",) * 18 + ("upstream_error", "rate_limited")


def seed(repo: UsageRepo, count: int, now: float, batch: int = 5000) -> None:
    rng = random.Random(7)
    for start in range(0, count, batch):
        records = []
        for i in range(start, min(count, start + batch)):
            at = now - rng.random() * 30 * 86400
            tokens = rng.randint(10, 2000)
            records.append({
                "at": at, "request_id": f"r{i}", "key_id": None, "key_name": f"team-{i % 12}",
                "model": MODELS[i % len(MODELS)], "endpoint": "chat", "upstream": f"up-{i % 3}",
                "upstreams": f"up-{i % 3}", "token_ids": "t", "status": 200, "outcome": rng.choice(OUTCOMES),
                "streamed": True, "attempts": 1, "prompt_tokens": tokens // 2, "completion_tokens": tokens // 2,
                "total_tokens": tokens, "ttfb_ms": rng.lognormvariate(5, 0.8), "duration_ms": 900.0, "bytes_sent": 1,
            })  # fmt: skip
        repo.insert_many(records)


def timed(work, repeat: int) -> float:
    """Best of `repeat` runs, in ms."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{tmp}/bench.db")
        upgrade(db)
        repo, stats = UsageRepo(db), Stats(db)
        started = time.perf_counter()
        seed(repo, args.records, now)
        print(f"{args.records:,} records over 30 days written in {time.perf_counter() - started:.1f} s (with roll-ups)")
        month = now - 30 * 86400
        rows = [
            ("overview 24h (roll-up)", timed(lambda: overview(stats, "24h", now), args.repeat)),
            ("usage 30d, 3 tables (roll-up)",
             timed(lambda: [stats.usage_by(month // 3600 * 3600, by) for by in ("key", "model", "upstream")],
                   args.repeat)),
            ("usage 30d, 3 tables (scan)",
             timed(lambda: [repo.summary(month, by) for by in ("key", "model", "upstream")], args.repeat)),
        ]  # fmt: skip
        for name, ms in rows:
            print(f"{name:34s} {ms:9.1f} ms")
        print(f"ratio scan/roll-up for the usage page: {rows[2][1] / rows[1][1]:.0f}x")
        db.dispose()


if __name__ == "__main__":
    main()
