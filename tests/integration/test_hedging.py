"""Hedged first event (issue 14 part 1) through gunicorn (2 gevent workers) and the mock.

Each hedged alias tries a slow target first (`ordered`): its one token's first event comes after 3 s
(`slowfirst3000-`); hedge_after = 0.3 starts a hedge on the fast target, whose answer wins. The slow
stream is closed at once; the mock counts it aborted when it wakes up and finds the gateway gone.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest
import requests

from tests.integration.conftest import MASTER_KEY, mock_stats, start_gateway, start_mock, upstream_toml
from tests.integration.test_metrics import METRICS_TOKEN, scrape, value

SLOW_SECONDS = 3.0
ALIASES = """
[[models]]
name = "hedged"
targets = [{ upstream = "slow", model = "m-slow" }, { upstream = "fast", model = "m-fast" }]

[[models]]
name = "patient"
hedge_after = 20
targets = [{ upstream = "slow", model = "m-slow" }, { upstream = "fast", model = "m-fast" }]

[[models]]
name = "eager"
hedge_after = 0.3
targets = [{ upstream = "plain-slow", model = "m-slow" }, { upstream = "fast", model = "m-fast" }]

[[models]]
name = "claude-hedged"
targets = [{ upstream = "c-slow", model = "c-slow" }, { upstream = "c-fast", model = "c-fast" }]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hedging")
    mock = start_mock(tmp, "--delay", "0.001", "--chunks", "3")
    config = (
        "[gateway]\nmax_body_bytes = 65536\n\n"
        + upstream_toml("slow", mock.url, ["slowfirst3000-a-000001"], ["*"], hedge_after=0.3)
        + upstream_toml("plain-slow", mock.url, ["slowfirst3000-b-000001"], ["*"])  # no hedging of its own
        + upstream_toml("fast", mock.url, ["fast-token-00000001"], ["*"])
        + upstream_toml("c-slow", mock.url, ["slowfirst3000-c-000001"], ["*"], api="anthropic", hedge_after=0.3)
        + upstream_toml("c-fast", mock.url, ["anth-fast-0000001"], ["*"], api="anthropic")
        + ALIASES
    )
    gateway = start_gateway(tmp, config, workers=2, SLUICE_METRICS_TOKEN=METRICS_TOKEN)
    yield mock, gateway
    gateway.stop()
    mock.stop()


def first_event(url: str, body: dict, headers: dict) -> tuple[float, str, str]:
    """(seconds to the first `data:` line, the whole body, the request id) of one streamed request."""
    request_id = f"req_hedge_{uuid.uuid4().hex[:12]}"
    started = time.monotonic()
    first = None
    with requests.post(url, json=body, headers={**headers, "X-Request-ID": request_id}, stream=True, timeout=30) as r:
        assert r.status_code == 200, r.text
        lines = []
        for line in r.iter_lines():
            if first is None and line.startswith(b"data:"):
                first = time.monotonic() - started
            lines.append(line.decode())
    assert first is not None
    return first, "\n".join(lines), request_id


def log_line(gateway, request_id: str) -> str:
    """The request's finished log line (bounded wait: a stream's line is written at its end)."""
    for _ in range(50):
        found = re.search(rf"request request_id={request_id} .*", gateway.log())
        if found:
            return found.group(0)
        time.sleep(0.1)
    raise AssertionError(f"no log line for {request_id}")


def aborted_after(mock, before: int) -> bool:
    """Whether the mock counted another aborted stream (the slow one wakes after SLOW_SECONDS)."""
    for _ in range(int((SLOW_SECONDS + 2) / 0.1)):
        if mock_stats(mock)["streams_aborted"] > before:
            return True
        time.sleep(0.1)
    return False


CHAT_AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
MESSAGES_AUTH = {"x-api-key": MASTER_KEY, "anthropic-version": "2023-06-01"}


def test_a_streamed_chat_hedges_past_the_slow_token_and_the_slow_stream_is_closed(stack):
    mock, gateway = stack
    aborted = mock_stats(mock)["streams_aborted"]
    body = {"model": "hedged", "stream": True, "messages": [{"role": "user", "content": "hello there"}]}
    seconds, text, request_id = first_event(f"{gateway.url}/v1/chat/completions", body, CHAT_AUTH)
    assert seconds < 1.5, text
    assert text.rstrip().endswith("data: [DONE]")
    line = log_line(gateway, request_id)
    assert "hedges=1 hedge_won=1" in line and "status=200" in line
    assert aborted_after(mock, aborted)


def test_a_plain_chat_hedges_too(stack):
    _, gateway = stack
    request_id = f"req_hedge_{uuid.uuid4().hex[:12]}"
    body = {"model": "hedged", "messages": [{"role": "user", "content": "hello there"}]}
    started = time.monotonic()
    resp = requests.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers={**CHAT_AUTH, "X-Request-ID": request_id}, timeout=30
    )
    assert resp.status_code == 200 and resp.json()["model"] == "hedged"
    assert time.monotonic() - started < 1.5
    assert "hedges=1 hedge_won=1" in log_line(gateway, request_id)


def test_a_native_messages_stream_hedges(stack):
    mock, gateway = stack
    aborted = mock_stats(mock)["streams_aborted"]
    body = {"model": "claude-hedged", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "hello there"}]}  # fmt: skip
    seconds, text, request_id = first_event(f"{gateway.url}/v1/messages", body, MESSAGES_AUTH)
    assert seconds < 1.5, text
    assert "message_stop" in text
    assert "hedges=1 hedge_won=1" in log_line(gateway, request_id)
    assert aborted_after(mock, aborted)


@pytest.mark.parametrize(("alias", "hedged"), [("patient", False), ("eager", True)])
def test_an_alias_hedge_after_overrides_the_upstreams(stack, alias, hedged):
    _, gateway = stack
    body = {"model": alias, "stream": True, "messages": [{"role": "user", "content": "hello there"}]}
    seconds, _, request_id = first_event(f"{gateway.url}/v1/chat/completions", body, CHAT_AUTH)
    line = log_line(gateway, request_id)
    if hedged:  # the upstream has no hedging; the alias's 0.3 s applies
        assert seconds < 1.5 and "hedges=1 hedge_won=1" in line
    else:  # the upstream's 0.3 s is overridden by the alias's 20 s: the slow token answers
        assert seconds >= SLOW_SECONDS - 0.2 and "hedges=" not in line


def test_metrics_count_hedges(stack):
    _, gateway = stack
    before = scrape(gateway)
    body = {"model": "hedged", "stream": True, "messages": [{"role": "user", "content": "hello there"}]}
    first_event(f"{gateway.url}/v1/chat/completions", body, CHAT_AUTH)
    after = scrape(gateway)
    for result in ("started", "won"):
        grew = value(after, "sluice_hedges_total", upstream="fast", result=result) - value(
            before, "sluice_hedges_total", upstream="fast", result=result
        )
        assert grew == 1, result
    assert value(after, "sluice_hedges_total", upstream="slow") == 0  # the slow target was never a hedge


def test_a_hedged_request_holds_one_slot_and_counts_once(stack):
    """max_parallel = 1, rpm = 2: two attempts run at the upstream for one hedged request, which still holds one
    slot (a second request meanwhile is refused) and counts one request (one more fits in the minute)."""
    mock, gateway = stack
    body = {"name": f"hedge-slots-{uuid.uuid4().hex[:8]}", "max_parallel": 1, "rpm": 2}
    created = requests.post(f"{gateway.url}/admin/api/keys", json=body, headers=CHAT_AUTH, timeout=20)
    assert created.status_code == 201, created.text
    key = {"Authorization": f"Bearer {created.json()['key']}"}
    url = f"{gateway.url}/v1/chat/completions"
    chat = {"model": "m-fast", "stream": True, "messages": [{"role": "user", "content": "hello there"}]}
    requests.post(f"{mock.url}/_mock/reset", timeout=5)
    hedged_body = {**chat, "model": "hedged", "mock": {"chunks": 40, "delay": 0.05}}  # the winner streams for 2 s
    with requests.post(url, json=hedged_body, headers=key, stream=True, timeout=30) as hedged:
        assert hedged.status_code == 200
        time.sleep(0.6)  # the hedge has started beside the slow attempt
        assert mock_stats(mock)["requests"] == 2  # two upstream attempts ...
        busy = requests.post(url, json=chat, headers=key, timeout=30)
        assert busy.status_code == 429 and "parallel" in busy.text  # ... one slot
        assert hedged.text.rstrip().endswith("data: [DONE]")
    again = requests.post(url, json=chat, headers=key, timeout=30)
    assert again.status_code == 200, again.text
    third = requests.post(url, json=chat, headers=key, timeout=30)
    assert third.status_code == 429 and "rate" in third.text.lower()
