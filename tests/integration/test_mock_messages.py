"""The mock upstream's Anthropic Messages API as a process, driven by the anthropic SDK (no gateway in between)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anthropic
import pytest
import requests

from app.mock_chat import REPLY
from tests.integration.conftest import mock_stats

pytestmark = pytest.mark.integration
REPLY_TEXT = " ".join(REPLY.split(" ")[:8]) + " "  # the mock's default 8 chunks
MODEL = "mock-claude"
HELLO = [{"role": "user", "content": "Hello"}]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def sdk(mock, key: str = "good-key-0001", **options) -> anthropic.Anthropic:
    # Used as a context manager: a client left to the garbage collector closes its sockets there,
    # a ResourceWarning (an error here) in whatever test runs at that moment.
    return anthropic.Anthropic(base_url=mock.url, api_key=key, max_retries=0, timeout=20, **options)


@pytest.fixture
def client(mock) -> Iterator[anthropic.Anthropic]:
    with sdk(mock) as client:
        yield client


def test_create(client):
    message = client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, system="Be brief.")
    assert message.id.startswith("msg_") and message.role == "assistant" and message.model == MODEL
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == REPLY_TEXT
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.output_tokens == 8 and message.usage.input_tokens > 1
    assert message.usage.cache_read_input_tokens == 0 and message.usage.cache_creation_input_tokens == 0
    assert message._request_id.startswith("req_")


def test_the_sdk_sends_its_key_and_version(client, mock):
    client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    headers = mock_stats(mock)["recent"][-1]["headers"]
    key = headers.get("X-Api-Key") or headers.get("Authorization", "").removeprefix("Bearer ")
    assert key == "good-key-0001" and headers["Anthropic-Version"]


def test_stream_text(client, mock):
    before = mock_stats(mock)
    with client.messages.stream(model=MODEL, max_tokens=100, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY_TEXT == final.content[0].text
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 8 and final.usage.input_tokens > 1
    after = mock_stats(mock)
    assert after["streams_completed"] == before["streams_completed"] + 1


def test_raw_stream_events_carry_the_mock_stamps(client):
    events = list(client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, stream=True))
    types = [e.type for e in events]  # the SDK drops `ping`
    assert types == (["message_start", "content_block_start"] + ["content_block_delta"] * 8
                     + ["content_block_stop", "message_delta", "message_stop"])  # fmt: skip
    assert events[0].mock_seq == 0 and events[2].mock_seq == 3 and isinstance(events[2].mock_ts, float)
    deltas = [e.mock_ts for e in events if e.type == "content_block_delta"]
    assert all(b - a >= 0.015 for a, b in zip(deltas, deltas[1:], strict=False))  # --delay 0.02 paces them


def test_tool_use_round_trip_streamed(client):
    question = {"role": "user", "content": "What is the weather in Paris?"}
    with client.messages.stream(model=MODEL, max_tokens=100, messages=[question], tools=[WEATHER_TOOL]) as stream:
        call = stream.get_final_message()
    assert call.stop_reason == "tool_use"
    (block,) = call.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "Paris"}
    result = {"type": "tool_result", "tool_use_id": block.id, "content": "21 degrees and sunny"}
    messages = [question, {"role": "assistant", "content": call.content}, {"role": "user", "content": [result]}]
    with client.messages.stream(model=MODEL, max_tokens=100, messages=messages, tools=[WEATHER_TOOL]) as stream:
        answer = stream.get_final_message()
    assert answer.stop_reason == "end_turn"
    assert answer.content[0].text == "The tool said: 21 degrees and sunny. " + REPLY_TEXT


def test_thinking_then_text(client):
    thinking = {"type": "enabled", "budget_tokens": 1024}
    with client.messages.stream(model=MODEL, max_tokens=2000, messages=HELLO, thinking=thinking) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking and final.content[0].signature and final.content[1].text == REPLY_TEXT


def test_max_tokens_and_stop_sequences(client):
    cut = client.messages.create(model=MODEL, max_tokens=2, messages=HELLO)
    assert cut.stop_reason == "max_tokens" and cut.content[0].text == "Hello from "
    stopped = client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, stop_sequences=["mock"])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "mock"
    assert stopped.content[0].text == "Hello from the Sluice "


def test_count_tokens_matches_the_message_usage(client):
    counted = client.messages.count_tokens(model=MODEL, messages=HELLO, tools=[WEATHER_TOOL])
    message = client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, tools=[WEATHER_TOOL])
    assert counted.input_tokens == message.usage.input_tokens > 1


def test_models_list_is_anthropic_shaped_for_the_sdk_and_openai_shaped_otherwise(client, mock):
    models = client.models.list()
    assert [m.id for m in models.data] == ["mock-claude", "mock-claude-haiku"]
    assert all(m.type == "model" and m.display_name for m in models.data)
    plain = requests.get(f"{mock.url}/v1/models", headers={"Authorization": "Bearer good-key-0001"}, timeout=5)
    assert plain.json()["object"] == "list" and plain.json()["data"][0]["id"] == "mock-gpt"


@pytest.mark.parametrize(
    ("key", "error", "status"),
    [
        ("expired-key-0001", anthropic.AuthenticationError, 401),
        ("revoked-key-0001", anthropic.PermissionDeniedError, 403),
        ("limited-key-0001", anthropic.RateLimitError, 429),
        ("overloaded-key-0001", anthropic.InternalServerError, 529),
    ],
)
def test_typed_errors(mock, key, error, status):
    with sdk(mock, key) as client, pytest.raises(error) as raised:
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO)
    assert raised.value.status_code == status
    assert raised.value.body["type"] == "error" and raised.value.request_id.startswith("req_")
    if status == 429:
        assert raised.value.response.headers["retry-after"] == "7"


def test_a_missing_key_is_an_authentication_error(client):
    with pytest.raises(anthropic.AuthenticationError) as raised:
        no_key = {"Authorization": anthropic.omit, "x-api-key": anthropic.omit}
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, extra_headers=no_key)
    assert raised.value.body["error"]["type"] == "authentication_error"


def test_a_missing_version_is_a_bad_request(client):
    with pytest.raises(anthropic.BadRequestError) as raised:
        client.messages.create(model=MODEL, max_tokens=100, messages=HELLO,
                               extra_headers={"anthropic-version": anthropic.omit})  # fmt: skip
    assert "anthropic-version" in raised.value.body["error"]["message"]


def test_an_unknown_model_is_not_found(client):
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="missing-model", max_tokens=100, messages=HELLO)


@pytest.mark.parametrize("mock_options", [{"error_first": True}, {"error_after": 5}])
def test_an_error_event_raises_in_the_stream(client, mock_options):
    seen = []
    body = {"model": MODEL, "max_tokens": 100, "messages": HELLO, "extra_body": {"mock": mock_options}}
    with client.messages.create(stream=True, **body) as events, pytest.raises(anthropic.APIStatusError) as raised:
        seen.extend(event.type for event in events)
    assert raised.value.body["error"]["type"] == "overloaded_error"
    assert len(seen) == (0 if "error_first" in mock_options else 5 - 1)  # the SDK drops the ping


def test_the_strict_edge_refuses_the_sdk_stream_but_not_a_browser_like_one(edge):
    with sdk(edge) as client:
        with pytest.raises(anthropic.PermissionDeniedError):
            client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, stream=True)
        headers = {"Accept": "text/event-stream", "User-Agent": "claude-cli/2.0 (external, cli)"}
        started = time.monotonic()
        events = list(client.messages.create(model=MODEL, max_tokens=100, messages=HELLO, stream=True,
                                             extra_headers=headers))  # fmt: skip
        assert events[-1].type == "message_stop" and time.monotonic() - started < 10
