"""The mock upstream's Responses API, called as a WSGI app; every object and event is checked against the SDK types."""

from __future__ import annotations

import json

import pytest
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseErrorEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseItemList,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)
from werkzeug.test import Client

from app.mock_chat import reply_words as _reply_words
from app.mock_responses import STORE_LIMIT, input_items, plan
from app.mock_upstream import MockUpstream, Options
from tests.unit.mocks.fakes import FakeSocket

TOKEN = {"Authorization": "Bearer good-token-0001"}
REPLY_TEXT = "".join(_reply_words(8))
EVENT_TYPES = {
    cls.model_fields["type"].annotation.__args__[0]: cls
    for cls in (
        ResponseCreatedEvent, ResponseInProgressEvent, ResponseOutputItemAddedEvent, ResponseContentPartAddedEvent,
        ResponseTextDeltaEvent, ResponseTextDoneEvent, ResponseContentPartDoneEvent, ResponseOutputItemDoneEvent,
        ResponseCompletedEvent, ResponseIncompleteEvent, ResponseFunctionCallArgumentsDeltaEvent,
        ResponseFunctionCallArgumentsDoneEvent, ResponseErrorEvent,
    )
}  # fmt: skip
TEXT_ORDER = (
    ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    + ["response.output_text.delta"] * 8
    + ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"]
)
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
    },
}


def create(client: Client, headers: dict | None = None, **body):
    return client.post("/v1/responses", json={"model": "mock-gpt", "input": "Hi", **body}, headers=headers or TOKEN)


def parse_events(raw: bytes) -> list[dict]:
    """The SSE events of a stream; each `event:` line must name the data's type."""
    events = []
    for block in raw.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "data" in fields:
            event = json.loads(fields["data"])
            assert fields["event"] == event["type"]
            EVENT_TYPES[event["type"]].model_validate(event)
            events.append(event)
    return events


def stream(client: Client, **body) -> list[dict]:
    reply = create(client, stream=True, **body)
    assert reply.status_code == 200
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    return parse_events(reply.get_data())


def test_a_plain_response_is_the_reply_text_with_usage(client):
    reply = create(client, instructions="Be brief.")
    assert reply.status_code == 200
    body = reply.get_json()
    response = Response.model_validate(body)
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.output_text == REPLY_TEXT
    assert body["output"][0]["type"] == "message" and body["output"][0]["role"] == "assistant"
    assert body["instructions"] == "Be brief." and body["model"] == "mock-gpt" and body["completed_at"]
    usage = body["usage"]
    assert usage["output_tokens"] == 8 and usage["input_tokens"] >= 1
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens_details"]["cached_tokens"] == 0
    assert usage["output_tokens_details"]["reasoning_tokens"] == 0


def test_usage_details_can_be_set_per_request(client):
    usage = create(client, mock={"cached_tokens": 1, "reasoning_tokens": 5}).get_json()["usage"]
    assert usage["input_tokens_details"]["cached_tokens"] == 1
    assert usage["output_tokens_details"]["reasoning_tokens"] == 5
    assert usage["output_tokens"] == 8 + 5


def test_a_stream_sends_the_typed_events_in_order(client):
    events = stream(client)
    assert [e["type"] for e in events] == TEXT_ORDER
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["mock_seq"] for e in events] == list(range(len(events)))
    assert all(isinstance(e["mock_ts"], float) for e in events)
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == REPLY_TEXT == events[-4]["text"] == events[-3]["part"]["text"]
    item_ids = {e["item_id"] for e in events if "item_id" in e}
    assert item_ids == {events[2]["item"]["id"]}
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["usage"] is None
    final = events[-1]["response"]
    assert final["id"] == events[0]["response"]["id"] and final["status"] == "completed"
    assert Response.model_validate(final).output_text == REPLY_TEXT and final["usage"]["output_tokens"] == 8


def test_chunks_sets_the_number_of_deltas(client):
    events = stream(client, mock={"chunks": 3})
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert deltas == _reply_words(3)


def test_delay_paces_the_deltas_only(client):
    events = stream(client, mock={"chunks": 3, "delay": 0.05})
    times = [e["mock_ts"] for e in events]
    first_delta = events.index(next(e for e in events if e["type"] == "response.output_text.delta"))
    assert times[first_delta] - times[0] < 0.04  # created ... the first delta at once
    deltas = times[first_delta : first_delta + 3]
    assert all(b - a >= 0.045 for a, b in zip(deltas, deltas[1:], strict=False))
    assert times[-1] - deltas[-1] < 0.04  # ... and the events after the last delta


def test_max_output_tokens_cuts_the_reply(client):
    body = create(client, max_output_tokens=3).get_json()
    assert body["status"] == "incomplete" and body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert body["output"][0]["status"] == "incomplete" and body["usage"]["output_tokens"] == 3
    assert Response.model_validate(body).output_text == "".join(_reply_words(8)[:3])
    events = stream(client, max_output_tokens=3)
    assert events[-1]["type"] == "response.incomplete" and events[-1]["response"]["status"] == "incomplete"
    assert [e["type"] for e in events].count("response.output_text.delta") == 3


def test_a_weather_question_with_a_function_tool_gets_a_function_call(client):
    body = create(client, input="What is the weather in Paris?", tools=[WEATHER_TOOL]).get_json()
    (item,) = Response.model_validate(body).output
    assert item.type == "function_call" and item.name == "get_weather"
    assert item.call_id.startswith("call_") and item.id.startswith("fc_") and item.status == "completed"
    assert json.loads(item.arguments) == {"city": "Paris", "unit": "celsius"}
    assert body["tools"] == [WEATHER_TOOL]


def test_a_streamed_function_call(client):
    events = stream(client, input=[{"role": "user", "content": "weather?"}], tools=[WEATHER_TOOL])
    types = [e["type"] for e in events]
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert types == (
        ["response.created", "response.in_progress", "response.output_item.added"]
        + ["response.function_call_arguments.delta"] * len(deltas)
        + ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    )
    assert 1 < len(deltas) <= 8
    assert events[2]["item"]["arguments"] == "" and events[2]["item"]["status"] == "in_progress"
    arguments = events[-3]["arguments"]
    assert "".join(deltas) == arguments == events[-2]["item"]["arguments"]
    assert events[-1]["response"]["output"] == [events[-2]["item"]]


@pytest.mark.parametrize(
    ("text", "tool_choice", "called"),
    [
        ("What is the weather?", None, True),
        ("What is the weather?", "auto", True),
        ("What is the weather?", "none", False),
        ("Hello there", None, False),
        ("Hello there", "required", True),
        ("Hello there", {"type": "function", "name": "get_weather"}, True),
        ("What is the weather?", {"type": "function", "name": "unknown"}, False),
    ],
)
def test_when_the_function_is_called(client, text, tool_choice, called):
    extra = {} if tool_choice is None else {"tool_choice": tool_choice}
    body = create(client, input=text, tools=[WEATHER_TOOL], **extra).get_json()
    assert body["output"][0]["type"] == ("function_call" if called else "message")


def test_the_weather_without_a_function_tool_is_text(client):
    other = {"type": "web_search"}
    assert create(client, input="weather", tools=[other]).get_json()["output"][0]["type"] == "message"


def test_a_function_call_output_is_quoted_back(client):
    call = create(client, input="What is the weather?", tools=[WEATHER_TOOL]).get_json()["output"][0]
    follow_up = [
        {"role": "user", "content": "What is the weather?"},
        call,
        {"type": "function_call_output", "call_id": call["call_id"], "output": '{"temperature": 21}'},
    ]
    body = create(client, input=follow_up, tools=[WEATHER_TOOL]).get_json()
    text = Response.model_validate(body).output_text
    assert text == 'The function returned {"temperature": 21}. ' + REPLY_TEXT
    events = stream(client, input=follow_up, tools=[WEATHER_TOOL])
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == text


def test_input_items_are_typed_with_ids():
    items = input_items([
        {"role": "user", "content": "Hi"},
        {"type": "message", "role": "assistant", "content": "Hello"},
        {"type": "function_call_output", "call_id": "call_1", "output": "ok", "id": "fco_given"},
    ])  # fmt: skip
    assert [i["type"] for i in items] == ["message", "message", "function_call_output"]
    assert items[0]["content"] == [{"type": "input_text", "text": "Hi"}] and items[0]["id"].startswith("msg_")
    assert items[1]["content"] == [{"type": "output_text", "text": "Hello"}]
    assert items[2]["id"] == "fco_given" and all(i["status"] == "completed" for i in items)
    assert input_items("Hi")[0]["role"] == "user" and input_items(None) == []


def test_a_call_after_the_tool_output_is_answered_again():
    """A new user question after the tool's output asks for the function again."""
    body = {"model": "m", "tools": [WEATHER_TOOL]}
    items = input_items([
        {"type": "function_call_output", "call_id": "c", "output": "sunny"},
        {"role": "user", "content": "And the weather tomorrow?"},
    ])  # fmt: skip
    assert plan(body, items, ["a "]).kind == "function_call"


def test_a_stored_response_can_be_retrieved_listed_and_deleted(client):
    created = create(client, input=[{"role": "user", "content": "One"}, {"role": "user", "content": "Two"}]).get_json()
    path = f"/v1/responses/{created['id']}"
    assert client.get(path, headers=TOKEN).get_json() == created
    items = client.get(f"{path}/input_items", headers=TOKEN).get_json()
    ResponseItemList.model_validate(items)
    assert [i["content"][0]["text"] for i in items["data"]] == ["Two", "One"]  # newest first by default
    assert items["first_id"] == items["data"][0]["id"] and items["has_more"] is False
    deleted = client.delete(path, headers=TOKEN)
    assert deleted.status_code == 200
    assert deleted.get_json() == {"id": created["id"], "object": "response.deleted", "deleted": True}
    for method in ("get", "delete"):
        gone = getattr(client, method)(path, headers=TOKEN)
        assert gone.status_code == 404
        assert gone.get_json()["error"]["type"] == "invalid_request_error"
        assert created["id"] in gone.get_json()["error"]["message"]


def test_input_items_pages(client):
    texts = [f"m{i}" for i in range(5)]
    created = create(client, input=[{"role": "user", "content": t} for t in texts]).get_json()
    path = f"/v1/responses/{created['id']}/input_items"
    first = client.get(f"{path}?order=asc&limit=2", headers=TOKEN).get_json()
    assert [i["content"][0]["text"] for i in first["data"]] == ["m0", "m1"] and first["has_more"] is True
    rest = client.get(f"{path}?order=asc&limit=10&after={first['last_id']}", headers=TOKEN).get_json()
    assert [i["content"][0]["text"] for i in rest["data"]] == ["m2", "m3", "m4"] and rest["has_more"] is False
    for query in ("limit=0", "limit=101", "limit=x", "order=up"):
        assert client.get(f"{path}?{query}", headers=TOKEN).status_code == 400


def test_a_streamed_response_is_stored_when_it_ends(client):
    events = stream(client)
    stored = client.get(f"/v1/responses/{events[0]['response']['id']}", headers=TOKEN).get_json()
    assert stored == events[-1]["response"]


def test_store_false_keeps_nothing(client):
    for body in (create(client, store=False).get_json(), stream(client, store=False)[-1]["response"]):
        assert body["store"] is False
        assert client.get(f"/v1/responses/{body['id']}", headers=TOKEN).status_code == 404


def test_the_store_keeps_the_newest(mock, client):
    mock.responses.limit = 3
    ids = [create(client).get_json()["id"] for _ in range(5)]
    assert list(mock.responses.stored) == ids[2:]
    assert STORE_LIMIT == 1000


def test_a_foreground_response_cannot_be_cancelled(client):
    created = create(client).get_json()
    reply = client.post(f"/v1/responses/{created['id']}/cancel", headers=TOKEN)
    assert reply.status_code == 400 and "background" in reply.get_json()["error"]["message"]


def test_a_background_response_finishes_later_or_is_cancelled():
    client = Client(MockUpstream(Options(delay=10)))
    queued = create(client, background=True).get_json()
    assert queued["status"] == "queued" and queued["background"] is True and queued["output"] == []
    path = f"/v1/responses/{queued['id']}"
    assert client.get(path, headers=TOKEN).get_json()["status"] == "queued"
    cancelled = client.post(f"{path}/cancel", headers=TOKEN)
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    assert client.get(path, headers=TOKEN).get_json()["status"] == "cancelled"
    done = Client(MockUpstream(Options(delay=0)))
    queued = create(done, background=True).get_json()
    path = f"/v1/responses/{queued['id']}"
    assert Response.model_validate(done.get(path, headers=TOKEN).get_json()).output_text == REPLY_TEXT
    again = done.post(f"{path}/cancel", headers=TOKEN)  # a finished background response comes back unchanged
    assert again.status_code == 200 and again.get_json()["status"] == "completed"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "Hi"}, None),
        ({"model": 3, "input": "Hi"}, None),
        ({"model": "mock-gpt", "input": 3}, "input"),
        ({"model": "mock-gpt", "input": ["Hi"]}, "input"),
        ({"model": "mock-gpt", "input": "Hi", "tools": {}}, "tools"),
        ({"model": "mock-gpt", "input": "Hi", "background": True, "store": False}, "store"),
        ({"model": "mock-gpt", "input": "Hi", "previous_response_id": "resp_nope"}, "previous_response_id"),
    ],
)
def test_bad_requests_get_a_400_in_the_openai_shape(client, body, param):
    reply = client.post("/v1/responses", json=body, headers=TOKEN)
    assert reply.status_code == 400
    error = reply.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param


def test_a_known_previous_response_id_is_accepted(client):
    first = create(client).get_json()
    second = create(client, previous_response_id=first["id"]).get_json()
    assert second["previous_response_id"] == first["id"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/responses"), ("GET", "/v1/responses/"), ("PUT", "/v1/responses/resp_x"),
     ("GET", "/v1/responses/resp_x/cancel"), ("GET", "/v1/responses/resp_x/other"), ("POST", "/v1/responsesX")],
)  # fmt: skip
def test_unknown_routes_are_404(client, method, path):
    reply = client.open(path, method=method, headers=TOKEN)
    assert reply.status_code == 404 and reply.get_json()["error"]["code"] == "unknown_url"


@pytest.mark.parametrize(
    ("token", "status"),
    [("", 401), ("revoked-0001", 403), ("expired-0001", 401), ("limited-0001", 429), ("broken-0001", 500)],
)
@pytest.mark.parametrize("path", ["/v1/responses", "/v1/responses/resp_x", "/v1/responses/resp_x/input_items"])
def test_token_faults_apply(client, token, status, path):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    method = "POST" if path == "/v1/responses" else "GET"
    reply = client.open(path, method=method, json={"model": "mock-gpt", "input": "Hi"}, headers=headers)
    assert reply.status_code == status
    if status == 429:
        assert reply.headers["Retry-After"] == "7"


def test_the_strict_edge_refuses_a_naive_stream():
    client = Client(MockUpstream(Options(delay=0, strict_edge=True)))
    naive = create(client, {**TOKEN, "User-Agent": "python-requests/2.32"}, stream=True)
    assert naive.status_code == 403 and naive.headers["Content-Type"] == "text/html"
    browserish = {**TOKEN, "User-Agent": "OpenAI/Python 3.57.0", "Accept": "text/event-stream"}
    assert create(client, browserish, stream=True).status_code == 200
    assert create(client, {**TOKEN, "User-Agent": "python-requests/2.32"}).status_code == 200  # not streaming


def test_error_first_sends_only_an_error_event(mock, client):
    (event,) = stream(client, mock={"error_first": True})
    assert event["type"] == "error" and event["sequence_number"] == 0 and event["code"] == "server_overloaded"
    reply = create(client, {"Authorization": "Bearer errorfirst-0001"}, stream=True)
    assert [e["type"] for e in parse_events(reply.get_data())] == ["error"]
    assert mock.responses.stored == {}  # no response was created


def test_drop_after_counts_events_and_cuts_the_connection(mock):
    sock = FakeSocket()
    client = Client(mock)
    body = {"model": "mock-gpt", "input": "Hi", "stream": True, "mock": {"drop_after": 5}}
    reply = client.post("/v1/responses", json=body, headers=TOKEN, environ_overrides={"mock.socket": sock})
    events = parse_events(reply.get_data())
    assert [e["type"] for e in events] == TEXT_ORDER[:5] and sock.shut
    assert mock.stats.streams_dropped == 1 and mock.stats.streams_completed == 0
    stored = client.get(f"/v1/responses/{events[0]['response']['id']}", headers=TOKEN).get_json()
    assert stored["status"] == "in_progress"


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        ({"empty": True}, b""),
        ({"garbage": True}, b"this is not server-sent events\n\n<html>oops</html>\n\n"),
    ],
)
def test_streams_without_events(client, faults, expected):
    assert create(client, stream=True, mock=faults).get_data() == expected


def test_first_delay_noise_and_trickle_keep_the_events(client):
    raw = create(client, stream=True, mock={"first_delay": 0.01, "noise": True, "trickle": True}).get_data()
    assert raw.startswith(b": mock upstream thinking\n\n: comment\nnot-a-field\n\nevent: response.created\n")
    assert [e["type"] for e in parse_events(raw.replace(b"not-a-field\n", b""))] == TEXT_ORDER


def test_stall_after_pauses_before_that_event(client):
    events = stream(client, mock={"stall_after": 2, "stall": 0.1})
    assert events[2]["mock_ts"] - events[1]["mock_ts"] >= 0.09


def test_stats_count_requests_streams_and_usage(mock, client):
    plain = create(client).get_json()
    events = stream(client)
    client.get(f"/v1/responses/{plain['id']}", headers=TOKEN)
    stats = client.get("/_mock/stats").get_json()
    assert stats["requests"] == 3 and stats["streams_started"] == stats["streams_completed"] == 1
    assert stats["usage_total"] == plain["usage"]["total_tokens"] + events[-1]["response"]["usage"]["total_tokens"]
    assert [r["path"] for r in stats["recent"]] == ["/v1/responses", "/v1/responses", f"/v1/responses/{plain['id']}"]


def test_chat_completions_still_answer_as_before(client):
    reply = client.post("/v1/chat/completions", json={"model": "mock-gpt", "messages": []}, headers=TOKEN)
    assert reply.get_json()["choices"][0]["message"]["content"] == REPLY_TEXT
