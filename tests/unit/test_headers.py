"""build_upstream_headers and the response-header filter, exhaustively (they are pure)."""

from __future__ import annotations

import pytest

from app.config import DEFAULT_USER_AGENT, UpstreamConfig
from app.services.headers import build_upstream_headers, client_response_headers, resolve_request_id

UP = UpstreamConfig(name="u", base_url="http://x/v1", tokens=("t",))


def build(upstream=UP, token="secret-token-1234", *, streaming, client=None, request_id="rid-1"):  # noqa: S107
    return build_upstream_headers(
        upstream, token, streaming=streaming, client_headers=client or {}, request_id=request_id
    )


def test_streaming_request_headers():
    headers = build(streaming=True)
    assert headers == {
        "Authorization": "Bearer secret-token-1234",
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "Accept-Encoding": "identity",
        "User-Agent": DEFAULT_USER_AGENT,
        "X-Request-ID": "rid-1",
    }


def test_non_streaming_request_headers():
    headers = build(streaming=False)
    assert headers["Accept"] == "*/*"
    assert headers["Accept-Encoding"] == "gzip, deflate"
    assert headers["User-Agent"] == DEFAULT_USER_AGENT
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer secret-token-1234"


def test_user_agent_is_never_empty_nor_the_library_default():
    for streaming in (True, False):
        agent = build(streaming=streaming)["User-Agent"]
        assert agent.startswith("sluice/")
        assert "python-requests" not in agent


def test_configured_user_agent_and_extra_headers():
    up = UpstreamConfig(name="u", base_url="http://x/v1", user_agent="my-gw/1.0", headers={"X-Team": "research"})
    headers = build(up, streaming=True)
    assert headers["User-Agent"] == "my-gw/1.0"
    assert headers["X-Team"] == "research"


def test_tokenless_upstream_sends_no_authorization():
    assert "Authorization" not in build(token=None, streaming=True)


@pytest.mark.parametrize("streaming", [True, False])
def test_client_headers_only_allowlisted_ones_pass(streaming):
    client = {
        "Authorization": "Bearer client-key",
        "Cookie": "session=abc",
        "Host": "gateway.example",
        "Connection": "keep-alive, Upgrade",
        "Transfer-Encoding": "chunked",
        "Te": "trailers",
        "X-Forwarded-For": "1.2.3.4",
        "Openai-Beta": "assistants=v2",
        "X-Custom": "nope",
    }
    headers = build(streaming=streaming, client=client)
    assert headers["Authorization"] == "Bearer secret-token-1234"
    assert headers["OpenAI-Beta"] == "assistants=v2"
    lowered = {k.lower() for k in headers}
    for name in ("cookie", "host", "connection", "transfer-encoding", "te", "x-forwarded-for", "x-custom"):
        assert name not in lowered


def test_openai_beta_with_control_characters_is_dropped():
    assert "OpenAI-Beta" not in build(streaming=True, client={"OpenAI-Beta": "a\x01b"})


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("abc-123_x.y", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        (None, False),
        ("has space", False),
        ("semi;colon", False),
        ("new\nline", False),
    ],
)
def test_request_id_validation(given, kept):
    result = resolve_request_id(given, lambda: "generated")
    assert result == (given if kept else "generated")


def test_response_headers_drop_cookies_hop_by_hop_and_ratelimits():
    upstream = [
        ("Content-Type", "application/json"),
        ("Set-Cookie", "edge=1"),
        ("Connection", "keep-alive"),
        ("Transfer-Encoding", "chunked"),
        ("Keep-Alive", "timeout=5"),
        ("x-ratelimit-remaining-requests", "10"),
        ("x-ratelimit-limit-tokens", "1000"),
        ("Server", "edge"),
        ("openai-processing-ms", "12"),
    ]
    assert client_response_headers(upstream) == {"Content-Type": "application/json", "openai-processing-ms": "12"}
