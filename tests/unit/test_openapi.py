"""docs/openapi.yaml describes exactly the routes the app serves (aliases aside), and each dialect's body and answer.

Errors are documented in the shape the route writes them: OpenAI's, or on a `dialect_route` (the Anthropic
Messages routes) its dialect's, with the `request-id` header.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from schemathesis.specs.openapi.definitions import OPENAPI_30_VALIDATOR

from app.api import messages  # noqa: F401  (declares the Messages routes' error dialect)
from app.api.blueprint import ERROR_DIALECTS
from app.dialects import anthropic_messages, openai_chat, openai_media
from app.dialects.anthropic_wire import ERROR_TYPES
from app.dialects.base import Dialect
from app.dialects.openai_responses import DROPPED_TOOLS_HEADER, OPTIONAL_FIELDS, RESPONSES

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml").read_text())
ERROR_STATUSES = {"400", "401", "404", "413", "415", "429", "502", "503", "504"}
DIALECTS: list[Dialect] = [
    openai_chat.CHAT,
    openai_chat.COMPLETIONS,
    openai_chat.EMBEDDINGS,
    RESPONSES,
    *(d for d in vars(openai_media).values() if isinstance(d, openai_media.MediaDialect)),
    anthropic_messages.MESSAGES,
    anthropic_messages.COUNT_TOKENS,
]
# What a dialect requires besides `model` when it has no `required` table (the Messages ones check inline).
REQUIRED = {anthropic_messages.MESSAGES: {"max_tokens", "messages"}, anthropic_messages.COUNT_TOKENS: {"messages"}}
OPTIONAL = {RESPONSES: OPTIONAL_FIELDS, anthropic_messages.MESSAGES: anthropic_messages.OPTIONAL_FIELDS,
            anthropic_messages.COUNT_TOKENS: anthropic_messages.OPTIONAL_FIELDS}  # fmt: skip
ANTHROPIC_ROUTES = sorted(rule for rule in ERROR_DIALECTS if rule.startswith("/v1/"))
PROXIED = [
    (path, method)
    for path, ops in SPEC["paths"].items()
    if path.startswith("/v1/") and not path.startswith("/v1/models") and path not in ANTHROPIC_ROUTES
    for method in ops
    if method != "parameters"
]


def normalise(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", re.sub(r"<(?:[a-z]+:)?[^>]+>", "{}", path))


def deref(node: dict[str, Any]) -> dict[str, Any]:
    """The node a local `$ref` ('#/components/...') points at, or the node itself."""
    while "$ref" in node:
        target: Any = SPEC
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def test_every_route_is_documented_and_nothing_else(app):
    served = {
        (normalise(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if not rule.rule.startswith(("/api/v1", "/dashboard")) and rule.rule != "/"  # pages: docs/dashboard.md
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {
        (normalise(path), method) for path, ops in SPEC["paths"].items() for method in ops if method != "parameters"
    }
    assert served == documented


def test_the_spec_is_valid_openapi_3_0():
    """Against the OpenAPI 3.0 schema schemathesis bundles (a comma in a flow mapping's text makes a stray key)."""
    assert [str(error) for error in OPENAPI_30_VALIDATOR.iter_errors(SPEC)] == []


def test_error_schema_is_the_openai_shape():
    error = SPEC["components"]["schemas"]["ErrorResponse"]["properties"]["error"]
    assert error["required"] == ["message", "type", "param", "code"]


def test_anthropic_error_schema_is_the_anthropic_shape():
    """`{"type": "error", "error": {"type", "message"}}`, with every type Sluice writes."""
    schema = SPEC["components"]["schemas"]["AnthropicError"]
    assert schema["required"] == ["type", "error"] and schema["properties"]["type"]["enum"] == ["error"]
    error = schema["properties"]["error"]
    assert error["required"] == ["type", "message"]
    assert {*ERROR_TYPES.values(), "api_error", "invalid_request_error"} <= set(error["properties"]["type"]["enum"])


def test_the_anthropic_routes_are_the_messages_ones():
    assert ANTHROPIC_ROUTES == ["/v1/messages", "/v1/messages/count_tokens"]


@pytest.mark.parametrize("path", ANTHROPIC_ROUTES)
def test_messages_routes_document_every_answer_in_the_anthropic_shape(path):
    """Every error as an AnthropicError, every answer with `request-id`; never the OpenAI shape."""
    responses = SPEC["paths"][path]["post"]["responses"]
    assert ERROR_STATUSES <= set(responses)
    for status, response in responses.items():
        response = deref(response)
        assert deref(response["headers"]["request-id"])["schema"] == {"type": "string"}, status
        if status != "200":
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/AnthropicError"}


@pytest.mark.parametrize("path", ANTHROPIC_ROUTES)
def test_messages_routes_take_the_key_as_x_api_key_or_bearer(path):
    assert SPEC["paths"][path]["post"]["security"] == [{"apiKey": []}, {"bearer": []}]
    scheme = SPEC["components"]["securitySchemes"]["apiKey"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "x-api-key")


@pytest.mark.parametrize(("path", "method"), PROXIED)
def test_proxied_routes_document_every_error_in_the_openai_shape(path, method):
    responses = SPEC["paths"][path][method]["responses"]
    assert ERROR_STATUSES <= set(responses)
    for status in ERROR_STATUSES:
        schema = deref(responses[status])["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorResponse"}


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: f"{d.path}-{type(d).__name__}")
def test_each_dialect_body_is_documented(dialect):
    """The body's type is the one the dialect reads, with the fields it checks (and its upload, a file)."""
    content = SPEC["paths"]["/v1" + dialect.path]["post"]["requestBody"]["content"]
    media_type = "multipart/form-data" if dialect.multipart else "application/json"
    assert list(content) == [media_type]
    schema = deref(content[media_type]["schema"])
    assert {"model", *getattr(dialect, "required", REQUIRED.get(dialect, {}))} <= set(schema["required"])
    optional = OPTIONAL.get(dialect, getattr(dialect, "optional", {}))  # chat's table is shared
    assert set(optional) <= set(schema["properties"])
    upload = getattr(dialect, "upload", None)
    if upload is not None:
        assert upload in schema["required"]
        assert schema["properties"][upload] == {"type": "string", "format": "binary"}


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda d: f"{d.path}-{type(d).__name__}")
def test_each_dialect_answer_is_documented(dialect):
    """A dialect that streams documents text/event-stream; one that relays raw bytes (speech), binary audio/*."""
    answer = SPEC["paths"]["/v1" + dialect.path]["post"]["responses"]["200"]["content"]
    if dialect.can_stream:
        assert "text/event-stream" in answer
    if not dialect.sse:
        assert answer["audio/*"]["schema"] == {"type": "string", "format": "binary"}
    if not dialect.can_stream and dialect.sse:
        assert list(answer) in (["application/json"], ["application/json", "text/plain"])


def test_translated_responses_document_the_dropped_tools_header():
    answer = SPEC["paths"]["/v1/responses"]["post"]["responses"]["200"]
    assert answer["headers"][DROPPED_TOOLS_HEADER]["schema"] == {"type": "string"}
