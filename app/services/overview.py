"""The dashboard's overview: request rate, error rate, time to first byte and tokens per time bucket."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from app.storage.stats import Stats

# range name -> (seconds covered, bucket seconds)
RANGES = {"1h": (3600, 60), "24h": (86400, 1800)}


@dataclass
class Bucket:
    start: float
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    ttfb: list[float] = field(default_factory=list)

    @property
    def error_rate(self) -> float | None:
        return 100.0 * self.errors / self.requests if self.requests else None


@dataclass
class Overview:
    range: str
    bucket_seconds: int
    buckets: list[Bucket]
    active_streams: int
    workers: int

    @property
    def requests(self) -> int:
        return sum(b.requests for b in self.buckets)

    @property
    def errors(self) -> int:
        return sum(b.errors for b in self.buckets)

    @property
    def tokens(self) -> int:
        return sum(b.tokens for b in self.buckets)

    @property
    def per_minute(self) -> float:
        return self.requests / (len(self.buckets) * self.bucket_seconds / 60)

    @property
    def error_rate(self) -> float | None:
        return 100.0 * self.errors / self.requests if self.requests else None

    def ttfb(self, q: float) -> float | None:
        return percentile([v for b in self.buckets for v in b.ttfb], q)


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile (q in 0..100) of `values`, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def overview(stats: Stats, range_name: str, now: float) -> Overview:
    """Figures for `range_name` ("1h" or "24h") ending now, in whole buckets."""
    span, width = RANGES[range_name]
    end = (now // width + 1) * width  # the current bucket is the last one
    since = end - span
    buckets = [Bucket(since + i * width) for i in range(span // width)]
    for index, row in stats.series(since, width).items():
        if 0 <= index < len(buckets):
            bucket = buckets[index]
            bucket.requests, bucket.errors, bucket.tokens = row["requests"], row["errors"], row["tokens"]
    for index, ms in stats.ttfb_samples(since, width):
        if 0 <= index < len(buckets):
            buckets[index].ttfb.append(ms)
    streams, workers = stats.live(now)
    return Overview(range_name, width, buckets, streams, workers)
