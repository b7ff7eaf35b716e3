"""Fault injection over real sockets: gunicorn (gevent) + the mock upstream's fault modes.

Timeouts are short here (heartbeat 0.5 s, first byte 2 s, idle 1 s, deadline 6 s) so each
behaviour shows within seconds.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
import requests

from tests.integration.conftest import MASTER_KEY, mock_stats, start_gateway, start_mock, upstream_toml

pytestmark = pytest.mark.integration
MESSAGES = [{"role": "user", "content": "Hello"}]
AUTH = {"Authorization": f"Bearer {MASTER_KEY}", "Connection": "close"}
GATEWAY = """
[gateway]
max_attempts = 3
heartbeat_interval = 0.5
first_byte_timeout = 2
idle_timeout = 1
deadline = 6
"""
SCENARIOS = [
    ("slowfirst", ["slow-token-00000001", "good-token-00000002"], {}),
    ("stallhead", ["stallhead-token-0001", "good-token-00000003"], {}),
    ("errfirst", ["errorfirst-token-001", "good-token-00000004"], {}),
    ("empty", ["empty-token-00000001", "garbage-token-000001", "good-token-00000005"], {}),
    ("allslow", ["slow-token-00000006"], {}),
    ("allstall", ["stallhead-token-0011"], {}),
    ("dated", ["limiteddate-token-01", "good-token-00000007"], {}),
    ("broken", ["broken-token-0000001", "good-token-00000008"], {}),
    ("patient", ["good-token-00000009"], {"idle_timeout": 30}),
]


def config(mock_url: str, extra: str = "") -> str:
    parts = [GATEWAY + extra]
    for name, tokens, options in SCENARIOS:
        parts.append(upstream_toml(name, mock_url, tokens, [f"{name}-*"], **options))
    parts.append(upstream_toml("main", mock_url, ["good-token-00000010"], ["mock-*"]))
    return "\n".join(parts)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, mock):
    server = start_gateway(tmp_path_factory.mktemp("faults"), config(mock.url))
    yield server
    server.stop()


def stream(gateway, model: str, **mock_options) -> tuple[list[tuple[float, str]], float]:
    """(arrival time, line) for every non-empty line of a raw streamed answer, and the start time."""
    body = {"model": model, "messages": MESSAGES, "stream": True}
    if mock_options:
        body["mock"] = mock_options
    started = time.time()
    with requests.post(f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH, stream=True, timeout=30) as resp:
        assert resp.status_code == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        lines = [(time.time(), line) for line in resp.iter_lines(decode_unicode=True) if line]
    return lines, started


def data(lines) -> list[str]:
    return [line.removeprefix("data: ") for _, line in lines if line.startswith("data: ")]


def error_code(lines) -> str | None:
    for payload in data(lines):
        if payload.startswith("{") and "error" in json.loads(payload):
            return json.loads(payload)["error"]["code"]
    return None


def test_stall_before_first_event_sends_heartbeats_then_retries_on_another_token(faulty):
    lines, started = stream(faulty, "slowfirst-gpt")
    keepalives = [t for t, line in lines if line == ": keep-alive"]
    assert len(keepalives) >= 3  # every 0.5 s while the first token stalled for 2 s
    assert keepalives[0] - started < 1.5  # committed after one heartbeat interval, not at the end
    assert error_code(lines) is None and data(lines)[-1] == "[DONE]"
    assert json.loads(data(lines)[0])["object"] == "chat.completion.chunk"


@pytest.mark.parametrize("model", ["stallhead-gpt", "errfirst-gpt", "empty-gpt", "dated-gpt", "broken-gpt"])
def test_failures_before_the_first_event_are_retried_invisibly(faulty, model):
    lines, _ = stream(faulty, model)
    assert error_code(lines) is None
    payloads = data(lines)
    assert payloads[-1] == "[DONE]" and len(payloads) >= 2
    assert all(json.loads(p)["object"] == "chat.completion.chunk" for p in payloads[:-1])


def test_every_attempt_failing_after_the_commit_ends_with_the_error_event(faulty):
    lines, started = stream(faulty, "allslow-gpt")
    assert error_code(lines) == "upstream_first_byte_timeout"
    assert data(lines)[-1] == "[DONE]"
    assert lines[-1][0] - started < 5


def test_first_byte_timeout_before_the_commit_is_a_504_for_plain_requests(faulty):
    resp = requests.post(
        f"{faulty.url}/v1/chat/completions", json={"model": "allstall-gpt", "messages": MESSAGES}, headers=AUTH
    )
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "upstream_first_byte_timeout"


def test_idle_gap_mid_stream_ends_with_idle_timeout(faulty):
    lines, _ = stream(faulty, "mock-gpt", stall_after=2, stall=5, delay=0.05)
    assert len(data(lines)) == 2 + 2  # two chunks, the error event, [DONE]
    assert error_code(lines) == "upstream_idle_timeout" and data(lines)[-1] == "[DONE]"


def test_the_deadline_ends_a_long_stream(faulty):
    lines, started = stream(faulty, "patient-gpt", chunks=40, delay=0.5)
    assert error_code(lines) == "deadline_exceeded" and data(lines)[-1] == "[DONE]"
    assert 5.5 <= lines[-1][0] - started <= 8


def test_trickled_and_noisy_streams_arrive_as_whole_events(faulty):
    lines, _ = stream(faulty, "mock-gpt", trickle=True, chunks=5, delay=0.01)
    assert [json.loads(p)["mock_seq"] for p in data(lines)[:-1]] == [0, 1, 2, 3, 4]
    client = openai.OpenAI(base_url=f"{faulty.url}/v1", api_key=MASTER_KEY, max_retries=0)
    chunks = client.chat.completions.create(
        model="mock-gpt", messages=MESSAGES, stream=True, extra_body={"mock": {"noise": True, "chunks": 4}}
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).startswith("Hello")


def test_each_event_is_forwarded_as_it_is_produced(faulty):
    lines, _ = stream(faulty, "mock-gpt", chunks=6, delay=0.2)
    events = [
        (t, json.loads(p)) for t, p in ((t, line.removeprefix("data: ")) for t, line in lines) if p.startswith("{")
    ]
    for (arrived, _), (_, following) in zip(events, events[1:], strict=False):
        assert arrived < following["mock_ts"] + 0.05  # sent on before the next one existed


def test_drain_reads_to_the_end_for_usage_after_a_client_disconnect(tmp_path, mock, reset):
    gateway = start_gateway(tmp_path, config(mock.url, 'on_client_disconnect = "drain"\n'))
    try:
        body = {"model": "mock-gpt", "messages": MESSAGES, "stream": True, "mock": {"chunks": 20, "delay": 0.1}}
        with requests.post(f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH, stream=True) as resp:
            next(line for line in resp.iter_lines() if line)
        deadline = time.monotonic() + 10
        while mock_stats(mock)["streams_completed"] < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert mock_stats(mock)["streams_completed"] == 1 and mock_stats(mock)["streams_aborted"] == 0
        time.sleep(1.5)  # the usage writer's batch
        with sqlite3.connect(tmp_path / "data" / "sluice.db") as conn:
            outcome, tokens = conn.execute("SELECT outcome, total_tokens FROM usage").fetchone()
        assert outcome == "client_disconnect" and tokens > 0
    finally:
        gateway.stop()


def test_graceful_stop_ends_running_streams_with_the_error_event(tmp_path, mock):
    gateway = start_gateway(tmp_path, config(mock.url), SLUICE_GRACE_SECONDS="4")
    results: list = []

    def long_stream() -> None:
        results.append(stream(gateway, "patient-gpt", chunks=100, delay=0.05))

    thread = threading.Thread(target=long_stream)
    thread.start()
    time.sleep(1)
    gateway.process.send_signal(signal.SIGTERM)
    thread.join(timeout=15)
    assert gateway.process.wait(timeout=15) == 0
    lines, started = results[0]
    assert error_code(lines) == "server_shutdown" and data(lines)[-1] == "[DONE]"
    with sqlite3.connect(tmp_path / "data" / "sluice.db") as conn:
        assert conn.execute("SELECT outcome FROM usage").fetchall() == [("server_shutdown",)]


def _worker_fds(gateway) -> int:
    master = gateway.process.pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in children)


def test_aborted_streams_leak_nothing(tmp_path):
    """500 streams aborted by the client at random points, on a mock of their own."""
    mock = start_mock(tmp_path, "--delay", "0.02")
    faulty = start_gateway(tmp_path, upstream_toml("main", mock.url, ["good-token-00000001"], ["*"]))
    try:
        _abort_500_streams(faulty, mock)
    finally:
        faulty.stop()
        mock.stop()


def _abort_500_streams(faulty, mock) -> None:
    rng = random.Random(7)

    def abort_at_random(_: int) -> None:
        body = {"model": "mock-gpt", "messages": MESSAGES, "stream": True, "mock": {"chunks": 30, "delay": 0.02}}
        with requests.post(f"{faulty.url}/v1/chat/completions", json=body, headers=AUTH, stream=True) as resp:
            for count, _line in enumerate(resp.iter_lines()):
                if count >= rng.randrange(0, 40):
                    break

    # Warm up first: database connections, metric files and pools open lazily, up to their sizes.
    with ThreadPoolExecutor(25) as pool:
        list(pool.map(abort_at_random, range(50)))
    time.sleep(3.5)  # the background chores' first turns too (the load report every 1.5 s opens its gauge file)
    baseline = _worker_fds(faulty)
    requests.post(f"{mock.url}/_mock/reset", timeout=5)
    with ThreadPoolExecutor(25) as pool:
        list(pool.map(abort_at_random, range(500)))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        stats = mock_stats(mock)
        if stats["streams_completed"] + stats["streams_aborted"] == stats["streams_started"]:
            break
        time.sleep(0.2)
    stats = mock_stats(mock)
    assert stats["streams_started"] == 500
    assert stats["streams_completed"] + stats["streams_aborted"] == 500  # every upstream stream closed
    time.sleep(1)
    assert _worker_fds(faulty) <= baseline + 2
