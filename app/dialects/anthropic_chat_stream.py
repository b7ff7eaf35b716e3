"""Chat-completions answers as Anthropic Messages: the shared answer tables and the stream translator (pure).

Stop reasons (STOP_REASONS): stop -> end_turn, length -> max_tokens, tool_calls (and the legacy
function_call) -> tool_use, content_filter -> refusal (the Messages reason for a classifier that stopped
the answer); anything else -> end_turn. A `stop` answer that carries tool calls is `tool_use` (some
servers say stop there, and agents loop on tool_use). A stop sequence is detectable only on servers that
name the matched string (vLLM's `stop_reason`, SGLang's `matched_stop`): then `stop_sequence`.

Usage: Messages counts cache reads apart from `input_tokens` (total input = input + cache creation +
cache read), chat counts them inside `prompt_tokens`; so input_tokens = prompt_tokens - cached_tokens,
cache_read_input_tokens = prompt_tokens_details.cached_tokens, cache_creation_input_tokens =
prompt_tokens_details.cache_write_tokens (0 when absent), output_tokens = completion_tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as quoted  # json.dumps(a str), without its set-up

from app.dialects.chat_events import more_text, tool_call_key
from app.services.sse import compact_json

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_MATCHED_STOP_KEYS = ("stop_reason", "matched_stop")  # vLLM, SGLang


def thinking_asked(request: dict) -> bool:
    """Whether the Messages request asked for thinking (reasoning then comes back as thinking blocks)."""
    thinking = request.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled")


def stop_reason(finish_reason: object, choice: dict, request: dict, *, has_tool_use: bool) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for a chat choice's finish_reason."""
    if finish_reason == "stop":
        matched = next((choice[k] for k in _MATCHED_STOP_KEYS if isinstance(choice.get(k), str)), None)
        sequences = request.get("stop_sequences")
        if matched is not None and isinstance(sequences, list) and matched in sequences:
            return "stop_sequence", matched
        if has_tool_use:
            return "tool_use", None
    return STOP_REASONS.get(finish_reason, "end_turn"), None  # type: ignore[arg-type]


def message_usage(chat_usage: object) -> dict | None:
    """Chat usage in the Messages form (see the module docstring), or None without usage."""
    if not isinstance(chat_usage, dict):
        return None
    details = chat_usage.get("prompt_tokens_details")
    cached, written = _count(details, "cached_tokens"), _count(details, "cache_write_tokens")
    return {
        "input_tokens": max(_count(chat_usage, "prompt_tokens") - cached - written, 0),
        "output_tokens": _count(chat_usage, "completion_tokens"),
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }


def _count(source: object, key: str) -> int:
    value = source.get(key) if isinstance(source, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def message_object(request: dict, *, message_id: str, model: str | None, content: list[dict],
                   reason: str | None, sequence: str | None, usage: dict | None) -> dict:  # fmt: skip
    """A Messages `message` object (the whole answer, or the empty one message_start carries)."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model or request.get("model") or "",
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage or {"input_tokens": 0, "output_tokens": 0},
    }


def tool_use_id(message_id: str, index: int) -> str:
    """An id for a tool call the upstream sent without one."""
    return f"toolu_{message_id.removeprefix('msg_')}_{index}"


def sse(event: dict) -> bytes:
    return f"event: {event['type']}\ndata: {compact_json(event)}\n\n".encode()


def error_event(error_type: str, message: str) -> bytes:
    """The Messages stream's `error` event."""
    return sse({"type": "error", "error": {"type": error_type, "message": message}})


@dataclass
class _Block:
    """One content block being streamed: its Messages index and kind; calls keep id, name and early arguments."""

    index: int
    kind: str  # "text", "thinking" or "tool_use"
    call_id: str = ""
    name: str = ""
    pending: str = ""  # arguments that came before the call's name (the block cannot start without it)
    started: bool = False
    stopped: bool = False
    template: tuple[str, str] | None = None  # a text block's delta event around the text (see _text_event)


class ChatToMessagesStream:
    """Parsed chat chunks in, Messages SSE events out (each a complete `event: X\\ndata: {json}\\n\\n`).

    feed() takes each chunk; finish() is called on `data: [DONE]` and sends message_delta (stop reason and
    usage: the usage chunk comes after the finish_reason) and message_stop; fail() ends a broken stream with
    an `error` event. After the end every call returns []. Only choice 0 is translated. Blocks go out one
    at a time, in order; a late fragment for a call whose block was already stopped (no known server
    interleaves calls) goes out on that block's index rather than being lost.
    """

    def __init__(self, request: dict, *, message_id: str) -> None:
        self.request, self.message_id = request, message_id
        self.usage: dict | None = None
        self._thinking = thinking_asked(request)
        self._model: str | None = None
        self._started = self._ended = False
        self._blocks: list[_Block] = []
        self._open: _Block | None = None
        self._calls: dict[int, _Block] = {}  # chat tool_calls index -> its block
        self._finish: tuple[object, dict] | None = None  # finish_reason and its choice

    def feed(self, chunk: dict) -> list[bytes]:
        """Events for one parsed chat chunk; an `{"error": ...}` chunk ends the stream like fail()."""
        if self._ended:
            return []
        block = self._open
        if block is not None and block.kind == "text":  # the open text block's next text: nearly every chunk
            text = more_text(chunk, self._model is not None)
            if text:
                return self._text_delta("text", text)
        if chunk.get("error"):
            return self.fail(*upstream_error(chunk["error"]))
        if isinstance(chunk.get("model"), str) and self._model is None:
            self._model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = message_usage(chunk["usage"])
        out = self._start()
        choices = chunk.get("choices") if isinstance(chunk.get("choices"), list) else []
        choice = next((c for c in choices if isinstance(c, dict) and c.get("index", 0) == 0), None)
        if choice is None:
            return out
        delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
        if self._thinking:
            out += self._text_delta("thinking", _reasoning(delta))
        content = delta.get("content")
        out += self._text_delta("text", content if isinstance(content, str) else "")
        calls = delta.get("tool_calls") if isinstance(delta.get("tool_calls"), list) else []
        for call in calls:
            if isinstance(call, dict):
                out += self._call_delta(call)
        if choice.get("finish_reason"):
            self._finish = (choice["finish_reason"], choice)
        return out

    def finish(self) -> list[bytes]:
        """Stop the open block, then message_delta (stop reason, usage) and message_stop."""
        if self._ended:
            return []
        out = self._start() + self._stop_open()
        self._ended = True
        finish_reason, choice = self._finish or (None, {})
        has_tool_use = any(b.kind == "tool_use" for b in self._blocks)
        reason, sequence = stop_reason(finish_reason, choice, self.request, has_tool_use=has_tool_use)
        usage = self.usage or {"output_tokens": 0}
        delta = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": usage}
        return out + [sse(delta), sse({"type": "message_stop"})]

    def fail(self, error_type: str, message: str) -> list[bytes]:
        """An `error` event (after message_start if nothing was sent yet)."""
        if self._ended:
            return []
        out = self._start()
        self._ended = True
        return out + [error_event(error_type, message)]

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        usage = {**self.usage, "output_tokens": 0} if self.usage else None
        message = message_object(self.request, message_id=self.message_id, model=self._model, content=[],
                                 reason=None, sequence=None, usage=usage)  # fmt: skip
        return [sse({"type": "message_start", "message": message})]

    def _text_delta(self, kind: str, text: str) -> list[bytes]:
        if not text:
            return []
        out: list[bytes] = []
        block = self._open
        if block is None or block.kind != kind:
            out += self._stop_open()
            block = self._new_block(kind)
            out += self._start_block(block)
        if kind == "text":
            return out + [self._text_event(block, text)]
        delta = {"type": "thinking_delta", "thinking": text}
        return out + [sse({"type": "content_block_delta", "index": block.index, "delta": delta})]

    def _text_event(self, block: _Block, text: str) -> bytes:
        """The text delta event, as `sse` writes it, from a template made once per block: the one event of nearly
        every chunk, so only its text is encoded for it."""
        if block.template is None:
            head = f'event: content_block_delta\ndata: {{"type":"content_block_delta","index":{block.index},'
            block.template = (head + '"delta":{"type":"text_delta","text":', "}}\n\n")
        head, tail = block.template
        return f"{head}{quoted(text)}{tail}".encode()

    def _call_delta(self, call: dict) -> list[bytes]:
        key = tool_call_key(call, self._calls, len(self._blocks))
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        name = function.get("name") if isinstance(function.get("name"), str) else ""
        block, out = self._calls.get(key), []
        if block is None:
            out += self._stop_open()
            block = self._new_block("tool_use")
            given = call.get("id")
            block.call_id = given if isinstance(given, str) and given else tool_use_id(self.message_id, block.index)
            self._calls[key] = block
        if not block.name and name:
            block.name = name  # some servers send the name after the id; never concatenated
        arguments = function.get("arguments")
        arguments = arguments if isinstance(arguments, str) else ""
        if not block.started:
            if not block.name:
                block.pending += arguments
                return out
            out += self._start_block(block)
            arguments, block.pending = block.pending + arguments, ""
        if arguments:
            delta = {"type": "input_json_delta", "partial_json": arguments}
            out.append(sse({"type": "content_block_delta", "index": block.index, "delta": delta}))
        return out

    def _new_block(self, kind: str) -> _Block:
        block = _Block(len(self._blocks), kind)
        self._blocks.append(block)
        self._open = block
        return block

    def _start_block(self, block: _Block) -> list[bytes]:
        block.started = True
        if block.kind == "tool_use":
            content = {"type": "tool_use", "id": block.call_id, "name": block.name, "input": {}}
        elif block.kind == "thinking":
            content = {"type": "thinking", "thinking": "", "signature": ""}  # chat reasoning carries no signature
        else:
            content = {"type": "text", "text": ""}
        return [sse({"type": "content_block_start", "index": block.index, "content_block": content})]

    def _stop_open(self) -> list[bytes]:
        """Stop the open block; a call still waiting for its name starts now, nameless, to keep the order."""
        block, self._open = self._open, None
        if block is None:
            return []
        return (self._start_block(block) if not block.started else []) + self._stop_block(block)

    def _stop_block(self, block: _Block) -> list[bytes]:
        if block.stopped:
            return []
        block.stopped = True
        if block.pending:
            fragment = {"type": "input_json_delta", "partial_json": block.pending}
            block.pending = ""
            return [sse({"type": "content_block_delta", "index": block.index, "delta": fragment}),
                    sse({"type": "content_block_stop", "index": block.index})]  # fmt: skip
        return [sse({"type": "content_block_stop", "index": block.index})]


def _reasoning(delta: dict) -> str:
    """Reasoning text of a chat delta, under either name servers use."""
    for key in ("reasoning_content", "reasoning"):
        value = delta.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def upstream_error(error: object) -> tuple[str, str]:
    """(Messages error type, message) for an error object a chat upstream sent in its stream."""
    if not isinstance(error, dict):
        return "api_error", str(error)
    kind = f"{error.get('type') or ''} {error.get('code') or ''}"
    error_type = next((name for hint, name in _ERROR_HINTS if hint in kind), "api_error")
    return error_type, str(error.get("message") or "The upstream reported an error.")


_ERROR_HINTS = (("rate_limit", "rate_limit_error"), ("overloaded", "overloaded_error"),
                ("invalid_request", "invalid_request_error"))  # fmt: skip
