"""The Responses dialect: its relays (pure), and its wiring with a `responses` upstream (native and translated)."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest

from app.config import UpstreamConfig
from app.dialects.base import Verdict
from app.dialects.openai_responses import RESPONSES, ResponsesRelay, responses_usage
from app.errors import ApiError, StreamBroken
from app.services import sse
from tests.conftest import BASE, TOKENS, make_config

SSE = {"Content-Type": "text/event-stream"}


def event(kind: str, seq: int, **data) -> bytes:
    return sse.encode({"type": kind, "sequence_number": seq, **data}, kind)


CREATED = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}
USAGE = {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 2}, "output_tokens": 7,
         "output_tokens_details": {"reasoning_tokens": 3}, "total_tokens": 12}  # fmt: skip
NATIVE_STREAM = [
    event("response.created", 0, response=CREATED),
    event("response.in_progress", 1, response=CREATED),
    event("response.output_text.delta", 2, item_id="m", output_index=0, content_index=0, delta="Hi"),
    event("response.completed", 3, response={**CREATED, "status": "completed", "usage": USAGE}),
]


@pytest.mark.parametrize(
    ("raw", "verdict"),
    [
        (b": keep-alive\n\n", Verdict.WAIT),
        (NATIVE_STREAM[0], Verdict.ACCEPT),
        (event("error", 0, code="server_error", message="x"), Verdict.ERROR),
        (b'data: {"type": "error", "code": "x", "message": "y"}\n\n', Verdict.ERROR),
        (b'data: {"error": {"message": "y"}}\n\n', Verdict.ERROR),
        (b'data: {"type": "response.created"}\n\n', Verdict.ACCEPT),
    ],
)
def test_the_first_event_verdict(raw, verdict):
    assert RESPONSES.verdict(raw) is verdict


def test_a_native_stream_passes_byte_for_byte_and_yields_its_usage():
    relay = ResponsesRelay({})
    out = [chunk for raw in NATIVE_STREAM for chunk in relay.feed(raw)]
    assert out == NATIVE_STREAM
    assert relay.end() == ()
    assert relay.usage == {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12, "cached_tokens": 2,
                           "reasoning_tokens": 3}  # fmt: skip


@pytest.mark.parametrize("terminal", ["response.incomplete", "response.failed", "error"])
def test_every_terminal_event_ends_a_stream(terminal):
    relay = ResponsesRelay({})
    for raw in [*NATIVE_STREAM[:3], event(terminal, 3, response={**CREATED, "status": "x"})]:
        relay.feed(raw)
    assert relay.end() == ()


def test_a_stream_cut_before_its_end_is_broken_and_fails_well_formed():
    relay = ResponsesRelay({"model": "m"})
    for raw in NATIVE_STREAM[:3]:
        relay.feed(raw)
    with pytest.raises(StreamBroken):
        relay.end()
    error, failed = (sse.parse(raw) for raw in relay.fail("upstream_stream_error", "cut"))
    assert (error.name, error.json()["sequence_number"], error.json()["code"]) == ("error", 3, "upstream_stream_error")
    body = failed.json()
    assert failed.name == "response.failed" and body["sequence_number"] == 4
    assert body["response"]["id"] == "resp_1" and body["response"]["status"] == "failed"
    assert body["response"]["error"] == {"code": "server_error", "message": "cut"}


def test_a_failure_before_any_event_invents_a_complete_response():
    events = [sse.parse(raw) for raw in ResponsesRelay({"model": "m"}).fail("deadline_exceeded", "late")]
    assert [e.name for e in events] == ["response.created", "response.in_progress", "error", "response.failed"]
    assert [e.json()["sequence_number"] for e in events] == [0, 1, 2, 3]  # the SDKs want response.created first
    created, failed = events[0].json()["response"], events[-1].json()["response"]
    assert created["status"] == "in_progress" and failed["status"] == "failed"
    assert failed["id"] == created["id"] and failed["id"].startswith("resp_") and failed["model"] == "m"


def test_a_fetched_stored_response_counts_no_usage_unless_asked():
    done = event("response.completed", 0, response={**CREATED, "usage": USAGE})
    quiet, counting = ResponsesRelay({}, count_usage=False), ResponsesRelay({}, count_usage=lambda: True)
    for relay in (quiet, counting):
        relay.feed(done)
        relay.plain(json.dumps({**CREATED, "usage": USAGE}).encode(), "application/json")
    assert quiet.usage is None and counting.usage["total_tokens"] == 12


@pytest.mark.parametrize(
    ("data", "usage"),
    [
        (
            {"usage": USAGE},
            {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12, "cached_tokens": 2, "reasoning_tokens": 3},
        ),  # fmt: skip
        (
            {"usage": {"input_tokens": 1, "output_tokens": 2}},
            {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        ),  # fmt: skip
        (
            {"usage": {"input_tokens": True, "output_tokens": -4}},
            {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        ),  # fmt: skip
        ({"usage": None}, None),
        ([], None),
    ],
)
def test_usage_from_a_response_object(data, usage):
    assert responses_usage(data) == usage


@pytest.mark.parametrize(
    ("prefix", "body", "expected"),
    [
        ([b": ping\n\n", NATIVE_STREAM[0]], None, "resp_1"),
        ([], b'{"id": "resp_2", "object": "response"}', "resp_2"),
        ([], b'{"id": "a\\nb"}', None),  # not something to store or put in a path
        ([], b'{"id": ".."}', None),  # a dot segment would leave /responses/ in the upstream's URL
        ([], b'{"id": "resp_a/b"}', None),
        ([], b"not json", None),
        ([b'data: {"type": "x"}\n\n'], None, None),
    ],
)
def test_the_id_of_a_created_response(prefix, body, expected):
    assert RESPONSES.created_id(prefix, body) == expected


def native_and_translated(**extra) -> list[UpstreamConfig]:
    return [
        UpstreamConfig(name="native", base_url="http://native.test/v1", tokens=TOKENS[:1], responses="native", **extra),
        UpstreamConfig(name="chat", base_url=BASE, tokens=TOKENS[1:2], **extra),
    ]


def test_a_native_upstream_gets_the_body_unchanged(make_app, auth, upstream):
    client = make_app(make_config(native_and_translated()[0])).test_client()
    body = b'{"model": "m",  "input": "hi", "store": false, "include": ["reasoning.encrypted_content"]}'
    upstream.add("POST", "http://native.test/v1/responses", json={"id": "resp_9", "object": "response", "usage": USAGE})
    reply = client.post("/v1/responses", data=body, headers={**auth, "Content-Type": "application/json"})
    assert reply.status_code == 200 and reply.get_json()["id"] == "resp_9"
    assert upstream.calls[0].request.body == body


def test_a_translating_upstream_gets_a_chat_body_and_its_answer_comes_back_as_a_response(make_app, auth, upstream):
    client = make_app(make_config(native_and_translated()[1])).test_client()
    answer = {"id": "c", "object": "chat.completion", "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}  # fmt: skip
    upstream.add("POST", f"{BASE}/chat/completions", json=answer)
    reply = client.post("/v1/responses", json={"model": "m", "input": "hi", "max_output_tokens": 9}, headers=auth)
    sent = json.loads(upstream.calls[0].request.body)
    assert sent == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9}
    response = reply.get_json()
    assert response["object"] == "response" and response["status"] == "completed"
    assert response["output"][0]["content"][0]["text"] == "Hello" and response["usage"]["total_tokens"] == 4


def test_a_request_one_upstream_cannot_translate_goes_to_another_that_can(make_app, auth, upstream):
    """A built-in tool is refused by the translating upstream: the native one (second in order) serves it."""
    native, chat = native_and_translated()
    client = make_app(make_config(chat, native)).test_client()
    upstream.add("POST", "http://native.test/v1/responses", json={"id": "resp_3", "object": "response"})
    body = {"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}
    assert client.post("/v1/responses", json=body, headers=auth).get_json()["id"] == "resp_3"
    assert [c.request.url for c in upstream.calls] == ["http://native.test/v1/responses"]


def test_the_translated_stream_is_typed_events_ending_with_response_completed(make_app, auth, upstream):
    client = make_app(make_config(native_and_translated()[1])).test_client()
    chunks = [{"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in ("Hel", "lo")]
    chunks.append({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
    stream = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    upstream.add("POST", f"{BASE}/chat/completions", body=stream, headers={"Content-Type": "text/event-stream"})
    reply = client.post("/v1/responses", json={"model": "m", "input": "hi", "stream": True}, headers=auth)
    events = [sse.parse(raw) for raw in sse.split(reply.get_data())[0]]
    assert events[0].name == "response.created" and events[-1].name == "response.completed"
    assert "".join(e.json()["delta"] for e in events if e.name == "response.output_text.delta") == "Hello"
    assert events[-1].json()["response"]["usage"]["total_tokens"] == 5
    assert json.loads(upstream.calls[0].request.body)["stream_options"] == {"include_usage": True}
    assert upstream.calls[0].request.headers["Accept"] == "text/event-stream"


def test_a_stream_committed_before_its_first_event_still_names_the_dropped_tools(make_app, auth, upstream):
    """heartbeat_interval so short the 200 goes out before the upstream answers: the header comes from the legs."""
    chat = UpstreamConfig(name="chat", base_url=BASE, tokens=TOKENS[:1], drop_builtin_tools=True)
    config = make_config(chat)
    config = replace(config, gateway=replace(config.gateway, heartbeat_interval=0.000001))
    client = make_app(config).test_client()
    stream = 'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'

    def slow(request):
        time.sleep(0.2)  # the upstream answers after the commit
        return 200, SSE, stream

    upstream.add_callback("POST", f"{BASE}/chat/completions", callback=slow)
    body = {"model": "m", "input": "hi", "stream": True, "tools": [{"type": "web_search"}]}
    reply = client.post("/v1/responses", json=body, headers=auth)
    assert reply.get_data().startswith(b": keep-alive")  # committed early, as intended
    assert reply.headers["X-Sluice-Dropped-Tools"] == "web_search"


def test_translated_legs_are_kept_apart_by_every_setting_that_changes_them():
    """Two translating upstreams with different settings never share a leg (tools, usage request)."""
    request = RESPONSES.parse(b'{"model": "m", "input": "hi", "stream": true, "tools": [{"type": "web_search"}]}', None)
    leg = RESPONSES.legs(request)
    dropping = UpstreamConfig(name="a", base_url=BASE, drop_builtin_tools=True)
    refusing = UpstreamConfig(name="b", base_url=BASE)
    quiet = UpstreamConfig(name="c", base_url=BASE, drop_builtin_tools=True, inject_usage=False)
    assert json.loads(leg(dropping).body)["stream_options"] == {"include_usage": True}
    with pytest.raises(ApiError):
        leg(refusing)
    assert "stream_options" not in json.loads(leg(quiet).body)
