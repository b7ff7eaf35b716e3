"""The Anthropic Messages API for Claude clients: POST /messages and /messages/count_tokens.

To an Anthropic upstream (`api = "anthropic"`) the body and the event stream pass through byte
for byte (only the auth headers change). To an OpenAI-compatible upstream the request becomes a
chat completion (app/dialects/anthropic_chat.py) and the answer, streamed or not, a Messages
answer. Every error Sluice itself writes on these routes is in the Anthropic shape, and the
keep-alive while a stream waits for its first event is a `ping` event.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from app.dialects import fields
from app.dialects.anthropic_chat import ChatToMessagesStream, chat_to_message, messages_to_chat
from app.dialects.anthropic_wire import ANTHROPIC, STREAM_ERROR_TYPES, AnthropicRelay, AnthropicWire, message_usage
from app.dialects.base import ClientRequest, Leg, Usage
from app.dialects.openai_chat import CHAT, is_done, usage_body
from app.errors import ApiError, StreamBroken
from app.services import sse

if TYPE_CHECKING:
    from app.config import UpstreamConfig

OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {
    "stream": (bool,),
    "system": (str, list),
    "tools": (list,),
    "tool_choice": (dict,),
    "stop_sequences": (list,),
    "temperature": (int, float),
    "top_p": (int, float),
    "top_k": (int,),
    "metadata": (dict,),
    "thinking": (dict,),
}


class MessagesDialect(AnthropicWire):
    """POST /messages, from a Claude client, to any upstream."""

    def validate(self, payload: dict[str, Any]) -> None:
        fields.check_model(payload)
        fields.check_required(payload, {"messages": (list,), "max_tokens": (int,)})
        fields.check_optional(payload, OPTIONAL_FIELDS)

    def legs(self, request: ClientRequest) -> Callable[[UpstreamConfig], Leg]:
        native = Leg(_with_query(self.path, request.query), request.body, ANTHROPIC, AnthropicRelay)
        translated: dict[bool, Leg] = {}

        def leg(upstream: UpstreamConfig) -> Leg:
            if upstream.api == "anthropic":
                return native
            if upstream.inject_usage not in translated:
                translated[upstream.inject_usage] = _translated_leg(request, upstream.inject_usage)
            return translated[upstream.inject_usage]

        return leg


def _with_query(path: str, query: str) -> str:
    """The client's query string, kept for a native upstream when it is plain (`beta=true`)."""
    return f"{path}?{query}" if query and all(c.isalnum() or c in "=&_-.%" for c in query) else path


def _translated_leg(request: ClientRequest, inject_usage: bool) -> Leg:
    """The chat-completions leg of a Messages request (ApiError 400 for what cannot be translated)."""
    try:
        chat = messages_to_chat(request.payload)
    except ApiError as exc:
        raise ApiError(400, exc.message, code="invalid_request_error", param=exc.param) from None
    body = (usage_body(chat) if request.streaming and inject_usage else None) or json.dumps(chat).encode()
    payload, message_id = request.payload, "msg_" + secrets.token_hex(12)
    relay = lambda: MessagesFromChatRelay(ChatToMessagesStream(payload, message_id=message_id))  # noqa: E731
    return Leg(CHAT.path, body, CHAT, relay)


class MessagesFromChatRelay:
    """Chat chunks from a chat-completions upstream, as a Messages event stream (or a chat answer as a message)."""

    def __init__(self, translator: ChatToMessagesStream) -> None:
        self.translator = translator
        self.usage: Usage | None = None
        self.done = False

    def feed(self, raw: bytes) -> Sequence[bytes]:
        if not sse.has_data(raw):
            return ()  # an upstream comment: Claude clients are kept alive with pings
        if is_done(raw):
            self.done = True
            return self._counted(self.translator.finish())
        try:
            chunk = sse.parse(raw).json()
        except ValueError:
            return ()
        return self._counted(self.translator.feed(chunk)) if isinstance(chunk, dict) else ()

    def end(self) -> Sequence[bytes]:
        if not self.done:
            raise StreamBroken("upstream_stream_error", "The upstream stream ended without data: [DONE].")
        return ()

    def fail(self, code: str, message: str) -> Sequence[bytes]:
        return self._counted(self.translator.fail(STREAM_ERROR_TYPES.get(code, "api_error"), f"{message} ({code})"))

    def plain(self, body: bytes, content_type: str) -> bytes:
        try:
            chat = json.loads(body)
        except ValueError:
            raise ApiError(502, "The upstream's chat answer is not JSON.", code="upstream_error") from None
        if not isinstance(chat, dict):
            raise ApiError(502, "The upstream's chat answer is not a JSON object.", code="upstream_error")
        message = chat_to_message(chat, self.translator.request, message_id=self.translator.message_id)
        self.usage = message_usage(message.get("usage"))
        return json.dumps(message).encode()

    def _counted(self, events: list[bytes]) -> list[bytes]:
        if self.translator.usage is not None:
            self.usage = message_usage(self.translator.usage)
        return events


class CountTokensDialect(MessagesDialect):
    """POST /messages/count_tokens: an Anthropic upstream counts; for any other, Sluice estimates."""

    name = "count_tokens"
    path = "/messages/count_tokens"
    can_stream = False

    def validate(self, payload: dict[str, Any]) -> None:
        fields.check_model(payload)
        fields.check_required(payload, {"messages": (list,)})
        fields.check_optional(payload, OPTIONAL_FIELDS)
        fields.check_stream(payload, can_stream=False)

    def legs(self, request: ClientRequest) -> Callable[[UpstreamConfig], Leg]:
        native = Leg(_with_query(self.path, request.query), request.body, ANTHROPIC, AnthropicRelay)

        def leg(upstream: UpstreamConfig) -> Leg:
            if upstream.api != "anthropic":
                raise ApiError(400, "Counting is done by Anthropic upstreams only.", code="invalid_request_error")
            return native

        return leg


def estimate_tokens(payload: dict[str, Any]) -> int:
    """An estimate for count_tokens without an Anthropic upstream: one token per 4 characters of the
    JSON text of `system`, `messages` and `tools` (what the model reads), rounded up; no tokenizer."""
    text = json.dumps([payload.get("system"), payload.get("messages"), payload.get("tools")], ensure_ascii=False)
    return max(1, math.ceil(len(text) / 4))


MESSAGES = MessagesDialect()
COUNT_TOKENS = CountTokensDialect()
