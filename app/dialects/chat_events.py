"""The chat-completions stream's own markers: the `data: [DONE]` that ends it, and its error event."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from app.errors import error_body

DONE = b"data: [DONE]\n\n"


def error_event(code: str, message: str) -> bytes:
    body = error_body(message, type="server_error", code=code)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def is_done(raw: bytes) -> bool:
    if b"[DONE]" not in raw:  # nearly every event: one scan in C
        return False
    return any(line.startswith(b"data:") and line[5:].strip() == b"[DONE]" for line in raw.splitlines())


def more_text(chunk: dict, model_known: bool) -> str:
    """The text of a chunk that only adds text to choice 0's answer, the shape of nearly every chunk; "" for
    any other (an error, usage, a finish_reason, reasoning, a tool call, another choice, or a model name not
    yet known). A translator's shortcut: what its general path would do with such a chunk, done directly."""
    choices = chunk.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or chunk.get("error") or isinstance(chunk.get("usage"), dict):
        return ""
    if not model_known and isinstance(chunk.get("model"), str):
        return ""
    choice = choices[0]
    if not isinstance(choice, dict) or choice.get("index", 0) != 0 or choice.get("finish_reason"):
        return ""
    delta = choice.get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    if not isinstance(content, str) or len(delta) > 1 and any(delta.get(key) for key in MORE_THAN_TEXT):
        return ""
    return content


MORE_THAN_TEXT = ("reasoning_content", "reasoning", "tool_calls")  # delta members the general path reads


def tool_call_key(call: dict, open_calls: Mapping[int, Any], opened: int) -> int:
    """Which tool call a chat delta fragment belongs to: its `index`, or for servers that leave the index out,
    its id among `open_calls` (key -> something with a `call_id`); `opened` counts what the translator has
    opened so far, so a new call without an index gets a key no index can take."""
    index = call.get("index")
    if isinstance(index, int) and not isinstance(index, bool):
        return index
    call_id = call.get("id")
    known = {value.call_id: key for key, value in open_calls.items()}
    if call_id and call_id in known:
        return known[call_id]
    if not call_id and open_calls:
        return next(reversed(open_calls))  # a fragment continues the latest call
    return -1 - opened
