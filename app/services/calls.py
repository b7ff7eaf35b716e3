"""One client request as the upstream client sees it: which upstreams, and what each is sent."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from app.config import UpstreamConfig
from app.dialects.base import Dialect, Leg


@dataclass(frozen=True)
class UpstreamCall:
    """A client request: `leg(upstream)` says what one routed upstream gets (path, body, its dialect)."""

    method: str
    leg: Callable[[UpstreamConfig], Leg]
    streaming: bool
    upstreams: Sequence[UpstreamConfig]  # routed, in order of preference
    request_id: str
    client_headers: Mapping[str, str] = field(default_factory=dict)
    max_attempts: int | None = None  # overrides [gateway] max_attempts (e.g. 1 for a /models probe)
    token_id: str | None = None  # only this token may serve the call (e.g. a stored response's owner)
    read_timeout: float | None = None  # overrides the upstream's read_timeout


def fixed_leg(path: str, body: bytes | None, dialect: Dialect) -> Callable[[UpstreamConfig], Leg]:
    """The same request for every upstream (e.g. GET /models)."""
    leg = Leg(path, body, dialect, lambda: dialect.relay(hide_usage=False))
    return lambda upstream: leg
