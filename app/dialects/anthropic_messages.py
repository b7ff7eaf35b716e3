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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from app.dialects import fields
from app.dialects.anthropic_chat import ChatToMessagesStream, chat_to_message, messages_to_chat
from app.dialects.anthropic_wire import ANTHROPIC, STREAM_ERROR_TYPES, AnthropicRelay, AnthropicWire, message_usage
from app.dialects.base import ClientRequest, Leg, Usage
from app.dialects.from_chat import FromChatRelay
from app.dialects.openai_chat import CHAT, usage_body
from app.errors import ApiError

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


class MessagesFromChatRelay(FromChatRelay):
    """Chat chunks from a chat-completions upstream, as a Messages event stream (or a chat answer as a message);
    upstream comments are dropped: Claude clients are kept alive with pings."""

    def _fail(self, code: str, message: str) -> list[bytes]:
        return self.translator.fail(STREAM_ERROR_TYPES.get(code, "api_error"), f"{message} ({code})")

    def _answer(self, chat: dict[str, Any]) -> tuple[dict[str, Any], Usage | None]:
        message = chat_to_message(chat, self.translator.request, message_id=self.translator.message_id)
        return message, message_usage(message.get("usage"))

    def _usage(self, translated: dict[str, Any]) -> Usage | None:
        return message_usage(translated)


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
