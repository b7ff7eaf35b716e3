"""Mid-stream resume through gunicorn (2 workers, gevent) and the mock, in every client dialect.

Each alias sends its first attempt to an upstream whose only token makes the mock cut the stream (`cut3-`: the
connection closes after 3 events), then, for the continuation, to a healthy upstream. The client must get the mock's
whole reply, once, in one well-formed stream: one id, one start, one end, no error. The reply the client should get
is read from an alias whose only target is healthy.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import requests

from tests.integration.conftest import MASTER_KEY, mock_stats, start_gateway, start_mock, upstream_toml

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
CHUNKS = 8
ALIASES = """
[[models]]
name = "r-chat"
targets = [{ upstream = "cutter", model = "m-chat" }, { upstream = "healthy", model = "m-chat" }]

[[models]]
name = "r-claude"
targets = [{ upstream = "claude-cutter", model = "claude-r" }, { upstream = "claude-ok", model = "claude-r" }]

[[models]]
name = "r-good"
targets = [{ upstream = "healthy", model = "m-chat" }]

[[models]]
name = "r-claude-good"
targets = [{ upstream = "claude-ok", model = "claude-r" }]

[[models]]
name = "r-off"
targets = [{ upstream = "no-resume", model = "m-chat" }, { upstream = "healthy", model = "m-chat" }]

[[models]]
name = "r-continue"
targets = [{ upstream = "cutter", model = "m-chat" }, { upstream = "vllm", model = "m-chat" }]

[[models]]
name = "r-twice"
targets = [
  { upstream = "cutter", model = "m-chat" }, { upstream = "cutter-2", model = "m-chat" },
  { upstream = "healthy", model = "m-chat" },
]

[[models]]
name = "r-errors"
targets = [{ upstream = "error-event", model = "m-chat" }, { upstream = "healthy", model = "m-chat" }]

[[models]]
name = "r-stall"
targets = [{ upstream = "staller", model = "m-chat" }, { upstream = "healthy", model = "m-chat" }]

[[models]]
name = "r-slow-continuation"
targets = [{ upstream = "cutter", model = "m-chat" }, { upstream = "slow-ok", model = "m-chat" }]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    mock = start_mock(tmp, "--delay", "0.001", "--chunks", str(CHUNKS))
    ups = [
        ("cutter", ["cut3-resume-token-0001"], {}),
        ("cutter-2", ["cut3-resume-token-0002"], {}),
        ("error-event", ["errorafter3-resume-token-01"], {}),
        ("staller", ["stall3-resume-token-0001"], {"idle_timeout": 1.0}),
        ("healthy", ["ok-resume-token-000001", "ok-resume-token-000002"], {}),
        ("vllm", ["ok-vllm-token-00000001"], {"resume": "continue"}),
        ("slow-ok", ["slowfirst4000-resume-token"], {}),
        ("claude-cutter", ["cut3-claude-token-00001"], {"api": "anthropic"}),
        ("claude-ok", ["ok-claude-token-0000001"], {"api": "anthropic"}),
    ]
    config = "[gateway]\nmax_resumes = 1\nheartbeat_interval = 0.5\n\n"
    for name, tokens, extra in ups:
        config += upstream_toml(name, mock.url, tokens, ["never-asked-directly"], **{"resume": "prefill", **extra})
    config += upstream_toml("no-resume", mock.url, ["cut3-noresume-token-01"], ["never-asked-directly"])
    gateway = start_gateway(tmp, config + ALIASES, workers=2)
    yield mock, gateway
    gateway.stop()
    mock.stop()


def sse_events(response: requests.Response) -> list[tuple[str | None, str]]:
    """(event name, data) of every event with data; comments (heartbeats) are skipped."""
    events, name, data = [], None, []
    for line in response.iter_lines(decode_unicode=False):
        line = line.decode()
        if not line:
            if data:
                events.append((name, "\n".join(data)))
            name, data = None, []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    if data:
        events.append((name, "\n".join(data)))
    return events


def post(gateway, path: str, body: dict, **headers: str) -> requests.Response:
    response = requests.post(f"{gateway.url}/v1{path}", json=body, headers={**AUTH, **headers}, stream=True, timeout=30)
    assert response.status_code == 200, response.text
    return response


def chat_stream(gateway, model: str, **extra) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "stream": True, **extra}
    events = sse_events(post(gateway, "/chat/completions", body))
    chunks = [json.loads(data) for _, data in events if data != "[DONE]"]
    return {
        "text": "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")),
        "ids": {c.get("id") for c in chunks if "error" not in c},
        "roles": sum(1 for c in chunks for ch in c.get("choices", []) if "role" in ch.get("delta", {})),
        "finishes": sum(1 for c in chunks for ch in c.get("choices", []) if ch.get("finish_reason")),
        "done": sum(1 for _, data in events if data == "[DONE]"),
        "errors": [c["error"] for c in chunks if "error" in c],
        "usage": [c["usage"] for c in chunks if c.get("usage")],
    }


def messages_stream(gateway, model: str) -> dict:
    body = {"model": model, "max_tokens": 100, "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    events = sse_events(post(gateway, "/messages", body, **{"anthropic-version": "2023-06-01"}))
    names = [name for name, _ in events]
    datas = [json.loads(data) for _, data in events]
    return {
        "text": "".join(d["delta"].get("text", "") for d in datas if d.get("type") == "content_block_delta"),
        "starts": names.count("message_start"),
        "stops": names.count("message_stop"),
        "errors": names.count("error"),
        "blocks": [d["index"] for d in datas if d.get("type") == "content_block_start"],
        "usage": [d["usage"] for d in datas if d.get("type") == "message_delta"],
    }


def responses_stream(gateway, model: str) -> dict:
    events = sse_events(post(gateway, "/responses", {"model": model, "input": "hello", "stream": True}))
    names = [name for name, _ in events]
    datas = [json.loads(data) for _, data in events]
    return {
        "text": "".join(d.get("delta", "") for d in datas if d.get("type") == "response.output_text.delta"),
        "created": names.count("response.created"),
        "completed": names.count("response.completed"),
        "errors": sum(1 for n in names if n in ("error", "response.failed")),
        "sequence": [d.get("sequence_number") for d in datas],
    }


def request_lines(gateway, model: str) -> list[str]:
    return [line for line in gateway.log().splitlines() if " request request_id=" in line and f"model={model} " in line]


def test_a_cut_chat_stream_is_resumed_on_another_upstream_and_the_client_sees_one_whole_stream(stack):
    mock, gateway = stack
    expected = chat_stream(gateway, "r-good")["text"]
    got = chat_stream(gateway, "r-chat", stream_options={"include_usage": True})
    assert got["text"] == expected and len(expected.split()) == CHUNKS
    assert len(got["ids"]) == 1 and got["roles"] == 1 and got["finishes"] == 1 and got["done"] == 1
    assert got["errors"] == []
    [usage] = got["usage"]  # one usage, adding up the attempts that reported one (the cut one reported none)
    assert 0 < usage["completion_tokens"] < CHUNKS
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    time.sleep(0.3)
    line = request_lines(gateway, "r-chat")[-1]
    assert "resumed=1 resume=stream_broken" in line and "outcome=ok" in line
    assert "attempts=2 " in line  # the part that broke and the continuation, each once


def test_the_continuation_request_carries_the_partial_text_as_the_assistant_turn(stack):
    mock, gateway = stack
    requests.post(f"{mock.url}/_mock/reset", timeout=5)
    got = chat_stream(gateway, "r-continue")
    assert got["errors"] == [] and got["done"] == 1
    first, continuation = [r["body"] for r in mock_stats(mock)["recent"] if r["path"] == "/v1/chat/completions"][-2:]
    partial = continuation["messages"][-1]
    assert continuation["messages"][:-1] == first["messages"]
    assert partial["role"] == "assistant" and got["text"].startswith(partial["content"]) and partial["content"]
    assert continuation["continue_final_message"] is True and continuation["add_generation_prompt"] is False
    assert "continue_final_message" not in first


@pytest.mark.parametrize("model, good", [("r-claude", "r-claude-good"), ("r-chat", "r-good")])
def test_a_messages_client_gets_one_message_whether_native_or_translated(stack, model, good):
    mock, gateway = stack
    expected = messages_stream(gateway, good)
    got = messages_stream(gateway, model)
    assert got["text"] == expected["text"] and got["text"]
    assert (got["starts"], got["stops"], got["errors"]) == (1, 1, 0)
    assert got["blocks"] == [0]  # the continuation's text went on in the open block
    assert got["usage"][-1]["output_tokens"] > 0


def test_a_chat_client_on_an_anthropic_upstream_is_resumed(stack):
    mock, gateway = stack
    expected = chat_stream(gateway, "r-claude-good")["text"]
    got = chat_stream(gateway, "r-claude")
    assert got["text"] == expected and (got["roles"], got["finishes"], got["done"]) == (1, 1, 1)
    assert len(got["ids"]) == 1 and got["errors"] == []


def test_a_responses_client_translated_onto_chat_is_resumed(stack):
    mock, gateway = stack
    expected = responses_stream(gateway, "r-good")["text"]
    got = responses_stream(gateway, "r-chat")
    assert got["text"] == expected and (got["created"], got["completed"], got["errors"]) == (1, 1, 0)
    numbers = [n for n in got["sequence"] if n is not None]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))


@pytest.mark.parametrize("model, reason", [("r-errors", "error_event"), ("r-stall", "idle_timeout")])
def test_an_error_event_or_a_stall_mid_stream_is_resumed_too(stack, model, reason):
    mock, gateway = stack
    expected = chat_stream(gateway, "r-good")["text"]
    got = chat_stream(gateway, model)
    assert got["text"] == expected and got["errors"] == [] and got["done"] == 1
    time.sleep(0.3)
    assert f"resume={reason}" in request_lines(gateway, model)[-1]


def test_without_resume_the_break_ends_the_stream_with_its_error_event(stack):
    mock, gateway = stack
    got = chat_stream(gateway, "r-off")
    assert got["errors"] and got["errors"][0]["code"] == "upstream_stream_error"
    assert got["done"] == 1 and got["text"]  # the part that came, then the error, then [DONE]
    time.sleep(0.3)
    assert "resumed=" not in request_lines(gateway, "r-off")[-1]


def test_max_resumes_reached_ends_the_stream_with_its_error_event(stack):
    """max_resumes = 1: the continuation (on cutter-2) is cut too, and the stream ends with the error event."""
    mock, gateway = stack
    got = chat_stream(gateway, "r-twice")
    assert got["errors"] and got["errors"][-1]["code"] == "upstream_stream_error" and got["done"] == 1
    assert len(got["ids"]) == 1 and got["roles"] == 1
    time.sleep(0.3)
    assert "resumed=1 resume=stream_broken" in request_lines(gateway, "r-twice")[-1]


def test_a_client_that_leaves_while_a_continuation_is_sought_cancels_it(stack):
    """The continuation's token is slow to its first event (4 s): the client hangs up during the wait; the gateway
    closes the continuation (the mock sees that stream aborted when it wakes up) and it never completes."""
    mock, gateway = stack
    requests.post(f"{mock.url}/_mock/reset", timeout=5)
    body = {"model": "r-slow-continuation", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    response = post(gateway, "/chat/completions", body)
    lines = response.iter_lines()
    seen = [next(lines) for _ in range(6)]  # the cut attempt's events (and blank lines)
    assert any(b"data:" in line for line in seen)
    time.sleep(1.0)  # the cut happened, the continuation is waiting for its first event
    response.close()
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and mock_stats(mock)["streams_aborted"] < 1:
        time.sleep(0.1)
    stats = mock_stats(mock)
    assert stats["streams_aborted"] >= 1 and stats["streams_completed"] == 0
    time.sleep(0.5)
    assert "outcome=client_disconnect" in request_lines(gateway, "r-slow-continuation")[-1]


def test_no_secret_reaches_the_log(stack):
    mock, gateway = stack
    log = gateway.log()
    for token in ("cut3-resume-token-0001", "ok-resume-token-000001", "cut3-claude-token-00001"):
        assert token not in log
    assert re.search(r"resumed=1", log)


def test_a_resumed_request_holds_one_slot_and_counts_once(stack):
    """max_parallel = 1, rpm = 2: while the continuation is sought (4 s) the key's one slot stays taken; the resumed
    request counts one request, so exactly one more fits in the minute."""
    mock, gateway = stack
    body = {"name": f"resume-slots-{time.time_ns()}", "max_parallel": 1, "rpm": 2}
    created = requests.post(f"{gateway.url}/admin/api/keys", json=body, headers=AUTH, timeout=20)
    assert created.status_code == 201, created.text
    key = {"Authorization": f"Bearer {created.json()['key']}"}
    chat = {"model": "r-slow-continuation", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    url = f"{gateway.url}/v1/chat/completions"
    stream = requests.post(url, json=chat, headers=key, stream=True, timeout=30)
    assert stream.status_code == 200
    time.sleep(1.0)  # cut after 3 events; the continuation waits for its slow first event
    busy = requests.post(
        f"{gateway.url}/v1/chat/completions", json={**chat, "model": "r-good"}, headers=key, timeout=30
    )
    assert busy.status_code == 429 and "parallel" in busy.text
    text = "".join(
        json.loads(data)["choices"][0]["delta"].get("content") or ""
        for _, data in sse_events(stream) if data != "[DONE]" and json.loads(data).get("choices")
    )  # fmt: skip
    assert len(text.split()) == CHUNKS
    again = requests.post(
        f"{gateway.url}/v1/chat/completions", json={**chat, "model": "r-good"}, headers=key, timeout=30
    )
    assert again.status_code == 200
    again.close()
    third = requests.post(
        f"{gateway.url}/v1/chat/completions", json={**chat, "model": "r-good"}, headers=key, timeout=30
    )
    assert third.status_code == 429 and "rate" in third.text.lower()
