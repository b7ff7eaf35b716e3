"""/v1/responses through gunicorn, with the openai SDK: native pass-through and translation onto chat.

Behind the gateway one mock speaks the Responses API natively, and a second one is a strict edge
(403 to a stream without `Accept: text/event-stream` and a real User-Agent) that cuts every stream
after a few events, for the mid-stream failure cases.
"""

from __future__ import annotations

import json
import sqlite3
import time

import openai
import pydantic
import pytest
import requests
from openai.types.responses import ResponseStreamEvent

from tests.integration.conftest import MASTER_KEY, mock_stats, start_gateway, start_mock, upstream_toml

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
MODELS = {"native": "resp-native", "translated": "resp-chat"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("responses")
    mock = start_mock(tmp, "--delay", "0.02")
    cutting = start_mock(tmp, "--delay", "0.02", "--strict-edge", "--drop-after", "4")
    config = (
        "[gateway]\nheartbeat_interval = 0.3\n\n"
        + upstream_toml("native", mock.url, ["native-tok-1"], ["resp-native"], responses="native")
        + upstream_toml("chat", mock.url, ["chat-tok-1"], ["resp-chat"])
        + upstream_toml("drop", mock.url, ["drop-tok-1"], ["resp-drop"], drop_builtin_tools=True)
        + upstream_toml("retry", mock.url, ["limited-tok-1", "retry-tok-2"], ["resp-retry"], responses="native")
        + upstream_toml("cut-native", cutting.url, ["cut-tok-1"], ["cut-native"], responses="native")
        + upstream_toml("cut-chat", cutting.url, ["cut-tok-2"], ["cut-chat"])
        + upstream_toml("slow-native", mock.url, ["slow-tok-1"], ["slow-native"], responses="native",
                        first_byte_timeout=1.0)
        + upstream_toml("slow-chat", mock.url, ["slow-tok-2"], ["slow-chat"], first_byte_timeout=1.0)
        + upstream_toml("slow-native-b", mock.url, ["slow-tok-3"], ["slow-native-b"], responses="native",
                        first_byte_timeout=1.0)
        + upstream_toml("slow-chat-b", mock.url, ["slow-tok-4"], ["slow-chat-b"], first_byte_timeout=1.0)
    )  # fmt: skip
    gateway = start_gateway(tmp, config)
    yield gateway, mock, cutting, tmp
    gateway.stop()
    mock.stop()
    cutting.stop()


def sdk(gateway, key: str = MASTER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=30)


def last_request(mock, path: str) -> dict:
    return next(r for r in reversed(mock_stats(mock)["recent"]) if r["path"] == path)


def usage_rows(tmp, request_ids: set[str] | None = None) -> list[dict]:
    """Usage records (written about a second after each request)."""
    time.sleep(1.5)
    with sqlite3.connect(tmp / "data" / "sluice.db") as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM usage WHERE endpoint = 'responses' ORDER BY id")]
    return [r for r in rows if request_ids is None or r["request_id"] in request_ids]


@pytest.mark.parametrize("mode", ["native", "translated"])
def test_plain_text_answer(stack, mode):
    gateway, mock, _, _ = stack
    with sdk(gateway) as client:
        response = client.responses.create(model=MODELS[mode], input="Say hello.", instructions="Be brief.")
    assert response.status == "completed" and response.output_text
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    sent = last_request(mock, "/v1/responses" if mode == "native" else "/v1/chat/completions")
    assert sent["headers"]["Accept"] == "*/*" and sent["headers"]["User-Agent"].startswith("sluice/")
    if mode == "translated":
        assert sent["body"]["messages"][0] == {"role": "system", "content": "Be brief."}
        assert "input" not in sent["body"]  # a chat body, nothing of the Responses form left in it


@pytest.mark.parametrize("mode", ["native", "translated"])
def test_streamed_text_ends_with_response_completed(stack, mode):
    gateway, mock, _, _ = stack
    with sdk(gateway) as client:
        events = list(client.responses.create(model=MODELS[mode], input="Say hello.", stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and text == events[-1].response.output_text
    assert events[-1].response.usage.total_tokens > 0
    sent = last_request(mock, "/v1/responses" if mode == "native" else "/v1/chat/completions")
    assert sent["headers"]["Accept"] == "text/event-stream"
    if mode == "translated":  # asks for the usage chunk that response.completed needs
        assert sent["body"]["stream_options"] == {"include_usage": True}
    else:  # forwarded unchanged: no chat fields added to a Responses body
        assert "stream_options" not in sent["body"]


def test_native_stream_passes_the_upstream_bytes_through(stack):
    gateway, _, _, _ = stack
    body = {"model": "resp-native", "input": "hi", "stream": True}
    with requests.post(f"{gateway.url}/v1/responses", json=body, headers=auth(), stream=True, timeout=30) as reply:
        raw = reply.content
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    assert events[0].startswith(b"event: response.created\ndata: ")
    assert all(b'"mock_ts"' in e for e in events)  # the mock's own fields, untouched
    assert b"[DONE]" not in raw


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("mode", ["native", "translated"])
def test_function_call_round_trip(stack, mode, stream):
    gateway, _, _, _ = stack
    model, question = MODELS[mode], {"role": "user", "content": "What is the weather in Paris?"}
    with sdk(gateway) as client:
        first = _create(client, stream, model=model, input=[question], tools=[WEATHER_TOOL])
        calls = [item for item in first.output if item.type == "function_call"]
        assert len(calls) == 1 and calls[0].name == "get_weather"
        json.loads(calls[0].arguments)
        history = [question, *[c.model_dump(exclude_none=True) for c in calls]]
        output = {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}
        second = _create(client, stream, model=model, input=[*history, output], tools=[WEATHER_TOOL])
    assert second.status == "completed" and second.output_text


def _create(client: openai.OpenAI, stream: bool, **body):
    if not stream:
        return client.responses.create(**body)
    with client.responses.stream(**body) as events:
        return events.get_final_response()


def test_a_stored_response_is_retrieved_listed_and_deleted_through_its_upstream(stack):
    gateway, _, _, _ = stack
    with sdk(gateway) as client:
        created = client.responses.create(model="resp-native", input="Remember me.")
        assert client.responses.retrieve(created.id).output_text == created.output_text
        items = client.responses.input_items.list(created.id)
        assert [i.type for i in items.data] == ["message"]
        client.responses.delete(created.id)
        with pytest.raises(openai.NotFoundError) as missing:
            client.responses.retrieve(created.id)
    assert missing.value.body["code"] == "not_found"


def test_a_background_response_is_cancelled_on_its_upstream(stack):
    gateway, _, _, _ = stack
    with sdk(gateway) as client:
        created = client.responses.create(model="resp-native", input="Take your time.", background=True)
        assert client.responses.cancel(created.id).status == "cancelled"


def test_stored_responses_belong_to_the_key_that_made_them(stack):
    gateway, _, _, _ = stack
    keys = [gateway.cli("keys", "create", f"resp-{i}-{time.time_ns()}").stdout.strip() for i in (1, 2)]
    with sdk(gateway, keys[0]) as owner, sdk(gateway, keys[1]) as other, sdk(gateway) as master:
        created = owner.responses.create(model="resp-native", input="Mine.")
        assert owner.responses.retrieve(created.id).id == created.id
        assert master.responses.retrieve(created.id).id == created.id
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(created.id)


@pytest.mark.parametrize("path", ["/v1/responses/resp_unknown", "/v1/responses/resp_unknown/input_items"])
def test_an_unknown_id_is_a_404_in_the_openai_shape(stack, path):
    gateway, _, _, _ = stack
    reply = requests.get(gateway.url + path, headers=auth(), timeout=10)
    assert reply.status_code == 404
    assert reply.json()["error"]["code"] == "not_found" and reply.json()["error"]["type"] == "invalid_request_error"


def test_a_translated_answer_cannot_be_retrieved(stack):
    gateway, _, _, _ = stack
    with sdk(gateway) as client:
        created = client.responses.create(model="resp-chat", input="hi")
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(created.id)


@pytest.mark.parametrize("mode", ["native", "translated"])
def test_a_stream_cut_mid_way_ends_with_error_and_response_failed(stack, mode):
    gateway, _, _, _ = stack
    model = {"native": "cut-native", "translated": "cut-chat"}[mode]
    body = {"model": model, "input": "Tell me a long story.", "stream": True}
    with requests.post(f"{gateway.url}/v1/responses", json=body, headers=auth(), stream=True, timeout=30) as reply:
        raw = reply.content
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    assert reply.status_code == 200
    assert events[-2].startswith(b"event: error\n") and events[-1].startswith(b"event: response.failed\n")
    failed = json.loads(events[-1].split(b"data: ", 1)[1])
    assert failed["response"]["status"] == "failed"
    numbers = [json.loads(e.split(b"data: ", 1)[1])["sequence_number"] for e in events]
    assert numbers == list(range(len(numbers)))
    assert b"[DONE]" not in raw
    with sdk(gateway) as client:  # the SDK parses both as the API's own events
        parsed = list(client.responses.create(model=model, input="Tell me a long story.", stream=True))
    assert [e.type for e in parsed[-2:]] == ["error", "response.failed"]
    assert parsed[-2].code == "upstream_stream_error" and parsed[-1].response.status == "failed"


@pytest.mark.parametrize("model", ["slow-native", "slow-chat"])
def test_a_stream_committed_by_heartbeats_that_then_fails_ends_well_formed(stack, model):
    """No first event within first_byte_timeout on the only token, after the heartbeat committed the 200."""
    gateway, _, _, _ = stack
    body = {"model": model, "input": "hi", "stream": True}
    with requests.post(f"{gateway.url}/v1/responses", json=body, headers=auth(), stream=True, timeout=30) as reply:
        raw = reply.content
    events = [e for e in raw.split(b"\n\n") if e.strip()]
    assert reply.status_code == 200 and events[0] == b": keep-alive"
    assert events[-2].startswith(b"event: error\n") and events[-1].startswith(b"event: response.failed\n")
    parsed = [json.loads(e.split(b"data: ", 1)[1]) for e in events if not e.startswith(b":")]
    assert parsed[-2]["code"] == "upstream_first_byte_timeout"
    assert [e["sequence_number"] for e in parsed] == list(range(len(parsed)))
    for event in parsed:  # each one as the openai SDK's types define it
        pydantic.TypeAdapter(ResponseStreamEvent).validate_python(event)
    assert parsed[0]["type"] == "response.created"  # the SDK's stream helper wants it before anything else
    with sdk(gateway) as client, client.responses.stream(model=model + "-b", input="hi") as stream:  # a fresh token
        kinds = [e.type for e in stream]
    assert kinds[0] == "response.created" and kinds[-2:] == ["error", "response.failed"]


def test_translated_events_arrive_as_the_upstream_sends_them(stack):
    """The mock paces its chat chunks 20 ms apart: the translated deltas must arrive spread out, not at the end."""
    gateway, _, _, _ = stack
    body = {"model": "resp-chat", "input": "hi", "stream": True}
    arrivals = []
    with requests.post(f"{gateway.url}/v1/responses", json=body, headers=auth(), stream=True, timeout=30) as reply:
        for line in reply.iter_lines():
            if line.startswith(b"event: response.output_text.delta"):
                arrivals.append(time.monotonic())
    assert len(arrivals) == 8
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert sorted(gaps)[len(gaps) // 2] > 0.01  # the median gap is the mock's pacing, not a burst


def test_a_retry_on_another_token_happens_before_the_first_event(stack):
    gateway, mock, _, _ = stack
    with sdk(gateway) as client:
        events = list(client.responses.create(model="resp-retry", input="hi", stream=True))
    assert events[-1].type == "response.completed"
    assert last_request(mock, "/v1/responses")["headers"]["Authorization"] == "Bearer retry-tok-2"


def test_builtin_tools_are_refused_unless_the_upstream_drops_them(stack):
    gateway, _, _, _ = stack
    tools = [WEATHER_TOOL, {"type": "web_search", "external_web_access": False}]
    body = {"model": "resp-chat", "input": "hi", "tools": tools}
    refused = requests.post(f"{gateway.url}/v1/responses", json=body, headers=auth(), timeout=10)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "tools[1].type" and "web_search" in refused.json()["error"]["message"]
    dropped = requests.post(
        f"{gateway.url}/v1/responses", json={**body, "model": "resp-drop"}, headers=auth(), timeout=10
    )
    assert dropped.status_code == 200 and dropped.headers["X-Sluice-Dropped-Tools"] == "web_search"
    assert dropped.json()["object"] == "response"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "resp-chat", "input": 5}, "input"),
        ({"model": "resp-native", "tools": "x"}, "tools"),
        ({"model": "resp-chat", "input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
        ({"model": "resp-chat", "input": "hi", "background": True}, "background"),
        ({"model": "resp-chat", "input": [{"type": "computer_call"}]}, "input[0].type"),
        ({"model": "resp-chat", "input": "hi", "top_logprobs": 2}, "top_logprobs"),  # unknown here: never dropped
        ({"input": "hi"}, "model"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(stack, body, param):
    gateway, _, _, _ = stack
    reply = requests.post(f"{gateway.url}/v1/responses", json=body, headers=auth(), timeout=10)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param


def test_usage_of_native_and_translated_answers_is_recorded(stack):
    gateway, _, _, tmp = stack
    ids = set()
    with sdk(gateway) as client:
        for model in ("resp-native", "resp-chat"):
            for stream in (False, True):
                body = {"model": model, "input": "hi"}
                if model == "resp-native":  # the mock's knob; a translated request refuses unknown fields
                    body["extra_body"] = {"mock": {"cached_tokens": 2}}
                if stream:
                    with client.responses.with_streaming_response.create(**body, stream=True) as raw:
                        ids.add(raw.headers["X-Request-ID"])
                        list(raw.parse())
                else:
                    raw = client.responses.with_raw_response.create(**body)
                    ids.add(raw.headers["X-Request-ID"])
    rows = usage_rows(tmp, ids)
    assert len(rows) == 4 and all(r["status"] == 200 and r["outcome"] == "ok" for r in rows)
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 for r in rows)
    assert [r["cached_tokens"] for r in rows if r["upstream"] == "native"] == [2, 2]


def test_fetching_a_stored_response_counts_its_usage_once_and_only_for_a_background_one(stack):
    """A stored response's tokens were counted when it was made; a background one's, on its first finished fetch."""
    gateway, _, _, tmp = stack
    ids = []
    with sdk(gateway) as client:
        for background in (False, True):
            created = client.responses.with_raw_response.create(model="resp-native", input="hi", background=background)
            ids.append(created.headers["X-Request-ID"])
            response_id = created.parse().id
            time.sleep(0.5)  # a background response has finished by now
            for _ in range(3):
                fetched = client.responses.with_raw_response.retrieve(response_id)
                ids.append(fetched.headers["X-Request-ID"])
                assert fetched.parse().status == "completed"
    tokens = [row["total_tokens"] for row in usage_rows(tmp, set(ids))]
    assert tokens[0] > 0 and tokens[1:4] == [0, 0, 0]  # made in the foreground: counted when made
    assert tokens[4] == 0 and tokens[5] > 0 and tokens[6:] == [0, 0]  # background: counted on the first fetch


def test_the_api_v1_alias_serves_responses(stack):
    gateway, _, _, _ = stack
    reply = requests.post(f"{gateway.url}/api/v1/responses", json={"model": "resp-chat", "input": "hi"},
                          headers=auth(), timeout=10)  # fmt: skip
    assert reply.status_code == 200 and reply.json()["status"] == "completed"


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {MASTER_KEY}"}
