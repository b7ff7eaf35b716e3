"""One record per client request: the log line, the limiter release and the usage record.

A `RequestLine` is filled in as the request goes (key, model, attempts, usage, first
byte) and finished exactly once: by `after_request` for responses Sluice writes itself
(errors, admin), by the body's end for proxied answers, streamed or plain (so a key's
max_parallel slot is held until the body has been written). Finishing logs one line and
hands the record to `on_end` (accounting).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, request

from app import process
from app.services.headers import resolve_request_id
from app.services.outcomes import Outcome
from app.storage.limits import format_reset

if TYPE_CHECKING:
    from app.services.attempts import Attempt

log = logging.getLogger("sluice.request")
QUIET_PATHS = ("/healthz", "/readyz")  # probes would drown the log


@dataclass
class RequestLine:
    """What is known about a client request; filled in as it goes, finished once at the end."""

    request_id: str
    method: str
    path: str
    client: str = "-"
    route: str = "unmatched"  # the URL rule, a bounded label (never the raw path)
    started: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.time)
    key: str = "-"
    key_id: str | None = None
    endpoint: str | None = None  # set for proxied API calls: they get a usage record
    model: str = "-"
    streaming: bool = False
    upstream: str = "-"
    attempts: list[Attempt] = field(default_factory=list)
    resumes: list[str] = field(default_factory=list)  # why each mid-stream resume was made (app/services/resume.py)
    usage: dict[str, int] = field(default_factory=dict)
    first_byte: float | None = None  # monotonic time of the first byte to the client
    admission: Any = None  # limits.Admission for managed keys
    window: Any = None  # limits.Window for the x-ratelimit-* headers
    outcome: str | None = None  # an error code, when the request failed
    deferred: bool = False  # the response's body finishes the line when it has been written
    on_end: Callable[[RequestLine], None] | None = None
    status: int = 0
    bytes_sent: int = 0
    finished: bool = False

    def finish(self, status: int, outcome: str, bytes_sent: int | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        self.status, self.outcome = status, outcome
        if bytes_sent is not None:
            self.bytes_sent = bytes_sent
        log.info(
            "request request_id=%s client=%s method=%s path=%s key=%s model=%s stream=%s upstream=%s "
            "status=%s outcome=%s attempts=%d latency_ms=%d bytes=%d%s",
            self.request_id, _clean(self.client), self.method, _clean(self.path), _clean(self.key),
            _clean(self.model), str(self.streaming).lower(), self.upstream, status, outcome,
            len(self.attempts), self.elapsed_ms(), self.bytes_sent, self.resilience(),
        )  # fmt: skip
        if self.on_end is not None:
            self.on_end(self)

    def resilience(self) -> str:
        """The line's hedging and resume fields, when there were any: " hedges=N hedge_won=0|1" (hedges started,
        and whether one gave the answer) and " resumed=N resume=reason,...". Empty otherwise."""
        text = ""
        hedges = sum(1 for a in self.attempts if a.hedge)
        if hedges:
            won = any(a.hedge and a.outcome is Outcome.OK for a in self.attempts)
            text += f" hedges={hedges} hedge_won={int(won)}"
        if self.resumes:
            text += f" resumed={len(self.resumes)} resume={','.join(self.resumes)}"
        return text

    def finish_response(self, status: int, bytes_sent: int) -> None:
        """Finish with the outcome an error handler named, else "ok" or "error" by status."""
        if self.first_byte is None:
            self.first_byte = time.monotonic()
        self.finish(status, self.outcome or ("ok" if status < 400 else "error"), bytes_sent)

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000

    def ttfb_ms(self) -> float | None:
        return None if self.first_byte is None else (self.first_byte - self.started) * 1000


def _clean(value: str, limit: int = 120) -> str:
    """Client-supplied text in a log line: printable, no spaces or newlines, bounded."""
    if len(value) <= limit and value.isprintable() and value.split() == [value]:
        return value  # the usual case, checked in C
    cleaned = "".join(c if c.isprintable() and not c.isspace() else "?" for c in value[:limit])
    return cleaned + ("..." if len(value) > limit else "")


def register_request_line(app: Flask, on_end: Callable[[RequestLine], None] | None = None) -> None:
    """Give every request an id (echoed as X-Request-ID) and one record at its end."""

    @app.before_request
    def start_line() -> None:
        request_id = resolve_request_id(request.headers.get("X-Request-ID"), lambda: f"req_{process.unique_id()}")
        g.line = RequestLine(request_id, request.method, request.path, request.remote_addr or "-", on_end=on_end)
        if request.url_rule is not None:
            g.line.route = request.url_rule.rule

    @app.after_request
    def finish_line(response: Response) -> Response:
        line: RequestLine | None = g.get("line")
        if line is not None:
            response.headers["X-Request-ID"] = line.request_id
            if line.window is not None:
                response.headers.update(ratelimit_headers(line.window))
            if not line.deferred and request.path not in QUIET_PATHS:
                line.finish_response(response.status_code, response.calculate_content_length() or 0)
        return response


def ratelimit_headers(window: Any) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for a managed key's window."""
    headers = {}
    if window.limit_requests is not None:
        headers["x-ratelimit-limit-requests"] = str(window.limit_requests)
        headers["x-ratelimit-remaining-requests"] = str(window.remaining_requests)
        headers["x-ratelimit-reset-requests"] = format_reset(window.reset_requests)
    if window.limit_tokens is not None:
        headers["x-ratelimit-limit-tokens"] = str(window.limit_tokens)
        headers["x-ratelimit-remaining-tokens"] = str(window.remaining_tokens)
        headers["x-ratelimit-reset-tokens"] = format_reset(window.reset_tokens)
    return headers
