"""Fuzz the running gateway against docs/openapi.yaml (schemathesis strategies, hypothesis).

Bounded: a fixed number of generated requests per operation, valid and invalid ones. Checks:
the app never answers 5xx except the upstream-failure statuses (502/503/504) its operation
documents, every error it answers is OpenAI-shaped (Anthropic-shaped, with `request-id`, on the
Messages routes), and a Responses or Messages event stream ends with its terminal event (never
chat's `[DONE]`). Half the Responses requests go to a native upstream (a model named `native-...`),
half are translated onto chat; likewise half the Messages ones go to an `api = "anthropic"` upstream
(`claude-...`), and half of those authenticate with `x-api-key`; half the stored-response calls
name a response that exists. Headers that frame the HTTP message (Transfer-Encoding, ...) are
never generated: they are no operation's parameters (see `without_framing`).
"""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from app.dialects.anthropic_wire import ERROR_TYPES as ANTHROPIC_ERROR_TYPES
from tests.integration.conftest import MASTER_KEY, ROOT, start_gateway, upstream_toml

pytestmark = pytest.mark.integration
SPEC = ROOT / "docs" / "openapi.yaml"
UPSTREAM_STATUSES = {502, 503, 504}  # answers about the upstream, not crashes (when the operation documents them)
RESPONSES_END = ("response.completed", "response.incomplete", "response.failed")
MESSAGES_END = ("message_stop", "error")
MESSAGES = ("/v1/messages", "/v1/messages/count_tokens")
ANTHROPIC_TYPES = {*ANTHROPIC_ERROR_TYPES.values(), "api_error", "invalid_request_error"}
# Hypothesis draws strings from the constants of the code it runs with (app/bodylimit.py's "Transfer-Encoding"),
# and negative mode adds arbitrary headers: an empty Transfer-Encoding then got gunicorn's own 501 (now a 400, and
# tests/integration/conftest.py's MALFORMED_REQUESTS has it).
FRAMING = frozenset({"transfer-encoding", "content-length", "expect", "connection", "host", "upgrade", "te"})
EXAMPLES = 13  # 36 operations; 15 when there were 34 (the run stays near 30 s)


@pytest.fixture(scope="module")
def fuzzed_gateway(tmp_path_factory, mock):
    """A gateway of its own: fuzzing the admin API changes keys, tokens and upstream overrides."""
    config = (
        upstream_toml("native", mock.url, ["good-token-0002"], ["native-*"], responses="native")
        + upstream_toml("claude", mock.url, ["good-token-0003"], ["claude-*"], api="anthropic")
        + upstream_toml("main", mock.url, ["good-token-0001"], ["*"])
    )
    server = start_gateway(tmp_path_factory.mktemp("fuzz"), config)
    yield server
    server.stop()


def stored_response(url: str) -> str:
    """A new background response on the native upstream (so that cancel, too, can succeed)."""
    body = {"model": "native-fuzz", "input": "hello", "background": True}
    answer = requests.post(
        f"{url}/v1/responses", json=body, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["id"]


def strategy(operation, mode: GenerationMode, url: str):
    """The operation's cases; Responses and Messages ones half native, stored-response ones half about a real one."""
    cases = operation.as_strategy(generation_mode=mode).map(without_framing)
    if operation.path == "/v1/responses":
        return st.tuples(cases, st.booleans()).map(lambda pair: to_native(*pair))
    if operation.path in MESSAGES:
        return st.tuples(cases, st.booleans(), st.booleans()).map(lambda args: to_claude(*args))
    if "{response_id}" in operation.path:
        response_id = stored_response(url)
        return st.tuples(cases, st.booleans()).map(lambda pair: naming(*pair, response_id))
    return cases


def to_native(case, native: bool):
    if native and isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        case.body["model"] = "native-" + case.body["model"]
    return case


def without_framing(case):
    """The case without headers that frame the message (the HTTP server answers those itself: its own tests),
    and without the bundled mock's `mock` knobs (one could make the only token fail every later request)."""
    if hasattr(case.headers, "items"):  # a dict or a case-insensitive mapping
        case.headers = {k: v for k, v in case.headers.items() if k.lower() not in FRAMING}
    if isinstance(case.body, dict):
        case.body.pop("mock", None)
    return case


def to_claude(case, native: bool, by_x_api_key: bool):
    """Half to the Anthropic upstream (`claude-...`), half translated; half with the key as `x-api-key`."""
    if native and isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        case.body["model"] = "claude-" + case.body["model"]
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in ("authorization", "x-api-key")}
    if by_x_api_key:
        case.headers["x-api-key"] = ""  # a mark: check() sends the key this way
    return case


def naming(case, known: bool, response_id: str):
    if known and isinstance(case.path_parameters, dict):
        case.path_parameters["response_id"] = response_id
    return case


def auth(case, key: str) -> dict[str, str]:
    if case.operation.path in MESSAGES and "x-api-key" in (case.headers or {}):
        return {"x-api-key": key}
    return {"Authorization": f"Bearer {key}"}


def check(case, answered: set[str]) -> None:
    statuses = case.operation.definition.raw.get("responses", {})
    for key in (MASTER_KEY, "sk-wrong-fuzz-key-000000000"):
        response = case.call(headers={**auth(case, key), "Connection": "close"}, timeout=30)
        status = response.status_code
        where = f"{case.method} {case.formatted_path} {case.body!r:.300} -> {status}: {response.content[:300]!r}"
        documented = str(status) in statuses or "default" in statuses
        if key == MASTER_KEY and status < 300:
            answered.add(case.operation.label)
        assert status < 500 or (status in UPSTREAM_STATUSES and documented), where
        if case.operation.path in MESSAGES:
            check_messages(response, where)
        elif status >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, where
            assert isinstance(error["message"], str) and error["message"], where
        elif case.operation.path == "/v1/responses" and "event-stream" in response.headers.get("Content-Type", ""):
            lines = response.content.decode().splitlines()
            names = [line[len("event: ") :] for line in lines if line.startswith("event: ")]
            assert "data: [DONE]" not in lines and names and names[-1] in RESPONSES_END, where


def check_messages(response: requests.Response, where: str) -> None:
    """An answer on a Messages route: `request-id`, errors in the Anthropic shape, a stream ending as Messages end."""
    assert response.headers.get("request-id"), where
    if response.status_code >= 400:
        body = response.json()
        assert body["type"] == "error" and set(body) == {"type", "error"}, where
        assert body["error"]["type"] in ANTHROPIC_TYPES, where
        assert isinstance(body["error"]["message"], str) and body["error"]["message"], where
    elif "event-stream" in response.headers.get("Content-Type", ""):
        lines = response.content.decode().splitlines()
        names = [line[len("event: ") :] for line in lines if line.startswith("event: ")]
        assert "data: [DONE]" not in lines and names and names[-1] in MESSAGES_END, where


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_5xx_and_every_error_is_openai_shaped(fuzzed_gateway, mode):
    schema = schemathesis.openapi.from_path(str(SPEC))
    schema.config.update(base_url=fuzzed_gateway.url)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 36
    fuzzed, answered = 0, set()
    for operation in operations:

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=strategy(operation, mode, fuzzed_gateway.url))
        def fuzz(case) -> None:
            check(case, answered)

        try:
            fuzz()
            fuzzed += 1
        except Unsatisfiable:  # an operation with no inputs has no invalid variant to generate
            assert mode is GenerationMode.NEGATIVE
    assert fuzzed >= (len(operations) if mode is GenerationMode.POSITIVE else 25)
    if mode is GenerationMode.POSITIVE:  # valid requests reach the mock: each proxied operation answered once at least
        proxied = {o.label for o in operations if o.path.startswith("/v1/") and o.path != "/v1/models/{model}"}
        assert proxied <= answered, sorted(proxied - answered)
