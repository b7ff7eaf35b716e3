"""Clients nobody here wrote, against Sluice's /v1/responses: the Vercel AI SDK and the Codex CLI (issue 11, part 5).

Each runs three ways: at the mock directly (the control: the client and the mock agree), through gunicorn to an
upstream with `responses = "native"` (passed through), and to one with `responses = "translate"` and
`drop_builtin_tools = true` (turned into chat completions and back). Both upstreams are the same paced mock.
"""

from __future__ import annotations

import statistics

import pytest
import requests

from tests.integration.conftest import MASTER_KEY, start_gateway, start_mock, upstream_toml
from tests.integration.node_clients import Run, codex_answer, codex_exec, vercel_stream

pytestmark = pytest.mark.integration

DELAY = 0.05  # the mock's pause between deltas: what "arrives one by one" is measured against
CHUNKS = 30  # deltas per answer: a stream of 1.5 s, longer than a busy client's start
TOKENS = ["node-token-000000000001"]
TARGETS = ["mock", "native", "translated"]
MODELS = {"mock": "mock-gpt", "native": "mock-native", "translated": "mock-translated"}
ANSWER = "Hello from the Sluice mock upstream!"  # how the mock's reply starts, in either API
BUILTIN_TOOLS = {"web_search", "namespace"}  # what Codex sends besides functions (a chat upstream has neither)


@pytest.fixture(scope="module")
def paced_mock(tmp_path_factory):
    server = start_mock(tmp_path_factory.mktemp("node-mock"), "--delay", str(DELAY), "--chunks", str(CHUNKS))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def responses_gateway(tmp_path_factory, paced_mock):
    config = (
        upstream_toml("native", paced_mock.url, TOKENS, [MODELS["native"]], responses="native")
        + upstream_toml("translated", paced_mock.url, TOKENS, [MODELS["translated"]], responses="translate")
        + "drop_builtin_tools = true\n"  # TOML's lower-case true; upstream_toml would write Python's True
    )
    server = start_gateway(tmp_path_factory.mktemp("node-gateway"), config, workers=2)
    yield server
    server.stop()


@pytest.fixture(params=TARGETS)
def target(request, paced_mock) -> tuple[str, str, str]:
    """(base URL, key, model) for the mock itself or one of the gateway's two upstreams; the mock's log is cleared."""
    requests.post(f"{paced_mock.url}/_mock/reset", timeout=5)
    if request.param == "mock":
        return f"{paced_mock.url}/v1", "sk-any", MODELS["mock"]
    gateway = request.getfixturevalue("responses_gateway")
    return f"{gateway.url}/v1", MASTER_KEY, MODELS[request.param]


def recent(mock) -> list[dict]:
    return requests.get(f"{mock.url}/_mock/stats", timeout=5).json()["recent"]


def test_vercel_stream_text(target):
    run = vercel_stream("text", *target).check()
    deltas = run.of_type("text")
    [result] = run.of_type("result")
    assert result["text"].startswith(ANSWER)
    assert "".join(d["delta"] for d in deltas) == result["text"]
    assert result["finishReason"] == "stop"
    assert result["usage"]["inputTokens"] > 0 and result["usage"]["outputTokens"] > 0
    assert_paced([d["t"] for d in deltas], result)


def assert_paced(arrivals: list[float], result: dict) -> None:
    """The deltas arrived one by one, DELAY apart as the mock made them, not in a burst at the end."""
    assert len(arrivals) >= CHUNKS // 2, arrivals
    gaps = [(b - a) / 1000 for a, b in zip(arrivals, arrivals[1:], strict=False)]
    # Buffering squeezes the gaps to nothing. So does a client that is busy when the first deltas come
    # (node compiling the SDK on a loaded machine: seen up to a second), so the second half is judged.
    tail = gaps[len(gaps) // 2 :]
    assert statistics.median(tail) >= DELAY * 0.4, gaps
    assert sum(tail) >= DELAY * len(tail) * 0.5, gaps
    assert result["ended"] >= arrivals[-1], result


def _ms(*parts: list[float]) -> list[float]:
    return [1.7e12 + t for part in parts for t in part]


@pytest.mark.parametrize(
    ("arrivals", "paced"),
    [
        (_ms([i * 50 for i in range(30)]), True),
        (_ms([i * 50 + (9 if i % 2 else -9) for i in range(30)]), True),  # jitter
        (_ms([i * 80 for i in range(30)]), True),  # a slow machine
        (_ms([i for i in range(14)], [14 + i * 50 for i in range(16)]), True),  # a busy client catching up
        (_ms([i for i in range(30)]), False),  # a burst: buffered until the end
        (_ms([0], [1000 + i for i in range(29)]), False),  # the first one, then the rest at once
        (_ms([i * 50 for i in range(16)], [800 + i for i in range(14)]), False),  # buffered from the middle on
        (_ms([0, 50, 100]), False),  # too few to tell
    ],
)
def test_assert_paced_tells_a_stream_from_a_burst(arrivals, paced):
    if paced:
        assert_paced(arrivals, {"ended": arrivals[-1] + 5})
    else:
        with pytest.raises(AssertionError):
            assert_paced(arrivals, {"ended": arrivals[-1] + 5})


def test_vercel_stream_tool_call(target):
    run = vercel_stream("tool", *target).check()
    [result] = run.of_type("result")
    assert result["finishReason"] == "tool-calls"
    [call] = result["toolCalls"]
    assert call["toolName"] == "get_weather"
    # Both mocks make arguments that fit the zod schema; translated, they come back through the translator
    assert call["input"] == {"city": "Paris", "unit": "celsius"} and not call["invalid"]
    assert call["toolCallId"]
    [event] = run.of_type("tool-call")  # the streamed part, as the result lists it
    assert {key: event[key] for key in call} == call


def test_codex_exec(target, paced_mock, tmp_path):
    run = codex_exec(tmp_path, *target, prompt="Say hello.").check()
    assert codex_answer(run).startswith(ANSWER)
    [done] = run.of_type("turn.completed")
    assert done["usage"]["input_tokens"] > 0 and done["usage"]["output_tokens"] > 0
    assert not run.of_type("turn.failed")
    [seen] = [r for r in recent(paced_mock) if r["path"] in ("/v1/responses", "/v1/chat/completions")]
    assert seen["headers"]["Authorization"] == f"Bearer {TOKENS[0] if target[1] == MASTER_KEY else 'sk-any'}"
    if seen["path"] == "/v1/responses":  # Codex's own body, unchanged: these are what made it big
        body = seen["body"]
        assert body["store"] is False and body["include"] == ["reasoning.encrypted_content"]
        assert body["prompt_cache_key"] and body["stream"] is True
        assert BUILTIN_TOOLS <= {tool["type"] for tool in body["tools"]}
    else:  # translated: the built-in tools were dropped, the functions went in chat's nested form
        tools = seen["body"].get("tools", [])
        assert tools and all(tool["type"] == "function" and "name" in tool["function"] for tool in tools)


def test_codex_fails_loudly_and_fast(paced_mock, tmp_path):
    """A refused request ends `codex exec` at once with an error (retries are off), not after a backoff."""
    run = codex_exec(tmp_path, f"{paced_mock.url}/v1", "revoked-node", "mock-gpt", prompt="Say hello.", timeout=30)
    assert run.returncode != 0
    [failed] = run.of_type("turn.failed")
    assert "403" in failed["error"]["message"]


@pytest.mark.parametrize("key", ["revoked-node", "garbage-node", "empty-node", "errorfirst-node"])
def test_vercel_script_fails_loudly(paced_mock, key):
    """The script exits non-zero, with the error on stderr, on a refusal or a stream with no terminal event."""
    run = vercel_stream("text", f"{paced_mock.url}/v1", key, "mock-gpt", timeout=30)
    assert run.returncode != 0 and "vercel_stream:" in run.stderr
    assert not run.of_type("result")


def test_run_check_shows_the_client_output():
    with pytest.raises(AssertionError, match="boom"):
        Run(1, [], "Error: boom").check()
