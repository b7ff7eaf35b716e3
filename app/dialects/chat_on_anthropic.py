"""OpenAI chat clients on an Anthropic upstream (`api = "anthropic"`): the leg and its relay.

The request becomes a Messages request (app/dialects/chat_anthropic.py) and the Messages answer,
streamed or not, a chat completion; the usage chunk goes to the client only when it asked for it
(`stream_options.include_usage`), and usage is always read for the record.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Sequence
from typing import Any

from app.dialects.anthropic_wire import ANTHROPIC
from app.dialects.base import ClientRequest, Leg, Usage
from app.dialects.chat_anthropic import MessagesToChatStream, chat_to_messages, message_to_chat
from app.errors import ApiError, StreamBroken
from app.services import sse

DEFAULT_MAX_TOKENS = 4096  # Messages requires max_tokens; a chat request may leave it out


def chat_leg(request: ClientRequest, usage: Any) -> Leg:
    """The Messages leg of a chat request; `usage` reads chat usage objects (openai_chat.chat_usage)."""
    body = json.dumps(chat_to_messages(request.payload, default_max_tokens=DEFAULT_MAX_TOKENS)).encode()
    payload, completion_id, created = request.payload, "chatcmpl-" + secrets.token_hex(12), int(time.time())
    return Leg(
        ANTHROPIC.path, body, ANTHROPIC,
        lambda: ChatFromMessagesRelay(MessagesToChatStream(payload, completion_id=completion_id, created=created),
                                      usage),
    )  # fmt: skip


def refused(name: str) -> ApiError:
    return ApiError(400, f"'{name}' is not available on an Anthropic upstream.", code="unsupported_parameter")


class ChatFromMessagesRelay:
    """Messages events from the upstream, as chat chunks ending with [DONE] (or a Messages answer as a completion)."""

    def __init__(self, translator: MessagesToChatStream, chat_usage: Any) -> None:
        self.translator, self.chat_usage = translator, chat_usage
        self.usage: Usage | None = None
        self._read: dict | None = None  # the translator's usage object `usage` was read from
        self.done = False

    def feed(self, raw: bytes) -> Sequence[bytes]:
        if not sse.has_data(raw):
            return ()  # Anthropic pings: the chat stream keeps itself alive with comments
        try:
            name, data = sse.named_json(raw)
        except ValueError:
            return ()
        if not isinstance(data, dict):
            return ()
        name = name or str(data.get("type") or "")
        out = self.translator.feed(name, data)
        self.done = self.done or name in ("message_stop", "error")
        self._read_usage()
        return out

    def end(self) -> Sequence[bytes]:
        if not self.done:
            raise StreamBroken("upstream_stream_error", "The upstream stream ended before message_stop.")
        return ()

    def fail(self, code: str, message: str) -> Sequence[bytes]:
        return self.translator.fail(code, message)

    def plain(self, body: bytes, content_type: str) -> bytes:
        try:
            message = json.loads(body)
        except ValueError:
            raise ApiError(502, "The upstream's Messages answer is not JSON.", code="upstream_error") from None
        if not isinstance(message, dict):
            raise ApiError(502, "The upstream's Messages answer is not a JSON object.", code="upstream_error")
        translator = self.translator
        chat = message_to_chat(message, translator.request, completion_id=translator.completion_id,
                               created=translator.created)  # fmt: skip
        self.usage = self.chat_usage(chat)
        return json.dumps(chat).encode()

    def _read_usage(self) -> None:
        """Usage from the translator's, when that changed (a new object: message_start, then message_delta),
        not on every event between them."""
        usage = self.translator.usage
        if usage is not None and usage is not self._read:
            self._read, self.usage = usage, self.chat_usage({"usage": usage})
