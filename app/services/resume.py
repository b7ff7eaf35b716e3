"""Mid-stream resume: a committed stream that breaks after some text goes on elsewhere (docs/resilience.md).

A stream from an upstream with `resume = "prefill"` or `"continue"` keeps a transcript in the upstream's dialect
(app/dialects/resume.py). When it breaks (cut, stalled past idle_timeout, an error event, an end without its last
event) and its output so far is text only, `plan()` builds the continuation: the same request with that text as
the start of the assistant turn, to routes that can resume in the same dialect, on tokens this request has not
tried. StreamBody (app/services/streaming.py) runs it behind heartbeats and passes its events through the
transcript, which splices them into the one stream the client's relay already serves.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from app.dialects.base import Dialect, Leg
from app.errors import ApiError
from app.services import metrics
from app.services.attempts import Accepted
from app.services.calls import Hop, Route, UpstreamCall
from app.services.lifecycle import shutdown_deadline
from app.services.outcomes import Outcome

if TYPE_CHECKING:
    from app.dialects.resume import Transcript

log = logging.getLogger("sluice.upstream")
# How a broken stream's StreamBroken code reads in the request log, and the attempt's outcome.
BREAKS = {
    "upstream_stream_error": ("stream_broken", Outcome.STREAM_BROKEN),
    "upstream_idle_timeout": ("idle_timeout", Outcome.READ_TIMEOUT),
    "upstream_timeout": ("read_timeout", Outcome.READ_TIMEOUT),
    "error_event": ("error_event", Outcome.ERROR_EVENT),
    "ended_early": ("ended_early", Outcome.STREAM_BROKEN),
}


class Resumer:
    """One stream's resumes: its transcript, how many were made and why, and the next continuation's call."""

    def __init__(self, accepted: Accepted, call: UpstreamCall, max_resumes: int, clock_deadline: float) -> None:
        self.call, self.max_resumes, self.deadline = call, max_resumes, clock_deadline
        self.dialect: Dialect = accepted.leg.dialect
        self.transcript: Transcript | None = None
        if accepted.upstream.resume != "none" and max_resumes > 0:
            self.transcript = self.dialect.transcript()
        self.reasons: list[str] = []  # one per resume made, for the request log
        self.stopped = False  # a break was not resumed: the stream is ending

    @property
    def enabled(self) -> bool:
        return self.transcript is not None

    def is_error(self, raw: bytes) -> bool:
        return self.transcript is not None and self.transcript.is_error(raw)

    def feed(self, raw: bytes) -> Sequence[bytes]:
        return (raw,) if self.transcript is None else self.transcript.feed(raw)

    def plan(self, code: str, now: float) -> tuple[UpstreamCall | None, str]:
        """The continuation's call after a break (`code`: a key of BREAKS), or None and why not."""
        if self.transcript is None or self.stopped:
            return None, "off"
        if code not in BREAKS:  # the deadline, a shutdown: nothing to resume
            return None, code
        if len(self.reasons) >= self.max_resumes:
            return None, "max_resumes"
        if now >= self.deadline:
            return None, "deadline"
        if shutdown_deadline() < math.inf:  # a graceful stop is under way: no new upstream requests
            return None, "server_shutdown"
        partial = self.transcript.partial()
        if partial.text is None:
            return None, partial.why or "not_text"
        hop = _resumable(self.call.hop, self.call, self.dialect)
        if hop is None:
            return None, "no_target"
        return dataclasses.replace(self.call, hop=hop, leg=self._legs()), BREAKS[code][0]

    def resumed(self, reason: str, accepted: Accepted) -> None:
        """The continuation was accepted: its events are spliced from now on."""
        assert self.transcript is not None
        self.transcript.resumed()
        self.reasons.append(reason)
        metrics.RESUMES.labels(upstream=accepted.upstream.name, result="resumed").inc()

    def refused(self, why: str, upstream: str) -> None:
        """A break that is not resumed (the stream ends with its error event, as without resume)."""
        if self.transcript is not None and not self.stopped:
            self.stopped = True
            metrics.RESUMES.labels(upstream=upstream, result="refused").inc()
            log.info("stream not resumed request_id=%s upstream=%s why=%s", self.call.request_id, upstream, why)

    def _legs(self) -> Callable[[Route], Leg]:
        transcript, legs = self.transcript, self.call.leg
        built: dict[tuple[int, str], Leg] = {}
        assert transcript is not None

        def leg(route: Route) -> Leg:
            base = legs(route)
            key = id(base), route.upstream.resume
            if key not in built:  # one body per distinct leg and mode
                body = transcript.request(base.body or b"{}", route.upstream.resume)
                built[key] = dataclasses.replace(base, body=body)
            return built[key]

        return leg


def _resumable(hop: Hop, call: UpstreamCall, dialect: Dialect) -> Hop | None:
    """`hop` and its fallbacks with only the routes that can carry a continuation: `resume` set, the same upstream
    dialect (the client's relay reads it). None when no route is left anywhere."""
    routes = tuple(r for r in hop.routes if r.upstream.resume != "none" and _speaks(call, r, dialect))
    fallbacks = tuple(h for h in (_resumable(f, call, dialect) for f in hop.fallbacks) if h is not None)
    if not routes and not fallbacks:
        return None
    if not routes:  # this hop cannot resume: its fallbacks are the continuation's first hop
        first, *rest = fallbacks
        return dataclasses.replace(first, fallbacks=(*first.fallbacks, *rest))
    return dataclasses.replace(hop, routes=routes, fallbacks=fallbacks, context_fallbacks=())


def _speaks(call: UpstreamCall, route: Route, dialect: Dialect) -> bool:
    try:
        return call.leg(route).dialect is dialect
    except ApiError:  # the request cannot go there at all (e.g. a translation it refuses)
        return False
