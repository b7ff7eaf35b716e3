"""The one request path every proxied endpoint takes: read, check, route, admit, send, write.

A view names its dialect (app/dialects/) and calls `proxy(dialect)`; everything an API
does differently is in the dialect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import quote

from flask import Response, g, jsonify, request

from app.api.validation import read_body
from app.api.writer import write_response
from app.auth import Identity
from app.config import UpstreamConfig
from app.dialects.base import ClientRequest, Dialect, Leg
from app.dialects.openai_responses import RESPONSES, ResponsesRelay
from app.errors import ApiError
from app.requestlog import RequestLine
from app.services import admission, aliases, stored
from app.services.attempts import Accepted, Attempts, Failed
from app.services.calls import Hop, Route, UpstreamCall, fixed_hop
from app.services.headers import forwardable
from app.services.lifecycle import SHUTDOWN_MESSAGE, shutdown_deadline
from app.services.outcomes import Outcome
from app.state import gateway, routing

# A plain request's wait looks this often (seconds) for a graceful stop, which SIGTERM starts
# while it waits; well within lifecycle.SHUTDOWN_MARGIN, so the 503 is written in time.
SHUTDOWN_POLL = 0.5


def proxy(dialect: Dialect) -> Response:
    """Serve one request of `dialect`: the body's model picks the upstreams."""
    line: RequestLine = g.line
    identity: Identity = g.identity
    client_request, hop, slot_expires = g.pop("routed", None) or _routed(dialect)
    hop, legs = _legs(dialect, client_request, hop)
    admission.admit(gateway().limiter, line, identity, slot_expires)
    call = UpstreamCall(
        "POST", lambda route: legs[route.upstream.name, route.model], line.streaming, hop, line.request_id,
        client_headers=forwardable(request.headers.items()),
    )  # fmt: skip
    stores = hasattr(dialect, "created_id") and client_request.payload.get("store") is not False
    remember = _remembering(line, identity, client_request.payload) if stores else None
    events = call.first_leg().dialect.sse  # every leg answers in the client's form (SSE or raw bytes)
    return send(call, line, keepalive=dialect.keepalive if events else None, on_accept=remember)


def answer_locally(dialect: Dialect, answer: Callable[[dict[str, Any]], dict[str, Any]]) -> Response | None:
    """When no routed upstream can serve the request (every leg refuses it), `answer(payload)` is the answer,
    computed here, with the same key checks and admission; None: an upstream can, so proxy it instead."""
    routed = _routed(dialect)
    client_request, hop, slot_expires = routed
    legs = dialect.legs(client_request)
    if any(_serves(legs, upstream) for upstream in _all_upstreams(hop)):
        g.routed = routed  # read and checked once: proxy() takes it from here
        return None
    admission.admit(gateway().limiter, g.line, g.identity, slot_expires)
    return jsonify(answer(client_request.payload))


def _routed(dialect: Dialect) -> tuple[ClientRequest, Hop, float]:
    """Read and check the body, and route its model (404 when it is no alias and no upstream serves it, or
    the key may not use it; a key's allow-list names aliases, not their targets): the request, its hop
    (app/services/aliases.py), and when its max_parallel slot expires."""
    gw = gateway()
    line: RequestLine = g.line
    identity: Identity = g.identity
    line.endpoint = dialect.name
    config = routing().config
    settings = config.gateway
    slot_expires = line.started_at + settings.deadline + admission.SLOT_MARGIN  # a slot outlives its request
    body = admission.read_body(gw.limiter, line, identity, slot_expires, _reader(dialect, settings.max_body_bytes))
    client_request = replace(
        dialect.parse(body, request.headers.get("Content-Type")), query=request.query_string.decode("latin-1")
    )
    line.model, line.streaming = client_request.payload["model"], client_request.streaming
    hop = aliases.resolve(config, line.model)
    if hop is None or not identity.allows(line.model):
        raise model_not_found(line.model)
    return client_request, hop, slot_expires


def _serves(legs: Callable[[UpstreamConfig], Leg], upstream: UpstreamConfig) -> bool:
    try:
        legs(upstream)
    except ApiError:
        return False
    return True


def send(
    call: UpstreamCall,
    line: RequestLine,
    *,
    keepalive: bytes | None,
    on_accept: Callable[[Accepted], None] | None = None,
) -> Response:
    """Run the call's attempts and write the answer: an event stream commits after one heartbeat at most
    (`keepalive`: what the client's dialect sends meanwhile; None: the answer is not an event stream)."""
    settings = routing().config.gateway
    attempts = routing().client.start(call, deadline=line.started_at + settings.deadline)
    line.attempts = attempts.records  # the same list: the log line counts the attempts even if sending raises
    if call.streaming and keepalive is not None:
        outcome = attempts.advance(until=time.time() + settings.heartbeat_interval)
    else:
        outcome = _plain_answer(attempts)
    return write_response(attempts, outcome, line, settings, keepalive, on_accept)


LegKey = tuple[str, str | None]  # (upstream name, model sent)


def _legs(dialect: Dialect, client_request: ClientRequest, hop: Hop) -> tuple[Hop, dict[LegKey, Leg]]:
    """Each route's leg (the body naming the route's model), built before any is tried; a route that
    cannot take the request (e.g. a translation refusing a field) is left out of its hop, and if the
    first hop has none left, the first refusal is the answer."""
    asked = client_request.payload["model"]
    built: dict[LegKey, Leg | ApiError] = {}
    by_model: dict[str, Callable[[UpstreamConfig], Leg]] = {}

    def leg(route: Route) -> Leg | ApiError:
        model = route.model or asked
        if model not in by_model:
            by_model[model] = dialect.legs(aliases.retarget(client_request, model, dialect.multipart))
        try:
            built_leg = by_model[model](route.upstream)
        except ApiError as exc:
            return exc
        return aliases.renamed(built_leg, asked) if hop.alias else built_leg

    pruned = _prune(hop, built, leg)
    if not pruned.routes:
        raise next(v for v in built.values() if isinstance(v, ApiError))
    return pruned, {k: v for k, v in built.items() if isinstance(v, Leg)}


def _prune(hop: Hop, built: dict[LegKey, Leg | ApiError], leg: Callable[[Route], Leg | ApiError]) -> Hop:
    """`hop` and its fallbacks with only the routes whose leg could be built (each built once, into `built`).
    A module function, not a closure calling itself: that would be a reference cycle per request, freed only
    by a garbage collection instead of as the request ends."""
    for r in hop.routes:
        if (r.upstream.name, r.model) not in built:
            built[r.upstream.name, r.model] = leg(r)
    routes = tuple(r for r in hop.routes if isinstance(built[r.upstream.name, r.model], Leg))
    return replace(hop, routes=routes, fallbacks=tuple(_prune(h, built, leg) for h in hop.fallbacks),
                   context_fallbacks=tuple(_prune(h, built, leg) for h in hop.context_fallbacks))  # fmt: skip


def _all_upstreams(hop: Hop) -> list[UpstreamConfig]:
    """The upstreams of a hop and of every hop it may fall back to."""
    nested = [u for h in (*hop.fallbacks, *hop.context_fallbacks) for u in _all_upstreams(h)]
    return list({u.name: u for u in [*hop.upstreams(), *nested]}.values())


def _remembering(line: RequestLine, identity: Identity, payload: dict) -> Callable[[Accepted], None]:
    """For an upstream that stores what it answers (a native Responses API): remember who answered."""
    store, key_id = gateway().stored, identity.key.id if identity.key else None
    background = payload.get("background") is True and not payload.get("stream")  # a stream counts its own

    def on_accept(accepted: Accepted) -> None:
        created_id = getattr(accepted.leg.dialect, "created_id", None)
        response_id = created_id(accepted.prefix, accepted.body) if created_id is not None else None
        if response_id is not None:  # a background response's usage is counted when it is first fetched finished
            stored.remember(store, response_id, accepted.upstream.name, accepted.token.id, key_id, line.model,
                            line.request_id, counted=not background)  # fmt: skip

    return on_accept


def proxy_stored(method: str, response_id: str, suffix: str = "") -> Response:
    """A call about a stored response: it goes to the upstream, and with the token, that created it."""
    gw = gateway()
    line: RequestLine = g.line
    identity: Identity = g.identity
    line.endpoint = RESPONSES.name
    settings = routing().config.gateway
    found = stored.find(gw.stored, response_id, identity.key.id if identity.key else None)
    upstream = next((u for u in routing().config.upstreams if u.name == found.upstream), None)
    if upstream is None or not identity.allows(found.model):
        raise stored.not_found(response_id)
    if gw.pool.find(found.token_id) is None:  # removed or disabled: no other token can reach it
        raise stored.not_found(response_id, "The upstream token that created it is no longer available: response")
    slot_expires = line.started_at + settings.deadline + admission.SLOT_MARGIN
    body = admission.read_body(gw.limiter, line, identity, slot_expires, _reader(RESPONSES, settings.max_body_bytes))
    line.model = found.model
    line.streaming = method == "GET" and not suffix and request.args.get("stream") == "true"
    admission.admit(gw.limiter, line, identity, slot_expires)
    first = stored.FirstFinish(gw.stored, found, line.request_id)  # a fetch counts no usage but this one
    leg = Leg(_stored_path(response_id, suffix), body if method == "POST" else None, RESPONSES,
              lambda: ResponsesRelay({}, count_usage=lambda: first.count))  # fmt: skip
    if routing().config.alias(found.model) is not None:  # created through an alias: it answers with the alias
        leg = aliases.renamed(leg, found.model)
    call = UpstreamCall(
        method, lambda _: leg, line.streaming, fixed_hop([upstream], found.model), line.request_id,
        client_headers=forwardable(request.headers.items()), token_id=found.token_id, max_attempts=1,
    )  # fmt: skip
    forget = (lambda _: stored.forget(gw.stored, response_id, line.request_id)) if method == "DELETE" else first
    return send(call, line, keepalive=RESPONSES.keepalive, on_accept=forget)


def _stored_path(response_id: str, suffix: str) -> str:
    path = f"{RESPONSES.path}/{quote(response_id, safe='')}{suffix}"  # the id matched RESPONSE_ID already
    return path + "?" + request.query_string.decode("ascii", "replace") if request.query_string else path


def _reader(dialect: Dialect, limit: int) -> Callable[[], bytes]:
    def read() -> bytes:
        return read_body(request.stream, request.content_length, request.headers.get("Content-Type"), limit, dialect)

    return read


def _plain_answer(attempts: Attempts) -> Accepted | Failed:
    """Wait for the answer until the deadline, or until a graceful stop's deadline: then a 503
    (the attempt is abandoned), so the client hears why and the request is accounted for."""
    while True:
        outcome = attempts.advance(until=min(time.time() + SHUTDOWN_POLL, attempts.deadline, shutdown_deadline()))
        if outcome is not None:
            return outcome
        if time.time() >= shutdown_deadline():
            attempts.abandon(Outcome.SERVER_SHUTDOWN)
            return Failed(ApiError(503, SHUTDOWN_MESSAGE, code="server_shutdown", headers={"Retry-After": "1"}))


def model_not_found(model: str) -> ApiError:
    return ApiError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )
