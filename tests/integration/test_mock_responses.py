"""The mock upstream's Responses API as a process, driven by the openai SDK (no gateway in between)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from app.mock_chat import REPLY
from tests.integration.conftest import mock_stats

pytestmark = pytest.mark.integration
REPLY_TEXT = " ".join(REPLY.split(" ")[:8]) + " "  # the mock's default 8 chunks
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}
TEXT_ORDER = (
    ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    + ["response.output_text.delta"] * 8
    + ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
)


@pytest.fixture
def client(mock) -> Iterator[openai.OpenAI]:
    # Closed after each test: an SDK client left to the garbage collector leaves its sockets
    # to be closed there, a ResourceWarning (an error here) in whatever test runs at that moment.
    with openai.OpenAI(base_url=mock.url + "/v1", api_key="good-token-0001", max_retries=0, timeout=20) as sdk:
        yield sdk


def test_create(client):
    response = client.responses.create(model="mock-gpt", input="Hello", instructions="Be brief.")
    assert response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == REPLY_TEXT
    assert response.usage.output_tokens == 8
    assert response.usage.total_tokens == response.usage.input_tokens + 8
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0


def test_create_streamed(client, mock):
    before = mock_stats(mock)
    events = list(client.responses.create(model="mock-gpt", input="Hello", stream=True))
    assert [e.type for e in events] == TEXT_ORDER
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == REPLY_TEXT
    assert events[-1].response.output_text == REPLY_TEXT
    assert events[-1].response.usage.output_tokens == 8
    assert events[4].mock_seq == 4 and isinstance(events[4].mock_ts, float)  # extra fields pass the SDK
    after = mock_stats(mock)
    assert after["streams_completed"] == before["streams_completed"] + 1


def test_the_sdk_stream_helper_assembles_the_same_response(client):
    with client.responses.stream(model="mock-gpt", input="Hello") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == final.output_text == REPLY_TEXT


@pytest.mark.parametrize("streamed", [False, True])
def test_a_function_call_round_trip(client, streamed):
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    if streamed:
        with client.responses.stream(model="mock-gpt", input=question, tools=[WEATHER_TOOL]) as stream:
            types = [e.type for e in stream]
            first = stream.get_final_response()
        assert "response.function_call_arguments.done" in types
    else:
        first = client.responses.create(model="mock-gpt", input=question, tools=[WEATHER_TOOL])
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "21 degrees and sunny"}
    second = client.responses.create(
        model="mock-gpt", input=[*question, call.model_dump(exclude_none=True), result], tools=[WEATHER_TOOL]
    )
    assert second.output_text == "The function returned 21 degrees and sunny. " + REPLY_TEXT


def test_max_output_tokens_makes_it_incomplete(client):
    events = list(client.responses.create(model="mock-gpt", input="Hello", max_output_tokens=2, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-1].response.output_text == " ".join(REPLY.split(" ")[:2]) + " "


def test_retrieve_list_input_items_cancel_and_delete(client):
    created = client.responses.create(model="mock-gpt", input="Hello")
    assert client.responses.retrieve(created.id) == created
    (item,) = client.responses.input_items.list(created.id)
    assert item.type == "message" and item.content[0].text == "Hello"
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(created.id)
    assert client.responses.delete(created.id) is None
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_input_items_pages_through_the_sdk(client):
    created = client.responses.create(model="mock-gpt", input=[{"role": "user", "content": f"m{i}"} for i in range(5)])
    texts = [item.content[0].text for item in client.responses.input_items.list(created.id, order="asc", limit=2)]
    assert texts == ["m0", "m1", "m2", "m3", "m4"]  # the SDK follows `after` across three pages


def test_token_faults(mock):
    for token, error in (("revoked-0001", openai.PermissionDeniedError), ("limited-0001", openai.RateLimitError)):
        with openai.OpenAI(base_url=mock.url + "/v1", api_key=token, max_retries=0, timeout=20) as sdk:
            with pytest.raises(error):
                sdk.responses.create(model="mock-gpt", input="Hello")


def test_drop_after_cuts_the_stream_mid_way(client, mock):
    before = mock_stats(mock)["streams_dropped"]
    seen = []
    with pytest.raises(openai.APIConnectionError):
        for event in client.responses.create(
            model="mock-gpt", input="Hello", stream=True, extra_body={"mock": {"drop_after": 6}}
        ):
            seen.append(event.type)
    assert seen == TEXT_ORDER[:6]
    assert mock_stats(mock)["streams_dropped"] == before + 1
