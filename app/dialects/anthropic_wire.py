"""The Anthropic Messages wire, as an upstream speaks it and as Sluice writes it to Claude clients.

A stream is `event: message_start`, content block events, `message_delta` (stop reason and the
output token count), `message_stop`; `ping` events keep it alive; an `error` event ends it. Usage
is read in real tokens: `input_tokens` and the cache reads and writes from `message_start`,
`output_tokens` from the last `message_delta` (a plain answer has them all in `usage`). A chat
usage record counts them as prompt tokens (input + cache read + cache write, of which
`cached_tokens` = cache read) and completion tokens (output). Sluice's own errors take the
Anthropic shape: `{"type": "error", "error": {"type": ..., "message": ...}}`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from app.dialects.base import Dialect, Relay, Usage, Verdict
from app.dialects.resume_messages import MessagesTranscript
from app.errors import ApiError, StreamBroken
from app.services import sse

PING = b'event: ping\ndata: {"type": "ping"}\n\n'
TERMINAL = frozenset({"message_stop", "error"})
# First lines of the events the relay has nothing to read in (text and tool deltas, pings), as servers write them.
UNREAD = tuple(f"event: {name}{end}".encode() for name in ("content_block_delta", "ping") for end in "\n\r")
# Sluice's error statuses as the Anthropic error types the SDKs map to their exceptions.
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    408: "timeout_error", 413: "request_too_large", 415: "invalid_request_error", 429: "rate_limit_error",
    503: "overloaded_error", 529: "overloaded_error",
}  # fmt: skip
# Stream failure codes (app/services/streaming.py) as Anthropic error types.
STREAM_ERROR_TYPES = {
    "server_shutdown": "overloaded_error", "storage_unavailable": "overloaded_error",
    "rate_limit_exceeded": "rate_limit_error", "no_upstream_available": "overloaded_error",
}  # fmt: skip


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(message: str, kind: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_event(code: str, message: str) -> bytes:
    """The Messages stream's `error` event for a Sluice failure code (`upstream_idle_timeout`, ...)."""
    kind = STREAM_ERROR_TYPES.get(code, "api_error")
    return sse.encode(error_body(f"{message} ({code})", kind), "error")


class AnthropicWire(Dialect):
    """An upstream that speaks the Messages API (`api = "anthropic"`): its events, usage and errors."""

    name = "messages"
    path = "/messages"
    can_stream = True
    keepalive = PING

    def verdict(self, raw: bytes) -> Verdict:
        name = sse.event_name(raw)
        if not sse.has_data(raw) or name == "ping":
            return Verdict.WAIT
        if name == "error" or (name is None and b'"error"' in raw and _is_error(raw)):
            return Verdict.ERROR
        if name == "message_stop":
            return Verdict.EMPTY
        return Verdict.ACCEPT  # message_start commits

    def usage(self, data: Any) -> Usage | None:
        return message_usage(data.get("usage") if isinstance(data, dict) else None)

    def relay(self, *, hide_usage: bool) -> Relay:
        return AnthropicRelay()

    def upstream_error(self, data: Any) -> dict[str, Any] | None:
        inner = data.get("error") if isinstance(data, dict) else None
        if not isinstance(inner, dict):
            return None
        return {"message": inner.get("message"), "type": inner.get("type"), "code": inner.get("type")}

    def error_body(self, error: ApiError) -> dict[str, Any]:
        return error_body(error.message, error_type(error.status))

    def transcript(self) -> MessagesTranscript:
        return MessagesTranscript()


def _is_error(raw: bytes) -> bool:
    try:
        data = sse.data_json(raw)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("type") == "error"


class AnthropicRelay:
    """A native Messages stream passes through byte for byte; the relay reads usage and watches for its end."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.usage: Usage | None = None
        self.done = False
        self.failed = False  # the upstream ended the stream with its own error event

    def feed(self, raw: bytes) -> Sequence[bytes]:
        if raw.startswith(UNREAD):  # nearly every event: one prefix check, no parse
            return (raw,)
        name = sse.event_name(raw)
        if name in ("message_start", "message_delta") or name in TERMINAL or (name is None and sse.has_data(raw)):
            self._observe(raw)
        return (raw,)

    def _observe(self, raw: bytes) -> None:
        try:
            data = sse.data_json(raw)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        kind = data.get("type")
        message = data.get("message") if isinstance(data.get("message"), dict) else {}
        found = message.get("usage") if kind == "message_start" else data.get("usage")
        if isinstance(found, dict):
            self.counts.update({k: v for k, v in found.items() if isinstance(v, int) and not isinstance(v, bool)})
            self.usage = message_usage(self.counts)
        self.done = self.done or kind in TERMINAL
        self.failed = self.failed or kind == "error"

    def end(self) -> Sequence[bytes]:
        if not self.done:
            raise StreamBroken("upstream_stream_error", "The upstream stream ended before message_stop.")
        return ()

    def fail(self, code: str, message: str) -> Sequence[bytes]:
        return (error_event(code, message),)

    def plain(self, body: bytes, content_type: str) -> bytes:
        if "json" in content_type:
            try:
                data = json.loads(body)
            except ValueError:
                return body
            self.usage = message_usage(data.get("usage") if isinstance(data, dict) else None)
        return body


def message_usage(usage: Any) -> Usage | None:
    """Messages usage as a usage record counts it (see the module docstring)."""
    if not isinstance(usage, dict):
        return None
    count = {
        k: usage.get(k) if isinstance(usage.get(k), int) and not isinstance(usage.get(k), bool) else 0
        for k in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
    }
    prompt = count["input_tokens"] + count["cache_read_input_tokens"] + count["cache_creation_input_tokens"]
    counts = {"prompt_tokens": prompt, "completion_tokens": count["output_tokens"],
              "total_tokens": prompt + count["output_tokens"]}  # fmt: skip
    if count["cache_read_input_tokens"]:
        counts["cached_tokens"] = count["cache_read_input_tokens"]
    return counts


ANTHROPIC = AnthropicWire()
