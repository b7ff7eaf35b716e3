"""Translate an OpenAI Responses request to a chat-completions body, and a chat answer back (pure functions).

Translated: `model`, `input` (a string, or `message` items with input_text / input_image / output_text parts,
`function_call` items, consecutive ones merged into one assistant message with tool_calls, and
`function_call_output` items as `tool` messages), `instructions` (a leading system message), the `developer`
role (sent as `system`: many chat servers refuse `developer`), function `tools`, `tool_choice`,
`max_output_tokens` (as `max_tokens`, which more servers accept than `max_completion_tokens`), `temperature`,
`top_p`, `parallel_tool_calls`, `text.format` (json_schema / json_object) as `response_format`,
`reasoning.effort` as `reasoning_effort`, `metadata`, `user` and `stream` (the caller adds `stream_options`).

Ignored on purpose (IGNORED_FIELDS): they change nothing a chat upstream can do. `reasoning` input items
(the Codex CLI sends its earlier reasoning back, encrypted) are dropped always: a chat server cannot take them.
Item `id` and `status` fields are ignored, and so is any other unknown field: nothing unknown is passed on.

Refused with 400 `unsupported_parameter` naming the field: REFUSED_FIELDS, `background: true`,
`truncation: "auto"` (a chat server cannot truncate), unknown input item and content part types, image
`file_id`s, and tools that are not `function` unless the upstream sets `drop_builtin_tools`: then they are
dropped and returned (a `tool_choice` naming one becomes "auto").
"""

from __future__ import annotations

from typing import Any

from app.dialects.responses_chat_stream import (
    ChatStreamTranslator,
    call_item,
    item_id,
    message_item,
    reasoning_item,
    reasoning_text,
    response_object,
    response_usage,
)
from app.errors import ApiError

__all__ = ["IGNORED_FIELDS", "REFUSED_FIELDS", "ChatStreamTranslator", "request_to_chat", "response_from_chat"]

IGNORED_FIELDS = ("store", "include", "prompt_cache_key", "service_tier", "truncation", "safety_identifier",
                  "reasoning.summary", "text.verbosity", "stream_options", "client_metadata")  # fmt: skip
TRANSLATED_FIELDS = ("model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
                     "max_output_tokens", "temperature", "top_p", "text", "reasoning", "metadata", "user", "stream",
                     "background")  # fmt: skip
REFUSED_FIELDS = {
    "previous_response_id": "stored responses are not available on a chat-completions upstream",
    "conversation": "conversations are not available on a chat-completions upstream",
    "prompt": "stored prompts are not available on a chat-completions upstream",
}
_COPIED = ("temperature", "top_p", "metadata", "user")
_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
_TEXT_PARTS = {"input_text", "output_text"}


def request_to_chat(payload: dict, *, drop_builtin_tools: bool) -> tuple[dict, list[str]]:
    """The chat-completions body for a Responses request, and the built-in tool types dropped.

    Raises ApiError(400, ..., param=<field>) naming the field for anything untranslatable.
    """
    _refuse_unsupported(payload)
    chat: dict[str, Any] = {"model": payload["model"]} if "model" in payload else {}
    chat["messages"] = _instructions(payload.get("instructions")) + _messages(payload.get("input"))
    tools, dropped = _tools(payload.get("tools"), drop_builtin_tools)
    choice = _tool_choice(payload.get("tool_choice"), dropped)
    if tools:  # chat servers refuse tool_choice / parallel_tool_calls without tools
        chat["tools"] = tools
        if choice is not None:
            chat["tool_choice"] = choice
        if payload.get("parallel_tool_calls") is not None:
            chat["parallel_tool_calls"] = payload["parallel_tool_calls"]
    elif isinstance(choice, dict):
        raise _invalid("tool_choice", "'tool_choice' names a function, but the request has no function tools.")
    for name in _COPIED:
        if payload.get(name) is not None:
            chat[name] = payload[name]
    if payload.get("max_output_tokens") is not None:
        chat["max_tokens"] = payload["max_output_tokens"]
    chat.update(_text_format(payload.get("text")))
    effort = _object(payload, "reasoning").get("effort")
    if effort is not None:
        chat["reasoning_effort"] = effort
    if payload.get("stream") is not None:
        chat["stream"] = bool(payload["stream"])
    return chat, dropped


def response_from_chat(chat: dict, request: dict, *, response_id: str, created_at: int) -> dict:
    """A plain chat.completion answer as a Responses `response` object (choice 0 only)."""
    choices = chat.get("choices") if isinstance(chat.get("choices"), list) else []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    finish_reason = choice.get("finish_reason")
    status = "incomplete" if finish_reason in ("length", "content_filter") else "completed"
    output = _output_items(message, response_id)
    if output and status == "incomplete":
        output[-1]["status"] = "incomplete"  # the item the upstream cut short
    model = chat.get("model") if isinstance(chat.get("model"), str) else None
    return response_object(request, response_id=response_id, created_at=created_at, model=model, status=status,
                           output=output, usage=response_usage(chat.get("usage")),
                           finish_reason=finish_reason)  # fmt: skip


def _output_items(message: dict, response_id: str) -> list[dict]:
    items: list[dict] = []
    reasoning = reasoning_text(message)
    if reasoning:
        items.append(reasoning_item(item_id(response_id, "rs", 0), reasoning, "completed"))
    content, refusal = message.get("content"), message.get("refusal")
    text = content if isinstance(content, str) else _joined(content)
    if text or (isinstance(refusal, str) and refusal):
        item = message_item(item_id(response_id, "msg", len(items)), text or None, "completed", refusal)
        items.append(item)
    calls = message.get("tool_calls") if isinstance(message.get("tool_calls"), list) else []
    for call in (c for c in calls if isinstance(c, dict)):
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        index = len(items)
        call_id = (
            call.get("id") if isinstance(call.get("id"), str) and call["id"] else item_id(response_id, "call", index)
        )
        name, arguments = str(function.get("name") or ""), str(function.get("arguments") or "")
        items.append(call_item(item_id(response_id, "fc", index), call_id, name, arguments, "completed"))
    return items


def _joined(content: object) -> str:
    """Text of a chat content given as a list of parts (some servers answer that way)."""
    if not isinstance(content, list):
        return ""
    return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))


def _refuse_unsupported(payload: dict) -> None:
    known = {*TRANSLATED_FIELDS, *REFUSED_FIELDS, *(f for f in IGNORED_FIELDS if "." not in f)}
    for name in payload:
        if name not in known:
            raise _refused(name, f"'{name}' (not translated onto chat completions; an upstream with "
                                 "responses = \"native\" takes it)")  # fmt: skip
    for name, why in REFUSED_FIELDS.items():
        if payload.get(name) is not None:
            raise _refused(name, f"'{name}' ({why})")
    if payload.get("background"):
        raise _refused("background", "'background: true' (a chat-completions upstream answers in the foreground)")
    if payload.get("truncation") == "auto":
        raise _refused("truncation", "'truncation: auto' (a chat-completions upstream cannot truncate the input)")


def _instructions(value: object) -> list[dict]:
    if value is None or value == "":
        return []
    if not isinstance(value, str):
        raise _invalid("instructions", "'instructions' must be a string.")
    return [{"role": "system", "content": value}]


def _messages(value: object) -> list[dict]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise _invalid("input", "'input' must be a string or an array of input items.")
    messages: list[dict] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _invalid(where, f"'{where}' must be an object.")
        kind = item.get("type", "message")
        if kind == "message":
            messages.append(_message(item, where))
        elif kind == "function_call":
            _add_call(messages, item, where)
        elif kind == "function_call_output":
            messages.append(_call_output(item, where))
        elif kind != "reasoning":  # reasoning items are dropped: a chat server cannot take them back
            raise _refused(f"{where}.type", f"input item type '{kind}'")
    return messages


def _message(item: dict, where: str) -> dict:
    role = _ROLES.get(item.get("role"))  # type: ignore[arg-type]
    if role is None:
        raise _invalid(f"{where}.role", f"'{where}.role' must be one of user, system, developer, assistant.")
    content = item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content}
    if not isinstance(content, list):
        raise _invalid(f"{where}.content", f"'{where}.content' must be a string or an array of content parts.")
    parts = [_part(part, f"{where}.content[{j}]", role) for j, part in enumerate(content)]
    if role != "user" or (len(parts) == 1 and parts[0]["type"] == "text"):
        return {"role": role, "content": "\n".join(p["text"] for p in parts)}  # system/assistant text is a string
    return {"role": role, "content": parts}


def _part(part: object, where: str, role: str) -> dict:
    if not isinstance(part, dict):
        raise _invalid(where, f"'{where}' must be an object.")
    kind = part.get("type")
    if kind in _TEXT_PARTS or (kind == "refusal" and role == "assistant"):
        text = part.get("refusal" if kind == "refusal" else "text")
        if not isinstance(text, str):
            raise _invalid(f"{where}.text", f"'{where}.text' must be a string.")
        return {"type": "text", "text": text}
    if kind != "input_image" or role != "user":
        raise _refused(f"{where}.type", f"content part type '{kind}' in a {role} message")
    if part.get("file_id") is not None:
        raise _refused(f"{where}.file_id", "images by file_id (send image_url)")
    url = part.get("image_url")
    if not isinstance(url, str) or not url:
        raise _invalid(f"{where}.image_url", f"'{where}.image_url' must be a URL or a data URL.")
    image = {"url": url} if part.get("detail") is None else {"url": url, "detail": part["detail"]}
    return {"type": "image_url", "image_url": image}


def _add_call(messages: list[dict], item: dict, where: str) -> None:
    for key in ("call_id", "name", "arguments"):
        if not isinstance(item.get(key), str):
            raise _invalid(f"{where}.{key}", f"'{where}.{key}' must be a string.")
    call = {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": item["name"], "arguments": item["arguments"]},
    }
    last = messages[-1] if messages else None
    if last is not None and last["role"] == "assistant":  # text then calls, or calls in a row: one message
        last.setdefault("tool_calls", []).append(call)
        return
    messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _call_output(item: dict, where: str) -> dict:
    if not isinstance(item.get("call_id"), str):
        raise _invalid(f"{where}.call_id", f"'{where}.call_id' must be a string.")
    output = item.get("output")
    if isinstance(output, list):
        texts = []
        for j, part in enumerate(output):
            if not (isinstance(part, dict) and part.get("type") == "input_text" and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else None
                raise _refused(f"{where}.output[{j}].type", f"function_call_output part type '{kind}'")
            texts.append(part["text"])
        output = "".join(texts)
    if not isinstance(output, str):
        raise _invalid(f"{where}.output", f"'{where}.output' must be a string or an array of input_text parts.")
    return {"role": "tool", "tool_call_id": item["call_id"], "content": output}


def _tools(value: object, drop_builtin_tools: bool) -> tuple[list[dict], list[str]]:
    if value is None:
        return [], []
    if not isinstance(value, list):
        raise _invalid("tools", "'tools' must be an array.")
    tools, dropped = [], []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise _invalid(f"tools[{i}]", f"'tools[{i}]' must be an object with a string 'type'.")
        if tool["type"] == "function":
            tools.append(_function_tool(tool, i))
        elif drop_builtin_tools:
            dropped.append(tool["type"])
        else:
            message = (f"Tool type '{tool['type']}' cannot be sent to a chat-completions upstream: remove it, or set "
                       "drop_builtin_tools = true on the upstream to drop built-in tools.")  # fmt: skip
            raise ApiError(400, message, code="unsupported_parameter", param=f"tools[{i}].type")
    return tools, dropped


def _function_tool(tool: dict, i: int) -> dict:
    if not isinstance(tool.get("name"), str) or not tool["name"]:
        raise _invalid(f"tools[{i}].name", f"'tools[{i}].name' must be a non-empty string.")
    function = {key: tool[key] for key in ("name", "description", "parameters", "strict") if tool.get(key) is not None}
    return {"type": "function", "function": function}


def _tool_choice(choice: object, dropped: list[str]) -> str | dict | None:
    if choice is None or choice in ("auto", "none", "required"):
        return choice  # type: ignore[return-value]
    if isinstance(choice, dict) and choice.get("type") == "function":
        if not isinstance(choice.get("name"), str):
            raise _invalid("tool_choice.name", "'tool_choice.name' must be a string.")
        return {"type": "function", "function": {"name": choice["name"]}}
    if isinstance(choice, dict) and choice.get("type") in dropped:
        return "auto"  # it named a built-in tool that was dropped
    if isinstance(choice, dict):
        raise _refused("tool_choice", f"tool_choice of type '{choice.get('type')}'")
    raise _invalid("tool_choice", "'tool_choice' must be auto, none, required or a function tool choice.")


def _text_format(text: object) -> dict:
    if text is None:
        return {}
    if not isinstance(text, dict):
        raise _invalid("text", "'text' must be an object.")
    fmt = text.get("format")
    if fmt is None:
        return {}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"response_format": {"type": "json_object"}}
    if kind != "json_schema":
        raise _refused("text.format.type", f"text.format type '{kind}'")
    if not isinstance(fmt.get("name"), str):
        raise _invalid("text.format.name", "'text.format.name' must be a string.")
    schema = {key: fmt[key] for key in ("name", "description", "schema", "strict") if fmt.get(key) is not None}
    return {"response_format": {"type": "json_schema", "json_schema": schema}}


def _object(payload: dict, name: str) -> dict:
    value = payload.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid(name, f"'{name}' must be an object.")
    return value


def _refused(param: str, what: str) -> ApiError:
    message = f"Unsupported on this upstream (it speaks chat completions): {what}."
    return ApiError(400, message, code="unsupported_parameter", param=param)


def _invalid(param: str, message: str) -> ApiError:
    return ApiError(400, message, code="invalid_value", param=param)
