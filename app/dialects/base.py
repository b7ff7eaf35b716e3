"""What every wire dialect provides, and what one upstream attempt is given.

A `Dialect` is one API's knowledge: how its requests are checked, where they go, how a
usage count is read from an answer, how its streams start and end, and how an error is
written in it. The request path (attempts, streaming, accounting) asks the dialect and
knows nothing about any one API.

A `Leg` is what one upstream gets for one client request: the path, the body, the
dialect the *upstream* speaks (its first event decides the commit), and the `Relay` that
turns the upstream's events into the client's (a pass-through, or a translator).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from app.dialects import fields
from app.dialects.multipart import form_fields
from app.errors import ApiError
from app.jsontext import JsonError, loads_object

if TYPE_CHECKING:
    from app.config import UpstreamConfig
    from app.dialects.resume import Transcript

Usage = dict[str, int]


class Verdict(enum.Enum):
    """What an upstream event before the commit means for the attempt."""

    WAIT = "wait"  # a comment or preamble: keep reading
    ACCEPT = "accept"  # the first content: commit to this upstream
    ERROR = "error"  # an error event before any content: retry elsewhere
    EMPTY = "empty"  # the stream ended before any content: retry elsewhere


class Relay(Protocol):
    """One stream's (or plain answer's) way from the upstream's wire to the client's."""

    usage: Usage | None
    done: bool  # the stream's last event (in its dialect) has been seen

    def feed(self, raw: bytes) -> Sequence[bytes]:
        """The client's events for one upstream event (none, for one it must not see)."""

    def end(self) -> Sequence[bytes]:
        """The upstream's stream ended: its last events; raises StreamBroken if it ended cut short."""

    def fail(self, code: str, message: str) -> Sequence[bytes]:
        """The stream broke after the commit: the events that end it well-formed, saying why."""

    def plain(self, body: bytes, content_type: str) -> bytes:
        """A plain 2xx answer, as the client receives it (usage is read from it)."""


@dataclass(frozen=True)
class ClientRequest:
    """A client's request body, read and checked."""

    payload: dict[str, Any]  # the JSON body, or a multipart form's text fields
    body: bytes
    content_type: str
    streaming: bool  # the answer is relayed as it arrives (events, or raw bytes when the dialect has no events)
    query: str = ""  # the URL's query string, for a pass-through that keeps it (e.g. Claude Code's ?beta=true)


MULTIPART_FIELDS = frozenset({"model", "stream"})


class Dialect:
    """One wire API. Subclasses override what differs; the defaults suit a JSON endpoint without streams."""

    name = "generic"  # the usage record's `endpoint`
    path = "/"
    can_stream = False
    sse = True  # a streamed answer is Server-Sent Events (False: raw bytes passed through)
    multipart = False  # the body is multipart/form-data (an upload), else JSON
    keepalive = b": keep-alive\n\n"  # sent while a stream waits for its first event (an SSE comment)

    def accepts(self, content_type: str | None) -> bool:
        """Whether a body of this Content-Type may be read at all (else 415, before reading it)."""
        mimetype = (content_type or "").split(";", 1)[0].strip().lower()
        if self.multipart:
            return mimetype == "multipart/form-data"
        return not mimetype or mimetype == "application/json" or mimetype.endswith("+json")

    def parse(self, body: bytes, content_type: str | None) -> ClientRequest:
        """Decode and check the body: ApiError(400) naming the field that is wrong."""
        if self.multipart:
            payload: dict[str, Any] = dict(form_fields(body, content_type or "", wanted=MULTIPART_FIELDS))
            if "stream" in payload:
                payload["stream"] = payload["stream"].strip().lower() == "true"
        else:
            try:
                payload = loads_object(body)
            except JsonError as exc:
                raise fields.invalid(exc.message, exc.param) from None
        self.validate(payload)
        return ClientRequest(payload, body, content_type or "application/json", self.streaming(payload))

    def validate(self, payload: dict[str, Any]) -> None:
        """Raise ApiError(400) naming the field that is wrong."""
        fields.check_model(payload)
        fields.check_stream(payload, self.can_stream)

    def streaming(self, payload: dict[str, Any]) -> bool:
        return bool(payload.get("stream"))

    def legs(self, request: ClientRequest) -> Callable[[UpstreamConfig], Leg]:
        """What each routed upstream is sent: by default the client's body, unchanged, to `path`."""
        leg = Leg(self.path, request.body, self, lambda: self.relay(hide_usage=False), request.content_type)
        return lambda upstream: leg

    def verdict(self, raw: bytes) -> Verdict:
        return Verdict.ACCEPT

    def usage(self, data: Any) -> Usage | None:
        """The token counts in a parsed answer (or stream event), when it carries them."""
        return None

    def relay(self, *, hide_usage: bool) -> Relay:
        raise NotImplementedError

    def upstream_error(self, data: Any) -> dict[str, Any] | None:
        """The error object (message, type, code, param) of an upstream's error body, when it has one."""
        return None

    def error_body(self, error: ApiError) -> dict[str, Any]:
        """Sluice's own error, in this dialect's shape."""
        return error.body()

    def transcript(self) -> Transcript | None:
        """A new transcript for one stream from an upstream speaking this dialect, so a break mid-stream can be
        resumed on another attempt (app/dialects/resume.py); None: this dialect's streams cannot be resumed."""
        return None


@dataclass(frozen=True)
class Leg:
    """One upstream's part of a client request."""

    path: str
    body: bytes | None
    dialect: Dialect  # what the upstream speaks
    relay: Callable[[], Relay]
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)  # added to the client's response


class ChainRelay:
    """Two translations in a row (e.g. Messages events -> chat chunks -> Responses events): the first's
    output is the second's input; the client sees the second's."""

    def __init__(self, first: Relay, second: Relay) -> None:
        self.first, self.second = first, second

    @property
    def usage(self) -> Usage | None:
        return self.second.usage or self.first.usage

    @property
    def done(self) -> bool:
        return self.second.done

    def feed(self, raw: bytes) -> Sequence[bytes]:
        return [out for middle in self.first.feed(raw) for out in self.second.feed(middle)]

    def end(self) -> Sequence[bytes]:
        out = [out for middle in self.first.end() for out in self.second.feed(middle)]
        return [*out, *self.second.end()]

    def fail(self, code: str, message: str) -> Sequence[bytes]:
        return self.second.fail(code, message)

    def plain(self, body: bytes, content_type: str) -> bytes:
        return self.second.plain(self.first.plain(body, content_type), "application/json")
