"""The answer side of the Responses <-> chat translation: chat answers and chat chunks as Responses shapes.

Pure: no I/O, no flask, no clock. Item ids derive from the response id (`msg_<base>_<index>`), so the same
input gives the same output. Chat `reasoning_content` (or `reasoning`, as vLLM and OpenRouter name it)
becomes a `reasoning` item whose summary is that text; chat `refusal` becomes a `refusal` part (plain
answers only). A stream keeps one text or reasoning item open at a time; tool calls stay open until text
follows them or the stream ends, so servers that send several calls' fragments in one chunk still work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as quoted  # json.dumps(a str), without its set-up

from app.dialects.chat_events import more_text, tool_call_key
from app.services.sse import compact_json

ENDED = {"length": "max_output_tokens", "content_filter": "content_filter"}  # chat finish_reason -> incomplete
# The codes the SDK accepts in a response's `error`; the `error` event carries the exact code either way.
FAILED_CODES = frozenset({"server_error", "rate_limit_exceeded", "invalid_prompt"})
# How a text-like item streams: its part events, its delta events and the index field they carry.
_PART_EVENTS = {
    "message": ("response.content_part", "response.output_text", "content_index"),
    "reasoning": ("response.reasoning_summary_part", "response.reasoning_summary_text", "summary_index"),
}


def response_object(request: dict, *, response_id: str, created_at: int, model: str | None, status: str,
                    output: list[dict], usage: dict | None = None, finish_reason: str | None = None,
                    error: dict | None = None) -> dict:  # fmt: skip
    """The Responses `response` object around `output`, echoing what the request asked for."""
    reason = ENDED.get(finish_reason or "")
    return {
        "id": response_id, "object": "response", "created_at": created_at, "status": status,
        "model": model or request.get("model") or "", "output": output, "usage": usage, "error": error,
        "incomplete_details": {"reason": reason} if reason and status == "incomplete" else None,
        "instructions": request.get("instructions"), "tools": offered_tools(request),
        "tool_choice": echoed_tool_choice(request), "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "temperature": request.get("temperature"), "top_p": request.get("top_p"),
        "max_output_tokens": request.get("max_output_tokens"), "metadata": request.get("metadata") or {},
        "text": request.get("text") or {"format": {"type": "text"}},
        "reasoning": request.get("reasoning") or {"effort": None, "summary": None},
        "store": False, "background": False, "previous_response_id": None, "truncation": "disabled",
        "user": request.get("user"),
    }  # fmt: skip


def offered_tools(request: dict) -> list[dict]:
    """The function tools the upstream was offered (built-in ones are refused or dropped)."""
    tools = request.get("tools")
    return [t for t in tools if isinstance(t, dict) and t.get("type") == "function"] if isinstance(tools, list) else []


def echoed_tool_choice(request: dict) -> str | dict:
    choice = request.get("tool_choice")
    if choice is None or (isinstance(choice, dict) and choice.get("type") != "function"):
        return "auto"  # unset, or it named a dropped built-in tool
    return choice


def response_usage(chat_usage: dict | None) -> dict | None:
    """Chat usage (prompt/completion tokens and their details) in the Responses form."""
    if not isinstance(chat_usage, dict):
        return None
    prompt, completion = _count(chat_usage, "prompt_tokens"), _count(chat_usage, "completion_tokens")
    prompt_details = chat_usage.get("prompt_tokens_details") or {}
    completion_details = chat_usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _count(prompt_details, "cached_tokens"),
            "cache_write_tokens": _count(prompt_details, "cache_write_tokens"),
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": _count(completion_details, "reasoning_tokens")},
        "total_tokens": _count(chat_usage, "total_tokens") or prompt + completion,
    }


def _count(source: object, key: str) -> int:
    value = source.get(key) if isinstance(source, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def item_id(response_id: str, prefix: str, index: int) -> str:
    return f"{prefix}_{response_id.removeprefix('resp_')}_{index}"


def message_item(item_id: str, text: str | None, status: str, refusal: str | None = None) -> dict:
    parts = [] if text is None else [text_part(text)]
    if refusal:
        parts.append({"type": "refusal", "refusal": refusal})
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": parts}


def text_part(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def reasoning_item(item_id: str, text: str | None, status: str) -> dict:
    summary = [] if text is None else [{"type": "summary_text", "text": text}]
    return {"id": item_id, "type": "reasoning", "summary": summary, "status": status}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict:
    return {"id": item_id, "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}  # fmt: skip


def reasoning_text(message: dict) -> str:
    """Reasoning text from a chat message or delta, under either name servers use."""
    for key in ("reasoning_content", "reasoning"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def sse(event: dict) -> bytes:
    return f"event: {event['type']}\ndata: {compact_json(event)}\n\n".encode()


@dataclass
class _Item:
    """One output item being streamed: its index, id, kind and what has arrived so far."""

    index: int
    id: str
    kind: str  # "message", "reasoning" or "function_call"
    call_id: str = ""
    name: str = ""
    done: dict | None = field(default=None)
    template: tuple[str, str, str] | None = None  # its delta event's text around the sequence number and delta
    pieces: list[str] = field(default_factory=list)  # its text (a call's arguments) as it came: joined when read,
    # as appending to one string copies all of it each time (quadratic in a long answer)

    @property
    def text(self) -> str:
        if len(self.pieces) > 1:
            self.pieces[:] = ["".join(self.pieces)]
        return self.pieces[0] if self.pieces else ""

    def final(self, status: str) -> dict:
        if self.kind == "function_call":
            return call_item(self.id, self.call_id, self.name, self.text, status)
        maker = message_item if self.kind == "message" else reasoning_item
        return maker(self.id, self.text, status)

    def opened(self) -> dict:
        if self.kind == "function_call":
            return call_item(self.id, self.call_id, self.name, "", "in_progress")
        maker = message_item if self.kind == "message" else reasoning_item
        return maker(self.id, None, "in_progress")


class ChatStreamTranslator:
    """Chat SSE chunks in, Responses typed SSE events out (each a complete `event: X\\ndata: {json}\\n\\n`).

    feed() takes each parsed chunk; finish() is called on `data: [DONE]` and sends the terminal event
    (usage comes in a chunk after the finish_reason, so not before); fail() ends a broken stream with
    `error` then `response.failed`. After the end every call returns []. Only choice 0 is translated.
    """

    def __init__(self, request: dict, *, response_id: str, created_at: int) -> None:
        self.request, self.response_id, self.created_at = request, response_id, created_at
        self.usage: dict | None = None
        self._model: str | None = None
        self._seq = 0
        self._started = self._ended = False
        self._items: list[_Item] = []
        self._text: _Item | None = None  # the open message or reasoning item
        self._calls: dict[int, _Item] = {}  # chat tool_calls index -> its open item
        self._unnamed: dict[int, dict] = {}  # a call's fragments that came before its name (the item needs it)
        self._finish_reason: str | None = None

    def feed(self, chunk: dict) -> list[bytes]:
        """Events for one parsed chat chunk; an `{"error": ...}` chunk ends the stream like fail()."""
        if self._ended:
            return []
        item = self._text
        if item is not None and item.kind == "message":  # the open message's next text: nearly every chunk
            text = more_text(chunk, self._model is not None)
            if text:
                return self._text_delta("message", text)
        if chunk.get("error"):
            return self.fail(*_upstream_error(chunk["error"]))
        if isinstance(chunk.get("model"), str) and self._model is None:
            self._model = chunk["model"]
        out = self._start()
        if isinstance(chunk.get("usage"), dict):
            self.usage = response_usage(chunk["usage"])
        choices = chunk.get("choices") if isinstance(chunk.get("choices"), list) else []
        choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)
        if choice is None:
            return out
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        out += self._text_delta("reasoning", reasoning_text(delta))
        content = delta.get("content")
        out += self._text_delta("message", content if isinstance(content, str) else "")
        calls = delta.get("tool_calls") if isinstance(delta.get("tool_calls"), list) else []
        for call in calls:
            if isinstance(call, dict):
                out += self._call_delta(call)
        if choice.get("finish_reason"):
            self._finish_reason = choice["finish_reason"]
        return out

    def finish(self) -> list[bytes]:
        """Close every open item and send response.completed (or .incomplete on length/content_filter)."""
        if self._ended:
            return []
        out = self._start() + self._flush_unnamed()
        status = "incomplete" if self._finish_reason in ENDED else "completed"
        out += self._close_all(status)
        self._ended = True
        return out + [self._event(f"response.{status}", response=self._response(status))]

    def fail(self, code: str, message: str) -> list[bytes]:
        """`error` then `response.failed` (after `response.created` if nothing was sent yet)."""
        if self._ended:
            return []
        out = self._start()
        self._ended = True
        out.append(self._event("error", code=code, message=message, param=None))
        error = {"code": code if code in FAILED_CODES else "server_error", "message": message}
        return out + [self._event("response.failed", response=self._response("failed", error))]

    def _event(self, kind: str, **fields: object) -> bytes:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return sse(event)

    def _response(self, status: str, error: dict | None = None) -> dict:
        output = [item.done or item.final("incomplete") for item in self._items]
        return response_object(self.request, response_id=self.response_id, created_at=self.created_at,
                               model=self._model, status=status, output=output, usage=self.usage,
                               finish_reason=self._finish_reason, error=error)  # fmt: skip

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        snapshot = response_object(self.request, response_id=self.response_id, created_at=self.created_at,
                                   model=self._model, status="in_progress", output=[])  # fmt: skip
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=snapshot)]  # fmt: skip

    def _open(self, kind: str, **fields: str) -> tuple[_Item, list[bytes]]:
        index = len(self._items)
        prefix = {"message": "msg", "reasoning": "rs", "function_call": "fc"}[kind]
        item = _Item(index, item_id(self.response_id, prefix, index), kind, **fields)
        self._items.append(item)
        out = [self._event("response.output_item.added", output_index=index, item=item.opened())]
        if kind in _PART_EVENTS:
            part_event, _, index_key = _PART_EVENTS[kind]
            out.append(self._event(f"{part_event}.added", item_id=item.id, output_index=index, **{index_key: 0},
                                   part=_part(kind, "")))  # fmt: skip
        return item, out

    def _text_delta(self, kind: str, text: str) -> list[bytes]:
        if not text:
            return []
        out: list[bytes] = []
        if self._text is None or self._text.kind != kind:
            out += self._close_all("completed")
            self._text, opened = self._open(kind)
            out += opened
        item = self._text
        item.pieces.append(text)
        out.append(self._delta_event(item, text))
        return out

    def _delta_event(self, item: _Item, text: str) -> bytes:
        """The text delta event, as `_event` writes it (key order, compact JSON, ASCII escapes), from a template
        made once per item: the one event of nearly every chunk, so only the delta's text is encoded for it."""
        if item.template is None:
            _, text_event, index_key = _PART_EVENTS[item.kind]
            kind = f"{text_event}.delta"
            head = f'event: {kind}\ndata: {{"type":{json.dumps(kind)},"sequence_number":'
            middle = f',"item_id":{json.dumps(item.id)},"output_index":{item.index},"{index_key}":0,"delta":'
            tail = ',"logprobs":[]}\n\n' if item.kind == "message" else "}\n\n"
            item.template = (head, middle, tail)
        head, middle, tail = item.template
        seq, self._seq = self._seq, self._seq + 1
        return f"{head}{seq}{middle}{quoted(text)}{tail}".encode()

    def _call_delta(self, call: dict) -> list[bytes]:
        key = tool_call_key(call, self._calls, len(self._items))
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        item = self._calls.get(key)
        if item is not None:
            return self._arguments(item, function.get("arguments"))
        name = function.get("name") if isinstance(function.get("name"), str) else ""
        held = self._unnamed.setdefault(key, {"id": None, "arguments": ""})
        held["id"] = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else held["id"]
        held["arguments"] += function.get("arguments") if isinstance(function.get("arguments"), str) else ""
        if not name:  # output_item.added must name the function: its fragments wait for the name
            return []
        del self._unnamed[key]
        return self._open_call(key, held["id"], name, held["arguments"])

    def _open_call(self, key: int, call_id: str | None, name: str, arguments: str) -> list[bytes]:
        out = self._close_text("completed")
        call_id = call_id or item_id(self.response_id, "call", len(self._items))
        item, opened = self._open("function_call", call_id=call_id, name=name)
        self._calls[key] = item
        return out + opened + self._arguments(item, arguments)

    def _arguments(self, item: _Item, arguments: object) -> list[bytes]:
        if not isinstance(arguments, str) or not arguments:
            return []
        item.pieces.append(arguments)
        return [self._event("response.function_call_arguments.delta", item_id=item.id, output_index=item.index,
                            delta=arguments)]  # fmt: skip

    def _flush_unnamed(self) -> list[bytes]:
        """Calls whose name never came, opened as they are at the end (nothing is lost)."""
        out = [event for key, held in self._unnamed.items()
               for event in self._open_call(key, held["id"], "", held["arguments"])]  # fmt: skip
        self._unnamed.clear()
        return out

    def _close_text(self, status: str) -> list[bytes]:
        item, self._text = self._text, None
        return [] if item is None else self._close(item, status)

    def _close_all(self, status: str) -> list[bytes]:
        """Close the open text item and every open call, in output order; the last one gets `status`."""
        open_items = [i for i in self._items if i.done is None]
        out: list[bytes] = []
        for n, item in enumerate(open_items):
            out += self._close(item, status if n == len(open_items) - 1 else "completed")
        # A fragment for a call closed here (text came between its fragments) would open a new item;
        # no server is known to do that, chat sends each call's fragments before the next part.
        self._text, self._calls = None, {}
        return out

    def _close(self, item: _Item, status: str) -> list[bytes]:
        item.done = item.final(status)
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "function_call":
            out = [self._event("response.function_call_arguments.done", **where, arguments=item.text)]
        else:
            part_event, text_event, index_key = _PART_EVENTS[item.kind]
            extra = {"logprobs": []} if item.kind == "message" else {}
            at = {**where, index_key: 0}
            out = [
                self._event(f"{text_event}.done", **at, text=item.text, **extra),
                self._event(f"{part_event}.done", **at, part=_part(item.kind, item.text)),
            ]
        return out + [self._event("response.output_item.done", output_index=item.index, item=item.done)]


def _upstream_error(error: object) -> tuple[str, str]:
    """(code, message) of an error object a chat upstream sent in its stream."""
    if not isinstance(error, dict):
        return "upstream_error", str(error)
    code = error.get("code") or error.get("type") or "upstream_error"
    return str(code), str(error.get("message") or "The upstream reported an error.")


def _part(kind: str, text: str) -> dict:
    return text_part(text) if kind == "message" else {"type": "summary_text", "text": text}
