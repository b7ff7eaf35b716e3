"""Model aliases ([[models]]): a model name resolved to its hops, the body sent to a target, the answer renamed.

`resolve` turns the name a client asked for into a `Hop` (app/services/calls.py): an alias's
targets with its strategy and fallback hops, or the upstreams serving a plain model. `retarget`
gives a request whose body names another model (re-encoded only when the model differs, so an
un-aliased request stays byte-exact); `RenamedRelay` writes the asked name into every `"model"` member
of an aliased request's answer, in stream events and plain bodies alike: whatever the upstream names
(OpenAI's dated snapshot of the model sent, an Azure deployment), the target never shows. Pure: no I/O,
no flask globals.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace

from app.config import Config
from app.dialects.base import ClientRequest, Leg, Relay, Usage
from app.dialects.multipart import boundary_of
from app.services.calls import Hop, Route
from app.services.router import route


def resolve(config: Config, name: str) -> Hop | None:
    """The hop for `name`: its alias (with fallback hops resolved) or the upstreams serving it; None: neither."""
    alias = config.alias(name)
    if alias is None:
        upstreams = route(config.upstreams, name)
        return Hop(name, tuple(Route(u, name) for u in upstreams)) if upstreams else None
    by_name = {u.name: u for u in config.upstreams}
    return Hop(
        alias.name,
        tuple(Route(by_name[t.upstream], t.model, t.weight) for t in alias.targets),
        alias.strategy,
        _hops(config, alias.fallbacks),
        _hops(config, alias.context_fallbacks),
        alias=True,
        hedge=alias.hedge,
    )


def _hops(config: Config, names: Sequence[str]) -> tuple[Hop, ...]:
    """Fallback names as hops (the config refused cycles, so this ends)."""
    return tuple(hop for hop in (resolve(config, n) for n in names) if hop is not None)


def retarget(request: ClientRequest, model: str, multipart: bool) -> ClientRequest:
    """`request` with `model` in its body (the same object when it already names it)."""
    if request.payload.get("model") == model:
        return request
    payload = {**request.payload, "model": model}
    if multipart:
        body = replace_form_field(request.body, request.content_type, "model", model)
    else:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return replace(request, payload=payload, body=body)


def replace_form_field(body: bytes, content_type: str, name: str, value: str) -> bytes:
    """A multipart body with the text field `name` holding `value` (the body as is when it has no such field)."""
    boundary = re.escape(b"--" + boundary_of(content_type))
    head = rb'Content-Disposition:[ \t]*form-data;[ \t]*name="?' + re.escape(name.encode()) + rb'"?(?:;[^\r\n]*)?\r\n'
    part = re.compile(rb"(" + boundary + rb"\r\n" + head + rb"(?:[^\r\n]+\r\n)*\r\n)(.*?)(\r\n" + boundary + rb")",
                      re.S | re.I)  # fmt: skip
    return part.sub(lambda m: m.group(1) + value.encode() + m.group(3), body, count=1)


def renamed(leg: Leg, asked: str) -> Leg:
    """`leg` whose answer names `asked` as its model (an aliased request's: whatever the upstream names)."""
    relay, events = leg.relay, leg.dialect.sse  # a raw stream (audio) is never JSON: left alone
    return replace(leg, relay=lambda: RenamedRelay(relay(), asked, events=events))


# A JSON member "model" and its string value. A "model" inside a string is escaped (\"model\") and can't match.
_MODEL_MEMBER = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')


def rename(data: bytes, asked: str) -> bytes:
    """JSON text (a body or SSE events) with the value of every `"model": "<anything>"` member made `asked`."""
    if b'"model"' not in data:
        return data
    member = b'"model":' + json.dumps(asked, ensure_ascii=False).encode()
    return _MODEL_MEMBER.sub(lambda _: member, data)


class RenamedRelay:
    """A relay whose output names the model the client asked for instead of the target's."""

    def __init__(self, inner: Relay, asked: str, *, events: bool = True) -> None:
        self.inner, self.asked, self.events = inner, asked, events

    @property
    def usage(self) -> Usage | None:
        return self.inner.usage

    @property
    def done(self) -> bool:
        return self.inner.done

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)  # what else a relay tells (e.g. `failed`: its stream ended in an error)

    def feed(self, raw: bytes) -> Sequence[bytes]:
        out = self.inner.feed(raw)
        return [self._rename(o) for o in out] if self.events else out

    def end(self) -> Sequence[bytes]:
        return [self._rename(out) for out in self.inner.end()]

    def fail(self, code: str, message: str) -> Sequence[bytes]:
        return [self._rename(out) for out in self.inner.fail(code, message)]

    def plain(self, body: bytes, content_type: str) -> bytes:
        data = self.inner.plain(body, content_type)
        return self._rename(data) if "json" in content_type.lower() else data

    def _rename(self, data: bytes) -> bytes:
        return rename(data, self.asked)
