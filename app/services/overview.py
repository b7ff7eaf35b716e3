"""The dashboard's overview: request rate, error rate, time to first byte and tokens per time bucket.

Time to first byte comes from histograms (see schema.TTFB_BOUNDS_MS); percentiles are
estimated by linear interpolation inside the bucket that holds them, as Prometheus does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from app.storage.rollups import HISTOGRAM
from app.storage.schema import TTFB_BOUNDS_MS
from app.storage.stats import Stats

# range name -> (seconds covered, bucket seconds)
RANGES = {"1h": (3600, 60), "24h": (86400, 1800)}


@dataclass
class Bucket:
    start: float
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    ttfb: list[int] = field(default_factory=lambda: [0] * len(HISTOGRAM))

    @property
    def error_rate(self) -> float | None:
        return 100.0 * self.errors / self.requests if self.requests else None

    def ttfb_ms(self, q: float) -> float | None:
        return quantile(self.ttfb, q)


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

    def ttfb_ms(self, q: float) -> float | None:
        return quantile([sum(b.ttfb[i] for b in self.buckets) for i in range(len(HISTOGRAM))], q)


def quantile(counts: list[int], q: float) -> float | None:
    """The q-th percentile (0..100) of a histogram over TTFB_BOUNDS_MS; None when it is empty.

    Values past the last bound are reported as that bound (the histogram knows no more).
    """
    total = sum(counts)
    if not total:
        return None
    rank = q / 100 * total
    seen = 0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            if i == len(TTFB_BOUNDS_MS):
                return float(TTFB_BOUNDS_MS[-1])
            lower = TTFB_BOUNDS_MS[i - 1] if i else 0
            return lower + (TTFB_BOUNDS_MS[i] - lower) * (rank - seen) / count
        seen += count
    return float(TTFB_BOUNDS_MS[-1])


def overview(stats: Stats, range_name: str, now: float) -> Overview:
    """Figures for `range_name` ("1h" or "24h") ending now, in whole buckets."""
    span, width = RANGES[range_name]
    end = (now // width + 1) * width  # the current bucket is the last one
    since = end - span
    buckets = [Bucket(since + i * width) for i in range(span // width)]
    for row in stats.minutes(since):
        index = int((row["minute"] - since) // width)
        if 0 <= index < len(buckets):
            bucket = buckets[index]
            bucket.requests += row["requests"]
            bucket.errors += row["errors"]
            bucket.tokens += int(row["tokens"])
            bucket.ttfb = [a + row[name] for a, name in zip(bucket.ttfb, HISTOGRAM, strict=True)]
    streams, workers = stats.live(now)
    return Overview(range_name, width, buckets, streams, workers)
