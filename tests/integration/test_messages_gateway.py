"""Anthropic Messages both ways, through gunicorn: Claude clients on /v1/messages (native and translated),
and OpenAI clients on an Anthropic upstream (chat and Responses), with the real SDKs.

One mock serves both wires; a second is a strict edge (403 to a stream without `Accept: text/event-stream`
and a real User-Agent).
"""

from __future__ import annotations

import json
import re
import time

import anthropic
import openai
import pytest
import requests

from tests.integration.conftest import MASTER_KEY, mock_stats, start_gateway, start_mock, upstream_toml

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
MODELS = {"native": "claude-native", "translated": "claude-on-chat"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("messages")
    mock = start_mock(tmp, "--delay", "0.02")
    edge = start_mock(tmp, "--delay", "0.02", "--strict-edge")
    config = (
        "[gateway]\nheartbeat_interval = 0.3\n\n"
        + upstream_toml("claude", mock.url, ["anth-tok-1"], ["claude-native", "gpt-on-claude"], api="anthropic")
        + upstream_toml("chat", mock.url, ["chat-tok-1"], ["claude-on-chat"])
        + upstream_toml("retry", mock.url, ["limited-a", "anth-tok-2"], ["claude-retry"], api="anthropic")
        + upstream_toml("edge", edge.url, ["edge-tok-1"], ["claude-edge"], api="anthropic")
        + upstream_toml("overloaded", mock.url, ["overloaded-1"], ["claude-busy"], api="anthropic")
        + upstream_toml("errorfirst", mock.url, ["errorfirst-a", "anth-tok-3"], ["claude-errorfirst"], api="anthropic")
        + upstream_toml("listed", mock.url, ["anth-tok-4"], ["mock-claude*"], api="anthropic")
    )
    gateway = start_gateway(tmp, config)
    gateway.edge = edge  # for the strict-edge test
    yield gateway, mock, tmp
    gateway.stop()
    mock.stop()
    edge.stop()


def claude(gateway, key: str = MASTER_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0, timeout=30)


def last_request(mock, path: str) -> dict:
    return next(r for r in reversed(mock_stats(mock)["recent"]) if r["path"] == path)


@pytest.mark.parametrize("mode", ["native", "translated"])
def test_create_and_stream_a_message(stack, mode):
    gateway, mock, _ = stack
    with claude(gateway) as client:
        message = client.messages.create(
            model=MODELS[mode], max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        with client.messages.stream(
            model=MODELS[mode], max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as s:
            text = "".join(s.text_stream)
            final = s.get_final_message()
    assert message.type == "message" and message.content[0].text and message.stop_reason == "end_turn"
    assert text == final.content[0].text and final.usage.output_tokens > 0
    sent = last_request(mock, "/v1/messages" if mode == "native" else "/v1/chat/completions")
    assert sent["headers"]["Accept"] == "text/event-stream" and sent["headers"]["User-Agent"].startswith("sluice/")
    if mode == "native":  # Anthropic's auth scheme, the Sluice key never forwarded
        assert sent["headers"]["X-Api-Key"] == "anth-tok-1" and sent["headers"]["Anthropic-Version"] == "2023-06-01"
        assert "Authorization" not in sent["headers"]


@pytest.mark.parametrize("mode", ["native", "translated"])
def test_a_tool_use_round_trip(stack, mode):
    gateway, _, _ = stack
    question = {"role": "user", "content": "What is the weather in Paris?"}
    with claude(gateway) as client:
        with client.messages.stream(model=MODELS[mode], max_tokens=200, messages=[question], tools=[WEATHER]) as s:
            first = s.get_final_message()
        [use] = [block for block in first.content if block.type == "tool_use"]
        assert first.stop_reason == "tool_use" and use.name == "get_weather" and use.input["city"]
        result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}
        history = [question, {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]}]
        second = client.messages.create(
            model=MODELS[mode], max_tokens=200, messages=[*history, result], tools=[WEATHER]
        )
    assert second.stop_reason == "end_turn" and second.content[0].text


def test_native_events_pass_through_byte_for_byte(stack):
    gateway, _, _ = stack
    body = {"model": "claude-native", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"x-api-key": MASTER_KEY, "anthropic-version": "2023-06-01"}
    with requests.post(f"{gateway.url}/v1/messages", json=body, headers=headers, stream=True, timeout=30) as reply:
        raw = reply.content
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    assert events[0].startswith(b"event: message_start\n") and events[-1].startswith(b"event: message_stop\n")
    assert all(b'"mock_ts"' in e for e in events)  # the mock's own stamps: its bytes, untouched


def test_translated_events_arrive_one_by_one(stack):
    gateway, _, _ = stack
    body = {
        "model": "claude-on-chat",
        "max_tokens": 50,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    arrivals = []
    with requests.post(f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": MASTER_KEY}, stream=True,
                       timeout=30) as reply:  # fmt: skip
        for line in reply.iter_lines():
            if line == b"event: content_block_delta":
                arrivals.append(time.monotonic())
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert len(arrivals) == 8 and sorted(gaps)[len(gaps) // 2] > 0.01  # the mock's 20 ms pacing, not one burst


def test_count_tokens_native_and_estimated(stack):
    gateway, _, _ = stack
    messages = [{"role": "user", "content": "Count these words, please."}]
    with claude(gateway) as client:
        native = client.messages.count_tokens(model="claude-native", messages=messages)
        estimated = client.messages.count_tokens(model="claude-on-chat", messages=messages)
    assert native.input_tokens > 0 and estimated.input_tokens == -(-len(json.dumps([None, messages, None])) // 4)


@pytest.mark.parametrize("mode", ["native", "translated"])
def test_typed_errors_for_a_bad_key_an_unknown_model_and_a_rate_limited_key(stack, mode):
    gateway, _, _ = stack
    key = gateway.cli("keys", "create", f"claude-{time.time_ns()}", "--rpm", "1").stdout.strip()
    ask = {"max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}
    with claude(gateway, "sk-wrong-key-0123456789") as wrong, pytest.raises(anthropic.AuthenticationError):
        wrong.messages.create(model=MODELS[mode], **ask)
    with claude(gateway) as client, pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="nope", **ask)
    assert missing.value.body["error"]["type"] == "not_found_error"
    with claude(gateway, key) as limited:
        limited.messages.create(model=MODELS[mode], **ask)
        with pytest.raises(anthropic.RateLimitError) as refused:
            limited.messages.create(model=MODELS[mode], **ask)
    assert refused.value.response.headers["request-id"] and refused.value.response.headers["retry-after"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"model": "claude-native", "messages": [{"role": "user", "content": "hi"}]}, 400),  # no max_tokens
        ({"model": "claude-native", "max_tokens": "x", "messages": []}, 400),
        (
            {
                "model": "claude-on-chat",
                "max_tokens": 9,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            400,
        ),  # a server tool, translated
        (b"{not json", 400),
    ],
)
def test_bad_bodies_get_an_anthropic_shaped_4xx(stack, body, status):
    gateway, _, _ = stack
    headers = {"x-api-key": MASTER_KEY, "Content-Type": "application/json"}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = requests.post(f"{gateway.url}/v1/messages", data=data, headers=headers, timeout=10)
    assert reply.status_code == status and reply.json()["type"] == "error"
    assert reply.json()["error"]["type"] == "invalid_request_error" and reply.headers["request-id"]


def test_a_rate_limited_token_is_retried_on_another_before_the_first_event(stack):
    gateway, mock, _ = stack
    with claude(gateway) as client:
        message = client.messages.create(
            model="claude-retry", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
        )
    assert message.content[0].text
    assert last_request(mock, "/v1/messages")["headers"]["X-Api-Key"] == "anth-tok-2"


def test_an_overloaded_upstream_is_a_typed_error(stack):
    gateway, _, _ = stack
    with claude(gateway) as client, pytest.raises(anthropic.APIStatusError) as failed:
        client.messages.create(model="claude-busy", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 503 and failed.value.body["error"]["type"] == "overloaded_error"
    assert failed.value.response.headers["retry-after"]


def test_the_strict_edge_takes_sluices_headers_and_refuses_naive_ones(stack):
    gateway, _, _ = stack
    body = {"model": "claude-edge", "max_tokens": 20, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with requests.post(f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": MASTER_KEY}, stream=True,
                       timeout=30) as reply:  # fmt: skip
        assert reply.status_code == 200 and b"event: message_stop" in reply.content
    naive = requests.post(f"{gateway.edge.url}/v1/messages", json=body, timeout=10,
                          headers={"x-api-key": "edge-tok-1", "anthropic-version": "2023-06-01"})  # fmt: skip
    assert naive.status_code == 403  # python-requests' User-Agent and Accept: the edge's refusal


def test_openai_chat_and_a_tool_call_through_an_anthropic_upstream(stack):
    gateway, mock, _ = stack
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=30) as client:
        chunks = list(client.chat.completions.create(
            model="gpt-on-claude", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": "hi"}],
        ))  # fmt: skip
        called = client.chat.completions.create(
            model="gpt-on-claude", tools=[tool], messages=[{"role": "user", "content": "Weather in Paris?"}]
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage.total_tokens > 0
    assert called.choices[0].finish_reason == "tool_calls"
    assert json.loads(called.choices[0].message.tool_calls[0].function.arguments)["city"]
    sent = last_request(mock, "/v1/messages")
    assert sent["body"]["max_tokens"] and sent["headers"]["X-Api-Key"] == "anth-tok-1"


def test_the_responses_api_through_an_anthropic_upstream(stack):
    gateway, _, _ = stack
    with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=MASTER_KEY, max_retries=0, timeout=30) as client:
        plain = client.responses.create(model="gpt-on-claude", input="hi")
        streamed = list(client.responses.create(model="gpt-on-claude", input="hi", stream=True))
    assert plain.status == "completed" and plain.output_text
    assert streamed[0].type == "response.created" and streamed[-1].type == "response.completed"
    assert streamed[-1].response.output_text == plain.output_text


def normalized(raw: bytes) -> bytes:
    """An event stream without what differs between two runs: the mock's timestamps and ids."""
    raw = re.sub(rb'"mock_ts": ?[0-9.e+-]+', b'"mock_ts":0', raw)
    return re.sub(rb'"(msg|toolu)_[A-Za-z0-9]+"', rb'"\1_x"', raw)


def test_native_pass_through_is_byte_exact_and_keeps_the_query(stack):
    """The same request to the mock directly and through Sluice: the same bytes (but timestamps and ids)."""
    gateway, mock, _ = stack
    body = {"model": "claude-native", "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    direct_headers = {"x-api-key": "anth-tok-1", "anthropic-version": "2023-06-01", "Accept": "text/event-stream",
                      "User-Agent": "test"}  # fmt: skip
    direct = requests.post(f"{mock.url}/v1/messages", json=body, headers=direct_headers, timeout=30).content
    via = requests.post(f"{gateway.url}/v1/messages?beta=true", json=body, timeout=30,
                        headers={"x-api-key": MASTER_KEY, "anthropic-version": "2023-06-01"}).content  # fmt: skip
    assert normalized(via) == normalized(direct) and via.count(b"event: content_block_delta") == 8
    assert last_request(mock, "/v1/messages")["query"] == "beta=true"


def test_an_error_event_before_any_content_is_retried_on_another_token(stack):
    gateway, mock, _ = stack
    with claude(gateway) as client:
        with client.messages.stream(model="claude-errorfirst", max_tokens=20,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:  # fmt: skip
            assert "".join(stream.text_stream)
    assert last_request(mock, "/v1/messages")["headers"]["X-Api-Key"] == "anth-tok-3"


def test_a_native_stream_cut_after_its_first_event_ends_with_an_anthropic_error_event(stack):
    """(The translated relay's end is in tests/unit/test_messages_dialect.py.)"""
    gateway, _, _ = stack
    model = "claude-native"
    body = {"model": model, "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}],
            "mock": {"drop_after": 3}}  # the mock's knob, passed through untouched  # fmt: skip
    with requests.post(f"{gateway.url}/v1/messages", json=body, headers={"x-api-key": MASTER_KEY}, stream=True,
                       timeout=30) as reply:  # fmt: skip
        events = [e for e in reply.content.split(b"\n\n") if e.strip()]
    assert events[-1].startswith(b"event: error\n") and b"[DONE]" not in reply.content
    error = json.loads(events[-1].split(b"data: ", 1)[1])
    assert error["type"] == "error" and error["error"]["type"] == "api_error"
    with claude(gateway) as client, pytest.raises(anthropic.APIStatusError):
        with client.messages.stream(model=model, max_tokens=50, messages=[{"role": "user", "content": "hi"}],
                                    extra_body={"mock": {"drop_after": 3}}) as stream:  # fmt: skip
            list(stream.text_stream)


def test_models_of_anthropic_upstreams_are_listed(stack):
    gateway, _, _ = stack
    reply = requests.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=10)
    ids = {m["id"] for m in reply.json()["data"]}
    assert {"mock-claude", "mock-claude-haiku"} <= ids  # the upstream's own /v1/models, matching its glob


@pytest.mark.parametrize(
    "body",
    [{"messages": [{"role": "user", "content": "hi"}]}, {"model": "claude-native"}, {"model": 5, "messages": []},
     {"model": "claude-native", "messages": [], "stream": True}],
)  # fmt: skip
def test_bad_count_tokens_bodies_get_an_anthropic_shaped_400(stack, body):
    gateway, _, _ = stack
    reply = requests.post(f"{gateway.url}/v1/messages/count_tokens", json=body, headers={"x-api-key": MASTER_KEY},
                          timeout=10)  # fmt: skip
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error"
