"""The relay shared by every translation *from* a chat-completions upstream (into Responses, into Messages):
chat chunks are parsed and handed to a pure translator, `data: [DONE]` finishes it, a plain chat answer
is translated whole. A subclass says how its translator fails, answers and counts usage."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from app.dialects.base import Usage
from app.dialects.chat_events import is_done
from app.errors import ApiError, StreamBroken
from app.services import sse


class FromChatRelay:
    pass_comments = False  # upstream comments: passed on (SSE comments the client's dialect allows) or dropped

    def __init__(self, translator: Any) -> None:
        self.translator = translator
        self.usage: Usage | None = None
        self.done = False
        self._read: dict | None = None  # the translator's usage object `usage` was read from

    def feed(self, raw: bytes) -> Sequence[bytes]:
        if not sse.has_data(raw):
            return (raw,) if self.pass_comments else ()
        if is_done(raw):
            self.done = True
            return self._counted(self.translator.finish())
        try:
            chunk = sse.data_json(raw)
        except ValueError:
            return ()
        return self._counted(self.translator.feed(chunk)) if isinstance(chunk, dict) else ()

    def end(self) -> Sequence[bytes]:
        if not self.done:
            raise StreamBroken("upstream_stream_error", "The upstream stream ended without data: [DONE].")
        return ()

    def fail(self, code: str, message: str) -> Sequence[bytes]:
        return self._counted(self._fail(code, message))

    def plain(self, body: bytes, content_type: str) -> bytes:
        try:
            chat = json.loads(body)
        except ValueError:
            raise ApiError(502, "The upstream's chat answer is not JSON.", code="upstream_error") from None
        if not isinstance(chat, dict):
            raise ApiError(502, "The upstream's chat answer is not a JSON object.", code="upstream_error")
        answer, self.usage = self._answer(chat)
        return json.dumps(answer).encode()

    def _counted(self, events: list[bytes]) -> list[bytes]:
        usage = self.translator.usage  # a new object each time it changes
        if usage is not None and usage is not self._read:
            self._read, self.usage = usage, self._usage(usage)
        return events

    def _fail(self, code: str, message: str) -> list[bytes]:
        return self.translator.fail(code, message)

    def _answer(self, chat: dict[str, Any]) -> tuple[dict[str, Any], Usage | None]:
        """The client's answer for a plain chat answer, and its usage."""
        raise NotImplementedError

    def _usage(self, translated: dict[str, Any]) -> Usage | None:
        """Usage counts from the translator's usage object."""
        raise NotImplementedError
