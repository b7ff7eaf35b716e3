"""The end of every request: release the key's admission, queue the usage record.

Usage numbers come from the upstream's answer: the `usage` object of a JSON reply, or
a stream's usage event, as the dialect reads them (app/dialects/).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from app.requestlog import RequestLine
from app.services import metrics
from app.services.admission import budget_alert
from app.services.outcomes import request_outcome
from app.services.releases import RETRY_EVERY, Releases
from app.storage.limits import Limiter
from app.storage.usage import UsageWriter

if TYPE_CHECKING:
    from app.services.attempts import Attempt

log = logging.getLogger("sluice.accounting")
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens")


def outcome_of(status: int, code: str | None) -> str:
    """The usage record's outcome (app/services/outcomes.py RequestOutcome), stored as its value."""
    return request_outcome(status, code).value


RATE_LIMIT_CODES = ("rate_limit_exceeded", "too_many_parallel_requests", "insufficient_quota")


def answered_by(attempts: Sequence[Attempt]) -> str | None:
    """The upstream whose answer the client got: the last attempt that answered 2xx (a resumed stream's
    continuation, or the part that broke when no continuation answered), else the last attempt's."""
    for attempt in reversed(attempts):
        if attempt.status is not None and 200 <= attempt.status < 300:
            return attempt.upstream
    return attempts[-1].upstream if attempts else None


def observe(line: RequestLine) -> None:
    """The request's Prometheus samples."""
    upstream = answered_by(line.attempts)  # attempts: the model matched a route
    model = metrics.model_label(line.model, upstream)
    metrics.REQUESTS.labels(route=line.route, status=str(line.status), model=model, upstream=upstream or "-").inc()
    metrics.DURATION.labels(route=line.route, streamed=str(line.streaming).lower()).observe(line.elapsed_ms() / 1000)
    ttfb = line.ttfb_ms()
    if ttfb is not None:
        metrics.TTFB.labels(route=line.route).observe(ttfb / 1000)
    if line.outcome in RATE_LIMIT_CODES:
        metrics.RATE_LIMITED.labels(code=line.outcome).inc()


class Accounting:
    def __init__(
        self, limiter: Limiter, writer: UsageWriter, records: bool = True, clock: Callable[[], float] = time.time
    ) -> None:
        self.limiter, self.writer, self.records, self.clock = limiter, writer, records, clock
        self.releases = Releases(limiter, clock)
        writer.every(RETRY_EVERY, self.releases.retry, "limits_release_retries")  # off the request path

    def finish(self, line: RequestLine) -> None:
        """Called once per request when its response (or stream) is over."""
        total = line.usage.get("total_tokens", 0)
        if line.admission is not None:
            self.releases.release(line.admission, total, line.request_id)
            admission = line.admission
            if admission.budget_used is not None:
                budget_alert(admission.key.name, admission.key.monthly_tokens, admission.budget_used + total)

        if line.endpoint is not None and self.records:
            self.writer.add(self.record(line))
        observe(line)

    def record(self, line: RequestLine) -> dict[str, Any]:
        return {
            "at": line.started_at,
            "request_id": line.request_id,
            "key_id": line.key_id,
            "key_name": line.key,
            "model": line.model[:200],
            "endpoint": line.endpoint,
            "upstream": answered_by(line.attempts),
            "upstreams": ",".join(dict.fromkeys(a.upstream for a in line.attempts)),
            "token_ids": ",".join(a.token_id for a in line.attempts),
            "status": line.status,
            "outcome": outcome_of(line.status, line.outcome),
            "streamed": line.streaming,
            "attempts": len(line.attempts),
            **{f: line.usage.get(f, 0) for f in USAGE_FIELDS},
            "ttfb_ms": line.ttfb_ms(),
            "duration_ms": line.elapsed_ms(),
            "bytes_sent": line.bytes_sent,
        }
