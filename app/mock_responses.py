"""The OpenAI Responses API of the bundled mock upstream: `POST /v1/responses` and the stored-response routes.

Answers in the shapes the openai SDK parses: a `response` object or, with `"stream": true`, the typed
events (`event: response.created` ... `event: response.completed`), each with `sequence_number` and,
like chat chunks, `mock_seq` and `mock_ts`. The text is the chat mock's reply words. A request with a
function tool whose last user message mentions the weather (or whose `tool_choice` names a function,
or is "required") gets a `function_call` item instead; a `function_call_output` after the last user
message is quoted back in the text. `max_output_tokens` below the reply's length gives
`status: incomplete`. Responses are kept (the newest STORE_LIMIT) unless `"store": false`;
`"background": true` makes one that finishes after the stream's time and can be cancelled until then.

Streams honour the chat mock's Options; `drop_after` and `stall_after` count events (sequence numbers),
so 0 cuts before `response.created`, and `delay` paces the deltas. `error_first` sends only an `error`
event, `error_after: N` N events and then an `error` event that ends the stream. `context_window` and
`refuse` answer a 400 (app/mock_models.py) before any event.
`"mock": {"cached_tokens": n, "reasoning_tokens": n}` sets those usage details.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import gevent

from app.mock_models import policy_error
from app.mock_resume import emit

PATH = "/v1/responses"
STORE_LIMIT = 1000
TERMINAL = ("response.completed", "response.incomplete", "response.failed")
ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}


@dataclass(frozen=True)
class Reply:
    """What the mock answers: one output item, text or a function call, streamed as `deltas`."""

    kind: str  # "message" or "function_call"
    deltas: list[str]
    status: str = "completed"  # or "incomplete" (max_output_tokens)
    name: str = ""  # the function called
    item_id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    call_id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex}")


@dataclass
class Stored:
    response: dict
    items: list[dict]
    final: dict | None = None  # a background response's answer, shown once `ready_at` has passed
    ready_at: float = 0.0


class ResponsesMock:
    """The Responses routes; the chat mock's helpers are handed in, so the import goes one way."""

    def __init__(self, *, reply_words: Callable, send: Callable, json_reply: Callable, error_body: Callable,
                 cookie: tuple[str, str], limit: int = STORE_LIMIT) -> None:  # fmt: skip
        self.reply_words, self.send, self.json_reply, self.error_body = reply_words, send, json_reply, error_body
        self.cookie, self.limit = cookie, limit
        self.stored: OrderedDict[str, Stored] = OrderedDict()

    def __call__(self, environ: dict, start_response: Callable, body: Any, opts: Any, stats: Any) -> Iterator[bytes]:
        path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
        parts = path.removeprefix(PATH).split("/")  # "" | "", id | "", id, action
        if parts == [""] and method == "POST":
            return self._create(environ, start_response, body, opts, stats)
        route = (method, *parts[2:]) if len(parts) in (2, 3) and parts[0] == "" and parts[1] else ()
        if route not in (("GET",), ("DELETE",), ("POST", "cancel"), ("GET", "input_items")):
            return self.json_reply(start_response, 404, self.error_body(f"Unknown path {path}", "unknown_url"))
        entry = self.stored.get(parts[1])
        if entry is None:
            return self._fail(start_response, 404, f"Response with id '{parts[1]}' not found.", "not_found", None)
        _settle(entry)
        if route == ("DELETE",):
            del self.stored[parts[1]]
            return self.json_reply(start_response, 200, {"id": parts[1], "object": "response.deleted", "deleted": True})
        if route == ("POST", "cancel"):
            return self._cancel(start_response, entry)
        if route == ("GET", "input_items"):
            return self._input_items(environ, start_response, entry)
        return self.json_reply(start_response, 200, entry.response)

    def _create(self, environ: dict, start_response: Callable, body: Any, opts: Any, stats: Any) -> Iterator[bytes]:
        problem = _invalid(body)
        if problem is None and body.get("previous_response_id") not in (None, *self.stored):
            problem = ("Previous response not found.", "previous_response_not_found", "previous_response_id")
        if problem is not None:
            return self._fail(start_response, 400, *problem)
        refused = policy_error(opts, prompt_tokens(body))  # context_window, refuse: before any event
        if refused is not None:
            return self.json_reply(start_response, 400, refused)
        items = input_items(body.get("input"))
        reply = plan(body, items, self.reply_words(opts.chunks, opts.multibyte))
        start = skeleton(body)
        final = finish(start, reply, _usage(body, reply))
        if body.get("stream"):
            start_response("200 OK", [("Content-Type", "text/event-stream; charset=utf-8"),
                                      ("Cache-Control", "no-cache"), self.cookie])  # fmt: skip
            return self._stream(environ, start, items, reply, final, opts, stats)
        gevent.sleep(opts.header_delay + opts.first_delay)
        if body.get("background"):  # answered at once; the result shows after the time its stream would take
            ready_at = time.time() + opts.delay * len(reply.deltas)
            self._keep(Stored({**start, "status": "queued"}, items, final, ready_at))
            return self.json_reply(start_response, 200, self.stored[start["id"]].response)
        stats.usage_total += final["usage"]["total_tokens"]
        self._keep(Stored(final, items))
        return self.json_reply(start_response, 200, final)

    def _stream(self, environ: dict, start: dict, items: list[dict], reply: Reply, final: dict, opts: Any,
                stats: Any) -> Iterator[bytes]:  # fmt: skip
        stats.streams_started += 1
        finished = False
        try:
            gevent.sleep(opts.header_delay)  # nothing is sent before the first yield
            if opts.first_delay:
                yield b": mock upstream thinking\n\n"
                gevent.sleep(opts.first_delay)
            if opts.garbage:
                yield b"this is not server-sent events\n\n<html>oops</html>\n\n"
            if not (opts.empty or opts.garbage):
                for seq, (event, paced) in enumerate(_events_or_error(start, reply, final, opts)):
                    if opts.drop_after is not None and seq >= opts.drop_after:
                        stats.streams_dropped += 1
                        finished = True
                        environ["mock.socket"].shutdown(socket.SHUT_RDWR)  # no terminal event
                        return
                    if "response" in event:  # a GET while it streams sees it as the last event showed it
                        self._keep(Stored(event["response"], items))
                    if (yield from typed_event(self.send, event, seq, paced, opts, environ, sequence_number=seq)):
                        stats.streams_dropped += 1  # cut_mid_event, cut_mid_char
                        finished = True
                        return
                    if event["type"] in TERMINAL:
                        stats.usage_total += final["usage"]["total_tokens"]
            finished = True
            stats.streams_completed += 1
        finally:
            if not finished:
                stats.streams_aborted += 1

    def _cancel(self, start_response: Callable, entry: Stored) -> list[bytes]:
        if not entry.response.get("background"):
            message = "Only responses created with background=true can be cancelled."
            return self._fail(start_response, 400, message, "invalid_request", None)
        if entry.response["status"] in ("queued", "in_progress"):  # a finished one is returned unchanged
            entry.response, entry.final = {**entry.response, "status": "cancelled"}, None
        return self.json_reply(start_response, 200, entry.response)

    def _input_items(self, environ: dict, start_response: Callable, entry: Stored) -> list[bytes]:
        query = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
        limit = query.get("limit", "20")
        if not (limit.isdigit() and 1 <= int(limit) <= 100) or query.get("order", "desc") not in ("asc", "desc"):
            return self._fail(start_response, 400, "limit must be 1-100, order asc or desc.", "invalid_value", None)
        ordered = entry.items[::-1] if query.get("order", "desc") == "desc" else list(entry.items)
        ids = [item["id"] for item in ordered]
        if "after" in query:
            ordered = ordered[ids.index(query["after"]) + 1 :] if query["after"] in ids else []
        page = ordered[: int(limit)]
        first, last = (page[0]["id"], page[-1]["id"]) if page else (None, None)
        more = len(ordered) > len(page)
        listing = {"object": "list", "data": page, "first_id": first, "last_id": last, "has_more": more}
        return self.json_reply(start_response, 200, listing)

    def _keep(self, entry: Stored) -> None:
        if not entry.response["store"]:
            return
        self.stored[entry.response["id"]] = entry
        self.stored.move_to_end(entry.response["id"])
        while len(self.stored) > self.limit:
            self.stored.popitem(last=False)

    def _fail(self, start_response: Callable, status: int, message: str, code: str, param: str | None) -> list[bytes]:
        error = self.error_body(message, code)
        error["error"]["param"] = param
        return self.json_reply(start_response, status, error)


def _settle(entry: Stored) -> None:
    if entry.final is not None and time.time() >= entry.ready_at:
        entry.response, entry.final = entry.final, None


def _invalid(body: Any) -> tuple[str, str, str | None] | None:
    """A problem with the request body as (message, code, param), or None."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return "Body must be a JSON object with a model.", "invalid_body", None
    value = body.get("input")
    if value is not None and not isinstance(value, str | list):
        return "input must be a string or a list of items.", "invalid_type", "input"
    if isinstance(value, list) and not all(isinstance(item, dict) for item in value):
        return "Every input item must be an object.", "invalid_type", "input"
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        return "tools must be a list.", "invalid_type", "tools"
    if body.get("background") and body.get("store") is False:
        return "Background responses must be stored (store: true).", "invalid_value", "store"
    return None


def input_items(value: str | list | None) -> list[dict]:
    """The request's input as the API lists it: every item typed, with an id and a content list."""
    raw = [{"role": "user", "content": value}] if isinstance(value, str) else value or []
    items = []
    for item in raw:
        kind = item.get("type", "message")
        entry = {**item, "type": kind}
        if kind == "message" and isinstance(entry.get("content"), str):
            part = "output_text" if entry.get("role") == "assistant" else "input_text"
            entry["content"] = [{"type": part, "text": entry["content"]}]
        entry.setdefault("id", f"{ID_PREFIX.get(kind, 'item')}_{uuid.uuid4().hex}")
        entry.setdefault("status", "completed")
        items.append(entry)
    return items


def plan(body: dict, items: list[dict], words: list[str]) -> Reply:
    """The reply: a function call, the tool output quoted back, or the mock's words (cut at max_output_tokens)."""
    users = [i for i, item in enumerate(items) if item["type"] == "message" and item.get("role") == "user"]
    outputs = [item for item in items[(users[-1] + 1 if users else 0) :] if item["type"] == "function_call_output"]
    function = None if outputs else _function_to_call(body, _text(items[users[-1]]) if users else "")
    if function is not None:
        arguments = json.dumps(schema_arguments(function.get("parameters")))
        size = -(-len(arguments) // max(1, len(words)))  # as many argument deltas as text chunks
        deltas = [arguments[i : i + size] for i in range(0, len(arguments), size)]
        return Reply("function_call", deltas, name=function["name"], item_id=f"fc_{uuid.uuid4().hex}")
    if outputs:
        output = outputs[-1].get("output")
        words = [f"The function returned {output if isinstance(output, str) else json.dumps(output)}. ", *words]
    limit = body.get("max_output_tokens")
    if isinstance(limit, int) and not isinstance(limit, bool) and 0 <= limit < len(words):
        return Reply("message", words[:limit], status="incomplete")
    return Reply("message", words)


def _function_to_call(body: dict, last_user_text: str) -> dict | None:
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]
    tools = [t for t in tools if isinstance(t.get("name"), str)]
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        return next((t for t in tools if t["name"] == choice.get("name")), None)
    if not tools or choice == "none" or (choice != "required" and "weather" not in last_user_text.lower()):
        return None
    return next((t for t in tools if "weather" in t["name"].lower()), tools[0])


def _text(item: dict) -> str:
    content = item.get("content")
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return content if isinstance(content, str) else ""


def typed_event(send: Callable, event: dict, seq: int, paced: bool, opts: Any, environ: dict,
                **fields: Any) -> Generator[bytes, None, bool]:  # fmt: skip
    """One typed event (`event: TYPE`), stamped with `fields`, `mock_seq` and `mock_ts`, after the pacing and
    stall the options ask for (the Responses and the Messages mocks both stream this way); returns whether the
    options cut the connection inside it (app/mock_resume.py)."""
    if paced and opts.delay:
        gevent.sleep(opts.delay)
    if opts.stall_after is not None and seq == opts.stall_after:
        gevent.sleep(opts.stall)
    event = {**event, **fields, "mock_seq": seq, "mock_ts": time.time()}
    if opts.noise:
        yield b": comment\nnot-a-field\n\n"
    data = f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=not opts.multibyte)}\n\n".encode()
    return (yield from emit(send, data, seq, opts, environ))


def schema_arguments(schema: Any) -> dict:
    """Arguments that fit a JSON schema's properties, the same every time."""
    samples = {"string": "Paris", "integer": 1, "number": 1, "boolean": True, "array": [], "object": {}}
    properties = schema.get("properties") if isinstance(schema, dict) else None
    arguments = {}
    for name, spec in (properties if isinstance(properties, dict) else {}).items():
        spec = spec if isinstance(spec, dict) else {}
        enum = spec.get("enum")
        arguments[name] = enum[0] if isinstance(enum, list) and enum else samples.get(spec.get("type"), "Paris")
    return arguments


def skeleton(body: dict) -> dict:
    """The response object as `response.created` shows it: in progress, no output yet."""
    return {
        "id": f"resp_{uuid.uuid4().hex}", "object": "response", "created_at": int(time.time()),
        "status": "in_progress", "background": bool(body.get("background")), "completed_at": None, "error": None,
        "incomplete_details": None, "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"), "metadata": body.get("metadata") or {},
        "model": body["model"], "output": [], "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "store": body.get("store") is not False, "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}}, "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [], "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"), "usage": None, "user": body.get("user"),
    }  # fmt: skip


def finish(start: dict, reply: Reply, usage: dict) -> dict:
    """The response object once the reply is complete."""
    done = reply.status == "completed"
    return {**start, "status": reply.status, "completed_at": int(time.time()) if done else None,
            "incomplete_details": None if done else {"reason": "max_output_tokens"},
            "output": [output_item(reply, done=True)], "usage": usage}  # fmt: skip


def output_item(reply: Reply, done: bool) -> dict:
    text = "".join(reply.deltas) if done else ""
    status = reply.status if done else "in_progress"
    if reply.kind == "function_call":
        return {"id": reply.item_id, "type": "function_call", "status": status, "arguments": text,
                "call_id": reply.call_id, "name": reply.name}  # fmt: skip
    content = [_text_part(text)] if done else []
    return {"id": reply.item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def _text_part(text: str) -> dict:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def _usage(body: dict, reply: Reply) -> dict:
    extra = body.get("mock") if isinstance(body.get("mock"), dict) else {}
    counts = {k: extra.get(k) if isinstance(extra.get(k), int) and extra.get(k) >= 0 else 0
              for k in ("cached_tokens", "reasoning_tokens")}  # fmt: skip
    input_tokens = prompt_tokens(body)
    output_tokens = len(reply.deltas) + counts["reasoning_tokens"]
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": min(counts["cached_tokens"], input_tokens), "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": counts["reasoning_tokens"]},
        "total_tokens": input_tokens + output_tokens,
    }


def prompt_tokens(body: dict) -> int:
    """The input_tokens the mock reports: a quarter of the JSON size of the instructions and the input."""
    return max(1, len(json.dumps([body.get("instructions"), body.get("input")])) // 4)


def events(start: dict, reply: Reply, final: dict) -> Iterator[tuple[dict, bool]]:
    """The typed events of one reply, in the API's order, each with whether `delay` paces it."""
    where = {"item_id": reply.item_id, "output_index": 0}
    yield {"type": "response.created", "response": start}, False
    yield {"type": "response.in_progress", "response": start}, False
    yield {"type": "response.output_item.added", "output_index": 0, "item": output_item(reply, done=False)}, False
    text = "".join(reply.deltas)
    if reply.kind == "function_call":
        for i, delta in enumerate(reply.deltas):
            yield {"type": "response.function_call_arguments.delta", **where, "delta": delta}, i > 0
        yield {"type": "response.function_call_arguments.done", **where, "arguments": text}, False
    else:
        where["content_index"] = 0
        yield {"type": "response.content_part.added", **where, "part": _text_part("")}, False
        for i, delta in enumerate(reply.deltas):
            yield {"type": "response.output_text.delta", **where, "delta": delta, "logprobs": []}, i > 0
        yield {"type": "response.output_text.done", **where, "text": text, "logprobs": []}, False
        yield {"type": "response.content_part.done", **where, "part": _text_part(text)}, False
    yield {"type": "response.output_item.done", "output_index": 0, "item": output_item(reply, done=True)}, False
    end = "response.completed" if final["status"] == "completed" else "response.incomplete"
    yield {"type": end, "response": final}, False


def _events_or_error(start: dict, reply: Reply, final: dict, opts: Any) -> Iterator[tuple[dict, bool]]:
    """The events, or an `error` event in their place (error_first) or after `error_after` of them; the API ends a
    stream after an `error` event."""
    error = {"type": "error", "code": "server_overloaded", "message": "The model is overloaded.", "param": None}
    for seq, item in enumerate(events(start, reply, final)):
        if opts.error_first or seq == opts.error_after:
            yield error, False
            return
        yield item
