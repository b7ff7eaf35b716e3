"""Anthropic Messages answers as chat completions: the shared answer tables and the stream translator (pure).

Finish reasons (FINISH_REASONS): end_turn, stop_sequence and pause_turn -> stop; max_tokens and
model_context_window_exceeded -> length; tool_use -> tool_calls; refusal -> content_filter; anything else
-> stop. Thinking comes back as `reasoning_content` (as DeepSeek and vLLM send it); redacted thinking and
signatures are dropped.

Usage: chat counts cache reads and writes inside `prompt_tokens`, Messages apart from `input_tokens`; so
prompt_tokens = input_tokens + cache_read_input_tokens + cache_creation_input_tokens,
prompt_tokens_details.cached_tokens = cache_read_input_tokens, completion_tokens = output_tokens.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii as quoted  # json.dumps(a str), without its set-up

from app.dialects.chat_events import DONE, error_event
from app.services.sse import compact_json

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_USAGE_KEYS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


def finish_reason(stop_reason: object) -> str:
    return FINISH_REASONS.get(stop_reason, "stop")  # type: ignore[arg-type]


def chat_usage(counts: object) -> dict | None:
    """Messages usage in the chat form (see the module docstring), or None without usage."""
    if not isinstance(counts, dict):
        return None
    given = {key: _count(counts, key) for key in _USAGE_KEYS}
    cached = given["cache_read_input_tokens"]
    prompt = given["input_tokens"] + cached + given["cache_creation_input_tokens"]
    completion = given["output_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}  # fmt: skip


def _count(source: dict, key: str) -> int:
    value = source.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def include_usage(request: dict) -> bool:
    options = request.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def frame(chunk: dict) -> bytes:
    return b"data: " + compact_json(chunk).encode() + b"\n\n"


class MessagesToChatStream:
    """Parsed Messages events (name, data) in, chat chunks out (`data: {json}\\n\\n`, and `data: [DONE]\\n\\n`).

    message_start gives the role chunk; text, thinking and tool-use deltas become content, reasoning_content
    and tool_calls deltas (a call's id and name first, then argument fragments); message_delta gives the
    finish chunk; message_stop the usage chunk (when the request asked with stream_options.include_usage)
    and [DONE]. `ping` and unknown events give nothing; an `error` event ends the stream like fail().
    finish() ends a stream that had no message_stop the same way (the caller decides whether such an end
    is a failure). After the end every call returns []. Upstream event order is trusted.
    """

    def __init__(self, request: dict, *, completion_id: str, created: int) -> None:
        self.request, self.completion_id, self.created = request, completion_id, created
        self.usage: dict | None = None
        self._counts: dict = {}
        self._model = request.get("model") if isinstance(request.get("model"), str) else ""
        self._started = self._finished = self._ended = False
        self._calls: dict[int, int] = {}  # Messages block index -> chat tool_calls index
        self._template: tuple[str, str, str] | None = None  # a text chunk around its text, for the model it names

    def feed(self, name: str, data: dict) -> list[bytes]:
        if self._ended:
            return []
        if name == "error":
            error = data.get("error") if isinstance(data.get("error"), dict) else {}
            kind, message = error.get("type"), error.get("message")
            return self.fail(str(kind or "upstream_error"), str(message or "The upstream reported an error."))
        if name == "message_start":
            return self._message_start(data.get("message") if isinstance(data.get("message"), dict) else {})
        if name == "content_block_start":
            return self._block_start(data)
        if name == "content_block_delta":
            return self._block_delta(data)
        if name == "message_delta":
            return self._message_delta(data)
        if name == "message_stop":
            return self.finish()
        return []  # ping, content_block_stop, and events this version does not know

    def finish(self) -> list[bytes]:
        """The finish chunk (unless sent), the usage chunk when asked, then [DONE]."""
        if self._ended:
            return []
        out = self._start()
        if not self._finished:
            out.append(self._chunk({}, finish_reason("end_turn")))
        self._ended = True
        if include_usage(self.request):
            out.append(frame({**self._head(), "choices": [], "usage": self.usage or chat_usage({})}))
        return [*out, DONE]

    def fail(self, code: str, message: str) -> list[bytes]:
        """The OpenAI error event, then [DONE]."""
        if self._ended:
            return []
        self._ended = True
        return [error_event(code, message), DONE]

    def _message_start(self, message: dict) -> list[bytes]:
        if isinstance(message.get("model"), str) and message["model"]:
            self._model = message["model"]
        self._add_usage(message.get("usage"))
        return self._start()

    def _block_start(self, data: dict) -> list[bytes]:
        out = self._start()
        block = data.get("content_block") if isinstance(data.get("content_block"), dict) else {}
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str) and block["text"]:
            out.append(self._chunk({"content": block["text"]}))
        elif kind == "thinking" and isinstance(block.get("thinking"), str) and block["thinking"]:
            out.append(self._chunk({"reasoning_content": block["thinking"]}))
        elif kind == "tool_use":
            index = self._calls[data.get("index")] = len(self._calls)  # type: ignore[index]
            given = block.get("input")
            arguments = json.dumps(given) if isinstance(given, dict) and given else ""
            call = {"index": index, "id": str(block.get("id") or ""), "type": "function",
                    "function": {"name": str(block.get("name") or ""), "arguments": arguments}}  # fmt: skip
            out.append(self._chunk({"tool_calls": [call]}))
        return out

    def _block_delta(self, data: dict) -> list[bytes]:
        delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
        kind = delta.get("type")
        if kind == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
            return self._start() + [self._text_chunk(delta["text"])]
        if kind == "thinking_delta" and isinstance(delta.get("thinking"), str) and delta["thinking"]:
            return self._start() + [self._chunk({"reasoning_content": delta["thinking"]})]
        index = self._calls.get(data.get("index"))  # type: ignore[arg-type]
        fragment = delta.get("partial_json")
        if kind == "input_json_delta" and index is not None and isinstance(fragment, str) and fragment:
            call = {"index": index, "function": {"arguments": fragment}}
            return self._start() + [self._chunk({"tool_calls": [call]})]
        return []  # signature and citations deltas, empty fragments

    def _message_delta(self, data: dict) -> list[bytes]:
        self._add_usage(data.get("usage"))
        delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
        if self._finished or not delta.get("stop_reason"):
            return []
        self._finished = True
        return self._start() + [self._chunk({}, finish_reason(delta["stop_reason"]))]

    def _add_usage(self, counts: object) -> None:
        """message_start has input counts, message_delta the cumulative output (and on newer servers all)."""
        if isinstance(counts, dict):
            self._counts.update({k: v for k, v in counts.items() if k in _USAGE_KEYS and v is not None})
            self.usage = chat_usage(self._counts)

    def _start(self) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        return [self._chunk({"role": "assistant", "content": ""})]

    def _head(self) -> dict:
        return {"id": self.completion_id, "object": "chat.completion.chunk", "created": self.created,
                "model": self._model}  # fmt: skip

    def _text_chunk(self, text: str) -> bytes:
        """`_chunk({"content": text})`, from a template made once per model name: the chunk of nearly every
        event, so only its text is encoded for it."""
        if self._template is None or self._template[0] != self._model:
            head = compact_json({**self._head(), "choices": [{"index": 0, "delta": {"content": ""}}]})
            tail = '},"finish_reason":null,"logprobs":null}]}\n\n'
            self._template = (self._model, "data: " + head.removesuffix('""}}]}'), tail)
        _, head, tail = self._template
        return f"{head}{quoted(text)}{tail}".encode()

    def _chunk(self, delta: dict, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return frame({**self._head(), "choices": [choice]})
