"""The bundled mock's chat completions, completions and embeddings answers (deterministic, from the request).

A chat request with a function tool whose last message is the user's and mentions the weather (or whose
`tool_choice` names the function or is "required") gets a tool call fitted to the tool's schema; a reply
after a `tool` message quotes the tool's result.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

from app.mock_responses import schema_arguments
from app.mock_resume import continuation, generated, multibyte_words, prefill_text

REPLY = "Hello from the Sluice mock upstream! Streaming works end to end through the gateway."


def chunks(body: dict, chat: bool, opts: Any) -> Iterator[dict]:
    words = answer_words(body, chat, opts)
    base = {"id": "chatcmpl-mock", "created": int(time.time()), "model": body["model"]}
    base["object"] = "chat.completion.chunk" if chat else "text_completion"
    call = _tool_call(body) if chat else None
    if call is not None:  # the name first, then the arguments in two fragments, as OpenAI streams them
        head = {"index": 0, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"],
                "arguments": ""}}  # fmt: skip
        arguments = call["function"]["arguments"]
        fragments = [head, {"index": 0, "function": {"arguments": arguments[:5]}},
                     {"index": 0, "function": {"arguments": arguments[5:]}}]  # fmt: skip
        for i, fragment in enumerate(fragments):
            delta = {"role": "assistant", "tool_calls": [fragment]} if i == 0 else {"tool_calls": [fragment]}
            yield {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}
        words = []
    for i, word in enumerate(words):
        last = i == len(words) - 1
        if chat:
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
            choice = {"index": 0, "delta": delta, "finish_reason": "stop" if last else None}
        else:
            choice = {"index": 0, "text": word, "finish_reason": "stop" if last else None}
        yield {**base, "choices": [choice]}
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        yield {**base, "choices": [], "usage": _usage(body, generated(words))}


def reply_words(count: int, multibyte: bool = False) -> list[str]:
    """The mock's deterministic reply as `count` words (at least one), each with its trailing space."""
    if multibyte:
        return multibyte_words(count)
    words = REPLY.split(" ")
    return [(words[i % len(words)] + " ") for i in range(max(1, count))]


def answer_words(body: dict, chat: bool, opts: Any) -> list[str]:
    """The words this request gets: the reply, or its rest after a final assistant message (prefill/continue)."""
    words = reply_words(opts.chunks, opts.multibyte)
    return continuation(words, prefill_text(body.get("messages"))) if chat else words


def completion(body: dict, chat: bool, opts: Any) -> dict:
    words = answer_words(body, chat, opts)
    text = "".join(words)
    call = _tool_call(body) if chat else None
    if call is not None:
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        choice, kind = {"index": 0, "message": message, "finish_reason": "tool_calls"}, "chat.completion"
    elif chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": _quoted(body, text)}, "finish_reason": "stop"}
        kind = "chat.completion"
    else:
        choice, kind = {"index": 0, "text": text, "finish_reason": "stop"}, "text_completion"
    return {"id": "chatcmpl-mock", "object": kind, "created": int(time.time()), "model": body["model"],
            "choices": [choice], "usage": _usage(body, generated(words))}  # fmt: skip


def _tool_call(body: dict) -> dict | None:
    """A call of the first function tool when the last message is the user's and mentions the weather
    (or `tool_choice` names the function, or is "required"), like the Responses mock."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    choice = body.get("tool_choice")
    forced = choice == "required" or (isinstance(choice, dict) and "function" in choice)
    asked = last.get("role") == "user" and "weather" in json.dumps(last.get("content", "")).lower()
    if not tools or choice == "none" or not (forced or asked):
        return None
    named = choice["function"].get("name") if isinstance(choice, dict) and "function" in choice else None
    tool = next((t for t in tools if t["function"].get("name") == named), tools[0])["function"]
    arguments = json.dumps(schema_arguments(tool.get("parameters")))  # fits the schema, as the Responses mock's
    return {"id": "call_mock_1", "type": "function", "function": {"name": tool.get("name"), "arguments": arguments}}


def _quoted(body: dict, text: str) -> str:
    """The reply, quoting the last tool result if the last message is one (a round trip shows it came back)."""
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    return f"The tool said: {last.get('content')}. {text}" if last.get("role") == "tool" else text


def prompt_tokens(body: dict) -> int:
    """The prompt_tokens the mock reports: a quarter of the JSON size of the messages (or the prompt)."""
    return max(1, len(json.dumps(body.get("messages", body.get("prompt", "")))) // 4)


def _usage(body: dict, completion_tokens: int) -> dict:
    prompt = prompt_tokens(body)
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens}  # fmt: skip


def embeddings(body: dict) -> dict:
    inputs = body.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    data = []
    for i, item in enumerate(items):
        digest = hashlib.sha256(json.dumps(item).encode()).digest()
        data.append({"object": "embedding", "index": i, "embedding": [b / 255 for b in digest[:8]]})
    usage = {"prompt_tokens": len(items), "total_tokens": len(items)}
    return {"object": "list", "data": data, "model": body["model"], "usage": usage}
