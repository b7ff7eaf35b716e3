"""The Messages client -> chat upstream translator: request tables, answer tables, stream tables.

Every message and stream event is validated strictly against the anthropic SDK's pydantic types: strict mode
(no coercion) and no field the SDK does not know, at any depth.
"""

from __future__ import annotations

import json

import anthropic
import httpx2 as httpx
import pydantic
import pytest
from anthropic.types import Message, RawMessageStreamEvent

from app.dialects.anthropic_chat import (
    IGNORED_FIELDS,
    REFUSED_FIELDS,
    ChatToMessagesStream,
    chat_to_message,
    messages_to_chat,
)
from app.errors import ApiError
from tests import strict_models
from tests.strict_models import validated

EVENTS = pydantic.TypeAdapter(RawMessageStreamEvent)
MID = "msg_test"
USER = {"role": "user", "content": "hi"}
THINK = {"thinking": {"type": "enabled", "budget_tokens": 2048}}


def no_extras(model: object) -> None:
    strict_models.no_extras(model)


def strict_message(obj: dict) -> Message:
    return validated(Message, obj)


def parse_events(frames: list[bytes]) -> list[dict]:
    """Each frame is one `event: X\\ndata: {json}\\n\\n` whose event name equals the data's type, validated."""
    events = []
    for frame in frames:
        text = frame.decode()
        assert text.endswith("\n\n") and text.count("\n\n") == 1
        head, data = text.removesuffix("\n\n").split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        if event["type"] == "error":  # not a RawMessageStreamEvent: the SDK raises it as an APIStatusError
            assert set(event) == {"type", "error"} and set(event["error"]) == {"type", "message"}
        else:
            no_extras(EVENTS.validate_python(event, strict=True))
        events.append(event)
    return events


def chat(messages: list | None = None, **extra: object) -> dict:
    return {"model": "claude", "messages": messages if messages is not None else [USER], **extra}


def translate(**payload: object) -> dict:
    return messages_to_chat({"model": "claude", "max_tokens": 64, "messages": [USER], **payload})


def user(*blocks: dict) -> dict:
    return {"role": "user", "content": list(blocks)}


def assistant(*blocks: dict) -> dict:
    return {"role": "assistant", "content": list(blocks)}


def text(value: str, **extra: object) -> dict:
    return {"type": "text", "text": value, **extra}


def use(call_id: str, name: str = "get_weather", **arguments: object) -> dict:
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


def call(call_id: str, arguments: str = "{}", name: str = "get_weather") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def result(call_id: str, content: object = "sunny", **extra: object) -> dict:
    return {"type": "tool_result", "tool_use_id": call_id, "content": content, **extra}


def tool_message(call_id: str, content: str = "sunny") -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


PNG = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
PNG_CHAT = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
URL_IMAGE = {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}
URL_IMAGE_CHAT = {"type": "image_url", "image_url": {"url": "https://x/a.png"}}
TOOL = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}
TOOL_CHAT = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}},
}
CACHE = {"cache_control": {"type": "ephemeral"}}
BASE = {"max_tokens": 64}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({}, chat(**BASE)),
        ({"system": "Be brief."}, chat([{"role": "system", "content": "Be brief."}, USER], **BASE)),
        ({"system": [text("a", **CACHE), text("b")]}, chat([{"role": "system", "content": "a\nb"}, USER], **BASE)),
        ({"system": ""}, chat(**BASE)),
        ({"messages": [user(text("hi", **CACHE))]}, chat(**BASE)),
        (
            {"messages": [user(text("look"), PNG, URL_IMAGE)]},
            chat([{"role": "user", "content": [{"type": "text", "text": "look"}, PNG_CHAT, URL_IMAGE_CHAT]}], **BASE),
        ),
        (
            {"messages": [USER, assistant(text("Let me "), text("check."), use("t1", city="Paris"))]},
            chat(
                [
                    USER,
                    {"role": "assistant", "content": "Let me check.", "tool_calls": [call("t1", '{"city": "Paris"}')]},
                ],
                **BASE,
            ),
        ),
        (
            {"messages": [USER, assistant({"type": "thinking", "thinking": "x", "signature": "s"}, use("t1"))]},
            chat([USER, {"role": "assistant", "content": None, "tool_calls": [call("t1")]}], **BASE),
        ),
        (
            {"messages": [USER, assistant({"type": "redacted_thinking", "data": "x"})]},
            chat([USER, {"role": "assistant", "content": ""}], **BASE),
        ),
        (
            {
                "messages": [
                    USER,
                    assistant(use("t1"), use("t2")),
                    user(result("t2", "rain"), text("and?"), result("t1", [text("sun"), text("ny")], **CACHE)),
                ]
            },
            chat(
                [
                    USER,
                    {"role": "assistant", "content": None, "tool_calls": [call("t1"), call("t2")]},
                    tool_message("t1", "sun\nny"),
                    tool_message("t2", "rain"),
                    {"role": "user", "content": "and?"},
                ],
                **BASE,
            ),
        ),
        (
            {"messages": [USER, assistant(use("t1")), user(result("t1", "boom", is_error=True))]},
            chat(
                [
                    USER,
                    {"role": "assistant", "content": None, "tool_calls": [call("t1")]},
                    tool_message("t1", "Error: boom"),
                ],
                **BASE,
            ),
        ),
        (
            {"messages": [USER, assistant(use("t1")), user(result("t1", None, is_error=True), result("zz", ""))]},
            chat(
                [
                    USER,
                    {"role": "assistant", "content": None, "tool_calls": [call("t1")]},
                    tool_message("t1", "Error"),
                    tool_message("zz", ""),
                ],
                **BASE,
            ),
        ),
        (
            {"messages": [USER, assistant(use("t1")), user(result("t1", [text("shot"), PNG]))]},
            chat(
                [
                    USER,
                    {"role": "assistant", "content": None, "tool_calls": [call("t1")]},
                    tool_message("t1", "shot"),
                    {"role": "user", "content": [PNG_CHAT]},
                ],
                **BASE,
            ),
        ),
        (
            {"tools": [{**TOOL, **CACHE}, {"type": "custom", "name": "f", "input_schema": {}, "strict": True}]},
            chat(
                tools=[TOOL_CHAT, {"type": "function", "function": {"name": "f", "parameters": {}, "strict": True}}],
                **BASE,
            ),
        ),
        ({"tools": [TOOL], "tool_choice": {"type": "auto"}}, chat(tools=[TOOL_CHAT], tool_choice="auto", **BASE)),
        ({"tools": [TOOL], "tool_choice": {"type": "any"}}, chat(tools=[TOOL_CHAT], tool_choice="required", **BASE)),
        ({"tools": [TOOL], "tool_choice": {"type": "none"}}, chat(tools=[TOOL_CHAT], tool_choice="none", **BASE)),
        (
            {
                "tools": [TOOL],
                "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
            },
            chat(
                tools=[TOOL_CHAT],
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
                parallel_tool_calls=False,
                **BASE,
            ),
        ),
        ({"tool_choice": {"type": "auto"}}, chat(**BASE)),  # no tools: no tool fields
        (
            {"stop_sequences": ["END", "\n\n"], "temperature": 0.5, "top_p": 0.9},
            chat(max_tokens=64, temperature=0.5, top_p=0.9, stop=["END", "\n\n"]),
        ),
        ({"stop_sequences": []}, chat(**BASE)),
        ({"metadata": {"user_id": "u1"}, "stream": True}, chat(user="u1", stream=True, **BASE)),
        ({"metadata": {}, "temperature": None}, chat(**BASE)),
        ({**THINK, "top_k": 5, "service_tier": "auto", "future_field": 1}, chat(**BASE)),
    ],
    ids=[
        "minimal",
        "system_string",
        "system_blocks",
        "system_empty",
        "text_block_cache_control",
        "images",
        "assistant_text_and_tool_use",
        "thinking_dropped",
        "redacted_thinking_only",
        "tool_results_ordered_text_after",
        "error_result",
        "error_result_empty_and_unknown_id",
        "tool_result_image_moves_to_user",
        "tools_custom_and_cache_control",
        "choice_auto",
        "choice_any",
        "choice_none",
        "choice_tool_no_parallel",
        "choice_without_tools",
        "sampling_stop",
        "empty_stop",
        "metadata_user_stream",
        "nulls_skipped",
        "ignored_fields",
    ],
)
def test_request_translation(payload: dict, expected: dict) -> None:
    assert translate(**payload) == expected


SERVER_TOOLS = [
    "web_search_20250305",
    "web_fetch_20250910",
    "bash_20250124",
    "text_editor_20250728",
    "computer_20250124",
    "code_execution_20250825",
    "memory_20250818",
    "something_new",
]


@pytest.mark.parametrize("kind", SERVER_TOOLS)
def test_server_tools_are_refused_by_name(kind: str) -> None:
    with pytest.raises(ApiError) as caught:
        translate(tools=[TOOL, {"type": kind, "name": "x"}])
    assert (caught.value.status, caught.value.param, caught.value.code) == (
        400,
        "tools[1].type",
        "invalid_request_error",
    )
    assert kind in caught.value.message


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"container": "cont_1"}, "container"),
        ({"mcp_servers": [{"type": "url", "url": "https://m", "name": "m"}]}, "mcp_servers"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": ["hi"]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        (
            {"messages": [user({"type": "document", "source": {"type": "text", "data": "x"}})]},
            "messages[0].content[0].type",
        ),
        ({"messages": [user({"type": "search_result", "source": "s"})]}, "messages[0].content[0].type"),
        ({"messages": [user("x")]}, "messages[0].content[0]"),
        ({"messages": [user({"type": "text"})]}, "messages[0].content[0].text"),
        (
            {"messages": [user({"type": "image", "source": {"type": "file", "file_id": "f"}})]},
            "messages[0].content[0].source.type",
        ),
        ({"messages": [user({"type": "image", "source": {"type": "base64"}})]}, "messages[0].content[0].source"),
        ({"messages": [user({"type": "image"})]}, "messages[0].content[0].source"),
        ({"messages": [assistant(PNG)]}, "messages[0].content[0].type"),
        (
            {"messages": [assistant({"type": "server_tool_use", "id": "s", "name": "web_search"})]},
            "messages[0].content[0].type",
        ),
        ({"messages": [assistant({"type": "tool_use", "id": "t", "input": {}})]}, "messages[0].content[0]"),
        ({"messages": [assistant({**use("t"), "input": "{}"})]}, "messages[0].content[0].input"),
        ({"messages": [user({"type": "tool_result", "content": "x"})]}, "messages[0].content[0].tool_use_id"),
        ({"messages": [user(result("t", 3))]}, "messages[0].content[0].content"),
        (
            {"messages": [user(result("t", [{"type": "document", "source": {}}]))]},
            "messages[0].content[0].content[0].type",
        ),
        ({"system": 3}, "system"),
        ({"system": [PNG]}, "system[0].type"),
        ({"tools": {"name": "f"}}, "tools"),
        ({"tools": ["f"]}, "tools[0]"),
        ({"tools": [{"input_schema": {}}]}, "tools[0].name"),
        ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
        ({"tools": [TOOL], "tool_choice": "auto"}, "tool_choice.type"),
        ({"tools": [TOOL], "tool_choice": {"type": "required"}}, "tool_choice.type"),
        ({"tools": [TOOL], "tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"tool_choice": {"type": "tool", "name": "f"}}, "tool_choice"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"metadata": "u1"}, "metadata"),
        ({"metadata": {"user_id": 5}}, "metadata.user_id"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_request_refusals(payload: dict, param: str) -> None:
    with pytest.raises(ApiError) as caught:
        translate(**payload)
    error = caught.value
    assert (error.status, error.param, error.code, error.type) == (
        400,
        param,
        "invalid_request_error",
        "invalid_request_error",
    )


def test_module_lists_what_it_ignores_and_refuses() -> None:
    assert set(IGNORED_FIELDS) == {"cache_control", "service_tier", "top_k"}
    assert set(REFUSED_FIELDS) == {"container", "mcp_servers"}


def answer(message: dict, finish: str | None = "stop", usage: dict | None = None, **choice: object) -> dict:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "up-model",
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish, **choice}],
    }
    return {**body, "usage": usage} if usage is not None else body


USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
ZERO = {"input_tokens": 0, "output_tokens": 0}
STOPS = {"stop_sequences": ["END"]}


@pytest.mark.parametrize(
    ("chat_answer", "request_extra", "content", "reason", "sequence"),
    [
        (answer({"content": "Hello"}), {}, [text("Hello")], "end_turn", None),
        (answer({"content": "Hel"}, "length"), {}, [text("Hel")], "max_tokens", None),
        (answer({"content": ""}, "content_filter"), {}, [], "refusal", None),
        (answer({"content": None, "refusal": "I can't."}, "stop"), {}, [text("I can't.")], "end_turn", None),
        (
            answer({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
            {},
            [text("ab")],
            "end_turn",
            None,
        ),
        (answer({"content": "x"}, None), {}, [text("x")], "end_turn", None),
        (
            answer(
                {"content": None, "tool_calls": [call("c1", '{"city":"Paris"}'), call("c2", "not json")]}, "tool_calls"
            ),
            {},
            [use("c1", city="Paris"), use("c2")],
            "tool_use",
            None,
        ),
        (answer({"content": None, "tool_calls": [call("c1", "[1]")]}, "stop"), {}, [use("c1")], "tool_use", None),
        (
            answer({"content": "ok", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": ""}}]}),
            {},
            [text("ok"), use("toolu_test_1", "f")],
            "tool_use",
            None,
        ),
        (answer({"content": "ok", "reasoning_content": "think"}), {}, [text("ok")], "end_turn", None),
        (
            answer({"content": "ok", "reasoning_content": "think"}),
            THINK,
            [{"type": "thinking", "thinking": "think", "signature": ""}, text("ok")],
            "end_turn",
            None,
        ),
        (
            answer({"content": "ok", "reasoning": "think"}),
            {"thinking": {"type": "adaptive"}},
            [{"type": "thinking", "thinking": "think", "signature": ""}, text("ok")],
            "end_turn",
            None,
        ),
        (
            answer({"content": "ok", "reasoning_content": "x"}),
            {"thinking": {"type": "disabled"}},
            [text("ok")],
            "end_turn",
            None,
        ),
        (answer({"content": "ok"}, stop_reason="END"), STOPS, [text("ok")], "stop_sequence", "END"),
        (answer({"content": "ok"}, matched_stop="END"), STOPS, [text("ok")], "stop_sequence", "END"),
        (answer({"content": "ok"}, stop_reason=None), STOPS, [text("ok")], "end_turn", None),
        (answer({"content": "ok"}, stop_reason="OTHER"), STOPS, [text("ok")], "end_turn", None),
        ({"choices": []}, {}, [], "end_turn", None),
    ],
    ids=[
        "text",
        "length",
        "content_filter",
        "refusal_text",
        "content_parts",
        "no_finish_reason",
        "tool_calls_and_bad_arguments",
        "stop_with_calls_non_object_args",
        "call_without_id",
        "reasoning_not_asked",
        "reasoning_as_thinking",
        "reasoning_key_adaptive",
        "thinking_disabled",
        "vllm_stop_reason",
        "sglang_matched_stop",
        "no_matched_stop",
        "unknown_matched_stop",
        "no_choices",
    ],
)
def test_plain_answer(chat_answer: dict, request_extra: dict, content: list, reason: str, sequence: str | None) -> None:
    request = {"model": "claude", "max_tokens": 64, "messages": [USER], **request_extra}
    message = chat_to_message(chat_answer, request, message_id=MID)
    strict_message(message)
    assert (message["content"], message["stop_reason"], message["stop_sequence"]) == (content, reason, sequence)
    assert (message["id"], message["type"], message["role"]) == (MID, "message", "assistant")
    assert message["model"] == ("up-model" if "model" in chat_answer else "claude")


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (None, ZERO),
        ("x", ZERO),
        (
            USAGE,
            {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
        ),
        (
            {**USAGE, "prompt_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 2}},
            {"input_tokens": 4, "output_tokens": 5, "cache_creation_input_tokens": 2, "cache_read_input_tokens": 4},
        ),
        (
            {"prompt_tokens": 3, "completion_tokens": True, "prompt_tokens_details": {"cached_tokens": 9}},
            {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 9},
        ),
    ],
    ids=["none", "not_a_dict", "plain", "cached_and_written", "odd_values"],
)
def test_plain_usage_mapping(usage: object, expected: dict) -> None:
    chat_answer = answer({"content": "ok"})
    chat_answer["usage"] = usage
    message = chat_to_message(chat_answer, {"model": "claude"}, message_id=MID)
    strict_message(message)
    assert message["usage"] == expected


# Stream helpers: chat chunks as an OpenAI-compatible server sends them.


def delta(finish: str | None = None, **fields: object) -> dict:
    choice = {"index": 0, "delta": fields, "finish_reason": finish}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up-model",
        "choices": [choice],
    }


def call_delta(index: int, call_id: str | None = None, name: str | None = None, arguments: str = "") -> dict:
    function: dict = {"arguments": arguments} if name is None else {"name": name, "arguments": arguments}
    fragment: dict = {"index": index, "function": function}
    if call_id:
        fragment.update(id=call_id, type="function")
    return delta(tool_calls=[fragment])


def usage_chunk(cached: int = 0) -> dict:
    usage = {**USAGE, "prompt_tokens_details": {"cached_tokens": cached}}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "up-model",
        "choices": [],
        "usage": usage,
    }


def run(chunks: list[dict], request_extra: dict | None = None, end: bool = True) -> tuple[list[dict], list[bytes]]:
    translator = ChatToMessagesStream({"model": "claude", "max_tokens": 64, **(request_extra or {})}, message_id=MID)
    frames = [frame for chunk in chunks for frame in translator.feed(chunk)]
    if end:
        frames += translator.finish()
        assert translator.finish() == [] and translator.feed(delta(content="late")) == []
    return parse_events(frames), frames


def accumulate(events: list[dict]) -> dict:
    """The message a client builds from the events (as the SDK's accumulator does, simplified)."""
    message = dict(events[0]["message"], content=[])
    buffers: dict[int, str] = {}
    for event in events[1:]:
        if event["type"] == "content_block_start":
            assert event["index"] == len(message["content"])
            message["content"].append(dict(event["content_block"]))
        elif event["type"] == "content_block_delta":
            block, change = message["content"][event["index"]], event["delta"]
            if change["type"] == "input_json_delta":
                buffers[event["index"]] = buffers.get(event["index"], "") + change["partial_json"]
                block["input"] = (
                    json.loads(buffers[event["index"]] or "{}") if _complete(buffers[event["index"]]) else {}
                )
            else:
                key = "text" if change["type"] == "text_delta" else "thinking"
                block[key] += change[key]
        elif event["type"] == "message_delta":
            message.update(event["delta"], usage=event["usage"])
    return message


def _complete(buffer: str) -> bool:
    try:
        json.loads(buffer or "{}")
    except ValueError:
        return False
    return True


def short(events: list[dict]) -> list[str]:
    """Event types, with the block kind for starts and the delta kind for deltas."""
    names = []
    for event in events:
        if event["type"] == "content_block_start":
            names.append(f"start:{event['content_block']['type']}")
        elif event["type"] == "content_block_delta":
            names.append(event["delta"]["type"])
        else:
            names.append(event["type"].removeprefix("content_block_"))
    return names


WEATHER = [
    call_delta(0, "call_9", "get_weather"),
    call_delta(0, arguments='{"city":'),
    call_delta(0, arguments='"Paris"}'),
    delta("tool_calls"),
    usage_chunk(cached=4),
]
TEXT = ["start:text", "text_delta"]
USAGE_OUT = {"input_tokens": 6, "output_tokens": 5, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4}


@pytest.mark.parametrize(
    ("chunks", "request_extra", "names", "content", "reason"),
    [
        (
            [delta(role="assistant", content=""), delta(content="Hel"), delta(content="lo"), delta("stop")],
            {},
            ["message_start", *TEXT, "text_delta", "stop", "message_delta", "message_stop"],
            [text("Hello")],
            "end_turn",
        ),
        ([], {}, ["message_start", "message_delta", "message_stop"], [], "end_turn"),
        (
            [delta(content="Hel"), delta("length")],
            {},
            ["message_start", *TEXT, "stop", "message_delta", "message_stop"],
            [text("Hel")],
            "max_tokens",
        ),
        (
            [delta(content="no"), delta("content_filter")],
            {},
            ["message_start", *TEXT, "stop", "message_delta", "message_stop"],
            [text("no")],
            "refusal",
        ),
        (
            [delta(content="Let me check."), *WEATHER],
            {},
            [
                "message_start",
                *TEXT,
                "stop",
                "start:tool_use",
                "input_json_delta",
                "input_json_delta",
                "stop",
                "message_delta",
                "message_stop",
            ],
            [text("Let me check."), use("call_9", city="Paris")],
            "tool_use",
        ),
        (
            [delta(reasoning_content="hmm"), delta(content="Hi"), delta("stop")],
            THINK,
            [
                "message_start",
                "start:thinking",
                "thinking_delta",
                "stop",
                *TEXT,
                "stop",
                "message_delta",
                "message_stop",
            ],
            [{"type": "thinking", "thinking": "hmm", "signature": ""}, text("Hi")],
            "end_turn",
        ),
        (
            [delta(reasoning="hmm"), delta(content="Hi"), delta("stop")],
            {},
            ["message_start", *TEXT, "stop", "message_delta", "message_stop"],
            [text("Hi")],
            "end_turn",
        ),
        (
            [call_delta(0, "c1", "a", "{}"), call_delta(1, "c2", "b", '{"x":1}'), delta("stop")],
            {},
            [
                "message_start",
                "start:tool_use",
                "input_json_delta",
                "stop",
                "start:tool_use",
                "input_json_delta",
                "stop",
                "message_delta",
                "message_stop",
            ],
            [use("c1", "a"), use("c2", "b", x=1)],
            "tool_use",
        ),
        (
            [call_delta(0, "c1", None, '{"x"'), call_delta(0, None, "late", ":1}"), delta("tool_calls")],
            {},
            ["message_start", "start:tool_use", "input_json_delta", "stop", "message_delta", "message_stop"],
            [use("c1", "late", x=1)],
            "tool_use",
        ),
        (
            [call_delta(0, "c1", None, '{"x":1}'), delta("tool_calls")],
            {},
            ["message_start", "start:tool_use", "input_json_delta", "stop", "message_delta", "message_stop"],
            [use("c1", "", x=1)],
            "tool_use",
        ),
        (
            [call_delta(0, None, "f", "{}"), delta("tool_calls")],
            {},
            ["message_start", "start:tool_use", "input_json_delta", "stop", "message_delta", "message_stop"],
            [use("toolu_test_0", "f")],
            "tool_use",
        ),
        (
            [
                delta(content="ok"),
                {
                    **delta("stop"),
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "END"}],
                },
            ],
            STOPS,
            ["message_start", *TEXT, "stop", "message_delta", "message_stop"],
            [text("ok")],
            "stop_sequence",
        ),
    ],
    ids=[
        "text",
        "empty",
        "length",
        "content_filter",
        "text_then_call",
        "thinking_asked",
        "reasoning_not_asked",
        "two_calls",
        "name_after_id",
        "name_never_came",
        "call_without_id",
        "stop_sequence",
    ],
)
def test_stream(chunks: list[dict], request_extra: dict, names: list[str], content: list[dict], reason: str) -> None:
    events, _ = run(chunks, request_extra)
    assert short(events) == names
    message = accumulate(events)
    assert (message["content"], message["stop_reason"]) == (content, reason)
    assert events[0]["message"]["id"] == MID and events[0]["message"]["model"] == ("up-model" if chunks else "claude")


def test_stream_usage_goes_in_message_delta() -> None:
    events, _ = run([delta(content="Hi"), delta("stop"), usage_chunk(cached=4)])
    assert events[0]["message"]["usage"] == ZERO
    assert events[-2]["usage"] == USAGE_OUT


def test_stream_without_usage_says_zero_output() -> None:
    events, _ = run([delta(content="Hi"), delta("stop")])
    assert events[-2]["usage"] == {"output_tokens": 0}


def test_stream_usage_before_start_is_in_message_start() -> None:
    translator = ChatToMessagesStream({"model": "claude"}, message_id=MID)
    events = parse_events(translator.feed(usage_chunk(cached=4)))
    assert events[0]["message"]["usage"] == {**USAGE_OUT, "output_tokens": 0}
    assert translator.usage == USAGE_OUT


def test_stream_late_fragment_goes_to_its_block() -> None:
    """No known server interleaves calls; if one did, nothing would be lost."""
    chunks = [
        call_delta(0, "c1", "a", '{"x"'),
        call_delta(1, "c2", "b", "{}"),
        call_delta(0, arguments=":1}"),
        delta("tool_calls"),
    ]
    events, _ = run(chunks)
    assert accumulate(events)["content"] == [use("c1", "a", x=1), use("c2", "b")]


@pytest.mark.parametrize(
    ("chunks", "names"),
    [
        ([], ["message_start", "error"]),
        ([delta(content="Hi")], ["message_start", *TEXT, "error"]),
    ],
    ids=["before_anything", "mid_text"],
)
def test_stream_fail(chunks: list[dict], names: list[str]) -> None:
    translator = ChatToMessagesStream({"model": "claude"}, message_id=MID)
    frames = [f for c in chunks for f in translator.feed(c)] + translator.fail(
        "overloaded_error", "Upstream overloaded."
    )
    events = parse_events(frames)
    assert short(events) == names
    assert events[-1]["error"] == {"type": "overloaded_error", "message": "Upstream overloaded."}
    assert translator.fail("api_error", "again") == [] and translator.finish() == []


@pytest.mark.parametrize(
    ("error", "error_type", "message"),
    [
        ({"message": "slow down", "type": "rate_limit_exceeded"}, "rate_limit_error", "slow down"),
        ({"message": "busy", "code": "overloaded"}, "overloaded_error", "busy"),
        ({"message": "bad", "type": "invalid_request_error"}, "invalid_request_error", "bad"),
        ({"type": "server_error"}, "api_error", "The upstream reported an error."),
        ("boom", "api_error", "boom"),
    ],
    ids=["rate_limit", "overloaded", "invalid", "server", "string"],
)
def test_stream_error_chunk_fails_the_stream(error: object, error_type: str, message: str) -> None:
    events, _ = run([delta(content="Hi"), {"error": error}], end=False)
    assert events[-1] == {"type": "error", "error": {"type": error_type, "message": message}}


def test_stream_translates_choice_zero_only() -> None:
    other = {
        **delta(content="theirs"),
        "choices": [{"index": 1, "delta": {"content": "theirs"}, "finish_reason": None}],
    }
    events, _ = run([delta(content="mine"), other, delta("stop")])
    assert accumulate(events)["content"] == [text("mine")]


def test_stream_events_go_out_as_chunks_arrive() -> None:
    translator = ChatToMessagesStream({"model": "claude"}, message_id=MID)
    assert short(parse_events(translator.feed(delta(role="assistant", content="")))) == ["message_start"]
    assert short(parse_events(translator.feed(delta(content="Hi")))) == TEXT
    assert short(parse_events(translator.feed(delta(content="!")))) == ["text_delta"]
    assert translator.feed(delta("stop")) == [] and translator.feed(usage_chunk()) == []
    assert short(parse_events(translator.finish())) == ["stop", "message_delta", "message_stop"]


def sdk_client(body: bytes) -> anthropic.Anthropic:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    return anthropic.Anthropic(api_key="k", base_url="http://sluice", http_client=http, max_retries=0)


def test_stream_through_the_anthropic_sdk() -> None:
    """The SDK's own SSE parser and accumulator read a translated stream: thinking, text, then a tool call."""
    _, frames = run([delta(reasoning_content="Weather needs a tool."), delta(content="Let me check."), *WEATHER], THINK)
    with sdk_client(b"".join(frames)) as client:
        tool = {"name": "get_weather", "input_schema": {"type": "object"}}
        with client.messages.stream(model="claude", max_tokens=64, messages=[USER], tools=[tool], **THINK) as stream:
            texts = list(stream.text_stream)
            final = stream.get_final_message()
    assert texts == ["Let me check."]
    no_extras(final)
    assert [block.type for block in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[0].thinking == "Weather needs a tool."
    tool_use = final.content[2]
    assert (tool_use.id, tool_use.name, tool_use.input) == ("call_9", "get_weather", {"city": "Paris"})
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.cache_read_input_tokens) == (6, 5, 4)


def test_failed_stream_raises_in_the_anthropic_sdk() -> None:
    translator = ChatToMessagesStream({"model": "claude"}, message_id=MID)
    body = b"".join(translator.feed(delta(content="Hi")) + translator.fail("overloaded_error", "Upstream overloaded."))
    with sdk_client(body) as client, pytest.raises(anthropic.APIStatusError, match="Upstream overloaded"):
        with client.messages.stream(model="claude", max_tokens=64, messages=[USER]) as stream:
            list(stream)


def test_a_system_turn_inside_messages_becomes_a_chat_system_message():
    """Claude Code's first request carries a `system` role in `messages`; chat takes system messages anywhere."""
    chat = messages_to_chat({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": [{"type": "text", "text": "be brief"}]},
    ]})  # fmt: skip
    assert chat["messages"] == [{"role": "user", "content": "hi"}, {"role": "system", "content": "be brief"}]
