"""Claude Code itself, headless (`claude -p`), against the mock and through Sluice's /v1/messages (issue 12, part 4).

Three targets: the mock directly (the control: Claude Code and the mock's Messages API agree), the gateway to an
`api = "openai"` upstream (translated to chat completions and back) and to an `api = "anthropic"` upstream (passed
through). Both upstreams are the same mock; the key goes as `x-api-key` or as `Authorization: Bearer`.

Claude Code's first request carries its environment in a mid-conversation `{"role": "system"}` turn. It sends the
request again without one only after a 400 whose message reads like the Messages API's own (the mock's
`messages.1.role: Input should be 'user' or 'assistant'`; its patterns also know `unknown variant 'system'` and
`role 'system' must precede/follow`); any other 400 ends the run. So a translating gateway carries the turn (as a
chat system message) or refuses it in those words.
"""

from __future__ import annotations

import pytest
import requests

from app.mock_chat import REPLY
from tests.integration.claude_code import VERSION, ProxyTrap, claude_print, claude_result
from tests.integration.conftest import MASTER_KEY, start_gateway, start_mock, upstream_toml

pytestmark = pytest.mark.integration

CHUNKS = len(REPLY.split(" "))  # the whole reply, one word per delta
ANSWER = "".join(f"{word} " for word in REPLY.split(" "))  # what the mock says, in either API
TOKENS = ["claude-token-000000000001"]
MODELS = {"mock": "mock-claude", "translated": "cc-translated", "native": "cc-native"}
PROMPT = "Say hello."  # no "weather": the mock answers with text, never a tool call


@pytest.fixture(scope="module")
def cc_mock(tmp_path_factory):
    server = start_mock(tmp_path_factory.mktemp("claude-mock"), "--chunks", str(CHUNKS), "--delay", "0.01")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cc_gateway(tmp_path_factory, cc_mock):
    config = upstream_toml("translated", cc_mock.url, TOKENS, [MODELS["translated"]], api="openai")
    config += upstream_toml("native", cc_mock.url, TOKENS, [MODELS["native"]], api="anthropic")
    server = start_gateway(tmp_path_factory.mktemp("claude-gateway"), config, workers=2)
    yield server
    server.stop()


@pytest.fixture(params=list(MODELS))
def target(request, cc_mock) -> tuple[str, str, str]:
    """(base URL, key, model) for the mock itself or one of the gateway's two upstreams; the mock's log is cleared."""
    requests.post(f"{cc_mock.url}/_mock/reset", timeout=5)
    if request.param == "mock":
        return cc_mock.url, "sk-ant-any", MODELS["mock"]
    return request.getfixturevalue("cc_gateway").url, MASTER_KEY, MODELS[request.param]


def recent(mock) -> list[dict]:
    return requests.get(f"{mock.url}/_mock/stats", timeout=5).json()["recent"]


@pytest.mark.parametrize("auth", ["x-api-key", "bearer"])
def test_claude_code_answers(target, auth, cc_mock, tmp_path):
    base_url, key, model = target
    run = claude_print(tmp_path, base_url, key, PROMPT, auth=auth, model=model).check()
    result = claude_result(run)
    assert result["subtype"] == "success" and not result["is_error"], result
    assert result["result"] == ANSWER
    assert list(result["modelUsage"]) == [model]
    assert result["usage"]["input_tokens"] > 0 and result["usage"]["output_tokens"] > 0
    seen = [r for r in recent(cc_mock) if r["path"] in ("/v1/messages", "/v1/chat/completions")]
    assert seen and all(r["body"]["model"] == model for r in seen)
    last = seen[-1]  # the one that was answered (an earlier one may have been refused: see below)
    if model == MODELS["translated"]:
        assert last["path"] == "/v1/chat/completions" and last["body"]["stream"] is True
        assert last["headers"]["Authorization"] == f"Bearer {TOKENS[0]}"
        assert last["body"]["tools"] and all(t["type"] == "function" for t in last["body"]["tools"])
    else:  # Claude Code's own request: only the key changes on the way through
        assert last["path"] == "/v1/messages" and last["body"]["stream"] is True
        sent = last["headers"].get("X-Api-Key") or last["headers"]["Authorization"].removeprefix("Bearer ")
        assert sent == (key if model == MODELS["mock"] else TOKENS[0])
        assert last["headers"]["Anthropic-Version"] == "2023-06-01"
        assert "claude-code-20250219" in last["headers"]["Anthropic-Beta"].split(",")


def test_claude_code_request(cc_mock, tmp_path):
    """What Claude Code sends (the gateway must carry all of it), and how it recovers from a refused system turn."""
    requests.post(f"{cc_mock.url}/_mock/reset", timeout=5)
    run = claude_print(tmp_path, cc_mock.url, "sk-ant-any", PROMPT).check()
    assert claude_result(run)["result"] == ANSWER
    seen = recent(cc_mock)
    assert {r["path"] for r in seen} == {"/v1/messages"}  # no count_tokens, no model list, no preflight
    first, last = seen[0], seen[-1]
    headers = last["headers"]
    assert headers["User-Agent"] == f"claude-cli/{VERSION} (external, sdk-cli)"
    assert headers["X-Api-Key"] == "sk-ant-any" and "Authorization" not in headers
    assert headers["Accept"] == "application/json"  # though it streams: a strict edge must not want event-stream
    assert headers["X-App"] == "cli" and headers["X-Claude-Code-Session-Id"]
    body = last["body"]
    assert {"model", "messages", "system", "tools", "metadata", "max_tokens", "thinking", "stream"} <= set(body)
    assert body["model"] == "claude-opus-5-5" and body["stream"] is True and body["thinking"]["type"] == "adaptive"
    assert all(block["type"] == "text" for block in body["system"])
    # Client tools only (no `type`, so no server tools such as web_search), one of them deferred
    assert {"Bash", "Read", "Edit", "Write"} <= {tool["name"] for tool in body["tools"]}
    assert all("type" not in tool and "input_schema" in tool for tool in body["tools"])
    # It first puts its environment in a mid-conversation `system` turn; the mock refuses that role with the
    # Messages API's own 400, and Claude Code sends the request again with the turn folded into the user message.
    assert "system" in [m["role"] for m in first["body"]["messages"]]
    assert {m["role"] for m in body["messages"]} == {"user"}
    assert len(seen) == 2


def test_claude_code_talks_only_to_the_base_url(cc_mock, tmp_path):
    """With the switches on, nothing goes anywhere but the base URL; without them it calls api.anthropic.com."""
    with ProxyTrap() as trap:
        run = claude_print(tmp_path / "quiet", cc_mock.url, "sk-ant-any", PROMPT, extra_env=trap.env)
    assert claude_result(run.check())["result"] == ANSWER
    assert trap.lines == []
    with ProxyTrap() as trap:  # the control: the trap does see what the switches stop
        run = claude_print(tmp_path / "chatty", cc_mock.url, "sk-ant-any", PROMPT, quiet=False, extra_env=trap.env)
    assert claude_result(run.check())["result"] == ANSWER
    assert trap.lines and all(line.startswith("CONNECT api.anthropic.com:443 ") for line in trap.lines)


@pytest.mark.parametrize(("where", "key", "status"), [("mock", "revoked-cc", 403), ("gateway", "sk-not-a-key", 401)])
def test_claude_code_fails_loudly(request, cc_mock, tmp_path, where, key, status):
    """A refused key ends the run at once (no retries), non-zero, with the status in its result."""
    base_url = cc_mock.url if where == "mock" else request.getfixturevalue("cc_gateway").url
    run = claude_print(tmp_path, base_url, key, PROMPT, model=MODELS["native"], timeout=45)
    result = claude_result(run)
    assert run.returncode != 0 and result["is_error"]
    assert result["api_error_status"] == status, result
