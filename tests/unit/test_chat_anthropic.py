"""The chat client -> Messages upstream translator: request tables, answer tables, stream tables.

Every completion and chunk is validated strictly against the openai SDK's pydantic types: strict mode (no
coercion) and no field the SDK does not know, at any depth (except `reasoning_content`, which servers send
and this SDK version does not declare).
"""

from __future__ import annotations

import json

import httpx2 as httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from app.dialects.chat_anthropic import (
    IGNORED_FIELDS,
    REFUSED_FIELDS,
    MessagesToChatStream,
    chat_to_messages,
    message_to_chat,
)
from app.dialects.openai_chat import DONE
from app.errors import ApiError
from tests import strict_models
from tests.strict_models import validated

CID, CREATED = "chatcmpl-test", 1_700_000_000
USER = {"role": "user", "content": "hi"}
WIRE_ONLY = "reasoning_content"  # DeepSeek's and vLLM's name for reasoning text


def no_extras(model: object) -> None:
    strict_models.no_extras(model, wire_only)


def wire_only(where: str, name: str) -> bool:
    return name == WIRE_ONLY


def strict_completion(obj: dict) -> ChatCompletion:
    return validated(ChatCompletion, obj, wire_only)


def parse_chunks(frames: list[bytes]) -> list[dict]:
    """Each frame is one `data: {json}\\n\\n` chat chunk, validated; the last one is [DONE]."""
    assert frames[-1] == DONE and DONE not in frames[:-1]
    chunks = []
    for frame in frames[:-1]:
        text = frame.decode()
        assert text.startswith("data: ") and text.endswith("\n\n") and text.count("\n\n") == 1
        chunk = json.loads(text.removeprefix("data: "))
        no_extras(ChatCompletionChunk.model_validate(chunk, strict=True))
        chunks.append(chunk)
    return chunks


def body(messages: list | None = None, max_tokens: int = 1024, **extra: object) -> dict:
    return {
        "model": "claude",
        "max_tokens": max_tokens,
        "messages": messages if messages is not None else [USER],
        **extra,
    }


def translate(**payload: object) -> dict:
    return chat_to_messages({"model": "claude", "messages": [USER], **payload}, default_max_tokens=1024)


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def call(call_id: str, arguments: str = "{}", name: str = "get_weather") -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def use(call_id: str, name: str = "get_weather", **arguments: object) -> dict:
    return {"type": "tool_use", "id": call_id, "name": name, "input": arguments}


def result(call_id: str, content: str = "sunny") -> dict:
    return {"type": "tool_result", "tool_use_id": call_id, "content": content}


def tool_message(call_id: str, content: object = "sunny") -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url, "detail": "high"}}


PNG = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
URL_IMAGE = {"type": "image", "source": {"type": "url", "url": "https://x/a.png"}}
FN = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}},
}
TOOL = {"name": "get_weather", "input_schema": {"type": "object"}, "description": "Weather"}
CALLS = {"role": "assistant", "content": None, "tool_calls": [call("c1", '{"city":"Paris"}'), call("c2")]}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({}, body()),
        ({"max_tokens": 50}, body(max_tokens=50)),
        ({"max_tokens": 50, "max_completion_tokens": 70}, body(max_tokens=70)),
        ({"messages": [{"role": "system", "content": "Be brief."}, USER]}, body(system="Be brief.")),
        (
            {
                "messages": [
                    {"role": "developer", "content": [{"type": "text", "text": "a"}]},
                    USER,
                    {"role": "system", "content": "b"},
                ]
            },
            body(system=[text("a"), text("b")]),
        ),
        ({"messages": [{"role": "system", "content": ""}, USER]}, body()),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "look"},
                            image_part("data:image/png;base64,AAAA"),
                            image_part("https://x/a.png"),
                        ],
                    }
                ]
            },
            body([{"role": "user", "content": [text("look"), PNG, URL_IMAGE]}]),
        ),
        (
            {"messages": [USER, {"role": "user", "content": "again"}]},
            body([{"role": "user", "content": [text("hi"), text("again")]}]),
        ),
        (
            {
                "messages": [
                    USER,
                    CALLS,
                    tool_message("c1"),
                    tool_message("c2", [{"type": "text", "text": "rain"}]),
                    {"role": "user", "content": "and?"},
                ]
            },
            body(
                [
                    USER,
                    {"role": "assistant", "content": [use("c1", city="Paris"), use("c2")]},
                    {"role": "user", "content": [result("c1"), result("c2", "rain"), text("and?")]},
                ]
            ),
        ),
        (
            {
                "messages": [
                    USER,
                    {"role": "assistant", "content": "Let me check.", "tool_calls": [call("c1", "")]},
                    tool_message("c1", None),
                ]
            },
            body(
                [
                    USER,
                    {"role": "assistant", "content": [text("Let me check."), use("c1")]},
                    {"role": "user", "content": [result("c1", "")]},
                ]
            ),
        ),
        (
            {
                "messages": [
                    USER,
                    {"role": "assistant", "content": "", "reasoning_content": "x"},
                    {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "more"}]},
                ]
            },
            body([{"role": "user", "content": [text("hi"), text("more")]}]),
        ),
        (
            {
                "messages": [
                    USER,
                    {
                        "role": "assistant",
                        "content": [{"type": "text", "text": "a"}, {"type": "refusal", "refusal": "no"}],
                    },
                ]
            },
            body([USER, {"role": "assistant", "content": [text("a"), text("no")]}]),
        ),
        (
            {"messages": [USER, {"role": "assistant", "content": "yes", "name": "bot"}]},
            body([USER, {"role": "assistant", "content": "yes"}]),
        ),
        ({"tools": [FN]}, body(tools=[TOOL])),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]},
            body(tools=[{"name": "f", "input_schema": {"type": "object", "properties": {}}}]),
        ),
        ({"tools": [FN], "tool_choice": "auto"}, body(tools=[TOOL], tool_choice={"type": "auto"})),
        ({"tools": [FN], "tool_choice": "required"}, body(tools=[TOOL], tool_choice={"type": "any"})),
        ({"tools": [FN], "tool_choice": "none"}, body(tools=[TOOL], tool_choice={"type": "none"})),
        (
            {"tools": [FN], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
            body(tools=[TOOL], tool_choice={"type": "tool", "name": "get_weather"}),
        ),
        (
            {"tools": [FN], "parallel_tool_calls": False},
            body(tools=[TOOL], tool_choice={"type": "auto", "disable_parallel_tool_use": True}),
        ),
        (
            {"tools": [FN], "tool_choice": "required", "parallel_tool_calls": False},
            body(tools=[TOOL], tool_choice={"type": "any", "disable_parallel_tool_use": True}),
        ),
        ({"tools": [FN], "parallel_tool_calls": True}, body(tools=[TOOL])),
        ({"tool_choice": "auto", "parallel_tool_calls": False}, body()),  # no tools: no tool fields
        ({"stop": "END"}, body(stop_sequences=["END"])),
        (
            {"stop": ["a", "b"], "temperature": 0.3, "top_p": 0.8},
            body(stop_sequences=["a", "b"], temperature=0.3, top_p=0.8),
        ),
        ({"user": "u1", "stream": True}, body(metadata={"user_id": "u1"}, stream=True)),
        (
            {
                "stream": False,
                "stop": None,
                "temperature": None,
                "n": 1,
                "logprobs": False,
                "response_format": {"type": "text"},
            },
            body(stream=False),
        ),
        (
            {
                "stream_options": {"include_usage": True},
                "frequency_penalty": 0.1,
                "presence_penalty": 0.1,
                "seed": 1,
                "logit_bias": {"1": 2},
                "service_tier": "auto",
                "store": True,
                "metadata": {"k": "v"},
                "reasoning_effort": "low",
                "future_field": 1,
            },
            body(),
        ),
    ],
    ids=[
        "minimal_default_max_tokens",
        "max_tokens",
        "max_completion_tokens_wins",
        "system",
        "developer_and_late_system",
        "empty_system",
        "images",
        "user_turns_merged",
        "calls_results_and_text_merged",
        "text_and_call_empty_arguments",
        "empty_assistant_dropped",
        "assistant_refusal_part",
        "message_name_ignored",
        "tools",
        "tool_without_schema",
        "choice_auto",
        "choice_required",
        "choice_none",
        "choice_named",
        "no_parallel",
        "required_no_parallel",
        "parallel_true",
        "choice_without_tools",
        "stop_string",
        "stop_list_sampling",
        "user_stream",
        "harmless_values",
        "ignored_fields",
    ],
)
def test_request_translation(payload: dict, expected: dict) -> None:
    assert translate(**payload) == expected


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
        ({"function_call": "auto"}, "function_call", "unsupported_parameter"),
        ({"audio": {"voice": "x"}}, "audio", "unsupported_parameter"),
        ({"modalities": ["text", "audio"]}, "modalities", "unsupported_parameter"),
        ({"web_search_options": {}}, "web_search_options", "unsupported_parameter"),
        ({"n": 2}, "n", "unsupported_parameter"),
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"response_format": {"type": "json_object"}}, "response_format.type", "unsupported_parameter"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
            "response_format.type",
            "unsupported_parameter",
        ),
        ({"messages": "hi"}, "messages", "invalid_value"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role", "invalid_value"),
        ({"messages": ["hi"]}, "messages[0].role", "invalid_value"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content", "invalid_value"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages[0].content[0].type",
            "unsupported_parameter",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]},
            "messages[0].content[0].type",
            "unsupported_parameter",
        ),
        ({"messages": [{"role": "user", "content": ["x"]}]}, "messages[0].content[0]", "invalid_value"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0].image_url.url",
            "invalid_value",
        ),
        (
            {"messages": [{"role": "user", "content": [image_part("ftp://x/a.png")]}]},
            "messages[0].content[0].image_url.url",
            "invalid_value",
        ),
        (
            {"messages": [{"role": "user", "content": [image_part("data:image/png,AAAA")]}]},
            "messages[0].content[0].image_url.url",
            "invalid_value",
        ),
        (
            {"messages": [{"role": "system", "content": [image_part("https://x")]}]},
            "messages[0].content[0]",
            "invalid_value",
        ),
        ({"messages": [{"role": "system", "content": None}]}, "messages[0].content", "invalid_value"),
        (
            {"messages": [{"role": "assistant", "content": None, "tool_calls": {}}]},
            "messages[0].tool_calls",
            "invalid_value",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]},
            "messages[0].tool_calls[0]",
            "invalid_value",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {}}]}]},
            "messages[0].tool_calls[0].function.name",
            "invalid_value",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [call("c", "not json")]}]},
            "messages[0].tool_calls[0].function.arguments",
            "invalid_value",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [call("c", "[1]")]}]},
            "messages[0].tool_calls[0].function.arguments",
            "invalid_value",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id", "invalid_value"),
        ({"tools": {"type": "function"}}, "tools", "invalid_value"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type", "unsupported_parameter"),
        ({"tools": ["f"]}, "tools[0].type", "unsupported_parameter"),
        ({"tools": [{"type": "function", "function": {"name": ""}}]}, "tools[0].function.name", "invalid_value"),
        ({"tools": [FN], "tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
        ({"tools": [FN], "tool_choice": {"type": "function"}}, "tool_choice", "invalid_value"),
        ({"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice", "invalid_value"),
        ({"stop": 3}, "stop", "invalid_value"),
        ({"stop": ["a", 1]}, "stop", "invalid_value"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_request_refusals(payload: dict, param: str, code: str) -> None:
    with pytest.raises(ApiError) as caught:
        translate(**payload)
    error = caught.value
    assert (error.status, error.param, error.code) == (400, param, code)
    assert error.body()["error"]["type"] == "invalid_request_error"


def test_module_lists_what_it_ignores_and_refuses() -> None:
    assert {"frequency_penalty", "presence_penalty", "seed", "logit_bias", "stream_options"} <= set(IGNORED_FIELDS)
    assert set(REFUSED_FIELDS) == {"functions", "function_call", "audio", "modalities", "web_search_options"}


def message(*content: dict, stop_reason: str | None = "end_turn", usage: dict | None = None, **extra: object) -> dict:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-up",
        "content": list(content),
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage or {"input_tokens": 10, "output_tokens": 5},
        **extra,
    }


THINKING = {"type": "thinking", "thinking": "hmm", "signature": "sig"}
PLAIN_USAGE = {
    "prompt_tokens": 10,
    "completion_tokens": 5,
    "total_tokens": 15,
    "prompt_tokens_details": {"cached_tokens": 0},
}


@pytest.mark.parametrize(
    ("answer", "expected", "finish"),
    [
        (message(text("Hel"), text("lo")), {"content": "Hello"}, "stop"),
        (message(text("Hel"), stop_reason="max_tokens"), {"content": "Hel"}, "length"),
        (message(text("ok"), stop_reason="stop_sequence", stop_sequence="END"), {"content": "ok"}, "stop"),
        (message(text("no"), stop_reason="refusal"), {"content": "no"}, "content_filter"),
        (message(stop_reason="model_context_window_exceeded"), {"content": None}, "length"),
        (message(text("x"), stop_reason="pause_turn"), {"content": "x"}, "stop"),
        (message(text("x"), stop_reason=None), {"content": "x"}, "stop"),
        (
            message(
                text("Let me check."), use("toolu_1", city="Paris"), use("toolu_2", "other"), stop_reason="tool_use"
            ),
            {
                "content": "Let me check.",
                "tool_calls": [call("toolu_1", '{"city": "Paris"}'), call("toolu_2", "{}", "other")],
            },
            "tool_calls",
        ),
        (
            message(THINKING, {"type": "redacted_thinking", "data": "x"}, text("ok")),
            {"content": "ok", "reasoning_content": "hmm"},
            "stop",
        ),
        (
            message({"type": "tool_use", "id": "t", "name": "f", "input": "odd"}),
            {"content": None, "tool_calls": [call("t", "{}", "f")]},
            "stop",
        ),
    ],
    ids=[
        "text_blocks",
        "max_tokens",
        "stop_sequence",
        "refusal",
        "context_window",
        "pause_turn",
        "no_stop_reason",
        "tool_use",
        "thinking",
        "odd_input",
    ],
)
def test_plain_answer(answer: dict, expected: dict, finish: str) -> None:
    chat = message_to_chat(answer, {"model": "claude"}, completion_id=CID, created=CREATED)
    strict_completion(chat)
    assert chat["choices"][0]["message"] == {"role": "assistant", "refusal": None, **expected}
    assert chat["choices"][0]["finish_reason"] == finish
    assert (chat["id"], chat["created"], chat["model"], chat["object"]) == (
        CID,
        CREATED,
        "claude-up",
        "chat.completion",
    )
    assert chat["usage"] == PLAIN_USAGE


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (None, None),
        (
            {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20},
            {
                "prompt_tokens": 130,
                "completion_tokens": 5,
                "total_tokens": 135,
                "prompt_tokens_details": {"cached_tokens": 100},
            },
        ),
        (
            {
                "input_tokens": 10,
                "output_tokens": 5,
                "cache_read_input_tokens": None,
                "cache_creation_input_tokens": None,
            },
            PLAIN_USAGE,
        ),
        (
            {"input_tokens": "10"},
            {
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "total_tokens": 0,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        ),
    ],
    ids=["absent", "cache_counts_in_prompt", "null_cache_fields", "odd_values"],
)
def test_plain_usage_mapping(usage: dict | None, expected: dict | None) -> None:
    answer = message(text("ok"))
    answer["usage"] = usage
    chat = message_to_chat(answer, {"model": "claude"}, completion_id=CID, created=CREATED)
    strict_completion(chat)
    assert chat.get("usage") == expected


def test_plain_answer_keeps_the_request_model_when_the_answer_has_none() -> None:
    answer = {"type": "message", "content": [text("ok")], "stop_reason": "end_turn"}
    chat = message_to_chat(answer, {"model": "claude"}, completion_id=CID, created=CREATED)
    assert chat["model"] == "claude" and "usage" not in chat


# Stream helpers: Messages events as the API sends them, (name, data) pairs.


def start(input_tokens: int = 10, cache_read: int = 0) -> tuple[str, dict]:
    usage = {
        "input_tokens": input_tokens,
        "output_tokens": 1,
        "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": 0,
    }
    return "message_start", {
        "type": "message_start",
        "message": {**message(usage=usage), "content": [], "stop_reason": None},
    }


def block_start(index: int, block: dict) -> tuple[str, dict]:
    return "content_block_start", {"type": "content_block_start", "index": index, "content_block": block}


def block_delta(index: int, delta: dict) -> tuple[str, dict]:
    return "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}


def block_stop(index: int) -> tuple[str, dict]:
    return "content_block_stop", {"type": "content_block_stop", "index": index}


def text_block(index: int, *pieces: str) -> list[tuple[str, dict]]:
    deltas = [block_delta(index, {"type": "text_delta", "text": piece}) for piece in pieces]
    return [block_start(index, text("")), *deltas, block_stop(index)]


def tool_block(index: int, call_id: str, name: str, *fragments: str) -> list[tuple[str, dict]]:
    deltas = [block_delta(index, {"type": "input_json_delta", "partial_json": f}) for f in fragments]
    return [
        block_start(index, {"type": "tool_use", "id": call_id, "name": name, "input": {}}),
        *deltas,
        block_stop(index),
    ]


def end(stop_reason: str = "end_turn", output_tokens: int = 5) -> list[tuple[str, dict]]:
    delta = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": output_tokens},
    }
    return [("message_delta", delta), ("message_stop", {"type": "message_stop"})]


PING = ("ping", {"type": "ping"})
THINKING_BLOCK = [
    block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
    block_delta(0, {"type": "thinking_delta", "thinking": "hmm"}),
    block_delta(0, {"type": "signature_delta", "signature": "sig"}),
    block_stop(0),
]
WEATHER = [
    start(),
    *text_block(0, "Let me check."),
    *tool_block(1, "toolu_9", "get_weather", "", '{"city":', ' "Paris"}'),
    *end("tool_use"),
]


def run(
    events: list[tuple[str, dict]], request_extra: dict | None = None, finish: bool = True
) -> tuple[list[dict], list[bytes]]:
    translator = MessagesToChatStream({"model": "claude", **(request_extra or {})}, completion_id=CID, created=CREATED)
    frames = [frame for name, data in events for frame in translator.feed(name, data)]
    if finish:
        frames += translator.finish()
    assert translator.finish() == [] and translator.feed(*start()) == []
    return parse_chunks(frames), frames


def summary(chunks: list[dict]) -> list[str]:
    """A short name per chunk: role, content, reasoning, call (id and name), args, finish:<reason>, usage."""
    names = []
    for chunk in chunks:
        assert (chunk["id"], chunk["created"], chunk["object"]) == (CID, CREATED, "chat.completion.chunk")
        if not chunk["choices"]:
            names.append("usage")
            continue
        choice = chunk["choices"][0]
        delta = choice["delta"]
        if choice["finish_reason"]:
            names.append(f"finish:{choice['finish_reason']}")
        elif "role" in delta:
            names.append("role")
        elif "reasoning_content" in delta:
            names.append("reasoning")
        elif "tool_calls" in delta:
            names.append("call" if "id" in delta["tool_calls"][0] else "args")
        else:
            names.append("content")
    return names


@pytest.mark.parametrize(
    ("events", "names"),
    [
        ([start(), PING, *text_block(0, "Hel", "lo"), *end()], ["role", "content", "content", "finish:stop"]),
        ([start(), *end("max_tokens")], ["role", "finish:length"]),
        ([start(), *text_block(0, "ok"), *end("stop_sequence")], ["role", "content", "finish:stop"]),
        ([start(), *text_block(0, "no"), *end("refusal")], ["role", "content", "finish:content_filter"]),
        (WEATHER, ["role", "content", "call", "args", "args", "finish:tool_calls"]),
        ([start(), *THINKING_BLOCK, *text_block(1, "ok"), *end()], ["role", "reasoning", "content", "finish:stop"]),
        (
            [start(), ("future_event", {"type": "future_event"}), *text_block(0, "ok"), *end()],
            ["role", "content", "finish:stop"],
        ),
        ([start(), *text_block(0, "ok")], ["role", "content", "finish:stop"]),
        ([], ["role", "finish:stop"]),
    ],
    ids=[
        "text_and_ping",
        "max_tokens",
        "stop_sequence",
        "refusal",
        "tool_use",
        "thinking",
        "unknown_event",
        "no_message_stop",
        "nothing",
    ],
)
def test_stream(events: list[tuple[str, dict]], names: list[str]) -> None:
    chunks, _ = run(events)
    assert summary(chunks) == names
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_stream_tool_call_deltas() -> None:
    events = [start(), *tool_block(0, "toolu_1", "a", '{"x":1}'), *tool_block(1, "toolu_2", "b"), *end("tool_use")]
    chunks, _ = run(events)
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if "tool_calls" in c["choices"][0]["delta"]]
    assert calls == [
        {"index": 0, "id": "toolu_1", "type": "function", "function": {"name": "a", "arguments": ""}},
        {"index": 0, "function": {"arguments": '{"x":1}'}},
        {"index": 1, "id": "toolu_2", "type": "function", "function": {"name": "b", "arguments": ""}},
    ]


def test_stream_tool_use_with_input_at_start() -> None:
    events = [
        start(),
        block_start(0, {"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}),
        block_stop(0),
        *end("tool_use"),
    ]
    chunks, _ = run(events)
    assert chunks[1]["choices"][0]["delta"]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a": 1}'}


@pytest.mark.parametrize(
    ("request_extra", "last"),
    [
        ({}, "finish:stop"),
        ({"stream_options": {"include_usage": True}}, "usage"),
        ({"stream_options": {"include_usage": False}}, "finish:stop"),
    ],
    ids=["not_asked", "asked", "false"],
)
def test_stream_usage_chunk_only_when_asked(request_extra: dict, last: str) -> None:
    events = [start(10, cache_read=100), *text_block(0, "ok"), *end(output_tokens=7)]
    chunks, _ = run(events, request_extra)
    assert summary(chunks)[-1] == last
    expected = {
        "prompt_tokens": 110,
        "completion_tokens": 7,
        "total_tokens": 117,
        "prompt_tokens_details": {"cached_tokens": 100},
    }
    if last == "usage":
        assert chunks[-1]["usage"] == expected and chunks[-1]["choices"] == []
    assert all("usage" not in c for c in chunks if c["choices"])


def test_stream_usage_is_known_as_it_arrives() -> None:
    translator = MessagesToChatStream({"model": "claude"}, completion_id=CID, created=CREATED)
    assert translator.usage is None
    translator.feed(*start(10, cache_read=4))
    assert translator.usage == {
        "prompt_tokens": 14,
        "completion_tokens": 1,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    translator.feed(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"input_tokens": 12, "output_tokens": 9},
        },
    )
    assert translator.usage == {
        "prompt_tokens": 16,
        "completion_tokens": 9,
        "total_tokens": 25,
        "prompt_tokens_details": {"cached_tokens": 4},
    }


def test_stream_model_comes_from_message_start() -> None:
    chunks, _ = run([start(), *end()])
    assert {c["model"] for c in chunks} == {"claude-up"}
    chunks, _ = run([])
    assert {c["model"] for c in chunks} == {"claude"}


@pytest.mark.parametrize(
    ("events", "code", "message_text"),
    [
        (
            [("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})],
            "overloaded_error",
            "Overloaded",
        ),
        (
            [
                start(),
                *text_block(0, "Hi"),
                ("error", {"type": "error", "error": {"type": "api_error", "message": "Internal"}}),
            ],
            "api_error",
            "Internal",
        ),
        ([start(), ("error", {"type": "error"})], "upstream_error", "The upstream reported an error."),
    ],
    ids=["before_anything", "mid_text", "no_detail"],
)
def test_stream_error_event_fails_the_stream(events: list[tuple[str, dict]], code: str, message_text: str) -> None:
    translator = MessagesToChatStream({"model": "claude"}, completion_id=CID, created=CREATED)
    frames = [frame for name, data in events for frame in translator.feed(name, data)]
    assert frames[-1] == DONE
    error = json.loads(frames[-2].decode().removeprefix("data: "))
    assert error == {"error": {"message": message_text, "type": "server_error", "param": None, "code": code}}
    assert translator.finish() == [] and translator.fail("x", "y") == []


def test_stream_fail() -> None:
    translator = MessagesToChatStream({"model": "claude"}, completion_id=CID, created=CREATED)
    translator.feed(*start())
    frames = translator.fail("upstream_timeout", "The upstream stopped answering.")
    assert frames[-1] == DONE and b'"code": "upstream_timeout"' in frames[0]
    assert translator.fail("x", "y") == [] and translator.finish() == []


def test_stream_events_go_out_as_they_arrive() -> None:
    translator = MessagesToChatStream({"model": "claude"}, completion_id=CID, created=CREATED)
    assert summary(parse_chunks([*translator.feed(*start()), DONE])) == ["role"]
    assert translator.feed(*block_start(0, text(""))) == [] and translator.feed(*PING) == []
    assert summary(parse_chunks([*translator.feed(*block_delta(0, {"type": "text_delta", "text": "Hi"})), DONE])) == [
        "content"
    ]
    assert translator.feed(*block_stop(0)) == []
    delta, stop = end()
    assert summary(parse_chunks([*translator.feed(*delta), DONE])) == ["finish:stop"]
    assert translator.feed(*stop) == [DONE]


def sdk_client(stream: bytes) -> openai.OpenAI:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=stream, headers={"content-type": "text/event-stream"})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    return openai.OpenAI(api_key="k", base_url="http://sluice/v1", http_client=http, max_retries=0)


def test_stream_through_the_openai_sdk() -> None:
    """The SDK's own SSE parser and stream accumulator read a translated stream: text then a tool call, and usage."""
    _, frames = run(WEATHER, {"stream_options": {"include_usage": True}})
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    with sdk_client(b"".join(frames)) as client:
        with client.chat.completions.stream(
            model="claude", messages=[USER], tools=[tool], stream_options={"include_usage": True}
        ) as stream:
            deltas = [e.delta for e in stream if e.type == "content.delta"]
            final = stream.get_final_completion()
    assert deltas == ["", "Let me check."]  # the role chunk carries content "", as OpenAI's does
    choice = final.choices[0]
    assert (choice.message.content, choice.finish_reason) == ("Let me check.", "tool_calls")
    tool_call = choice.message.tool_calls[0]
    assert (tool_call.id, tool_call.function.name, tool_call.function.arguments) == (
        "toolu_9",
        "get_weather",
        '{"city": "Paris"}',
    )
    assert final.usage is not None and (final.usage.prompt_tokens, final.usage.completion_tokens) == (10, 5)


def test_failed_stream_raises_in_the_openai_sdk() -> None:
    translator = MessagesToChatStream({"model": "claude"}, completion_id=CID, created=CREATED)
    frames = translator.feed(*start()) + translator.feed(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    with sdk_client(b"".join(frames)) as client, pytest.raises(openai.APIError, match="Overloaded"):
        list(client.chat.completions.create(model="claude", messages=[USER], stream=True))
