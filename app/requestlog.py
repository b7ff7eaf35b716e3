"""The one log line per client request (request id, key, model, upstream, status, attempts, latency)."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field

from flask import Flask, Response, g, request

from app.services.headers import resolve_request_id
from app.services.upstream import Attempt

log = logging.getLogger("sluice.request")
QUIET_PATHS = ("/healthz", "/readyz")  # probes would drown the log


@dataclass
class RequestLine:
    """What is known about a client request; filled in as it goes, emitted once at the end."""

    request_id: str
    method: str
    path: str
    client: str = "-"
    started: float = field(default_factory=time.monotonic)
    key: str = "-"
    model: str = "-"
    streaming: bool = False
    upstream: str = "-"
    attempts: list[Attempt] = field(default_factory=list)
    outcome: str | None = None  # an error code, when the request failed
    deferred: bool = False  # a stream emits its own line when it ends
    emitted: bool = False

    def emit(self, status: int, outcome: str, bytes_sent: int | None = None) -> None:
        if self.emitted:
            return
        self.emitted = True
        log.info(
            "request request_id=%s client=%s method=%s path=%s key=%s model=%s stream=%s upstream=%s "
            "status=%s outcome=%s attempts=%d latency_ms=%d%s",
            self.request_id, _clean(self.client), self.method, _clean(self.path), self.key, _clean(self.model),
            str(self.streaming).lower(), self.upstream, status, outcome, len(self.attempts),
            (time.monotonic() - self.started) * 1000,
            "" if bytes_sent is None else f" bytes={bytes_sent}",
        )  # fmt: skip


def _clean(value: str, limit: int = 120) -> str:
    """Client-supplied text in a log line: printable, no spaces or newlines, bounded."""
    cleaned = "".join(c if c.isprintable() and not c.isspace() else "?" for c in value[:limit])
    return cleaned + ("..." if len(value) > limit else "")


def register_request_line(app: Flask) -> None:
    """Give every request an id (echoed as X-Request-ID) and one log line at its end."""

    @app.before_request
    def start_line() -> None:
        request_id = resolve_request_id(request.headers.get("X-Request-ID"), lambda: f"req_{uuid.uuid4().hex}")
        g.line = RequestLine(request_id, request.method, request.path, request.remote_addr or "-")

    @app.after_request
    def finish_line(response: Response) -> Response:
        line: RequestLine | None = g.get("line")
        if line is not None:
            response.headers["X-Request-ID"] = line.request_id
            if not line.deferred and request.path not in QUIET_PATHS:
                line.emit(response.status_code, line.outcome or ("ok" if response.status_code < 400 else "error"))
        return response
