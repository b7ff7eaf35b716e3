"""Translate a chat-completions request to an Anthropic Messages body, and a Messages answer back (pure functions).

Translated: `model`; `system` and `developer` messages (wherever they are: Messages has one system prompt)
as `system`: a string for one, text blocks in order for several; `user` and `assistant` messages with
string content or parts: text (and an assistant's `refusal` part) as text blocks, `image_url` as an image
block (a base64 data URL as a base64 source, an http(s) URL as a url source; `detail` is dropped); an
assistant's `tool_calls` as tool_use blocks (input = the parsed arguments, which must be a JSON object);
`tool` messages as tool_result blocks in a user message. Messages requires alternating roles, so
consecutive messages of one role are merged into one (tool results and the user text after them too);
empty assistant turns and empty text parts are dropped (Messages refuses empty text blocks); an assistant's
`reasoning_content` is dropped (thinking goes back only with Anthropic's signature). `tools` (function)
as {name, description, input_schema} (an absent schema is an empty object schema; `strict` is dropped);
`tool_choice` auto / required (-> any) / none / a named function (-> tool), and `parallel_tool_calls:
false` as `disable_parallel_tool_use` (only when there are tools); `max_completion_tokens`, else
`max_tokens`, else `default_max_tokens` (Messages requires it) as `max_tokens`; `stop` (a string or an
array) as `stop_sequences`; `temperature` (unchanged: Messages accepts 0..1 and says so itself when a
client sends more), `top_p`; `user` as `metadata.user_id`; `stream`.

Ignored on purpose (IGNORED_FIELDS): they change nothing a Messages upstream can act on, or only sampling
details it does not have. `stream_options` is read by the stream translator, never sent (Messages streams
always carry usage). Any other unknown field is ignored too.

Refused with 400 naming the field: REFUSED_FIELDS, `n` > 1, `logprobs: true`, `response_format` other than
text (json_object and json_schema are refused rather than approximated: a Messages upstream has no JSON
mode that answers in the same shape), non-function tools, message roles and part types Messages cannot
carry (`function`, input_audio, file).

Answers: see app/dialects/chat_anthropic_stream.py for finish reasons and usage; the text blocks joined are
the content, tool_use blocks are tool_calls (arguments = json.dumps(input)), thinking is reasoning_content.
"""

from __future__ import annotations

import json
from typing import Any

from app.dialects.chat_anthropic_stream import MessagesToChatStream, chat_usage, finish_reason
from app.errors import ApiError

__all__ = ["IGNORED_FIELDS", "REFUSED_FIELDS", "MessagesToChatStream", "chat_to_messages", "message_to_chat"]

IGNORED_FIELDS = ("frequency_penalty", "presence_penalty", "seed", "logit_bias", "service_tier", "store", "metadata",
                  "reasoning_effort", "verbosity", "prediction", "prompt_cache_key", "safety_identifier",
                  "stream_options")  # fmt: skip
REFUSED_FIELDS = {
    "functions": "legacy functions (send tools)",
    "function_call": "legacy function_call (send tool_choice)",
    "audio": "audio output",
    "modalities": "output modalities",
    "web_search_options": "OpenAI web search",
}
_ROLES = ("system", "developer", "user", "assistant", "tool")
_CHOICES = {"auto": "auto", "required": "any", "none": "none"}


def chat_to_messages(payload: dict, *, default_max_tokens: int) -> dict:
    """The Messages body for a chat-completions request.

    Raises ApiError(400, ..., param=<field>) naming the field for anything untranslatable.
    """
    _refuse_unsupported(payload)
    body: dict[str, Any] = {"model": payload["model"]} if "model" in payload else {}
    system, messages = _messages(payload.get("messages"))
    max_tokens = next((payload[k] for k in ("max_completion_tokens", "max_tokens") if payload.get(k) is not None),
                      default_max_tokens)  # fmt: skip
    body.update({"max_tokens": max_tokens, "messages": messages})
    if system:
        body["system"] = system[0]["text"] if len(system) == 1 else system
    tools = _tools(payload.get("tools"))
    choice = _tool_choice(payload.get("tool_choice"))
    if tools:
        body["tools"] = tools
        if payload.get("parallel_tool_calls") is False and (choice or {}).get("type") != "none":
            choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}  # "none" takes no such flag
        if choice is not None:
            body["tool_choice"] = choice
    elif choice is not None and choice["type"] == "tool":
        raise _invalid("tool_choice", "'tool_choice' names a function, but the request has no tools.")
    for name in ("temperature", "top_p"):
        if payload.get(name) is not None:
            body[name] = payload[name]
    stop = payload.get("stop")
    if stop is not None:
        body["stop_sequences"] = _stop(stop)
    if isinstance(payload.get("user"), str):
        body["metadata"] = {"user_id": payload["user"]}
    if payload.get("stream") is not None:
        body["stream"] = bool(payload["stream"])
    return body


def message_to_chat(message: dict, request: dict, *, completion_id: str, created: int) -> dict:
    """A plain Messages answer as a `chat.completion` object."""
    blocks = [b for b in message.get("content") or [] if isinstance(b, dict)]
    text = "".join(b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str))
    thinking = "".join(
        b["thinking"] for b in blocks if b.get("type") == "thinking" and isinstance(b.get("thinking"), str)
    )
    calls = [_call(b) for b in blocks if b.get("type") == "tool_use"]
    answer: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
    if calls:
        answer["tool_calls"] = calls
    if thinking:
        answer["reasoning_content"] = thinking
    model = message.get("model") if isinstance(message.get("model"), str) and message.get("model") else None
    choice = {"index": 0, "message": answer, "finish_reason": finish_reason(message.get("stop_reason")),
              "logprobs": None}  # fmt: skip
    chat = {"id": completion_id, "object": "chat.completion", "created": created,
            "model": model or request.get("model") or "", "choices": [choice]}  # fmt: skip
    usage = chat_usage(message.get("usage"))
    if usage is not None:
        chat["usage"] = usage
    return chat


def _call(block: dict) -> dict:
    arguments = json.dumps(block.get("input") if isinstance(block.get("input"), dict) else {})
    return {"id": str(block.get("id") or ""), "type": "function",
            "function": {"name": str(block.get("name") or ""), "arguments": arguments}}  # fmt: skip


def _refuse_unsupported(payload: dict) -> None:
    for name, what in REFUSED_FIELDS.items():
        if payload.get(name) is not None:
            raise _refused(name, f"'{name}' ({what})")
    if isinstance(payload.get("n"), int) and payload["n"] > 1:
        raise _refused("n", "'n' > 1 (a Messages upstream answers with one choice)")
    if payload.get("logprobs"):
        raise _refused("logprobs", "'logprobs' (a Messages upstream has no log probabilities)")
    fmt = payload.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    if fmt is not None and kind != "text":
        raise _refused("response_format.type", f"response_format type '{kind}' (Messages has no JSON mode)")


def _messages(value: object) -> tuple[list[dict], list[dict]]:
    """(system text blocks, Messages messages with alternating roles)."""
    if not isinstance(value, list):
        raise _invalid("messages", "'messages' must be an array of messages.")
    system: list[dict] = []
    messages: list[dict] = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _ROLES:
            raise _invalid(f"{where}.role", f"'{where}.role' must be one of {', '.join(_ROLES)}.")
        if role in ("system", "developer"):
            system += [{"type": "text", "text": t} for t in _texts(message.get("content"), where) if t]
            continue
        if role == "tool":
            blocks, role = [_tool_result(message, where)], "user"
        elif role == "user":
            blocks = _user_blocks(message.get("content"), where)
        else:
            blocks = _assistant_blocks(message, where)
        _append(messages, role, blocks, message.get("content"))
    return system, messages


def _append(messages: list[dict], role: str, blocks: list[dict], content: object) -> None:
    """Add a turn, merged into the previous one of the same role; a lone string content stays a string."""
    if not blocks:
        return
    last = messages[-1] if messages else None
    if last is not None and last["role"] == role:
        if isinstance(last["content"], str):
            last["content"] = [{"type": "text", "text": last["content"]}]
        last["content"] += blocks
    elif isinstance(content, str) and len(blocks) == 1 and blocks[0]["type"] == "text":
        messages.append({"role": role, "content": content})
    else:
        messages.append({"role": role, "content": blocks})


def _texts(content: object, where: str) -> list[str]:
    """The texts of a string content or an array of text parts."""
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise _invalid(f"{where}.content", f"'{where}.content' must be a string or an array of text parts.")
    texts = []
    for j, part in enumerate(content):
        part = part if isinstance(part, dict) else {}
        key = "refusal" if part.get("type") == "refusal" else "text"
        if part.get("type") not in ("text", "refusal") or not isinstance(part.get(key), str):
            raise _invalid(f"{where}.content[{j}]", f"'{where}.content[{j}]' must be a text part.")
        texts.append(part[key])
    return texts


def _user_blocks(content: object, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _invalid(f"{where}.content", f"'{where}.content' must be a string or an array of content parts.")
    blocks = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        part = part if isinstance(part, dict) else {}
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            if part["text"]:
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image(part, at))
        elif kind in ("input_audio", "file"):
            raise _refused(f"{at}.type", f"content part type '{kind}'")
        else:
            raise _invalid(at, f"'{at}' must be a text or image_url part.")
    return blocks


def _image(part: dict, where: str) -> dict:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise _invalid(f"{where}.image_url.url", f"'{where}.image_url.url' must be a string.")
    if url.startswith("data:"):
        head, sep, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not sep or encoding != "base64" or not media_type:
            raise _invalid(f"{where}.image_url.url", f"'{where}.image_url.url' must be a base64 data URL.")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _invalid(f"{where}.image_url.url", f"'{where}.image_url.url' must be an http(s) URL or a data URL.")


def _assistant_blocks(message: dict, where: str) -> list[dict]:
    content = message.get("content")
    texts = [] if content is None else _texts(content, where)
    blocks = [{"type": "text", "text": t} for t in texts if t]
    calls = message.get("tool_calls")
    if calls is not None and not isinstance(calls, list):
        raise _invalid(f"{where}.tool_calls", f"'{where}.tool_calls' must be an array.")
    for j, call in enumerate(calls or []):
        blocks.append(_tool_use(call, f"{where}.tool_calls[{j}]"))
    return blocks


def _tool_use(call: object, where: str) -> dict:
    call = call if isinstance(call, dict) else {}
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(call.get("id"), str):
        raise _invalid(where, f"'{where}' must be a function call with an 'id'.")
    if not isinstance(function.get("name"), str):
        raise _invalid(f"{where}.function.name", f"'{where}.function.name' must be a string.")
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except (TypeError, ValueError):
        arguments = None
    if not isinstance(arguments, dict):
        raise _invalid(f"{where}.function.arguments", f"'{where}.function.arguments' must be a JSON object.")
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": arguments}


def _tool_result(message: dict, where: str) -> dict:
    if not isinstance(message.get("tool_call_id"), str):
        raise _invalid(f"{where}.tool_call_id", f"'{where}.tool_call_id' must be a string.")
    content = message.get("content")
    text = "" if content is None else "".join(_texts(content, where))
    return {"type": "tool_result", "tool_use_id": message["tool_call_id"], "content": text}


def _tools(value: object) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid("tools", "'tools' must be an array.")
    tools = []
    for i, tool in enumerate(value):
        tool = tool if isinstance(tool, dict) else {}
        if tool.get("type") != "function":
            raise _refused(f"tools[{i}].type", f"tool type '{tool.get('type')}' (only function tools)")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise _invalid(f"tools[{i}].function.name", f"'tools[{i}].function.name' must be a non-empty string.")
        schema = function.get("parameters")
        translated = {"name": function["name"], "input_schema": schema if isinstance(schema, dict)
                      else {"type": "object", "properties": {}}}  # fmt: skip
        if isinstance(function.get("description"), str):
            translated["description"] = function["description"]
        tools.append(translated)
    return tools


def _tool_choice(choice: object) -> dict | None:
    if choice is None:
        return None
    if isinstance(choice, str) and choice in _CHOICES:
        return {"type": _CHOICES[choice]}
    function = choice.get("function") if isinstance(choice, dict) and choice.get("type") == "function" else None
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return {"type": "tool", "name": function["name"]}
    raise _invalid("tool_choice", "'tool_choice' must be auto, required, none or a named function.")


def _stop(stop: object) -> list[str]:
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise _invalid("stop", "'stop' must be a string or an array of strings.")


def _invalid(param: str, message: str) -> ApiError:
    return ApiError(400, message, code="invalid_value", param=param)


def _refused(param: str, what: str) -> ApiError:
    return ApiError(400, f"{what} cannot be sent to an Anthropic Messages upstream.", code="unsupported_parameter",
                    param=param)  # fmt: skip
