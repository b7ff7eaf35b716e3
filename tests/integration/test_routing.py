"""Model aliases through gunicorn (2 workers) and the mock: strategies, error classes, the echoed name.

One mock serves every upstream; which target answered is read from the mock's per-model counts
(`/_mock/stats` `models`), and per-model latency is set with `POST /_mock/models`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.integration.conftest import MASTER_KEY, mock_stats, start_gateway, start_mock, upstream_toml

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
ALIASES = """
[[models]]
name = "split"
strategy = "weighted"
targets = [{ upstream = "a", model = "w-heavy", weight = 3 }, { upstream = "b", model = "w-light", weight = 1 }]

[[models]]
name = "busy"
strategy = "least_busy"
targets = [{ upstream = "a", model = "lb-slow" }, { upstream = "b", model = "lb-fast" }]

[[models]]
name = "quick"
strategy = "latency"
targets = [{ upstream = "a", model = "lat-x" }, { upstream = "b", model = "lat-y" }]

[[models]]
name = "ctx"
targets = [{ upstream = "a", model = "ctx-small" }]
context_fallbacks = ["ctx-big"]

[[models]]
name = "safe"
targets = [{ upstream = "a", model = "refuser" }, { upstream = "b", model = "never" }]

[[models]]
name = "echo"
targets = [{ upstream = "a", model = "echo-target" }]

[[models]]
name = "echo-claude"
targets = [{ upstream = "c", model = "claude-target" }]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("routing")
    mock = start_mock(tmp, "--delay", "0.001", "--chunks", "3")
    config = (
        "[gateway]\nmax_body_bytes = 65536\n\n"
        + upstream_toml("a", mock.url, ["rt-a-token-00000001", "rt-a-token-00000002"], ["*"])
        + upstream_toml("b", mock.url, ["rt-b-token-00000001"], ["*"])
        + upstream_toml("c", mock.url, ["rt-c-token-00000001"], ["claude-*"], api="anthropic")
        + ALIASES
    )
    gateway = start_gateway(tmp, config, workers=2)
    yield mock, gateway
    gateway.stop()
    mock.stop()


def model_options(mock, options: dict) -> None:
    requests.post(f"{mock.url}/_mock/models", json=options, timeout=5).raise_for_status()


def chat(gateway, model: str, **extra) -> requests.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}], **extra}
    return requests.post(f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH, timeout=30)


def served(mock, send, count: int, threads: int = 4) -> Counter:
    """Send `count` requests (`send()` each, `threads` at a time); the mock's per-model counts they added."""
    before = Counter(mock_stats(mock)["models"])
    with ThreadPoolExecutor(threads) as pool:
        statuses = list(pool.map(lambda _: send().status_code, range(count)))
    assert statuses == [200] * count
    return Counter(mock_stats(mock)["models"]) - before


def test_weighted_split_follows_the_weights(stack):
    mock, gateway = stack
    counts = served(mock, lambda: chat(gateway, "split"), 400, threads=8)
    assert counts["w-heavy"] + counts["w-light"] == 400
    assert abs(counts["w-heavy"] / 400 - 0.75) < 0.08  # 3 standard deviations of 400 draws


def test_least_busy_sends_most_to_the_target_that_answers_fast(stack):
    mock, gateway = stack
    model_options(mock, {"lb-slow": {"first_delay": 0.3}})
    try:
        counts = served(mock, lambda: chat(gateway, "busy"), 60, threads=8)
    finally:
        model_options(mock, {})
    assert counts["lb-fast"] > 2 * counts["lb-slow"]


def test_latency_leaves_a_slow_target_and_returns_when_it_recovers(stack):
    mock, gateway = stack

    def batches_until(winner: str, max_batches: int) -> int:
        for batch in range(1, max_batches + 1):
            if served(mock, lambda: chat(gateway, "quick"), 10)[winner] >= 8:
                return batch
        pytest.fail(f"{winner} never took 8 of 10 requests")

    try:
        model_options(mock, {"lat-x": {"first_delay": 0.2}})
        batches_until("lat-y", 6)  # x slowed down: y takes the traffic
        model_options(mock, {"lat-y": {"first_delay": 0.2}})
        batches_until("lat-x", 10)  # x recovered (exploration measured it again) and y slowed down
    finally:
        model_options(mock, {})


def test_context_length_moves_to_the_context_fallback(stack):
    mock, gateway = stack
    model_options(mock, {"ctx-small": {"context_window": 3}})
    try:
        before = Counter(mock_stats(mock)["models"])
        resp = chat(gateway, "ctx")
        counts = Counter(mock_stats(mock)["models"]) - before
    finally:
        model_options(mock, {})
    assert resp.status_code == 200 and resp.json()["model"] == "ctx"
    assert counts == {"ctx-small": 1, "ctx-big": 1}  # not the other token of ctx-small


def test_a_content_policy_refusal_is_not_retried(stack):
    mock, gateway = stack
    model_options(mock, {"refuser": {"refuse": True}})
    try:
        before = Counter(mock_stats(mock)["models"])
        resp = chat(gateway, "safe")
        counts = Counter(mock_stats(mock)["models"]) - before
    finally:
        model_options(mock, {})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "content_policy_violation"
    assert counts == {"refuser": 1}


def answer(gateway, path: str, body: dict, stream: bool) -> str:
    headers = {**AUTH, "x-api-key": MASTER_KEY, "anthropic-version": "2023-06-01"}
    resp = requests.post(f"{gateway.url}{path}", json={**body, "stream": stream}, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.text


@pytest.mark.parametrize("streamed", [True, False])
@pytest.mark.parametrize("alias", ["echo", "echo-claude"])
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/responses", {"input": "hi"}),
        ("/v1/messages", {"max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}),
    ],
)
def test_answers_name_the_alias(stack, alias, path, body, streamed):
    """Every model member names the alias, whatever the upstream names (the mock echoes the target exactly; a
    real provider's dated snapshot is tests/unit/test_aliases.py's): checked by member, not by an expected echo."""
    _, gateway = stack
    text = answer(gateway, path, {"model": alias, **body}, streamed)
    models = [json.loads(m) for m in _model_members(text)]
    assert models and set(models) == {alias}, text[:600]
    assert "-target" not in text


def _model_members(text: str) -> list[str]:
    """Every `"model": "<name>"` member's quoted name in an event stream or a JSON body."""
    return re.findall(r'"model"\s*:\s*("(?:[^"\\]|\\.)*")', text)


def test_aliases_are_listed(stack):
    _, gateway = stack
    data = requests.get(f"{gateway.url}/v1/models", headers=AUTH, timeout=10).json()["data"]
    listed = {m["id"]: m["owned_by"] for m in data}
    assert {name: listed.get(name) for name in ("split", "busy", "echo")} == dict.fromkeys(
        ("split", "busy", "echo"), "sluice"
    )
