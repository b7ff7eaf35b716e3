"""Translate an Anthropic Messages request to a chat-completions body, and a chat answer back (pure functions).

Translated: `model`; `system` (a string, or text blocks joined with "\\n") as a leading system message;
`messages` with string content or blocks: `text`; `image` (a base64 source as a data URL, a url source as
its URL); assistant `tool_use` blocks as `tool_calls` (arguments = the input as JSON); user `tool_result`
blocks as `tool` messages, put first and in the order of the preceding assistant's calls, with the rest of
that user message (text, images) in a user message after them. A tool result's content (a string or
text blocks, joined) is sent as is, prefixed with "Error: " when `is_error` (chat has no error flag);
images in a tool result go to that following user message (a `tool` message carries text only). Earlier
`thinking` / `redacted_thinking` blocks are dropped (a chat server cannot take them back). `tools` become
function tools (input_schema -> parameters); `tool_choice` auto -> "auto", any -> "required", tool ->
the named function, none -> "none", and `disable_parallel_tool_use` -> parallel_tool_calls false (all only
when there are tools: chat servers refuse them without); `stop_sequences` -> stop; `max_tokens`,
`temperature`, `top_p`; `metadata.user_id` -> user; `stream` (the caller adds `stream_options`).
`thinking` is not sent: the stream translator reads it from the request to return reasoning as thinking.

Ignored on purpose (IGNORED_FIELDS): `cache_control` wherever it appears, `service_tier`, `top_k` (chat has
no top_k), and any other unknown field. Refused with 400 naming the field (REFUSED_FIELDS): server tools
(a tool with a `type` other than "custom", such as web_search_*, bash_*, text_editor_*, computer_*,
code_execution_*), `document` and other block types chat cannot carry, `container`, `mcp_servers`.

Answers: see app/dialects/anthropic_chat_stream.py for stop reasons and usage. Content is the reasoning as
a thinking block (only when the request asked for thinking; its signature is empty), the text as one text
block (or, without content, the `refusal` text), then each tool call as a tool_use block whose input is the
parsed arguments; arguments that do not parse as a JSON object give input {} (the stream passes argument
fragments through as they come, so there the client's own parser decides).
"""

from __future__ import annotations

import json
from typing import Any

from app.dialects.anthropic_chat_stream import (
    ChatToMessagesStream,
    message_object,
    message_usage,
    stop_reason,
    thinking_asked,
    tool_use_id,
)
from app.errors import ApiError

__all__ = ["IGNORED_FIELDS", "REFUSED_FIELDS", "ChatToMessagesStream", "chat_to_message", "messages_to_chat"]

IGNORED_FIELDS = ("cache_control", "service_tier", "top_k")
REFUSED_FIELDS = {
    "container": "containers are not available on a chat-completions upstream",
    "mcp_servers": "MCP servers are not available on a chat-completions upstream",
}
_COPIED = ("max_tokens", "temperature", "top_p")
_DROPPED_BLOCKS = ("thinking", "redacted_thinking")
_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def messages_to_chat(payload: dict) -> dict:
    """The chat-completions body for a Messages request.

    Raises ApiError(400, ..., code="invalid_request_error", param=<field>) for anything untranslatable.
    """
    for name, why in REFUSED_FIELDS.items():
        if payload.get(name) is not None:
            raise _invalid(name, f"'{name}' cannot be translated ({why}).")
    chat: dict[str, Any] = {"model": payload["model"]} if "model" in payload else {}
    chat["messages"] = _system(payload.get("system")) + _messages(payload.get("messages"))
    tools = _tools(payload.get("tools"))
    choice, parallel = _tool_choice(payload.get("tool_choice"))
    if tools:
        chat["tools"] = tools
        if choice is not None:
            chat["tool_choice"] = choice
        if parallel is not None:
            chat["parallel_tool_calls"] = parallel
    elif isinstance(choice, dict):
        raise _invalid("tool_choice", "'tool_choice' names a tool, but the request has no tools.")
    for name in _COPIED:
        if payload.get(name) is not None:
            chat[name] = payload[name]
    sequences = payload.get("stop_sequences")
    if sequences is not None:
        if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
            raise _invalid("stop_sequences", "'stop_sequences' must be an array of strings.")
        if sequences:
            chat["stop"] = sequences
    user = _user_id(payload.get("metadata"))
    if user is not None:
        chat["user"] = user
    if payload.get("stream") is not None:
        chat["stream"] = bool(payload["stream"])
    return chat


def chat_to_message(chat: dict, request: dict, *, message_id: str) -> dict:
    """A plain chat.completion answer as a Messages `message` object (choice 0 only)."""
    choices = chat.get("choices") if isinstance(chat.get("choices"), list) else []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content: list[dict] = []
    reasoning = next((message[k] for k in ("reasoning_content", "reasoning") if isinstance(message.get(k), str)), "")
    if reasoning and thinking_asked(request):
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = _answer_text(message)
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls") if isinstance(message.get("tool_calls"), list) else []
    for call in (c for c in calls if isinstance(c, dict)):
        content.append(_tool_use(call, tool_use_id(message_id, len(content))))
    has_tool_use = any(block["type"] == "tool_use" for block in content)
    reason, sequence = stop_reason(choice.get("finish_reason"), choice, request, has_tool_use=has_tool_use)
    model = chat.get("model") if isinstance(chat.get("model"), str) else None
    return message_object(request, message_id=message_id, model=model, content=content, reason=reason,
                          sequence=sequence, usage=message_usage(chat.get("usage")))  # fmt: skip


def _answer_text(message: dict) -> str:
    """The answer's text: `content` (a string or parts), else a `refusal`."""
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    if isinstance(content, str) and content:
        return content
    refusal = message.get("refusal")
    return refusal if isinstance(refusal, str) else ""


def _tool_use(call: dict, fallback_id: str) -> dict:
    function = call.get("function") if isinstance(call.get("function"), dict) else {}
    try:
        parsed = json.loads(function.get("arguments") or "{}")
    except (TypeError, ValueError):
        parsed = None
    call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else fallback_id
    return {"type": "tool_use", "id": call_id, "name": str(function.get("name") or ""),
            "input": parsed if isinstance(parsed, dict) else {}}  # fmt: skip


def _system(value: object) -> list[dict]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [{"role": "system", "content": value}]
    if not isinstance(value, list):
        raise _invalid("system", "'system' must be a string or an array of text blocks.")
    texts = [_text_of(block, f"system[{i}]") for i, block in enumerate(value)]
    return [{"role": "system", "content": "\n".join(texts)}] if texts else []


def _text_of(block: object, where: str) -> str:
    if not isinstance(block, dict) or block.get("type") != "text":
        kind = block.get("type") if isinstance(block, dict) else None
        raise _invalid(f"{where}.type", f"'{where}' must be a text block (got type '{kind}').")
    if not isinstance(block.get("text"), str):
        raise _invalid(f"{where}.text", f"'{where}.text' must be a string.")
    return block["text"]


def _messages(value: object) -> list[dict]:
    if not isinstance(value, list):
        raise _invalid("messages", "'messages' must be an array of messages.")
    out: list[dict] = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if isinstance(message, dict) and message.get("role") == "system":  # Claude Code's first turn: a system
            out += _system(message.get("content"))  # message in the conversation, as chat takes it anywhere
            continue
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _invalid(f"{where}.role", f"'{where}.role' must be user or assistant.")
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
        elif not isinstance(content, list):
            raise _invalid(f"{where}.content", f"'{where}.content' must be a string or an array of content blocks.")
        elif message["role"] == "assistant":
            out.append(_assistant(content, where))
        else:
            out += _user(content, where, _call_order(out))
    return out


def _call_order(messages: list[dict]) -> list[str]:
    """The tool call ids of the last message, when it is an assistant message with calls."""
    last = messages[-1] if messages else {}
    return [call["id"] for call in last.get("tool_calls", [])] if last.get("role") == "assistant" else []


def _assistant(blocks: list, where: str) -> dict:
    texts: list[str] = []
    calls: list[dict] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = _kind(block, at)
        if kind == "text":
            texts.append(_text_of(block, at))
        elif kind == "tool_use":
            calls.append(_call(block, at))
        elif kind not in _DROPPED_BLOCKS:
            raise _untranslatable(f"{at}.type", f"content block type '{kind}' in an assistant message")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""  # only thinking blocks: an empty turn
    return message


def _call(block: dict, where: str) -> dict:
    if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
        raise _invalid(where, f"'{where}' must have a string 'id' and 'name'.")
    if not isinstance(block.get("input"), dict):
        raise _invalid(f"{where}.input", f"'{where}.input' must be an object.")
    arguments = json.dumps(block["input"], ensure_ascii=False)
    return {"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}}


def _user(blocks: list, where: str, call_order: list[str]) -> list[dict]:
    """Tool messages first (in the order of the calls they answer), then the rest as one user message."""
    results: list[dict] = []
    parts: list[dict] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = _kind(block, at)
        if kind == "text":
            parts.append({"type": "text", "text": _text_of(block, at)})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "tool_result":
            result, images = _tool_result(block, at)
            results.append(result)
            parts += images
        else:
            raise _untranslatable(f"{at}.type", f"content block type '{kind}' in a user message")
    rank = {call_id: n for n, call_id in enumerate(call_order)}
    results.sort(key=lambda m: rank.get(m["tool_call_id"], len(rank)))  # stable: unknown ids keep their order
    if not parts:
        return results
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*results, {"role": "user", "content": parts[0]["text"]}]
    return [*results, {"role": "user", "content": parts}]


def _kind(block: object, where: str) -> str:
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise _invalid(where, f"'{where}' must be an object with a string 'type'.")
    return block["type"]


def _image(block: dict, where: str) -> dict:
    source = block.get("source") if isinstance(block.get("source"), dict) else {}
    kind = source.get("type")
    if kind == "base64" and isinstance(source.get("media_type"), str) and isinstance(source.get("data"), str):
        url = f"data:{source['media_type']};base64,{source['data']}"
    elif kind == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    elif kind in ("base64", "url", None):
        raise _invalid(f"{where}.source", f"'{where}.source' must be a base64 source (media_type, data) or a url.")
    else:
        raise _untranslatable(f"{where}.source.type", f"image source type '{kind}'")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: dict, where: str) -> tuple[dict, list[dict]]:
    """The `tool` message for a tool_result block, and the images it carried (sent in a user message)."""
    if not isinstance(block.get("tool_use_id"), str):
        raise _invalid(f"{where}.tool_use_id", f"'{where}.tool_use_id' must be a string.")
    content = block.get("content", "")
    texts, images = [], []
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for k, part in enumerate(content):
            at = f"{where}.content[{k}]"
            kind = _kind(part, at)
            if kind == "image":
                images.append(_image(part, at))
            elif kind == "text":
                texts.append(_text_of(part, at))
            else:
                raise _untranslatable(f"{at}.type", f"tool_result content type '{kind}'")
    elif content is not None:
        raise _invalid(f"{where}.content", f"'{where}.content' must be a string or an array of blocks.")
    text = "\n".join(texts)
    if block.get("is_error") is True:
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": block["tool_use_id"], "content": text}, images


def _tools(value: object) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid("tools", "'tools' must be an array.")
    tools = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise _invalid(f"tools[{i}]", f"'tools[{i}]' must be an object.")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            message = (f"Tool type '{kind}' is an Anthropic server tool and cannot be sent to a chat-completions "
                       "upstream: remove it, or route the request to an Anthropic upstream.")  # fmt: skip
            raise ApiError(400, message, code="invalid_request_error", param=f"tools[{i}].type")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _invalid(f"tools[{i}].name", f"'tools[{i}].name' must be a non-empty string.")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _invalid(f"tools[{i}].input_schema", f"'tools[{i}].input_schema' must be an object.")
        function = {"name": tool["name"], "description": tool.get("description"), "parameters": schema,
                    "strict": tool.get("strict")}  # fmt: skip
        tools.append({"type": "function", "function": {k: v for k, v in function.items() if v is not None}})
    return tools


def _tool_choice(choice: object) -> tuple[str | dict | None, bool | None]:
    """(chat tool_choice, parallel_tool_calls) for a Messages tool_choice."""
    if choice is None:
        return None, None
    if not isinstance(choice, dict) or choice.get("type") not in (*_CHOICES, "tool"):
        raise _invalid("tool_choice.type", "'tool_choice.type' must be auto, any, tool or none.")
    kind = choice["type"]
    parallel = False if choice.get("disable_parallel_tool_use") is True else None
    if kind != "tool":
        return _CHOICES[kind], parallel
    if not isinstance(choice.get("name"), str):
        raise _invalid("tool_choice.name", "'tool_choice.name' must be a string.")
    return {"type": "function", "function": {"name": choice["name"]}}, parallel


def _user_id(metadata: object) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise _invalid("metadata", "'metadata' must be an object.")
    user_id = metadata.get("user_id")
    if user_id is not None and not isinstance(user_id, str):
        raise _invalid("metadata.user_id", "'metadata.user_id' must be a string.")
    return user_id


def _invalid(param: str, message: str) -> ApiError:
    return ApiError(400, message, code="invalid_request_error", param=param)


def _untranslatable(param: str, what: str) -> ApiError:
    return _invalid(param, f"{what[0].upper()}{what[1:]} cannot be sent to a chat-completions upstream.")
