"""The Responses <-> chat-completions translator: request tables, answer tables, stream tables.

Every response object and event is validated strictly against the openai SDK's pydantic types: strict
mode (no coercion) and no field the SDK does not know, at any depth.
"""

from __future__ import annotations

import json

import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from app.dialects.responses_chat import (
    IGNORED_FIELDS,
    REFUSED_FIELDS,
    ChatStreamTranslator,
    request_to_chat,
    response_from_chat,
)
from app.errors import ApiError
from tests import strict_models
from tests.strict_models import validated

EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)
RID, CREATED = "resp_test", 1_700_000_000
USER = {"role": "user", "content": "hi"}


# Sent by the real API (and the brief asks for it) though this SDK version's Response model lacks it.
WIRE_ONLY = {".response.store", ".store"}


def no_extras(model: object) -> None:
    strict_models.no_extras(model, wire_only)


def wire_only(where: str, name: str) -> bool:
    return f"{where}.{name}" in WIRE_ONLY


def strict_response(obj: dict) -> Response:
    return validated(Response, obj, wire_only)


def parse_events(frames: list[bytes]) -> list[dict]:
    """Each frame is one `event: X\\ndata: {json}\\n\\n` whose event name equals the data's type, validated."""
    events = []
    for frame in frames:
        text = frame.decode()
        assert text.endswith("\n\n") and text.count("\n\n") == 1
        head, data = text.removesuffix("\n\n").split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        no_extras(EVENTS.validate_python(event, strict=True))
        events.append(event)
    return events


def chat(messages: list | None = None, **extra: object) -> dict:
    return {"model": "m", "messages": messages if messages is not None else [USER], **extra}


def translate(payload: dict, drop: bool = False) -> tuple[dict, list[str]]:
    return request_to_chat({"model": "m", **payload}, drop_builtin_tools=drop)


FN = {"type": "function", "name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}
FN_CHAT = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}},
}
CALL = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'}
CALL_CHAT = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
CALL2 = {**CALL, "call_id": "call_2", "id": "fc_2", "status": "completed"}
CALL2_CHAT = {**CALL_CHAT, "id": "call_2"}
IMAGE = {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}
IMAGE_CHAT = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}
SCHEMA = {"type": "json_schema", "name": "out", "schema": {"type": "object"}, "strict": True, "description": "d"}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"input": "hi"}, chat()),
        ({"input": "hi", "instructions": "Be brief."}, chat([{"role": "system", "content": "Be brief."}, USER])),
        ({"input": [{"role": "user", "content": "hi"}]}, chat()),  # EasyInputMessage: no type
        ({"input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]}, chat()),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "look"}, IMAGE]}]},
            chat([{"role": "user", "content": [{"type": "text", "text": "look"}, IMAGE_CHAT]}]),
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/a.png"}]}]},
            chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}]),
        ),
        (
            {
                "input": [
                    {
                        "role": "developer",
                        "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
                    }
                ]
            },
            chat([{"role": "system", "content": "a\nb"}]),
        ),
        ({"input": [{"role": "system", "content": "s"}, USER]}, chat([{"role": "system", "content": "s"}, USER])),
        (
            {
                "input": [
                    {
                        "id": "msg_1",
                        "status": "completed",
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": "yes", "annotations": []}],
                    }
                ]
            },
            chat([{"role": "assistant", "content": "yes"}]),
        ),
        (
            {
                "input": [
                    USER,
                    CALL,
                    CALL2,
                    {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
                    {
                        "type": "function_call_output",
                        "call_id": "call_2",
                        "output": [{"type": "input_text", "text": "rain"}],
                    },
                ]
            },
            chat(
                [
                    USER,
                    {"role": "assistant", "content": None, "tool_calls": [CALL_CHAT, CALL2_CHAT]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                    {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
                ]
            ),
        ),
        (
            {"input": [USER, {"role": "assistant", "content": "checking"}, CALL]},
            chat([USER, {"role": "assistant", "content": "checking", "tool_calls": [CALL_CHAT]}]),
        ),
        (
            {"input": [USER, {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "xx"}, CALL]},
            chat([USER, {"role": "assistant", "content": None, "tool_calls": [CALL_CHAT]}]),
        ),
        (
            {"input": "hi", "tools": [FN], "tool_choice": "required", "parallel_tool_calls": False},
            chat(tools=[FN_CHAT], tool_choice="required", parallel_tool_calls=False),
        ),
        (
            {
                "input": "hi",
                "tools": [{**FN, "strict": True}],
                "tool_choice": {"type": "function", "name": "get_weather"},
            },
            chat(
                tools=[{"type": "function", "function": {**FN_CHAT["function"], "strict": True}}],
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
            ),
        ),
        ({"input": "hi", "tool_choice": "auto", "parallel_tool_calls": True}, chat()),  # no tools: neither is sent
        (
            {"input": "hi", "max_output_tokens": 50, "temperature": 0.2, "top_p": 0.9},
            chat(max_tokens=50, temperature=0.2, top_p=0.9),
        ),
        (
            {"input": "hi", "metadata": {"k": "v"}, "user": "u1", "stream": True},
            chat(metadata={"k": "v"}, user="u1", stream=True),
        ),
        ({"input": "hi", "temperature": None, "max_output_tokens": None, "previous_response_id": None}, chat()),
        ({"input": "hi", "text": {"format": {"type": "text"}, "verbosity": "low"}}, chat()),
        ({"input": "hi", "text": {"format": {"type": "json_object"}}}, chat(response_format={"type": "json_object"})),
        (
            {"input": "hi", "text": {"format": SCHEMA}},
            chat(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "out", "description": "d", "schema": {"type": "object"}, "strict": True},
                }
            ),
        ),
        ({"input": "hi", "reasoning": {"effort": "low", "summary": "auto"}}, chat(reasoning_effort="low")),
        ({"input": "hi", "reasoning": {"summary": "auto"}}, chat()),
        (
            {
                "input": "hi",
                "store": False,
                "include": ["reasoning.encrypted_content"],
                "prompt_cache_key": "k",
                "service_tier": "auto",
                "truncation": "disabled",
                "safety_identifier": "s",
                "background": False,
                "stream_options": {"include_obfuscation": False},
                "client_metadata": {"x": "y"},
            },
            chat(),
        ),
    ],
    ids=[
        "string_input",
        "instructions",
        "easy_message",
        "typed_message",
        "text_and_image",
        "image_url_only",
        "developer_parts",
        "system_role",
        "assistant_item_with_id",
        "calls_merged_and_outputs",
        "assistant_text_then_call",
        "reasoning_item_dropped",
        "tools_required",
        "function_choice_strict",
        "choice_without_tools",
        "sampling",
        "metadata_user_stream",
        "nulls_skipped",
        "text_format_text",
        "json_object",
        "json_schema",
        "reasoning_effort",
        "reasoning_summary_only",
        "ignored_fields",
    ],
)
def test_request_translation(payload: dict, expected: dict) -> None:
    assert translate(payload) == (expected, [])


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id", "unsupported_parameter"),
        ({"conversation": "conv_1"}, "conversation", "unsupported_parameter"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "unsupported_parameter"),
        ({"background": True}, "background", "unsupported_parameter"),
        ({"truncation": "auto"}, "truncation", "unsupported_parameter"),
        ({"input": 5}, "input", "invalid_value"),
        ({"input": {"role": "user"}}, "input", "invalid_value"),
        ({"input": [USER, "hi"]}, "input[1]", "invalid_value"),
        (
            {"input": [USER, USER, USER, {"type": "item_reference", "id": "x"}]},
            "input[3].type",
            "unsupported_parameter",
        ),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type", "unsupported_parameter"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "invalid_value"),
        ({"input": [{"role": "user", "content": 3}]}, "input[0].content", "invalid_value"),
        ({"input": [{"role": "user", "content": ["x"]}]}, "input[0].content[0]", "invalid_value"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input[0].content[0].text",
            "invalid_value",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}]},
            "input[0].content[0].file_id",
            "unsupported_parameter",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0].image_url",
            "invalid_value",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
            "unsupported_parameter",
        ),
        ({"input": [{"role": "system", "content": [IMAGE]}]}, "input[0].content[0].type", "unsupported_parameter"),
        ({"input": [{**CALL, "arguments": {"city": "Paris"}}]}, "input[0].arguments", "invalid_value"),
        ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id", "invalid_value"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id", "invalid_value"),
        (
            {"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]},
            "input[0].output",
            "invalid_value",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "c", "output": [IMAGE]}]},
            "input[0].output[0].type",
            "unsupported_parameter",
        ),
        ({"instructions": ["x"]}, "instructions", "invalid_value"),
        ({"tools": {"type": "function"}}, "tools", "invalid_value"),
        ({"tools": [FN, "x"]}, "tools[1]", "invalid_value"),
        ({"tools": [{"type": "function"}]}, "tools[0].name", "invalid_value"),
        ({"tools": [FN, {"type": "web_search"}]}, "tools[1].type", "unsupported_parameter"),
        ({"tools": [{"type": "file_search", "vector_store_ids": []}]}, "tools[0].type", "unsupported_parameter"),
        (
            {"tools": [FN], "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": []}},
            "tool_choice",
            "unsupported_parameter",
        ),
        ({"tools": [FN], "tool_choice": {"type": "function"}}, "tool_choice.name", "invalid_value"),
        ({"tools": [FN], "tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
        ({"tool_choice": {"type": "function", "name": "f"}}, "tool_choice", "invalid_value"),
        ({"tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
        ({"tool_choice": {"type": "web_search"}}, "tool_choice", "unsupported_parameter"),
        ({"text": "json"}, "text", "invalid_value"),
        ({"text": {"format": {"type": "grammar"}}}, "text.format.type", "unsupported_parameter"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name", "invalid_value"),
        ({"reasoning": "high"}, "reasoning", "invalid_value"),
        ({"top_logprobs": 2}, "top_logprobs", "unsupported_parameter"),  # a field not translated is never dropped
        ({"max_tool_calls": 3}, "max_tool_calls", "unsupported_parameter"),
        ({"some_future_field": 1}, "some_future_field", "unsupported_parameter"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_request_refusals(payload: dict, param: str, code: str) -> None:
    with pytest.raises(ApiError) as caught:
        translate({"input": "hi", **payload})
    error = caught.value
    assert (error.status, error.param, error.code) == (400, param, code)
    assert error.body()["error"]["type"] == "invalid_request_error"


BUILTIN = [
    "web_search",
    "web_search_preview",
    "file_search",
    "code_interpreter",
    "computer_use_preview",
    "image_generation",
    "mcp",
    "local_shell",
    "custom",
    "namespace",
    "something_new",
]


@pytest.mark.parametrize("kind", BUILTIN)
def test_builtin_tools_refused_by_default_and_dropped_with_the_setting(kind: str) -> None:
    payload = {"input": "hi", "tools": [FN, {"type": kind}], "tool_choice": {"type": kind}}
    with pytest.raises(ApiError) as caught:
        translate(payload)
    assert caught.value.param == "tools[1].type"
    assert kind in caught.value.message and "drop_builtin_tools" in caught.value.message
    body, dropped = translate(payload, drop=True)
    assert (body["tools"], body["tool_choice"], dropped) == ([FN_CHAT], "auto", [kind])


def test_only_builtin_tools_dropped_leaves_no_tool_fields() -> None:
    payload = {"input": "hi", "tools": [{"type": "web_search"}], "tool_choice": "required", "parallel_tool_calls": True}
    assert translate(payload, drop=True) == (chat(), ["web_search"])


def test_module_lists_what_it_ignores_and_refuses() -> None:
    assert {"store", "include", "prompt_cache_key", "reasoning.summary", "text.verbosity"} <= set(IGNORED_FIELDS)
    assert set(REFUSED_FIELDS) == {"previous_response_id", "conversation", "prompt"}


def codex_request() -> dict:
    """The shape of the Codex CLI's request (much shortened): developer messages, ids, reasoning, built-in tools."""
    shell = {
        "type": "function",
        "name": "shell",
        "description": "Runs a command",
        "strict": False,
        "parameters": {
            "type": "object",
            "properties": {"command": {"type": "array", "items": {"type": "string"}}},
            "required": ["command"],
            "additionalProperties": False,
        },
    }
    return {
        "model": "gpt-5-codex",
        "instructions": "You are Codex." * 500,
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "0199-abc",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "tool_choice": "auto",
        "text": {"verbosity": "medium"},
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "<permissions>"}]},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "<environment_context>"},
                    {"type": "input_text", "text": "list files"},
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": None, "encrypted_content": "gAAAA"},
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_1",
                "name": "shell",
                "arguments": '{"command":["ls"]}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "a.txt"}],
            },
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "thanks"}]},
        ],
        "tools": [
            shell,
            {"type": "web_search", "external_web_access": False},
            {"type": "namespace", "name": "mcp__docs", "tools": [shell]},
        ],
    }


def test_codex_request_is_refused_without_the_setting_and_translated_with_it() -> None:
    with pytest.raises(ApiError) as caught:
        request_to_chat(codex_request(), drop_builtin_tools=False)
    assert (caught.value.param, caught.value.code) == ("tools[1].type", "unsupported_parameter")
    body, dropped = request_to_chat(codex_request(), drop_builtin_tools=True)
    assert dropped == ["web_search", "namespace"]
    assert [m["role"] for m in body["messages"]] == [
        "system",
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]
    assert body["messages"][2]["content"] == [
        {"type": "text", "text": "<environment_context>"},
        {"type": "text", "text": "list files"},
    ]
    assert body["messages"][3]["tool_calls"][0]["id"] == "call_1"
    assert [t["function"]["name"] for t in body["tools"]] == ["shell"]
    assert (body["tool_choice"], body["parallel_tool_calls"], body["reasoning_effort"]) == ("auto", False, "medium")
    assert set(body) == {
        "model",
        "messages",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "reasoning_effort",
        "stream",
    }


# ---- plain answers -------------------------------------------------------------------------------------------------

USAGE = {
    "prompt_tokens": 10,
    "completion_tokens": 5,
    "total_tokens": 15,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 2},
}
USAGE_OUT = {
    "input_tokens": 10,
    "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
    "output_tokens": 5,
    "output_tokens_details": {"reasoning_tokens": 2},
    "total_tokens": 15,
}
TOOL_CALL = {"id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}


def completion(message: dict, finish_reason: str = "stop", usage: dict | None = USAGE) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish_reason}
    return {"id": "chatcmpl-1", "object": "chat.completion", "model": "m-upstream", "choices": [choice], "usage": usage}


def text_item(index: int, text: str, status: str = "completed") -> dict:
    return {
        "id": f"msg_test_{index}",
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
    }


def call_item(index: int, status: str = "completed", call_id: str = "call_9") -> dict:
    return {
        "id": f"fc_test_{index}",
        "type": "function_call",
        "call_id": call_id,
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
        "status": status,
    }


@pytest.mark.parametrize(
    ("answer", "status", "reason", "output"),
    [
        (completion({"content": "Hello"}), "completed", None, [text_item(0, "Hello")]),
        (
            completion({"content": "Hel"}, "length"),
            "incomplete",
            "max_output_tokens",
            [text_item(0, "Hel", "incomplete")],
        ),
        (completion({"content": ""}, "content_filter"), "incomplete", "content_filter", []),
        (completion({"content": None, "tool_calls": [TOOL_CALL]}, "tool_calls"), "completed", None, [call_item(0)]),
        (
            completion(
                {"content": "Let me check.", "tool_calls": [TOOL_CALL, {**TOOL_CALL, "id": None}]}, "tool_calls"
            ),
            "completed",
            None,
            [text_item(0, "Let me check."), call_item(1), call_item(2, call_id="call_test_2")],
        ),
        (
            completion({"content": "4", "reasoning_content": "2+2"}),
            "completed",
            None,
            [
                {
                    "id": "rs_test_0",
                    "type": "reasoning",
                    "status": "completed",
                    "summary": [{"type": "summary_text", "text": "2+2"}],
                },
                text_item(1, "4"),
            ],
        ),
        (
            completion({"content": None, "refusal": "I can't."}),
            "completed",
            None,
            [
                {
                    "id": "msg_test_0",
                    "type": "message",
                    "role": "assistant",
                    "status": "completed",
                    "content": [{"type": "refusal", "refusal": "I can't."}],
                }
            ],
        ),
        (
            completion({"content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}),
            "completed",
            None,
            [text_item(0, "ab")],
        ),
        ({"object": "chat.completion", "choices": []}, "completed", None, []),
    ],
    ids=["text", "length", "content_filter", "tool_call", "text_and_calls", "reasoning", "refusal", "parts", "empty"],
)
def test_plain_answer(answer: dict, status: str, reason: str | None, output: list[dict]) -> None:
    request = {"model": "m", "input": "hi", "tools": [FN, {"type": "web_search"}], "max_output_tokens": 9}
    response = response_from_chat(answer, request, response_id="resp_test", created_at=CREATED)
    strict_response(response)
    assert (response["status"], response["output"]) == (status, output)
    assert response["incomplete_details"] == (None if reason is None else {"reason": reason})
    assert (response["id"], response["created_at"], response["object"], response["error"]) == (
        RID,
        CREATED,
        "response",
        None,
    )
    assert response["tools"] == [FN] and response["max_output_tokens"] == 9 and response["store"] is False


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (USAGE, USAGE_OUT),
        (None, None),
        (
            {"prompt_tokens": 3, "completion_tokens": 4},
            {
                **USAGE_OUT,
                "input_tokens": 3,
                "output_tokens": 4,
                "total_tokens": 7,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
        ),
    ],
    ids=["details", "absent", "no_details"],
)
def test_plain_usage_mapping(usage: dict | None, expected: dict | None) -> None:
    response = response_from_chat(
        completion({"content": "x"}, usage=usage), {"model": "m"}, response_id=RID, created_at=1
    )
    strict_response(response)
    assert response["usage"] == expected and response["model"] == "m-upstream"


def test_plain_answer_echoes_the_request() -> None:
    request = {
        "model": "m",
        "instructions": "Be brief.",
        "temperature": 0.3,
        "top_p": 0.5,
        "metadata": {"a": "b"},
        "text": {"format": SCHEMA},
        "reasoning": {"effort": "low"},
        "tool_choice": {"type": "function", "name": "f"},
        "parallel_tool_calls": False,
        "user": "u",
    }
    response = response_from_chat(completion({"content": "{}"}), request, response_id=RID, created_at=1)
    strict_response(response)
    for key in ("instructions", "temperature", "top_p", "metadata", "text", "reasoning", "tool_choice", "user"):
        assert response[key] == request[key], key
    assert response["parallel_tool_calls"] is False


# ---- streams -------------------------------------------------------------------------------------------------------


def delta(finish: str | None = None, **fields: object) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "m-upstream",
        "choices": [{"index": 0, "delta": fields, "finish_reason": finish}],
    }


def usage_chunk(usage: dict = USAGE) -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m-upstream", "choices": [], "usage": usage}


def tool_delta(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> dict:
    function = {"arguments": arguments} if name is None else {"name": name, "arguments": arguments}
    call = (
        {"index": index, "function": function}
        if call_id is None
        else {"index": index, "id": call_id, "type": "function", "function": function}
    )
    return delta(tool_calls=[call])


def run(chunks: list[dict], end: str = "finish", request: dict | None = None) -> tuple[list[dict], list[bytes]]:
    translator = ChatStreamTranslator(
        request or {"model": "m", "input": "hi", "stream": True}, response_id=RID, created_at=CREATED
    )
    frames = [frame for chunk in chunks for frame in translator.feed(chunk)]
    frames += translator.finish() if end == "finish" else translator.fail("upstream_timeout", "The upstream stopped.")
    events = parse_events(frames)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert (
        translator.finish() == [] and translator.fail("x", "y") == [] and translator.feed(delta(content="late")) == []
    )
    return events, frames


def short(events: list[dict]) -> list[str]:
    """Event types without their common prefix, for compact tables."""
    return [e["type"].removeprefix("response.") for e in events]


TEXT_EVENTS = ["output_item.added", "content_part.added"]
TEXT_END = ["output_text.done", "content_part.done", "output_item.done"]
CALL_END = ["function_call_arguments.done", "output_item.done"]
HELLO = [delta(role="assistant", content=""), delta(content="Hel"), delta(content="lo"), delta("stop"), usage_chunk()]
WEATHER = [
    delta(role="assistant", content=None),
    tool_delta(0, "", "call_9", "get_weather"),
    tool_delta(0, '{"ci'),
    tool_delta(0, 'ty":"Par'),
    tool_delta(0, 'is"}'),
    delta("tool_calls"),
    usage_chunk(),
]


@pytest.mark.parametrize(
    ("chunks", "types", "status", "output"),
    [
        (
            HELLO,
            [*TEXT_EVENTS, "output_text.delta", "output_text.delta", *TEXT_END],
            "completed",
            [text_item(0, "Hello")],
        ),
        (
            WEATHER,
            ["output_item.added", *["function_call_arguments.delta"] * 3, *CALL_END],
            "completed",
            [call_item(0)],
        ),
        (
            [
                delta(content="Let me check."),
                tool_delta(0, '{"city":"Paris"}', "call_9", "get_weather"),
                delta("tool_calls"),
            ],
            [
                *TEXT_EVENTS,
                "output_text.delta",
                *TEXT_END,
                "output_item.added",
                "function_call_arguments.delta",
                *CALL_END,
            ],
            "completed",
            [text_item(0, "Let me check."), call_item(1)],
        ),
        (
            [
                delta(
                    tool_calls=[
                        {
                            "index": 0,
                            "id": "call_9",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                        {
                            "index": 1,
                            "id": "call_8",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        },
                    ]
                ),
                delta("tool_calls"),
            ],
            ["output_item.added", "function_call_arguments.delta"] * 2 + CALL_END * 2,
            "completed",
            [call_item(0), call_item(1, call_id="call_8")],
        ),
        (
            [delta(content="Hel"), delta("length", content="lo")],
            [*TEXT_EVENTS, "output_text.delta", "output_text.delta", *TEXT_END],
            "incomplete",
            [text_item(0, "Hello", "incomplete")],
        ),
        (
            [delta(reasoning_content="2+"), delta(reasoning_content="2"), delta(content="4"), delta("stop")],
            [
                "output_item.added",
                "reasoning_summary_part.added",
                *["reasoning_summary_text.delta"] * 2,
                "reasoning_summary_text.done",
                "reasoning_summary_part.done",
                "output_item.done",
                *TEXT_EVENTS,
                "output_text.delta",
                *TEXT_END,
            ],
            "completed",
            [
                {
                    "id": "rs_test_0",
                    "type": "reasoning",
                    "status": "completed",
                    "summary": [{"type": "summary_text", "text": "2+2"}],
                },
                text_item(1, "4"),
            ],
        ),
        (
            [tool_delta(0, '{"city":"Paris"}', "call_9", "get_weather"), delta(content="Done."), delta("stop")],
            [
                "output_item.added",
                "function_call_arguments.delta",
                *CALL_END,
                *TEXT_EVENTS,
                "output_text.delta",
                *TEXT_END,
            ],
            "completed",
            [call_item(0), text_item(1, "Done.")],
        ),
        ([delta(role="assistant", content=""), delta("stop")], [], "completed", []),
        ([], [], "completed", []),
    ],
    ids=[
        "text",
        "tool_call_fragments",
        "text_then_call",
        "two_calls_one_chunk",
        "length",
        "reasoning",
        "call_then_text",
        "empty",
        "no_chunks",
    ],
)
def test_stream(chunks: list[dict], types: list[str], status: str, output: list[dict]) -> None:
    events, _ = run(chunks)
    assert short(events) == ["created", "in_progress", *types, status]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    final = events[-1]["response"]
    assert (final["status"], final["output"]) == (status, output)
    assert final["incomplete_details"] == ({"reason": "max_output_tokens"} if status == "incomplete" else None)
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done == output and [i["id"] for i in added] == [i["id"] for i in output]
    assert all(i["status"] == "in_progress" for i in added)


def test_stream_deltas_carry_their_item() -> None:
    events, _ = run(WEATHER)
    arguments = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert "".join(e["delta"] for e in arguments) == '{"city":"Paris"}'
    assert {(e["item_id"], e["output_index"]) for e in arguments} == {("fc_test_0", 0)}
    assert events[2]["item"]["arguments"] == "" and events[2]["item"]["name"] == "get_weather"
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert (done["item_id"], done["output_index"], done["arguments"]) == ("fc_test_0", 0, '{"city":"Paris"}')


@pytest.mark.parametrize(
    ("chunks", "usage"),
    [(HELLO, USAGE_OUT), (HELLO[:-1], None), ([delta("stop", content="x") | {"usage": USAGE}], USAGE_OUT)],
    ids=["usage_chunk", "missing_usage_chunk", "usage_with_finish"],
)
def test_stream_usage(chunks: list[dict], usage: dict | None) -> None:
    translator = ChatStreamTranslator({"model": "m"}, response_id=RID, created_at=CREATED)
    frames = [frame for chunk in chunks for frame in translator.feed(chunk)]
    assert not any(b"response.completed" in frame for frame in frames)  # only finish() ends the stream
    events = parse_events(frames + translator.finish())
    assert translator.usage == usage and events[-1]["response"]["usage"] == usage
    assert events[-1]["type"] == "response.completed"


@pytest.mark.parametrize(
    ("chunks", "types", "output"),
    [
        ([], [], []),
        ([delta(content="Hel")], [*TEXT_EVENTS, "output_text.delta"], [text_item(0, "Hel", "incomplete")]),
        (
            WEATHER[:3],
            ["output_item.added", "function_call_arguments.delta"],
            [{**call_item(0, "incomplete"), "arguments": '{"ci'}],
        ),
    ],
    ids=["before_content", "mid_text", "mid_call"],
)
def test_stream_fail(chunks: list[dict], types: list[str], output: list[dict]) -> None:
    events, _ = run(chunks, end="fail")
    assert short(events) == ["created", "in_progress", *types, "error", "failed"]
    error = events[-2]
    assert (error["code"], error["message"], error["param"]) == ("upstream_timeout", "The upstream stopped.", None)
    failed = events[-1]["response"]
    assert (failed["status"], failed["output"]) == ("failed", output)
    assert failed["error"] == {"code": "server_error", "message": "The upstream stopped."}


@pytest.mark.parametrize(
    ("error", "code", "failed_code", "message"),
    [
        ({"message": "overloaded", "type": "server_error", "code": "rate_limit_exceeded"}, "rate_limit_exceeded",
         "rate_limit_exceeded", "overloaded"),
        ({"message": "boom", "type": "internal"}, "internal", "server_error", "boom"),
        ({"code": 500}, "500", "server_error", "The upstream reported an error."),
        ("model crashed", "upstream_error", "server_error", "model crashed"),
    ],
    ids=["known_code", "type_only", "numeric_code", "string"],
)  # fmt: skip
def test_stream_error_chunk_fails_the_stream(error: object, code: str, failed_code: str, message: str) -> None:
    translator = ChatStreamTranslator({"model": "m"}, response_id=RID, created_at=CREATED)
    frames = translator.feed(delta(content="Hi"))
    frames += translator.feed({"error": error})
    events = parse_events(frames)
    assert short(events)[-2:] == ["error", "failed"]
    assert (events[-2]["code"], events[-2]["message"]) == (code, message)
    assert events[-1]["response"]["error"] == {"code": failed_code, "message": message}
    assert events[-1]["response"]["output"] == [text_item(0, "Hi", "incomplete")]
    assert translator.finish() == []


def test_stream_translates_choice_zero_only() -> None:
    chunks = [
        {
            "model": "m",
            "choices": [{"index": 1, "delta": {"content": "other"}}, {"index": 0, "delta": {"content": "mine"}}],
        }
    ]
    events, _ = run(chunks)
    assert events[-1]["response"]["output"] == [text_item(0, "mine")]


def test_stream_through_the_openai_sdk() -> None:
    """The SDK's own SSE parser and stream accumulator read a translated stream: text then a function call."""
    import httpx2 as httpx
    from openai import OpenAI

    _, frames = run([delta(content="Let me check."), *WEATHER])
    body = b"".join(frames)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    with (
        httpx.Client(transport=httpx.MockTransport(handler)) as http,
        OpenAI(api_key="k", base_url="http://sluice/v1", http_client=http) as client,
    ):
        tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": False}
        with client.responses.stream(model="m", input="weather?", tools=[tool]) as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
    assert deltas == ["Let me check."] and final.output_text == "Let me check."
    call = final.output[1]
    assert (call.type, call.name, call.call_id, call.arguments) == (
        "function_call",
        "get_weather",
        "call_9",
        '{"city":"Paris"}',
    )
    assert final.usage is not None and final.usage.input_tokens_details.cached_tokens == 4


def test_stream_events_go_out_as_chunks_arrive() -> None:
    translator = ChatStreamTranslator({"model": "m"}, response_id=RID, created_at=CREATED)
    assert short(parse_events(translator.feed(delta(role="assistant", content="")))) == ["created", "in_progress"]
    assert short(parse_events(translator.feed(delta(content="Hi")))) == [*TEXT_EVENTS, "output_text.delta"]
    assert short(parse_events(translator.feed(delta(content="!")))) == ["output_text.delta"]
    assert translator.feed(delta("stop")) == [] and translator.feed(usage_chunk()) == []
    assert short(parse_events(translator.finish())) == [*TEXT_END, "completed"]


def whole_call(call_id: str | None, arguments: str, name: str | None = "get_weather") -> dict:
    """A tool call fragment without `index`, as some servers send them."""
    function = {"arguments": arguments} if name is None else {"name": name, "arguments": arguments}
    return {"id": call_id, "type": "function", "function": function} if call_id else {"function": function}


@pytest.mark.parametrize(
    ("chunks", "calls"),
    [
        (
            [delta(tool_calls=[whole_call("call_a", "{}")]), delta(tool_calls=[whole_call("call_b", "{}")])],
            [("call_a", "{}"), ("call_b", "{}")],
        ),
        (
            [delta(tool_calls=[whole_call("call_a", "{}"), whole_call("call_b", "[]")])],
            [("call_a", "{}"), ("call_b", "[]")],
        ),
        (
            [delta(tool_calls=[whole_call("call_a", '{"x"')]), delta(tool_calls=[whole_call(None, ":1}", None)])],
            [("call_a", '{"x":1}')],
        ),
        (
            [delta(tool_calls=[whole_call("call_a", '{"x"')]), delta(tool_calls=[whole_call("call_a", ":1}")])],
            [("call_a", '{"x":1}')],
        ),
        ([delta(tool_calls=[whole_call(None, "{}")])], [("call_test_0", "{}")]),
    ],
    ids=["one_per_chunk", "two_in_a_chunk", "fragments_without_id", "fragments_with_id", "no_id_at_all"],
)
def test_stream_calls_without_index(chunks: list[dict], calls: list[tuple[str, str]]) -> None:
    events, _ = run([*chunks, delta("tool_calls")])
    output = events[-1]["response"]["output"]
    assert [(item["call_id"], item["arguments"]) for item in output] == calls
    assert [item["id"] for item in output] == [f"fc_test_{i}" for i in range(len(calls))]


def test_a_call_whose_name_comes_after_its_id_is_announced_with_the_name():
    """Some servers send a call's id (and even argument fragments) before its name: output_item.added waits."""
    translator = ChatStreamTranslator({"model": "m"}, response_id="resp_late", created_at=1)
    deltas = [{"index": 0, "id": "call_1", "function": {"arguments": ""}},
              {"index": 0, "function": {"arguments": '{"a":'}},
              {"index": 0, "function": {"name": "f", "arguments": " 1}"}}]  # fmt: skip
    events = []
    for delta in deltas:
        events += translator.feed({"choices": [{"index": 0, "delta": {"tool_calls": [delta]}, "finish_reason": None}]})
    events += translator.finish()
    parsed = [json.loads(e.split(b"data: ", 1)[1]) for e in events]
    added = next(e for e in parsed if e["type"] == "response.output_item.added")
    assert added["item"]["name"] == "f" and added["item"]["call_id"] == "call_1"
    done = next(e for e in parsed if e["type"] == "response.function_call_arguments.done")
    assert done["arguments"] == '{"a": 1}'


def test_a_call_that_never_gets_a_name_is_still_delivered():
    translator = ChatStreamTranslator({"model": "m"}, response_id="resp_anon", created_at=1)
    delta = {"index": 0, "id": "call_2", "function": {"arguments": "{}"}}
    events = translator.feed({"choices": [{"index": 0, "delta": {"tool_calls": [delta]}, "finish_reason": None}]})
    events += translator.finish()
    kinds = [json.loads(e.split(b"data: ", 1)[1])["type"] for e in events]
    assert "response.output_item.added" in kinds and kinds[-1] == "response.completed"
