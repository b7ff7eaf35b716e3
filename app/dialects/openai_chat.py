"""The OpenAI chat-completions family: /chat/completions, /completions (legacy) and /embeddings.

Streams are `data: {chunk}` events ended by `data: [DONE]`. Usage comes in the answer's
`usage` object or, for a stream, in a last usage-only chunk that Sluice asks for with
`stream_options.include_usage` (and hides from a client that did not ask for it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from app.dialects import fields
from app.dialects.base import ClientRequest, Dialect, Leg, Relay, Usage, Verdict
from app.dialects.chat_events import DONE, error_event, is_done
from app.dialects.chat_on_anthropic import chat_leg, refused
from app.dialects.resume_chat import ChatTranscript
from app.errors import StreamBroken
from app.services import sse

if TYPE_CHECKING:
    from app.config import UpstreamConfig

USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens", "reasoning_tokens")

# Optional fields checked when present: name -> accepted types.
OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {
    "stream": (bool,),
    "stream_options": (dict,),
    "prompt": (str, list),
    "max_tokens": (int,),
    "max_completion_tokens": (int,),
    "n": (int,),
    "temperature": (int, float),
    "top_p": (int, float),
    "user": (str,),
}


class OpenAIDialect(Dialect):
    """What the OpenAI APIs share: the error shape, and `usage` objects."""

    def usage(self, data: Any) -> Usage | None:
        return chat_usage(data)

    def upstream_error(self, data: Any) -> dict[str, Any] | None:
        inner = data.get("error") if isinstance(data, dict) else None
        return inner if isinstance(inner, dict) else None

    def relay(self, *, hide_usage: bool) -> Relay:
        return ChatRelay(hide_usage=hide_usage)


class ChatDialect(OpenAIDialect):
    """POST /chat/completions (and, with other required fields, /completions and /embeddings)."""

    def __init__(self, name: str, path: str, required: dict[str, tuple[type, ...]], *, can_stream: bool) -> None:
        self.name, self.path, self.required, self.can_stream = name, path, required, can_stream

    def validate(self, payload: dict[str, Any]) -> None:
        fields.check_model(payload)
        fields.check_required(payload, self.required)
        fields.check_optional(payload, OPTIONAL_FIELDS)
        fields.check_stream(payload, self.can_stream)

    def legs(self, request: ClientRequest) -> Callable[[UpstreamConfig], Leg]:
        """Streams go to upstreams with `inject_usage` with a body that also asks for the usage chunk;
        chat requests to an Anthropic upstream are translated (app/dialects/chat_on_anthropic.py)."""
        plain = Leg(self.path, request.body, self, lambda: ChatRelay(hide_usage=False))
        injected = usage_body(request.payload) if request.streaming else None
        with_usage = Leg(self.path, injected, self, lambda: ChatRelay(hide_usage=True)) if injected else plain
        anthropic: list[Leg] = []

        def leg(upstream: UpstreamConfig) -> Leg:
            if upstream.api == "anthropic":
                if self is not CHAT:
                    raise refused(self.path.strip("/"))
                if not anthropic:  # built once, when an Anthropic upstream is routed
                    anthropic.append(chat_leg(request, chat_usage))
                return anthropic[0]
            return with_usage if upstream.inject_usage else plain

        return leg

    def verdict(self, raw: bytes) -> Verdict:
        return chat_verdict(raw)

    def transcript(self) -> ChatTranscript | None:
        """Only /chat/completions streams can be resumed (a prefill needs messages)."""
        return ChatTranscript(is_error_event) if self is CHAT else None


def chat_verdict(raw: bytes) -> Verdict:
    if not sse.has_data(raw):
        return Verdict.WAIT
    if is_error_event(raw):
        return Verdict.ERROR
    if is_done(raw):  # [DONE] before any content: nothing was generated
        return Verdict.EMPTY
    return Verdict.ACCEPT


class ChatRelay:
    """Chat chunks pass through byte for byte; the relay reads usage and watches for [DONE]."""

    def __init__(self, *, hide_usage: bool) -> None:
        self.hide_usage = hide_usage
        self.usage: Usage | None = None
        self.done = False

    def feed(self, raw: bytes) -> Sequence[bytes]:
        if not self.done and b"[DONE]" in raw:
            self.done = is_done(raw)
        if b'"usage"' not in raw:  # most chunks: one byte scan, no call
            return (raw,)
        usage, usage_only = usage_event(raw)
        if usage is not None:
            self.usage = usage
            if usage_only and self.hide_usage:
                return ()  # the usage chunk Sluice asked for, and the client did not
        return (raw,)

    def end(self) -> Sequence[bytes]:
        if not self.done:
            raise StreamBroken("upstream_stream_error", "The upstream stream ended without data: [DONE].")
        return ()

    def fail(self, code: str, message: str) -> Sequence[bytes]:
        return (error_event(code, message), DONE)

    def plain(self, body: bytes, content_type: str) -> bytes:
        if "json" in content_type:
            self.usage = usage_from_body(body)
        return body


def usage_body(payload: dict[str, Any]) -> bytes | None:
    """The body that also asks for a usage chunk, or None when the client asked for one itself."""
    options = payload.get("stream_options") or {}
    if options.get("include_usage") is True:
        return None
    return json.dumps({**payload, "stream_options": {**options, "include_usage": True}}).encode()


def is_error_event(raw: bytes) -> bool:
    if b'"error"' not in raw:
        return False
    try:
        data = sse.data_json(raw)
    except ValueError:
        return False
    return isinstance(data, dict) and "error" in data and not data.get("choices")


def usage_event(raw: bytes) -> tuple[Usage | None, bool]:
    """(usage counts, is a usage-only chunk) for one event; cheap for events without usage."""
    if b'"usage"' not in raw or b'"usage":null' in raw or b'"usage": null' in raw:
        return None, False
    try:
        data = sse.data_json(raw)
    except ValueError:
        return None, False
    usage = chat_usage(data)
    return usage, usage is not None and not data.get("choices")


def chat_usage(data: Any) -> Usage | None:
    """The token counts of an OpenAI `usage` object (chat, completions, embeddings), when `data` has one."""
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    counts = {f: int(usage[f]) for f in USAGE_FIELDS[:3] if _is_count(usage.get(f))}
    if "total_tokens" not in counts:
        counts["total_tokens"] = counts.get("prompt_tokens", 0) + counts.get("completion_tokens", 0)
    _detail(counts, "cached_tokens", usage.get("prompt_tokens_details"))
    _detail(counts, "reasoning_tokens", usage.get("completion_tokens_details"))
    return counts


def _detail(counts: Usage, name: str, details: Any) -> None:
    if isinstance(details, dict) and _is_count(details.get(name)) and details[name]:
        counts[name] = int(details[name])


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def usage_from_body(body: bytes) -> Usage | None:
    try:
        return chat_usage(json.loads(body))
    except ValueError:
        return None


MODELS = OpenAIDialect()  # GET /models, for the catalogue's probe
CHAT = ChatDialect("chat", "/chat/completions", {"messages": (list,)}, can_stream=True)
COMPLETIONS = ChatDialect("completions", "/completions", {}, can_stream=True)
EMBEDDINGS = ChatDialect("embeddings", "/embeddings", {"input": (str, list)}, can_stream=False)
