"""The Anthropic Messages API of the bundled mock upstream: `POST /v1/messages`, `count_tokens` and the model list.

Checks the key (`x-api-key`, or `Authorization: Bearer` as the anthropic SDK 2.x sends it; 401 without) and
`anthropic-version` (400 without); the chat mock's token prefixes apply to the key, plus `overloaded-` -> 529.
Errors are `{"type": "error", "error": {"type", "message"}}`; every answer has a `request-id` header. A message
is the chat mock's reply words as a `text` block; streamed, the typed events (`message_start` with the input
tokens ... `message_delta` with the cumulative output tokens, `message_stop`), each with `mock_seq`/`mock_ts`.
A client tool and a last user message about the weather (or `tool_choice` any/tool) give a `tool_use` block
fitted to its `input_schema` (streamed as `input_json_delta`); a `tool_result` in the last user message is quoted
back. `max_tokens` and `stop_sequences` cut the text, `thinking` puts a `thinking` block first, a `missing-*`
model is 404. Streams honour the chat mock's Options: `drop_after`/`stall_after` count events, `delay` paces the
deltas, `error_first` sends only an `error` event, `error_after: N` sends N events, then an `overloaded_error`
event that ends the stream; `context_window`/`refuse` answer 400 before any event. A final assistant message is
continued (app/mock_resume.py). Extra `"mock"` keys: `cache_read_input_tokens`, `cache_creation_input_tokens`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from email.utils import formatdate
from typing import Any

import gevent

from app.mock_models import policy_error
from app.mock_responses import schema_arguments, typed_event
from app.mock_resume import continuation, generated, prefill_text, token_faults

PATH = "/v1/messages"
COUNT_PATH = "/v1/messages/count_tokens"
MODELS = (("mock-claude", "Mock Claude"), ("mock-claude-haiku", "Mock Claude Haiku"))
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
               529: "overloaded_error"}  # fmt: skip
THINKING = "Let me think about this. The user wants a short friendly answer. "
DELTAS = {"text": ("text_delta", "text"), "tool_use": ("input_json_delta", "partial_json"),
          "thinking": ("thinking_delta", "thinking")}  # fmt: skip
KEY_ERRORS = (("revoked-", 403, "This API key has been revoked."), ("expired-", 401, "invalid x-api-key"),
              ("overloaded-", 529, "Overloaded"), ("broken-", 500, "Internal server error"))  # fmt: skip
SSE_HEADERS = [("Content-Type", "text/event-stream; charset=utf-8"), ("Cache-Control", "no-cache")]


@dataclass(frozen=True)
class Block:
    """One content block of the reply, streamed as `deltas`."""

    kind: str  # "text", "tool_use" or "thinking"
    deltas: tuple[str, ...]
    name: str = ""  # the tool called
    id: str = ""  # a tool_use block's id


@dataclass(frozen=True)
class Reply:
    blocks: tuple[Block, ...]
    stop_reason: str = "end_turn"
    stop_sequence: str | None = None


def is_messages_request(path: str, environ: dict) -> bool:
    """Whether the Messages mock answers this request: its paths, or the model list asked the Anthropic way."""
    if path == PATH or path.startswith(PATH + "/"):
        return True
    return path == "/v1/models" and "HTTP_ANTHROPIC_VERSION" in environ  # no OpenAI client sends it


def api_key(environ: dict) -> str:
    """The key: `x-api-key`, else `Authorization: Bearer` (the anthropic SDK 2.x sends its api_key that way)."""
    return environ.get("HTTP_X_API_KEY") or environ.get("HTTP_AUTHORIZATION", "").removeprefix("Bearer ")


class MessagesMock:
    """The Messages routes; the chat mock's helpers are handed in, so the import goes one way."""

    def __init__(self, *, reply_words: Callable, send: Callable, cookie: tuple[str, str], token_faults: dict,
                 edge_page: bytes, naive_agents: tuple[str, ...]) -> None:  # fmt: skip
        self.reply_words, self.send, self.cookie, self.token_faults = reply_words, send, cookie, token_faults
        self.edge_page, self.naive_agents = edge_page, naive_agents

    def __call__(self, environ: dict, start_response: Callable, body: Any, opts: Any, stats: Any) -> Iterator[bytes]:
        token = api_key(environ)
        opts = replace(opts, **token_faults(token, self.token_faults))
        streaming = isinstance(body, dict) and body.get("stream") is True
        if opts.strict_edge and streaming and not self._real_client(environ):
            start_response("403 Forbidden", [("Content-Type", "text/html")])
            return [self.edge_page]
        refused = refusal(token, environ.get("HTTP_ANTHROPIC_VERSION"), opts)
        if refused is not None and refused[0] == 500:  # a broken backend: an HTML page, as the chat mock's
            start_response("500 Internal Server Error", [("Content-Type", "text/html")])
            return [b"<html><body>500</body></html>"]
        if refused is not None:
            return self._fail(start_response, *refused)
        path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
        if path == "/v1/models" and method == "GET":
            return self._json(start_response, 200, model_list())
        if method != "POST" or path not in (PATH, COUNT_PATH):
            return self._fail(start_response, 404, f"Not found: {method} {path}")
        problem = invalid(body, count_only=path == COUNT_PATH)
        if problem is not None:
            return self._fail(start_response, *problem)
        if path == COUNT_PATH:
            return self._json(start_response, 200, {"input_tokens": input_tokens(body)})
        return self._create(environ, start_response, body, opts, stats)

    def _real_client(self, environ: dict) -> bool:
        agent = environ.get("HTTP_USER_AGENT", "")
        accept = environ.get("HTTP_ACCEPT", "")
        return bool(agent) and not agent.startswith(self.naive_agents) and "text/event-stream" in accept

    def _create(self, environ: dict, start_response: Callable, body: dict, opts: Any, stats: Any) -> Iterator[bytes]:
        refused = policy_error(opts, input_tokens(body), anthropic=True)  # context_window, refuse: before any event
        if refused is not None:
            return self._json(start_response, 400, refused)
        words = self.reply_words(opts.chunks, opts.multibyte)
        reply = plan(body, continuation(words, prefill_text(body["messages"])))
        usage = usage_of(body, reply)
        if body.get("stream") is True:
            start_response("200 OK", [*SSE_HEADERS, self.cookie, _request_id()])
            return self._stream(environ, body, reply, usage, opts, stats)
        gevent.sleep(opts.header_delay + opts.first_delay)
        stats.usage_total += sum(usage.values())
        return self._json(start_response, 200, message(body, reply, usage))

    def _stream(self, environ: dict, body: dict, reply: Reply, usage: dict, opts: Any, stats: Any) -> Iterator[bytes]:
        stats.streams_started += 1
        finished = False
        try:
            gevent.sleep(opts.header_delay)  # nothing is sent before the first yield
            if opts.first_delay:
                yield b": mock upstream thinking\n\n"
                gevent.sleep(opts.first_delay)
            if opts.garbage:
                yield b"this is not server-sent events\n\n<html>oops</html>\n\n"
            if opts.empty or opts.garbage:
                finished = True
                stats.streams_completed += 1
                return
            for seq, (event, paced) in enumerate(
                events_or_error(body, reply, usage, opts.error_first, opts.error_after)
            ):
                if opts.drop_after is not None and seq >= opts.drop_after:
                    stats.streams_dropped += 1
                    finished = True
                    environ["mock.socket"].shutdown(socket.SHUT_RDWR)  # no message_stop
                    return
                if (yield from typed_event(self.send, event, seq, paced, opts, environ)):
                    stats.streams_dropped += 1  # cut_mid_event, cut_mid_char
                    finished = True
                    return
                if event["type"] == "message_stop":
                    stats.usage_total += sum(usage.values())
            finished = True
            stats.streams_completed += 1
        finally:
            if not finished:
                stats.streams_aborted += 1

    def _json(self, start_response: Callable, status: int, payload: dict, extra: tuple = ()) -> list[bytes]:
        start_response(f"{status} Mock", [("Content-Type", "application/json"), self.cookie, _request_id(), *extra])
        return [json.dumps(payload).encode()]

    def _fail(self, start_response: Callable, status: int, message_text: str, extra: tuple = ()) -> list[bytes]:
        return self._json(start_response, status, error_body(status, message_text), extra)


def _request_id() -> tuple[str, str]:
    return "request-id", f"req_mock{uuid.uuid4().hex}"


def error_body(status: int, message_text: str) -> dict:
    """An error as the Messages API renders it; the type follows the status."""
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message_text}}


def refusal(token: str, version: str | None, opts: Any) -> tuple[int, str, tuple] | None:
    """Why the key, the version header or the options refuse this request, as (status, message, headers)."""
    if not token:
        return 401, "x-api-key header is required", ()  # or an Authorization: Bearer one
    if token.startswith(("limited-", "limiteddate-")):  # seconds, or an HTTP date
        when = formatdate(time.time() + opts.retry_after, usegmt=True) if token.startswith("limiteddate-") else None
        retry = (("retry-after", when or str(opts.retry_after)),)
        return 429, "Number of requests has exceeded your rate limit.", retry
    for prefix, status, text in KEY_ERRORS:
        if token.startswith(prefix):
            return status, text, ()
    if not version:
        return 400, "anthropic-version: header is required", ()
    if opts.status is not None:
        return opts.status, f"Mock status {opts.status}.", ()
    return None


def model_list() -> dict:
    """GET /v1/models as the Messages API lists them."""
    data = [{"type": "model", "id": m, "display_name": name, "created_at": "2025-01-01T00:00:00Z"}
            for m, name in MODELS]  # fmt: skip
    return {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}


def invalid(body: Any, count_only: bool = False) -> tuple[int, str] | None:
    """A problem with the request body as (status, message), or None; count_tokens needs no max_tokens."""
    if not isinstance(body, dict):
        return 400, "The request body must be a JSON object."
    if not isinstance(body.get("model"), str):
        return 400, "model: Field required"
    if body["model"].startswith("missing-"):
        return 404, f"model: {body['model']}"
    limit = body.get("max_tokens")
    if not count_only and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        return 400, "max_tokens: Field required (an integer of at least 1)"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return 400, "messages: at least one message is required"
    for i, item in enumerate(messages):
        if not isinstance(item, dict) or item.get("role") not in ("user", "assistant"):
            return 400, f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if not isinstance(item.get("content"), str | list):
            return 400, f"messages.{i}.content: Input should be a string or a list of blocks"
    if body.get("system") is not None and not isinstance(body["system"], str | list):
        return 400, "system: Input should be a string or a list of text blocks"
    stops = body.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) and s for s in stops)):
        return 400, "stop_sequences: Input should be a list of non-empty strings"
    return _invalid_tools(body) or _invalid_thinking(body, count_only)


def _invalid_tools(body: dict) -> tuple[int, str] | None:
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        return 400, "tools: Input should be a list of tools"
    for i, tool in enumerate(_client_tools(body)):
        if not isinstance(tool.get("input_schema"), dict):
            return 400, f"tools.{i}.input_schema: Field required"
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        return 400, "tool_choice: Input should be an object with type auto, any, tool or none"
    if choice["type"] == "tool" and choice.get("name") not in {t["name"] for t in _client_tools(body)}:
        return 400, f"tool_choice: tool {choice.get('name')!r} not found in tools"
    return None


def _invalid_thinking(body: dict, count_only: bool) -> tuple[int, str] | None:
    thinking = body.get("thinking")
    if thinking is None or (isinstance(thinking, dict) and thinking.get("type") in ("disabled", "adaptive")):
        return None
    budget = thinking.get("budget_tokens") if isinstance(thinking, dict) else None
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled" or not isinstance(budget, int):
        return 400, "thinking: Input should be {type: enabled, budget_tokens: N} or {type: disabled}"
    if budget < 1024:
        return 400, "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
    if not count_only and body["max_tokens"] <= budget:
        return 400, "`max_tokens` must be greater than `thinking.budget_tokens`"
    return None


def _client_tools(body: dict) -> list[dict]:
    """The tools the client runs (server tools such as web_search have a versioned type)."""
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    return [t for t in tools if isinstance(t, dict) and t.get("type", "custom") == "custom"
            and isinstance(t.get("name"), str)]  # fmt: skip


def plan(body: dict, words: list[str]) -> Reply:
    """The reply: a tool call, the tool result quoted back, or the mock's words (cut by stops or max_tokens)."""
    thinking = _thinking_block(body)
    last = body["messages"][-1]
    results = [b for b in _blocks(last) if b.get("type") == "tool_result"] if last["role"] == "user" else []
    tool = None if results else _tool_to_call(body, last)
    if tool is not None:
        arguments = json.dumps(schema_arguments(tool.get("input_schema")))
        size = -(-len(arguments) // max(1, len(words)))  # as many fragments as text chunks
        fragments = tuple(arguments[i : i + size] for i in range(0, len(arguments), size))
        call = Block("tool_use", fragments, name=tool["name"], id=f"toolu_mock{uuid.uuid4().hex[:20]}")
        return Reply((*thinking, call), "tool_use")
    if results:
        words = [f"The tool said: {_result_text(results[-1])}. ", *words]
    kept = words[: body["max_tokens"]] if isinstance(body.get("max_tokens"), int) else words
    cut, stop = _stopped("".join(kept), body.get("stop_sequences") or [])
    if stop is not None:
        return Reply((*thinking, Block("text", _split(cut))), "stop_sequence", stop)
    return Reply((*thinking, Block("text", tuple(kept))), "max_tokens" if len(kept) < len(words) else "end_turn")


def _tool_to_call(body: dict, last: dict) -> dict | None:
    tools = _client_tools(body)
    choice = body.get("tool_choice") if isinstance(body.get("tool_choice"), dict) else {"type": "auto"}
    if choice["type"] == "tool":
        return next((t for t in tools if t["name"] == choice.get("name")), None)
    asked = last["role"] == "user" and "weather" in _text(last).lower()
    if not tools or choice["type"] == "none" or not (choice["type"] == "any" or asked):
        return None
    return next((t for t in tools if "weather" in t["name"].lower()), tools[0])


def _blocks(item: dict) -> list[dict]:
    content = item.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [block for block in content or [] if isinstance(block, dict)]


def _text(item: dict) -> str:
    return " ".join(b["text"] for b in _blocks(item) if b.get("type") == "text" and isinstance(b.get("text"), str))


def _result_text(result: dict) -> str:
    """A tool_result's content as text: a string, or its text blocks; an error result says so."""
    text = _text(result) if result.get("content") is not None else ""
    return f"error: {text}" if result.get("is_error") else text


def _stopped(text: str, stops: list[str]) -> tuple[str, str | None]:
    """The text up to the first stop sequence in it, and that sequence (None when none occurs)."""
    found = [(text.index(s), s) for s in stops if isinstance(s, str) and s and s in text]
    if not found:
        return text, None
    at, stop = min(found)
    return text[:at], stop


def _split(text: str) -> tuple[str, ...]:
    """Text as word deltas, each with its trailing space, as the mock streams them."""
    parts = text.split(" ")
    return tuple(p + " " for p in parts[:-1]) + ((parts[-1],) if parts[-1] else ())


def _thinking_block(body: dict) -> tuple[Block, ...]:
    thinking = body.get("thinking")
    enabled = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
    return (Block("thinking", _split(THINKING)),) if enabled else ()


def _signature(block: Block) -> str:
    return base64.b64encode(hashlib.sha256("".join(block.deltas).encode()).digest()).decode()


def input_tokens(body: dict) -> int:
    """A deterministic estimate: a quarter of the JSON size of the system prompt, the messages and the tools."""
    return max(1, len(json.dumps([body.get("system"), body.get("messages"), body.get("tools")])) // 4)


def usage_of(body: dict, reply: Reply) -> dict:
    """The usage object: output tokens are the deltas of every block; cache counts from the `mock` options."""
    return {
        "input_tokens": input_tokens(body),
        "output_tokens": sum(generated(list(block.deltas)) for block in reply.blocks),
        "cache_creation_input_tokens": _mock_count(body, "cache_creation_input_tokens") or 0,
        "cache_read_input_tokens": _mock_count(body, "cache_read_input_tokens") or 0,
    }


def _mock_count(body: dict, key: str) -> int | None:
    extra = body.get("mock") if isinstance(body.get("mock"), dict) else {}
    value = extra.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def content_block(block: Block, done: bool) -> dict:
    """A block as the message shows it (done) or as `content_block_start` opens it."""
    text = "".join(block.deltas) if done else ""
    if block.kind == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": json.loads(text) if done else {}}
    if block.kind == "thinking":
        return {"type": "thinking", "thinking": text, "signature": _signature(block) if done else ""}
    return {"type": "text", "text": text}


def message(body: dict, reply: Reply, usage: dict, done: bool = True) -> dict:
    """The message object: complete, or as `message_start` shows it (no content, one output token so far)."""
    return {
        "id": f"msg_mock{uuid.uuid4().hex[:20]}", "type": "message", "role": "assistant", "model": body["model"],
        "content": [content_block(block, True) for block in reply.blocks] if done else [],
        "stop_reason": reply.stop_reason if done else None, "stop_sequence": reply.stop_sequence if done else None,
        "usage": usage if done else {**usage, "output_tokens": 1},
    }  # fmt: skip


def events(body: dict, reply: Reply, usage: dict) -> Iterator[tuple[dict, bool]]:
    """The typed events of one reply in the API's order, each with whether `delay` paces it (every delta but the
    first)."""
    yield {"type": "message_start", "message": message(body, reply, usage, done=False)}, False
    first = True
    for index, block in enumerate(reply.blocks):
        yield {"type": "content_block_start", "index": index, "content_block": content_block(block, False)}, False
        if index == 0:
            yield {"type": "ping"}, False
        for piece in block.deltas:
            kind, field = DELTAS[block.kind]
            yield {"type": "content_block_delta", "index": index, "delta": {"type": kind, field: piece}}, not first
            first = False
        if block.kind == "thinking":
            signature = {"type": "signature_delta", "signature": _signature(block)}
            yield {"type": "content_block_delta", "index": index, "delta": signature}, False
        yield {"type": "content_block_stop", "index": index}, False
    delta = {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence}
    yield {"type": "message_delta", "delta": delta, "usage": {"output_tokens": usage["output_tokens"]}}, False
    yield {"type": "message_stop"}, False


def events_or_error(body: dict, reply: Reply, usage: dict, error_first: bool,
                    error_after: int | None) -> Iterator[tuple[dict, bool]]:  # fmt: skip
    """The events, or an `error` event in their place (error_first) or after `error_after` of them; the API ends a
    stream after an error event."""
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    for seq, item in enumerate(events(body, reply, usage)):
        if error_first or seq == error_after:
            yield overloaded, False
            return
        yield item
