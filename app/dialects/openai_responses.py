"""The OpenAI Responses API: POST /responses, natively passed through or translated onto chat completions.

A native upstream (`responses = "native"`) gets the body unchanged and its typed event stream
(`event: response.created` ... `event: response.completed`) passes through byte for byte;
the stream ends with `response.completed`, `.incomplete` or `.failed` (or the API's `error`
event), never `[DONE]`. A translating upstream (`responses = "translate"`, the default) gets a
chat-completions body (app/dialects/responses_chat.py) and its chat answer comes back as a
Responses object or event stream. Usage comes from the final response object's `usage`.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from app.dialects import fields
from app.dialects.base import ChainRelay, ClientRequest, Leg, Relay, Usage, Verdict
from app.dialects.chat_on_anthropic import chat_leg
from app.dialects.from_chat import FromChatRelay
from app.dialects.openai_chat import CHAT, OpenAIDialect, chat_usage, usage_body
from app.dialects.responses_chat import ChatStreamTranslator, request_to_chat, response_from_chat
from app.dialects.responses_chat_stream import FAILED_CODES, response_object
from app.errors import StreamBroken
from app.services import sse

if TYPE_CHECKING:
    from app.config import UpstreamConfig

log = logging.getLogger("sluice.api")
TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
DROPPED_TOOLS_HEADER = "X-Sluice-Dropped-Tools"
RESPONSE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")  # what a stored response's id may be: safe in a path

OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {
    "stream": (bool,),
    "input": (str, list),
    "instructions": (str,),
    "tools": (list,),
    "tool_choice": (str, dict),
    "max_output_tokens": (int,),
    "temperature": (int, float),
    "top_p": (int, float),
    "parallel_tool_calls": (bool,),
    "text": (dict,),
    "reasoning": (dict,),
    "metadata": (dict,),
    "user": (str,),
    "store": (bool,),
    "background": (bool,),
    "previous_response_id": (str,),
    "include": (list,),
}


class ResponsesDialect(OpenAIDialect):
    name = "responses"
    path = "/responses"
    can_stream = True

    def validate(self, payload: dict[str, Any]) -> None:
        fields.check_model(payload)
        fields.check_optional(payload, OPTIONAL_FIELDS)

    def legs(self, request: ClientRequest) -> Callable[[UpstreamConfig], Leg]:
        """Native upstreams get the body as sent; translating ones a chat body (built once per setting)."""
        payload = request.payload
        native = Leg(self.path, request.body, self, lambda: ResponsesRelay(payload))
        translated: dict[tuple[str, bool, bool], Leg] = {}

        def leg(upstream: UpstreamConfig) -> Leg:
            if upstream.responses == "native":
                return native
            key = (upstream.api, upstream.drop_builtin_tools, upstream.inject_usage)  # what changes the body
            if key not in translated:
                translated[key] = _translated_leg(request, upstream)
            return translated[key]

        return leg

    def verdict(self, raw: bytes) -> Verdict:
        if not sse.has_data(raw):
            return Verdict.WAIT
        event = sse.parse(raw)
        if event.name == "error" or (event.name is None and b'"error"' in raw and _is_error(event)):
            return Verdict.ERROR
        return Verdict.ACCEPT  # the first response.* event commits

    def usage(self, data: Any) -> Usage | None:
        return responses_usage(data)

    def relay(self, *, hide_usage: bool) -> Relay:
        return ResponsesRelay({})

    def created_id(self, prefix: Sequence[bytes], body: bytes | None) -> str | None:
        """The id of the response an upstream created (from its first event, or its plain answer)."""
        try:
            if body is not None:
                data = json.loads(body)
            else:
                first = next((sse.parse(raw) for raw in prefix if sse.has_data(raw)), None)
                data = first.json().get("response") if first is not None else None
        except (ValueError, AttributeError):
            return None
        value = data.get("id") if isinstance(data, dict) else None
        return value if isinstance(value, str) and RESPONSE_ID.fullmatch(value) else None


def _is_error(event: sse.Event) -> bool:
    try:
        data = event.json()
    except ValueError:
        return False
    return isinstance(data, dict) and (data.get("type") == "error" or isinstance(data.get("error"), dict))


def _translated_leg(request: ClientRequest, upstream: UpstreamConfig) -> Leg:
    """The chat-completions leg of a Responses request (ApiError 400 for what cannot be translated);
    on an Anthropic upstream, that chat request goes on as a Messages request."""
    chat, dropped = request_to_chat(request.payload, drop_builtin_tools=upstream.drop_builtin_tools)
    if upstream.api == "anthropic":
        return _on_anthropic(request, chat, dropped)
    if request.streaming and upstream.inject_usage:
        body = usage_body(chat) or json.dumps(chat).encode()
    else:
        body = json.dumps(chat).encode()
    response_id, created_at = "resp_" + secrets.token_hex(24), int(time.time())
    headers = {DROPPED_TOOLS_HEADER: ",".join(dropped)} if dropped else {}
    if dropped:
        log.info("dropped built-in tools upstream=%s tools=%s", upstream.name, ",".join(dropped))
    payload = request.payload
    return Leg(
        CHAT.path, body, CHAT,
        lambda: TranslatedRelay(ChatStreamTranslator(payload, response_id=response_id, created_at=created_at)),
        headers=headers,
    )  # fmt: skip


def _on_anthropic(request: ClientRequest, chat: dict[str, Any], dropped: list[str]) -> Leg:
    """Responses -> chat -> Messages, and back: the Messages answer as chat chunks, those as Responses events."""
    chat_request = ClientRequest({**chat, "stream_options": {"include_usage": True}} if request.streaming else chat,
                                 b"", "application/json", request.streaming)  # fmt: skip
    messages = chat_leg(chat_request, chat_usage)
    response_id, created_at, payload = "resp_" + secrets.token_hex(24), int(time.time()), request.payload
    headers = {DROPPED_TOOLS_HEADER: ",".join(dropped)} if dropped else {}

    def relay() -> Relay:
        translator = ChatStreamTranslator(payload, response_id=response_id, created_at=created_at)
        return ChainRelay(messages.relay(), TranslatedRelay(translator))

    return Leg(messages.path, messages.body, messages.dialect, relay, headers=headers)


class ResponsesRelay:
    """A native Responses stream passes through; the relay reads usage and watches for its end.

    `count_usage` False: the answer's usage is not this request's (a stored response fetched again).
    """

    def __init__(self, request: dict[str, Any], *, count_usage: Callable[[], bool] | bool = True) -> None:
        self.request = request  # for a failure before the upstream's response.created
        self.count_usage = count_usage
        self.usage: Usage | None = None
        self.done = False
        self.failed = False  # the upstream ended the stream with error or response.failed
        self.sequence = -1  # the last sequence_number seen
        self.response: dict[str, Any] | None = None  # from response.created, for a well-formed failure

    def feed(self, raw: bytes) -> Sequence[bytes]:
        name = sse.event_name(raw)
        if name is not None and name not in TERMINAL and self.sequence >= 0 and b'"usage"' not in raw:
            self.sequence += 1  # a delta: counting is enough (sequence numbers are consecutive)
        elif sse.has_data(raw):
            self._observe(sse.parse(raw))
        return (raw,)

    def _observe(self, event: sse.Event) -> None:
        try:
            data = event.json()
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        if isinstance(data.get("sequence_number"), int):
            self.sequence = data["sequence_number"]
        response = data.get("response")
        if isinstance(response, dict):
            self.response = self.response or response
            self._take_usage(response)
        kind = event.name or data.get("type")
        self.done = self.done or kind in TERMINAL
        self.failed = self.failed or kind in ("error", "response.failed")

    def _take_usage(self, response: Any) -> None:
        counts = self.count_usage() if callable(self.count_usage) else self.count_usage
        if counts:
            self.usage = responses_usage(response) or self.usage

    def end(self) -> Sequence[bytes]:
        if not self.done:
            raise StreamBroken("upstream_stream_error", "The upstream stream ended before response.completed.")
        return ()

    def fail(self, code: str, message: str) -> Sequence[bytes]:
        if self.response is not None:
            return failure_events(code, message, self.sequence + 1, self.response)
        # Nothing from the upstream yet (retries behind heartbeats failed): a response is created first,
        # as the SDKs' stream parsers require before any other event.
        created = _unstarted(self.request)
        opened = [sse.encode({"type": kind, "sequence_number": seq, "response": created}, kind)
                  for seq, kind in enumerate(("response.created", "response.in_progress"))]  # fmt: skip
        return opened + failure_events(code, message, 2, created)

    def plain(self, body: bytes, content_type: str) -> bytes:
        if "json" in content_type:
            try:
                self._take_usage(json.loads(body))
            except ValueError:
                pass
        return body


class TranslatedRelay(FromChatRelay):
    """Chat chunks from a chat-completions upstream, as Responses events (or a chat answer as a response)."""

    pass_comments = True  # keep-alive comments are allowed in a Responses stream

    def _answer(self, chat: dict[str, Any]) -> tuple[dict[str, Any], Usage | None]:
        translator = self.translator
        response = response_from_chat(
            chat, translator.request, response_id=translator.response_id, created_at=translator.created_at
        )
        return response, responses_usage(response)

    def _usage(self, translated: dict[str, Any]) -> Usage | None:
        return responses_usage({"usage": translated})


def failure_events(code: str, message: str, sequence: int, response: dict[str, Any]) -> list[bytes]:
    """`error`, then `response.failed` with the response as created: a broken stream, ended well-formed."""
    error = {"type": "error", "code": code, "message": message, "param": None, "sequence_number": sequence}
    failed = dict(response)
    failed.update(status="failed", error={"code": code if code in FAILED_CODES else "server_error", "message": message})
    final = {"type": "response.failed", "sequence_number": sequence + 1, "response": failed}
    return [sse.encode(error, "error"), sse.encode(final, "response.failed")]


def _unstarted(request: dict[str, Any]) -> dict[str, Any]:
    """The response of a stream that failed before the upstream created one (the retries behind heartbeats)."""
    response_id, now = "resp_" + secrets.token_hex(24), int(time.time())
    return response_object(
        request, response_id=response_id, created_at=now, model=None, status="in_progress", output=[]
    )


def responses_usage(data: Any) -> Usage | None:
    """Token counts from a Responses `usage` object (input/output tokens and their details)."""
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    counts = {"prompt_tokens": _count(usage, "input_tokens"), "completion_tokens": _count(usage, "output_tokens")}
    counts["total_tokens"] = _count(usage, "total_tokens") or counts["prompt_tokens"] + counts["completion_tokens"]
    cached = _count(usage.get("input_tokens_details"), "cached_tokens")
    reasoning = _count(usage.get("output_tokens_details"), "reasoning_tokens")
    if cached:
        counts["cached_tokens"] = cached
    if reasoning:
        counts["reasoning_tokens"] = reasoning
    return counts


def _count(source: Any, key: str) -> int:
    value = source.get(key) if isinstance(source, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


RESPONSES = ResponsesDialect()
