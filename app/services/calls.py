"""One client request as the upstream client sees it: where it may go, and what each place is sent.

A `Hop` is one model name and its routes (an alias's targets, or the upstreams serving a plain
model), with the hops to try after it: `fallbacks` when every route failed, `context_fallbacks`
instead when an upstream said the prompt is too long. The retry loop walks them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from app.config import UpstreamConfig
from app.config_routing import Hedge
from app.dialects.base import Dialect, Leg
from app.services.load import target_key


@dataclass(frozen=True)
class Route:
    """One place an attempt can go: an upstream, and the model it is sent (None: the body as it is)."""

    upstream: UpstreamConfig
    model: str | None = None
    weight: float = 1.0

    @property
    def key(self) -> str:
        """As `Target.key` (app/config_routing.py): the name in the load table and the logs."""
        return f"{self.upstream.name}/{self.model or '-'}"

    @property
    def load_key(self) -> str:
        """Its key in the in-flight and time-to-first-event counts (app/services/load.py)."""
        return target_key(self.upstream.name, self.model or "-")


@dataclass(frozen=True)
class Hop:
    """A model name asked for, its routes, the routing strategy among them, and where to go next.
    `name` is "" for the gateway's own calls (e.g. the /v1/models catalogue's fetch): no client asked."""

    name: str
    routes: tuple[Route, ...]
    strategy: str = "ordered"
    fallbacks: tuple[Hop, ...] = ()
    context_fallbacks: tuple[Hop, ...] = ()
    alias: bool = False  # `name` is a configured alias ([[models]]), not a model an upstream serves
    hedge: Hedge | None = None  # the alias's hedging, overriding its upstreams'

    def upstreams(self) -> list[UpstreamConfig]:
        return list({r.upstream.name: r.upstream for r in self.routes}.values())

    def chain(self) -> list[Hop]:
        """This hop and every hop its `fallbacks` lead to, in the order the retry loop tries them."""
        return [self, *(h for fallback in self.fallbacks for h in fallback.chain())]

    def chain_upstreams(self) -> list[UpstreamConfig]:
        """The upstreams of every hop in `chain()`, each once."""
        return list({u.name: u for hop in self.chain() for u in hop.upstreams()}.values())


@dataclass(frozen=True)
class UpstreamCall:
    """A client request: `leg(route)` says what one route gets (path, body, its dialect)."""

    method: str
    leg: Callable[[Route], Leg]
    streaming: bool
    hop: Hop  # the first hop: the model asked for
    request_id: str
    client_headers: Mapping[str, str] = field(default_factory=dict)
    max_attempts: int | None = None  # overrides [gateway] max_attempts, per hop (e.g. 1 for a /models probe)
    token_id: str | None = None  # only this token may serve the call (e.g. a stored response's owner)
    read_timeout: float | None = None  # overrides the upstream's read_timeout

    def first_leg(self) -> Leg:
        """The first route's leg: what a stream committed before any answer speaks (every leg answers alike)."""
        return self.leg(self.hop.routes[0])


def fixed_hop(upstreams: Sequence[UpstreamConfig], name: str = "") -> Hop:
    """Upstreams in order, each sent the body as it is (no model rewrite)."""
    return Hop(name, tuple(Route(u) for u in upstreams))


def fixed_leg(path: str, body: bytes | None, dialect: Dialect) -> Callable[[Route], Leg]:
    """The same request for every route (e.g. GET /models)."""
    leg = Leg(path, body, dialect, lambda: dialect.relay(hide_usage=False))
    return lambda route: leg
