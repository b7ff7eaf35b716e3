"""The API surface: auth, validation, errors, models, aliases, response headers."""

from __future__ import annotations

import io
import json

import pytest
import responses

from app.api.validation import read_body
from app.dialects.openai_chat import CHAT
from app.errors import ApiError
from tests.conftest import BASE, MASTER_KEY, TOKENS, chat

OK = {"id": "x", "object": "chat.completion", "choices": [], "usage": {"total_tokens": 3}}


def assert_openai_error(resp, status, code=None, param=None):
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    error = resp.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key-000000000"}, {"Authorization": f"Basic {MASTER_KEY}"}],
)
def test_missing_or_wrong_key_is_401(client, headers):
    resp = client.post("/v1/chat/completions", json=chat(), headers=headers)
    assert_openai_error(resp, 401)


def test_no_master_key_configured_means_every_request_is_401(upstream, make_app):
    app = make_app(master_key=None)
    resp = app.test_client().post("/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer anything"})
    assert_openai_error(resp, 401, "invalid_api_key")


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'"text"', None, "JSON object"),
        (b"", None, "empty"),
        (b'{"model": "m", "messages": [{"content": "\xff"}]}', None, "UTF-8"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model", "model"),
        (json.dumps({"model": 42, "messages": [{}]}).encode(), "model", "string"),
        (json.dumps({"model": "", "messages": [{}]}).encode(), "model", "empty"),
        (json.dumps({"model": "m"}).encode(), "messages", "messages"),
        (json.dumps({"model": "m", "messages": []}).encode(), "messages", "empty"),
        (json.dumps({"model": "m", "messages": "hi"}).encode(), "messages", "array"),
        (json.dumps({"model": "m", "messages": [{}], "stream": "yes"}).encode(), "stream", "boolean"),
        (json.dumps({"model": "m", "messages": [{}], "max_tokens": "9"}).encode(), "max_tokens", "integer"),
        (json.dumps({"model": "m", "messages": [{}], "temperature": True}).encode(), "temperature", "number"),
        (json.dumps({"model": "m", "messages": [{}], "stream_options": 1}).encode(), "stream_options", "object"),
        (b'{"model": "m", "messages": [{}], "x": ' + b"[" * 70 + b"]" * 70 + b"}", None, "nested"),
        (b"[" * 2000 + b"]" * 2000, None, "nested"),
        (b'{"model": "m", "messages": [{}], "n": ' + b"1" * 5000 + b"}", None, "not valid JSON"),
        (b'{"model": "m", "messages": [{}], "temperature": NaN}', None, "NaN"),
        (b'{"model": "m", "messages": [{}], "temperature": -Infinity}', None, "Infinity"),
    ],
)
def test_bad_chat_bodies_are_400(client, auth, upstream, body, param, fragment):
    resp = client.post("/v1/chat/completions", data=body, headers=auth | {"Content-Type": "application/json"})
    error = assert_openai_error(resp, 400, param=param)
    assert error["type"] == "invalid_request_error"
    assert fragment in error["message"]
    assert len(upstream.calls) == 0


def test_embeddings_need_input_and_cannot_stream(client, auth):
    assert_openai_error(client.post("/v1/embeddings", json={"model": "e"}, headers=auth), 400, param="input")
    resp = client.post("/v1/embeddings", json={"model": "e", "input": "x", "stream": True}, headers=auth)
    assert_openai_error(resp, 400, param="stream")


def test_missing_content_type_is_read_as_json(client, auth, upstream):
    upstream.add(responses.POST, f"{BASE}/chat/completions", json=OK)
    resp = client.post("/v1/chat/completions", data=json.dumps(chat()), headers=auth)
    assert resp.status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_non_json_content_type_is_415(client, auth, content_type):
    resp = client.post("/v1/chat/completions", data=json.dumps(chat()), headers=auth | {"Content-Type": content_type})
    error = assert_openai_error(resp, 415)
    assert "application/json" in error["message"]


def test_body_over_the_limit_is_413(client, auth, upstream):
    big = json.dumps(chat(padding="x" * 20000))
    resp = client.post("/v1/chat/completions", data=big, headers=auth | {"Content-Type": "application/json"})
    assert_openai_error(resp, 413, "request_too_large")
    assert len(upstream.calls) == 0


def test_read_body_refuses_an_unbounded_stream_past_the_limit():
    class Endless(io.RawIOBase):
        reads = 0

        def read(self, size=-1):
            self.reads += 1
            return b"x" * size

    stream = Endless()
    with pytest.raises(ApiError) as info:
        read_body(stream, None, "application/json", 100_000, CHAT)
    assert info.value.status == 413
    assert stream.reads < 5  # stopped right after the limit, not reading "all" of it


def test_read_body_turns_a_broken_body_into_400():
    class Broken(io.RawIOBase):
        def read(self, size=-1):
            raise OSError("chunk size line is not hex")

    with pytest.raises(ApiError) as info:
        read_body(Broken(), None, None, 1000, CHAT)
    assert info.value.status == 400


def test_read_body_refuses_a_declared_length_without_reading():
    stream = io.BytesIO(b"")
    with pytest.raises(ApiError):
        read_body(stream, 10**9, None, 1000, CHAT)


def test_unknown_path_and_wrong_method(client, auth):
    assert_openai_error(client.get("/v1/nope", headers=auth), 404, "unknown_url")
    assert_openai_error(client.get("/nope"), 404)
    resp = client.get("/v1/chat/completions", headers=auth)
    assert_openai_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]


def test_unknown_model_is_404(upstream, auth, make_app):
    from app.config import UpstreamConfig
    from tests.conftest import make_config

    config = make_config(UpstreamConfig(name="p", base_url=BASE, tokens=TOKENS, models=("gpt-*",)))
    client = make_app(config).test_client()
    resp = client.post("/v1/chat/completions", json=chat() | {"model": "claude-9"}, headers=auth)
    assert_openai_error(resp, 404, "model_not_found", param="model")


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
def test_endpoints_and_aliases_proxy(client, auth, upstream, prefix):
    upstream.add(responses.POST, f"{BASE}/chat/completions", json=OK)
    upstream.add(responses.POST, f"{BASE}/completions", json=OK)
    upstream.add(responses.POST, f"{BASE}/embeddings", json={"object": "list", "data": []})
    assert client.post(f"{prefix}/chat/completions", json=chat(), headers=auth).get_json() == OK
    assert client.post(f"{prefix}/completions", json={"model": "m", "prompt": "p"}, headers=auth).get_json() == OK
    resp = client.post(f"{prefix}/embeddings", json={"model": "m", "input": "x"}, headers=auth)
    assert resp.get_json() == {"object": "list", "data": []}


def test_body_is_forwarded_verbatim(client, auth, upstream):
    upstream.add(responses.POST, f"{BASE}/chat/completions", json=OK)
    raw = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"vendor_extra":{"k":[1,2]}}'
    client.post("/v1/chat/completions", data=raw, headers=auth | {"Content-Type": "application/json"})
    assert upstream.calls[0].request.body == raw


def test_response_headers_to_the_client(client, auth, upstream):
    upstream.add(
        responses.POST,
        f"{BASE}/chat/completions",
        json=OK,
        headers={"Set-Cookie": "edge=1", "x-ratelimit-remaining-requests": "3", "openai-processing-ms": "9"},
    )
    resp = client.post("/v1/chat/completions", json=chat(), headers=auth | {"X-Request-ID": "my-id.1"})
    assert "Set-Cookie" not in resp.headers
    assert "x-ratelimit-remaining-requests" not in resp.headers
    assert resp.headers["openai-processing-ms"] == "9"
    assert resp.headers["X-Request-ID"] == "my-id.1"
    assert upstream.calls[0].request.headers["X-Request-ID"] == "my-id.1"


def test_invalid_request_id_is_replaced(client, auth, upstream):
    upstream.add(responses.POST, f"{BASE}/chat/completions", json=OK)
    resp = client.post("/v1/chat/completions", json=chat(), headers=auth | {"X-Request-ID": "bad id;"})
    assert resp.headers["X-Request-ID"].startswith("req_")
    assert upstream.calls[0].request.headers["X-Request-ID"] == resp.headers["X-Request-ID"]


def test_client_credentials_never_reach_the_upstream(client, auth, upstream):
    upstream.add(responses.POST, f"{BASE}/chat/completions", json=OK)
    client.post("/v1/chat/completions", json=chat(), headers=auth | {"Cookie": "sid=1", "OpenAI-Beta": "v2"})
    sent = upstream.calls[0].request.headers
    assert sent["Authorization"] == f"Bearer {TOKENS[0]}"
    assert "Cookie" not in sent
    assert sent["OpenAI-Beta"] == "v2"


def test_models_lists_literals_and_matching_upstream_ids(upstream, auth, make_app):
    from app.config import UpstreamConfig
    from tests.conftest import make_config

    config = make_config(
        UpstreamConfig(name="a", base_url=BASE, tokens=TOKENS, models=("gpt-*", "fixed-model")),
        UpstreamConfig(name="b", base_url="http://other.test/v1", tokens=(), models=("local-llama",)),
    )
    remote = {"data": [{"id": "gpt-4o", "owned_by": "oa"}, {"id": "dall-e"}, {"id": "gpt-mini"}]}
    upstream.add(responses.GET, f"{BASE}/models", json=remote)
    client = make_app(config).test_client()
    for prefix in ("/v1", "/api/v1"):
        data = client.get(f"{prefix}/models", headers=auth).get_json()
        assert data["object"] == "list"
        assert [m["id"] for m in data["data"]] == ["fixed-model", "gpt-4o", "gpt-mini", "local-llama"]
    assert len([c for c in upstream.calls if c.request.url.endswith("/models")]) == 1  # cached
    assert client.get("/v1/models/gpt-4o", headers=auth).get_json()["owned_by"] == "oa"
    assert_openai_error(client.get("/v1/models/dall-e", headers=auth), 404, "model_not_found")
    assert_openai_error(client.get("/v1/models"), 401)


def test_health_and_readiness(client, app):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    pool = app.extensions["sluice"].pool
    for token, _ in pool.candidates("primary"):
        pool.report(token, status=401, ok=False, cooldown=600, now=__import__("time").time())
    resp = client.get("/readyz")
    assert resp.status_code == 503


def test_strict_edge_needs_the_header_function(client, auth, upstream, monkeypatch):
    """Bypassing build_upstream_headers (a naive proxy) gets the edge's 403; with it, 200."""

    def edge(request):
        ok = "text/event-stream" in request.headers.get("Accept", "") and request.headers.get("User-Agent")
        if not ok:
            return 403, {"Content-Type": "text/html"}, "<html>Forbidden</html>"
        return 200, {"Content-Type": "text/event-stream"}, "data: {}\n\ndata: [DONE]\n\n"

    upstream.add_callback(responses.POST, f"{BASE}/chat/completions", callback=edge)
    assert client.post("/v1/chat/completions", json=chat(stream=True), headers=auth).status_code == 200

    import app.services.transport as upstream_module

    naive = lambda upstream, token, **_: {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}  # noqa: E731
    monkeypatch.setattr(upstream_module, "build_upstream_headers", naive)
    resp = client.post("/v1/chat/completions", json=chat(stream=True), headers=auth)
    assert_openai_error(resp, 502, "upstream_auth_failed")


@pytest.mark.parametrize(("trusted", "expected"), [(0, "127.0.0.1"), (1, "203.0.113.9")])
def test_forwarded_for_is_used_only_within_trusted_proxies(upstream, logs, trusted, expected, make_app):
    client = make_app(trusted_proxies=trusted).test_client()
    client.get("/v1/nope", headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.9"})
    assert f"client={expected} " in logs.getvalue()
