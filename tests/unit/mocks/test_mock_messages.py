"""The mock upstream's Anthropic Messages API, called as a WSGI app; messages and events are checked against the
anthropic SDK's types."""

from __future__ import annotations

import json

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter
from werkzeug.test import Client

from app.mock_chat import reply_words as _reply_words
from app.mock_messages import input_tokens, is_messages_request, plan
from app.mock_upstream import MockUpstream, Options
from tests.unit.mocks.fakes import FakeSocket

HEADERS = {"x-api-key": "good-key-0001", "anthropic-version": "2023-06-01"}
REPLY_TEXT = "".join(_reply_words(8))
EVENT = TypeAdapter(RawMessageStreamEvent)
TEXT_ORDER = (
    ["message_start", "content_block_start", "ping"]
    + ["content_block_delta"] * 8
    + ["content_block_stop", "message_delta", "message_stop"]
)
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"],
    },
}
THINKING = {"type": "enabled", "budget_tokens": 1024}


def body_of(content: str | list = "Hi", **extra) -> dict:
    return {"model": "mock-claude", "max_tokens": 100, "messages": [{"role": "user", "content": content}], **extra}


def create(client: Client, headers: dict | None = None, path: str = "/v1/messages", **body):
    return client.post(path, json=body_of(**body), headers=HEADERS if headers is None else headers)


def parse_events(raw: bytes) -> list[dict]:
    """The SSE events of a stream; each `event:` line must name the data's type, each event must parse."""
    events = []
    for block in raw.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "data" in fields:
            event = json.loads(fields["data"])
            assert fields["event"] == event["type"]
            if event["type"] not in ("ping", "error"):
                EVENT.validate_python(event)
            events.append(event)
    return events


def stream(client: Client, environ: dict | None = None, **body) -> list[dict]:
    reply = client.post("/v1/messages", json=body_of(stream=True, **body), headers=HEADERS,
                        environ_overrides=environ or {})  # fmt: skip
    assert reply.status_code == 200 and reply.headers["request-id"].startswith("req_")
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    return parse_events(reply.get_data())


def text_of(events: list[dict], index: int = 0) -> str:
    return "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")


def test_a_plain_message_is_the_reply_text_with_usage(client):
    reply = create(client)
    assert reply.status_code == 200 and reply.headers["request-id"].startswith("req_")
    message = Message.model_validate(reply.get_json())
    assert message.id.startswith("msg_") and message.role == "assistant" and message.model == "mock-claude"
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == REPLY_TEXT
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    usage = reply.get_json()["usage"]
    assert usage == {"input_tokens": input_tokens(body_of()), "output_tokens": 8,
                     "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}  # fmt: skip


def test_cache_counts_can_be_set_per_request(client):
    usage = create(client, mock={"cache_read_input_tokens": 7, "cache_creation_input_tokens": 3}).get_json()["usage"]
    assert usage["cache_read_input_tokens"] == 7 and usage["cache_creation_input_tokens"] == 3


def test_a_stream_sends_the_typed_events_in_order(client, mock):
    events = stream(client)
    assert [e["type"] for e in events] == TEXT_ORDER
    assert [e["mock_seq"] for e in events] == list(range(len(events)))
    assert all(isinstance(e["mock_ts"], float) for e in events)
    start = events[0]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["id"].startswith("msg_")
    assert start["usage"]["input_tokens"] == input_tokens(body_of()) and start["usage"]["output_tokens"] == 1
    assert events[1]["content_block"] == {"type": "text", "text": ""}
    assert text_of(events) == REPLY_TEXT
    assert events[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert events[-2]["usage"] == {"output_tokens": 8}
    assert mock.stats.streams_completed == 1 and mock.stats.usage_total == input_tokens(body_of()) + 8


def test_chunks_sets_the_number_of_deltas(client):
    events = stream(client, mock={"chunks": 3})
    assert [e["delta"]["text"] for e in events if e["type"] == "content_block_delta"] == _reply_words(3)


def test_delay_paces_the_deltas_after_the_first(client):
    times = [e["mock_ts"] for e in stream(client, mock={"chunks": 3, "delay": 0.05})]
    assert times[3] - times[0] < 0.04  # message_start ... the first delta at once
    assert all(b - a >= 0.045 for a, b in zip(times[3:5], times[4:6], strict=True))
    assert times[-1] - times[5] < 0.04


@pytest.mark.parametrize(
    ("extra", "text", "stop_reason", "stop_sequence"),
    [
        ({"max_tokens": 3}, "".join(_reply_words(8)[:3]), "max_tokens", None),
        ({"max_tokens": 8}, REPLY_TEXT, "end_turn", None),
        ({"stop_sequences": ["mock"]}, "Hello from the Sluice ", "stop_sequence", "mock"),
        ({"stop_sequences": ["absent", "the"]}, "Hello from ", "stop_sequence", "the"),
        ({"stop_sequences": ["absent"]}, REPLY_TEXT, "end_turn", None),
        ({"max_tokens": 2, "stop_sequences": ["mock"]}, "Hello from ", "max_tokens", None),
    ],
)
def test_max_tokens_and_stop_sequences_end_the_reply(client, extra, text, stop_reason, stop_sequence):
    message = create(client, **extra).get_json()
    assert message["content"] == [{"type": "text", "text": text}]
    assert (message["stop_reason"], message["stop_sequence"]) == (stop_reason, stop_sequence)
    events = stream(client, **extra)
    assert text_of(events) == text
    assert events[-2]["delta"] == {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
    assert events[-2]["usage"]["output_tokens"] == message["usage"]["output_tokens"]


def test_a_weather_question_with_a_tool_gets_a_tool_use_block(client):
    message = Message.model_validate(create(client, content="What is the weather in Paris?", tools=[WEATHER_TOOL])
                                     .get_json())  # fmt: skip
    (block,) = message.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.id.startswith("toolu_")
    assert block.input == {"city": "Paris", "unit": "celsius"}
    assert message.stop_reason == "tool_use"


def test_a_streamed_tool_use(client):
    events = stream(client, content=[{"type": "text", "text": "weather?"}], tools=[WEATHER_TOOL])
    fragments = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert [e["type"] for e in events] == (
        ["message_start", "content_block_start", "ping"] + ["content_block_delta"] * len(fragments)
        + ["content_block_stop", "message_delta", "message_stop"]
    )  # fmt: skip
    assert 1 < len(fragments) <= 8
    opened = events[1]["content_block"]
    assert opened["type"] == "tool_use" and opened["input"] == {} and opened["name"] == "get_weather"
    assert json.loads("".join(fragments)) == {"city": "Paris", "unit": "celsius"}
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("text", "tool_choice", "called"),
    [
        ("What is the weather?", None, True),
        ("What is the weather?", {"type": "auto"}, True),
        ("What is the weather?", {"type": "none"}, False),
        ("Hello there", None, False),
        ("Hello there", {"type": "any"}, True),
        ("Hello there", {"type": "tool", "name": "get_weather"}, True),
    ],
)
def test_when_the_tool_is_used(client, text, tool_choice, called):
    extra = {} if tool_choice is None else {"tool_choice": tool_choice}
    message = create(client, content=text, tools=[WEATHER_TOOL], **extra).get_json()
    assert message["content"][0]["type"] == ("tool_use" if called else "text")


def test_a_server_tool_is_not_called(client):
    server_tool = {"type": "web_search_20250305", "name": "web_search"}
    assert create(client, content="weather", tools=[server_tool]).get_json()["content"][0]["type"] == "text"


@pytest.mark.parametrize(
    ("content", "quoted"),
    [
        ("21 degrees", "21 degrees"),
        ([{"type": "text", "text": "sunny"}, {"type": "text", "text": "and warm"}], "sunny and warm"),
        (None, ""),
    ],
)
def test_a_tool_result_is_quoted_back(client, content, quoted):
    call = create(client, content="What is the weather?", tools=[WEATHER_TOOL]).get_json()["content"][0]
    result = {"type": "tool_result", "tool_use_id": call["id"], **({} if content is None else {"content": content})}
    messages = [{"role": "user", "content": "What is the weather?"}, {"role": "assistant", "content": [call]},
                {"role": "user", "content": [result]}]  # fmt: skip
    body = {"model": "mock-claude", "max_tokens": 100, "messages": messages, "tools": [WEATHER_TOOL]}
    message = client.post("/v1/messages", json=body, headers=HEADERS).get_json()
    assert message["content"] == [{"type": "text", "text": f"The tool said: {quoted}. " + REPLY_TEXT}]
    assert message["stop_reason"] == "end_turn"


def test_an_error_result_says_so():
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "no such city", "is_error": True}
    body = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": [result]}]}
    assert plan(body, ["a "]).blocks[0].deltas[0] == "The tool said: error: no such city. "


def test_thinking_comes_first(client):
    message = Message.model_validate(create(client, thinking=THINKING, max_tokens=2000).get_json())
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature
    assert text.type == "text" and text.text == REPLY_TEXT
    events = stream(client, thinking=THINKING, max_tokens=2000)
    deltas = [e["delta"] for e in events if e["type"] == "content_block_delta"]
    assert "".join(d.get("thinking", "") for d in deltas) == thinking.thinking
    assert [d["signature"] for d in deltas if d["type"] == "signature_delta"] == [thinking.signature]
    assert [e["content_block"]["type"] for e in events if e["type"] == "content_block_start"] == ["thinking", "text"]
    assert [e["index"] for e in events if e["type"] == "content_block_stop"] == [0, 1]


def test_count_tokens_is_the_messages_input_tokens(client):
    body = body_of(system="Be brief.", tools=[WEATHER_TOOL])
    del body["max_tokens"]
    reply = client.post("/v1/messages/count_tokens", json=body, headers=HEADERS)
    assert reply.status_code == 200 and reply.get_json() == {"input_tokens": input_tokens(body)}
    usage = create(client, system="Be brief.", tools=[WEATHER_TOOL]).get_json()["usage"]
    assert usage["input_tokens"] == input_tokens(body) > 1


@pytest.mark.parametrize(
    ("headers", "status", "error_type", "retry_after"),
    [
        ({"anthropic-version": "2023-06-01"}, 401, "authentication_error", None),
        ({**HEADERS, "x-api-key": ""}, 401, "authentication_error", None),
        ({"Authorization": "Bearer ", "anthropic-version": "2023-06-01"}, 401, "authentication_error", None),
        ({"Authorization": "Bearer limited-key", "anthropic-version": "2023-06-01"}, 429, "rate_limit_error", "7"),
        ({"x-api-key": "good-key-0001"}, 400, "invalid_request_error", None),
        ({**HEADERS, "x-api-key": "expired-key"}, 401, "authentication_error", None),
        ({**HEADERS, "x-api-key": "revoked-key"}, 403, "permission_error", None),
        ({**HEADERS, "x-api-key": "limited-key"}, 429, "rate_limit_error", "7"),
        ({**HEADERS, "x-api-key": "overloaded-key"}, 529, "overloaded_error", None),
    ],
)  # fmt: skip
def test_keys_and_versions_are_checked(client, headers, status, error_type, retry_after):
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        reply = create(client, headers=headers, path=path)
        assert reply.status_code == status and reply.headers["request-id"].startswith("req_")
        assert reply.get_json() == {"type": "error", "error": {"type": error_type, "message": reply.get_json()
                                    ["error"]["message"]}}  # fmt: skip
        assert reply.headers.get("retry-after") == retry_after


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer good-key-0001"}, {"x-api-key": "good-key", "Authorization": "Bearer revoked-key"}],
)
def test_the_key_may_come_as_a_bearer_token(client, headers):
    """The anthropic SDK 2.x sends its api_key as `Authorization: Bearer`; x-api-key wins when both are there."""
    assert create(client, headers={**headers, "anthropic-version": "2023-06-01"}).status_code == 200


def test_a_limited_date_key_gets_an_http_date(client):
    reply = create(client, headers={**HEADERS, "x-api-key": "limiteddate-key"})
    assert reply.status_code == 429 and reply.headers["retry-after"].endswith(" GMT")


@pytest.mark.parametrize("mock_options", [{"status": 500}, None])
def test_a_broken_backend_is_an_html_page(client, mock_options):
    headers = HEADERS if mock_options else {**HEADERS, "x-api-key": "broken-key"}
    reply = create(client, headers=headers, **({"mock": mock_options} if mock_options else {}))
    assert reply.status_code == 500 and reply.headers["Content-Type"] == "text/html"


def test_a_mock_status_is_an_anthropic_error(client):
    reply = create(client, mock={"status": 503})
    assert reply.status_code == 503 and reply.get_json()["error"]["type"] == "api_error"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ([1], 400, "JSON object"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, 400, "model"),
        ({"model": "missing-claude", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}]}, 400, "max_tokens"),
        ({"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, 400, "max_tokens"),
        ({"model": "m", "max_tokens": True, "messages": [{"role": "user", "content": "x"}]}, 400, "max_tokens"),
        ({"model": "m", "max_tokens": 5, "messages": []}, 400, "messages"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, 400, "messages.0.role"),
        ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": 3}]}, 400, "messages.0.content"),
        (body_of(system=3), 400, "system"),
        (body_of(stop_sequences="END"), 400, "stop_sequences"),
        (body_of(tools={}), 400, "tools"),
        (body_of(tools=[{"name": "f"}]), 400, "input_schema"),
        (body_of(tools=[WEATHER_TOOL], tool_choice="auto"), 400, "tool_choice"),
        (body_of(tools=[WEATHER_TOOL], tool_choice={"type": "tool", "name": "other"}), 400, "other"),
        (body_of(thinking={"type": "enabled"}), 400, "thinking"),
        (body_of(thinking={"type": "enabled", "budget_tokens": 100}), 400, "budget_tokens"),
        (body_of(thinking=THINKING), 400, "max_tokens"),
    ],
)
def test_bad_bodies_are_invalid_request_errors(client, body, status, words):
    reply = client.post("/v1/messages", json=body, headers=HEADERS)
    assert reply.status_code == status
    error = reply.get_json()["error"]
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    assert words in error["message"]


def test_a_body_that_is_not_json_is_invalid(client):
    reply = client.post("/v1/messages", data=b"{oops", headers={**HEADERS, "Content-Type": "application/json"})
    assert reply.status_code == 400 and reply.get_json()["type"] == "error"


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/messages"), ("POST", "/v1/messages/batches")])
def test_other_message_routes_are_not_found(client, method, path):
    reply = client.open(path, method=method, headers=HEADERS)
    assert reply.status_code == 404 and reply.get_json()["error"]["type"] == "not_found_error"


def test_the_model_list_follows_the_headers(client):
    anthropic = client.get("/v1/models", headers=HEADERS).get_json()
    assert [m["type"] for m in anthropic["data"]] == ["model", "model"] and anthropic["has_more"] is False
    assert anthropic["first_id"] == anthropic["data"][0]["id"] and anthropic["last_id"] == anthropic["data"][-1]["id"]
    assert all(m["display_name"] and m["created_at"].endswith("Z") for m in anthropic["data"])
    openai = client.get("/v1/models", headers={"Authorization": "Bearer good-key-0001"}).get_json()
    assert openai["object"] == "list" and "mock-gpt" in [m["id"] for m in openai["data"]]
    refused = client.get("/v1/models", headers={**HEADERS, "x-api-key": "revoked-key"})
    assert refused.status_code == 403 and refused.get_json()["error"]["type"] == "permission_error"
    unknown = client.get("/v1/models", headers={"anthropic-version": "2023-06-01"})
    assert unknown.status_code == 401 and unknown.get_json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("path", "headers", "mine"),
    [
        ("/v1/messages", {}, True),
        ("/v1/messages/count_tokens", {}, True),
        ("/v1/models", {"HTTP_X_API_KEY": "k", "HTTP_ANTHROPIC_VERSION": "v"}, True),
        ("/v1/models", {"HTTP_X_API_KEY": "k"}, False),
        ("/v1/models", {"HTTP_AUTHORIZATION": "Bearer k", "HTTP_ANTHROPIC_VERSION": "v"}, True),
        ("/v1/models", {"HTTP_AUTHORIZATION": "Bearer k"}, False),
        ("/v1/messagesx", {}, False),
        ("/v1/chat/completions", {"HTTP_X_API_KEY": "k", "HTTP_ANTHROPIC_VERSION": "v"}, False),
    ],
)
def test_which_requests_are_messages_requests(path, headers, mine):
    assert is_messages_request(path, headers) is mine


def test_error_first_sends_only_an_error_event(client):
    events = stream(client, mock={"error_first": True})
    assert [e["type"] for e in events] == ["error"]
    assert events[0]["error"] == {"type": "overloaded_error", "message": "Overloaded"}


def test_an_errorfirst_key_is_error_first(client):
    reply = client.post("/v1/messages", json=body_of(stream=True), headers={**HEADERS, "x-api-key": "errorfirst-k"})
    assert [e["type"] for e in parse_events(reply.get_data())] == ["error"]


@pytest.mark.parametrize("after", [0, 1, 5, len(TEXT_ORDER) - 1])
def test_error_after_ends_the_stream_with_an_error_event(client, mock, after):
    events = stream(client, mock={"error_after": after})
    assert [e["type"] for e in events] == [*TEXT_ORDER[:after], "error"]
    assert mock.stats.streams_completed == 1 and mock.stats.usage_total == 0


@pytest.mark.parametrize("after", [0, 4])
def test_drop_after_cuts_the_connection(client, mock, after):
    sock = FakeSocket()
    events = stream(client, environ={"mock.socket": sock}, mock={"drop_after": after})
    assert [e["type"] for e in events] == TEXT_ORDER[:after] and sock.shut
    assert mock.stats.streams_dropped == 1


@pytest.mark.parametrize(
    ("mock_options", "check"),
    [
        ({"empty": True}, lambda raw: raw == b""),
        ({"garbage": True}, lambda raw: b"data:" not in raw and b"not server-sent" in raw),
        ({"noise": True}, lambda raw: raw.count(b": comment\n") == len(TEXT_ORDER)),
        ({"trickle": True, "chunks": 2}, lambda raw: parse_events(raw)[-1]["type"] == "message_stop"),
    ],
)  # fmt: skip
def test_stream_faults(client, mock_options, check):
    reply = client.post("/v1/messages", json=body_of(stream=True, mock=mock_options), headers=HEADERS)
    assert reply.status_code == 200 and check(reply.get_data())


@pytest.mark.parametrize(
    ("agent", "accept", "refused"),
    [
        ("my-app/1.0", "text/event-stream", False),
        ("", "text/event-stream", True),
        ("python-requests/2.32", "text/event-stream", True),
        ("Anthropic/Python 2.10.0", "application/json", True),
    ],
)
def test_strict_edge_refuses_naive_streams(agent, accept, refused):
    client = Client(MockUpstream(Options(delay=0, strict_edge=True)))
    headers = {**HEADERS, "User-Agent": agent, "Accept": accept}
    reply = client.post("/v1/messages", json=body_of(stream=True), headers=headers)
    assert reply.status_code == (403 if refused else 200)
    assert (reply.headers["Content-Type"] == "text/html") is refused
    plain = client.post("/v1/messages", json=body_of(), headers=headers)
    assert plain.status_code == 200
