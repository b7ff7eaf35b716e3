"""The Anthropic wire and the Messages dialect: relays (pure), headers, config, and errors in the Anthropic shape."""

from __future__ import annotations

import json

import pytest

from app.config import ConfigError, UpstreamConfig, parse_config
from app.dialects.anthropic_chat import ChatToMessagesStream
from app.dialects.anthropic_messages import MESSAGES, MessagesFromChatRelay, _with_query, estimate_tokens
from app.dialects.anthropic_wire import ANTHROPIC, AnthropicRelay, message_usage
from app.dialects.base import ChainRelay, Verdict
from app.dialects.chat_anthropic import MessagesToChatStream
from app.dialects.chat_on_anthropic import ChatFromMessagesRelay
from app.dialects.openai_chat import chat_usage
from app.errors import ApiError, StreamBroken
from app.services import sse
from app.services.headers import build_upstream_headers
from tests.conftest import BASE, make_config


def ev(kind: str, **data) -> bytes:
    return sse.encode({"type": kind, **data}, kind)


START = ev("message_start", message={"id": "msg_1", "type": "message", "role": "assistant", "content": [],
                                     "model": "m", "usage": {"input_tokens": 10, "cache_read_input_tokens": 4,
                                                             "output_tokens": 1}})  # fmt: skip
NATIVE = [
    START,
    ev("content_block_start", index=0, content_block={"type": "text", "text": ""}),
    ev("ping"),
    ev("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hi"}),
    ev("content_block_stop", index=0),
    ev("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 7}),
    ev("message_stop"),
]


@pytest.mark.parametrize(
    ("raw", "verdict"),
    [
        (b": comment\n\n", Verdict.WAIT),
        (ev("ping"), Verdict.WAIT),
        (START, Verdict.ACCEPT),
        (ev("error", error={"type": "overloaded_error", "message": "busy"}), Verdict.ERROR),
        (b'data: {"type": "error", "error": {"type": "api_error"}}\n\n', Verdict.ERROR),
        (ev("message_stop"), Verdict.EMPTY),
    ],
)
def test_the_first_event_verdict_of_an_anthropic_upstream(raw, verdict):
    assert ANTHROPIC.verdict(raw) is verdict


def test_a_native_stream_passes_through_and_counts_usage_in_real_tokens():
    relay = AnthropicRelay()
    assert [out for raw in NATIVE for out in relay.feed(raw)] == NATIVE
    assert relay.end() == ()
    assert relay.usage == {"prompt_tokens": 14, "completion_tokens": 7, "total_tokens": 21, "cached_tokens": 4}


def test_a_native_stream_cut_short_is_broken_and_ends_with_an_error_event():
    relay = AnthropicRelay()
    for raw in NATIVE[:4]:
        relay.feed(raw)
    with pytest.raises(StreamBroken):
        relay.end()
    [error] = relay.fail("upstream_idle_timeout", "No event.")
    event = sse.parse(error)
    assert event.name == "error" and event.json()["error"]["type"] == "api_error"
    assert "upstream_idle_timeout" in event.json()["error"]["message"]


@pytest.mark.parametrize(
    ("usage", "counts"),
    [
        ({"input_tokens": 3, "output_tokens": 2}, {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}),
        ({"input_tokens": 3, "output_tokens": 2, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 1},
         {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11, "cached_tokens": 1}),
        ({"input_tokens": True, "output_tokens": "2"}, {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}),
        (None, None),
    ],
)  # fmt: skip
def test_message_usage(usage, counts):
    assert message_usage(usage) == counts


@pytest.mark.parametrize(
    ("status", "kind"),
    [(400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
     (404, "not_found_error"), (413, "request_too_large"), (429, "rate_limit_error"), (502, "api_error"),
     (503, "overloaded_error"), (504, "api_error")],
)  # fmt: skip
def test_sluices_errors_in_the_anthropic_shape(status, kind):
    assert MESSAGES.error_body(ApiError(status, "why")) == {"type": "error", "error": {"type": kind, "message": "why"}}


def chat_stream(*texts: str, done: bool = True) -> list[bytes]:
    chunks = [{"choices": [{"index": 0, "delta": {"content": t}, "finish_reason": None}]} for t in texts]
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})
    return [sse.encode(c) for c in chunks] + ([b"data: [DONE]\n\n"] if done else [])


def test_a_translated_messages_stream_ends_with_message_stop_or_an_error_event():
    request = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    done = MessagesFromChatRelay(ChatToMessagesStream(request, message_id="msg_t"))
    names = [sse.parse(out).name for raw in chat_stream("He", "llo") for out in done.feed(raw)]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"] and done.end() == ()
    assert done.usage == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    cut = MessagesFromChatRelay(ChatToMessagesStream(request, message_id="msg_u"))
    for raw in chat_stream("He", done=False)[:1]:
        cut.feed(raw)
    with pytest.raises(StreamBroken):
        cut.end()
    assert sse.parse(cut.fail("upstream_stream_error", "cut")[-1]).name == "error"


def test_a_chat_client_on_an_anthropic_upstream_gets_chat_chunks_and_done():
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True,
               "stream_options": {"include_usage": True}}  # fmt: skip
    relay = ChatFromMessagesRelay(MessagesToChatStream(request, completion_id="c", created=1), chat_usage)
    out = [chunk for raw in NATIVE for chunk in relay.feed(raw)]
    assert out[-1] == b"data: [DONE]\n\n" and relay.done and relay.end() == ()
    text = "".join(json.loads(c[6:])["choices"][0]["delta"].get("content") or "" for c in out[:-1]
                   if json.loads(c[6:])["choices"])  # fmt: skip
    assert text == "Hi" and relay.usage["total_tokens"] == 21


def test_a_chain_of_two_translations_feeds_the_first_into_the_second():
    first = ChatFromMessagesRelay(MessagesToChatStream({"model": "m", "stream": True}, completion_id="c", created=1),
                                  chat_usage)  # fmt: skip
    second = MessagesFromChatRelay(ChatToMessagesStream({"model": "m", "max_tokens": 5}, message_id="msg_c"))
    chain = ChainRelay(first, second)
    names = [sse.parse(out).name for raw in NATIVE for out in chain.feed(raw)]
    assert names[0] == "message_start" and names[-1] == "message_stop" and chain.done and chain.end() == []


def anthropic_upstream(**extra) -> UpstreamConfig:
    return UpstreamConfig(**{"name": "claude", "base_url": BASE, "tokens": ("sk-ant-1",), "api": "anthropic", **extra})


@pytest.mark.parametrize("streaming", [True, False])
def test_anthropic_upstreams_get_x_api_key_the_version_and_the_beta_header(streaming):
    client = {"anthropic-beta": "tools-2024", "OpenAI-Beta": "assistants=v2", "Authorization": "Bearer client"}
    headers = build_upstream_headers(anthropic_upstream(anthropic_version="2024-01-01"), "sk-ant-1",
                                     streaming=streaming, client_headers=client, request_id="r1")  # fmt: skip
    assert headers["x-api-key"] == "sk-ant-1" and headers["anthropic-version"] == "2024-01-01"
    assert headers["anthropic-beta"] == "tools-2024" and "OpenAI-Beta" not in headers
    assert "Authorization" not in headers and headers["User-Agent"].startswith("sluice/")
    assert headers["Accept"] == ("text/event-stream" if streaming else "*/*")
    openai = build_upstream_headers(UpstreamConfig(name="o", base_url=BASE), "tok", streaming=False,
                                    client_headers=client, request_id="r1")  # fmt: skip
    assert "anthropic-beta" not in openai and openai["Authorization"] == "Bearer tok"


@pytest.mark.parametrize(
    ("extra", "problem"),
    [({"api": "gemini"}, "must be one of"), ({"anthropic_version": "bad\nversion"}, "CR, LF"),
     ({"headers": {"anthropic-version": "x"}}, "anthropic_version")],
)  # fmt: skip
def test_bad_anthropic_settings_stop_start_up(extra, problem):
    raw = {"upstreams": [{"name": "c", "base_url": "http://x/v1", **extra}]}
    with pytest.raises(ConfigError, match=problem):
        parse_config(raw, source="t.toml", env={})


def test_count_tokens_estimate_is_a_quarter_of_the_characters():
    payload = {"system": "s", "messages": [{"role": "user", "content": "abcd" * 10}]}
    text = json.dumps(["s", payload["messages"], None], ensure_ascii=False)
    assert estimate_tokens(payload) == -(-len(text) // 4)


@pytest.mark.parametrize(
    ("query", "path"),
    [("", "/messages"), ("beta=true", "/messages?beta=true"), ("a=b&c=d", "/messages?a=b&c=d"),
     ("x=<script>", "/messages"), ("a=b\r\nHost: evil", "/messages")],
)  # fmt: skip
def test_only_a_plain_query_string_is_kept(query, path):
    assert _with_query("/messages", query) == path


@pytest.fixture
def claude_client(make_app):
    return make_app(make_config(anthropic_upstream(models=("claude-*",)))).test_client()


KEY = {"x-api-key": "sk-test-master-key-0123456789"}
HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("headers", "body", "status", "kind"),
    [
        ({}, {"model": "claude-x", "max_tokens": 5, "messages": []}, 401, "authentication_error"),
        ({"x-api-key": "sk-test-master-key-0123456789"}, {"model": "claude-x", "messages": []}, 400,
         "invalid_request_error"),
        (KEY, {"model": "gpt", "max_tokens": 5, "messages": HI}, 404,
         "not_found_error"),
        ({"x-api-key": "sk-test-master-key-0123456789"}, {"model": "claude-x", "max_tokens": 5,
         "messages": ["x" * 20000]}, 413, "request_too_large"),
    ],
)  # fmt: skip
def test_every_error_on_the_messages_route_is_anthropic_shaped(claude_client, headers, body, status, kind):
    reply = claude_client.post("/v1/messages", json=body, headers=headers)
    assert reply.status_code == status
    assert reply.get_json() == {
        "type": "error",
        "error": {"type": kind, "message": reply.get_json()["error"]["message"]},
    }
    assert reply.headers["request-id"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/messages", 405),
        ("GET", "/api/v1/messages/count_tokens", 405),
        ("POST", "/v1/messages/batches", 404),
    ],
)
def test_routing_errors_under_the_messages_routes_are_anthropic_shaped_too(claude_client, method, path, status):
    reply = claude_client.open(path, method=method, headers=KEY)
    assert reply.status_code == status and reply.get_json()["type"] == "error" and reply.headers["request-id"]


def test_an_empty_authorization_header_does_not_hide_x_api_key(claude_client, upstream):
    upstream.add("POST", f"{BASE}/messages", json={"type": "message", "content": [], "usage": {}})
    reply = claude_client.post("/v1/messages", json={"model": "claude-x", "max_tokens": 5, "messages": HI},
                               headers={**KEY, "Authorization": ""})  # fmt: skip
    assert reply.status_code == 200


def test_a_long_anthropic_beta_list_is_forwarded_whole():
    features = ",".join(f"feature-{i}-2025-01-01" for i in range(20))  # over 400 characters, as Claude Code's grow
    headers = build_upstream_headers(anthropic_upstream(), "k", streaming=True, client_headers={"anthropic-beta":
                                     features}, request_id="r")  # fmt: skip
    assert len(features) > 256 and headers["anthropic-beta"] == features


def test_an_upstream_overloaded_on_every_token_is_an_overloaded_error(make_app, upstream):
    client = make_app(make_config(anthropic_upstream(models=("claude-*",), tokens=("a1", "a2")))).test_client()
    busy = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    upstream.add("POST", f"{BASE}/messages", status=529, json=busy)
    reply = client.post("/v1/messages", json={"model": "claude-x", "max_tokens": 5, "messages": HI}, headers=KEY)
    assert reply.status_code == 503 and reply.get_json()["error"]["type"] == "overloaded_error"
    assert reply.headers["Retry-After"] and len(upstream.calls) == 2


@pytest.mark.parametrize(
    "answer",
    [{"choices": [{"index": 0, "message": {"role": "assistant", "content": True}, "finish_reason": ["x"]}]},
     {"choices": "nope"}],
)  # fmt: skip
def test_a_malformed_chat_answer_is_a_502_never_a_500(make_app, upstream, answer):
    chat = UpstreamConfig(name="chat", base_url=BASE, tokens=("c1",), models=("claude-*",))
    client = make_app(make_config(chat)).test_client()
    upstream.add("POST", f"{BASE}/chat/completions", json=answer)
    reply = client.post("/v1/messages", json={"model": "claude-x", "max_tokens": 5, "messages": HI}, headers=KEY)
    assert reply.status_code in (200, 502) and reply.get_json()["type"] in ("message", "error")


def test_a_malformed_upstream_event_ends_the_stream_with_an_error_event(make_app, upstream):
    chat = UpstreamConfig(name="chat", base_url=BASE, tokens=("c1",), models=("claude-*",))
    client = make_app(make_config(chat)).test_client()
    weird = (
        'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'
        'data: {"choices":[{"index":{"x":1},"delta":{"tool_calls":[{"index":{"a":1}}]},"finish_reason":[1]}]}\n\n'
    )
    upstream.add("POST", f"{BASE}/chat/completions", body=weird, headers={"Content-Type": "text/event-stream"})
    body = {"model": "claude-x", "max_tokens": 5, "stream": True, "messages": HI}
    events = [sse.parse(raw) for raw in sse.split(client.post("/v1/messages", json=body, headers=KEY).get_data())[0]]
    assert events[0].name == "message_start" and events[-1].name in ("error", "message_stop")
