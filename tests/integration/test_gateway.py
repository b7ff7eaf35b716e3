"""The core gateway over real sockets: gunicorn + gevent, the mock upstream, the OpenAI SDK."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import openai
import pytest
import requests

from tests.integration.conftest import (
    MASTER_KEY,
    ROOT,
    mock_stats,
    start_gateway,
    upstream_toml,
)

pytestmark = pytest.mark.integration
MESSAGES = [{"role": "user", "content": "Hello"}]


def sdk(gateway, prefix="/v1", key=MASTER_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + prefix, api_key=key, max_retries=0, timeout=20)


def sse_events(resp: requests.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in resp.iter_lines(decode_unicode=True) if line]


def test_stream_through_a_strict_edge_succeeds_with_sluice_headers(gateway, edge, reset):
    stream = sdk(gateway).chat.completions.create(model="edge-gpt", messages=MESSAGES, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.startswith("Hello from the Sluice mock upstream!")
    seen = mock_stats(edge)["recent"][-1]["headers"]
    assert seen["Accept"] == "text/event-stream"
    assert seen["User-Agent"].startswith("sluice/")
    assert seen["Accept-Encoding"] == "identity"
    assert seen["Authorization"] == "Bearer edge-token-000000000001"


def test_the_same_stream_without_the_header_function_is_refused_by_the_edge(edge):
    """What a naive proxy sends (requests' defaults plus the token) gets the edge's 403 page."""
    body = {"model": "edge-gpt", "messages": MESSAGES, "stream": True}
    resp = requests.post(
        f"{edge.url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer edge-token-000000000001"}
    )
    assert resp.status_code == 403
    assert resp.headers["Content-Type"].startswith("text/html")


def test_the_edge_refusal_becomes_a_clear_error_through_sluice(gateway, edge):
    """A non-streaming request (Accept: */*) passes; the edge only polices streams."""
    reply = sdk(gateway).chat.completions.create(model="edge-gpt", messages=MESSAGES)
    assert reply.choices[0].message.content.startswith("Hello")


def test_revoked_first_token_is_retried_on_the_next(tmp_path, mock, reset):
    tokens = ["revoked-token-00000001", "good-token-0000000002"]
    gateway = start_gateway(tmp_path, upstream_toml("main", mock.url, tokens, ["*"]))
    try:
        stream = sdk(gateway).chat.completions.create(model="mock-gpt", messages=MESSAGES, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        used = [r["headers"]["Authorization"] for r in mock_stats(mock)["recent"]]
        assert used == [f"Bearer {tokens[0]}", f"Bearer {tokens[1]}"]
        assert "status=403 reason=http_403" in gateway.log()
    finally:
        gateway.stop()


def test_events_reach_the_client_as_they_are_produced(gateway):
    arrivals, produced = [], []
    stream = sdk(gateway).chat.completions.create(
        model="mock-gpt", messages=MESSAGES, stream=True, extra_body={"mock": {"delay": 0.2, "chunks": 6}}
    )
    for chunk in stream:
        arrivals.append(time.time())
        produced.append(chunk.model_extra["mock_ts"])
    assert len(arrivals) == 6
    # Each event reached the client before the mock had even produced the next one.
    for i in range(len(arrivals) - 1):
        assert arrivals[i] < produced[i + 1], f"event {i} was held back until event {i + 1} existed"
    assert arrivals[-1] - arrivals[0] >= 0.8  # spread out, not all at the end


def test_mid_stream_drop_ends_with_error_event_and_done(gateway):
    body = {"model": "mock-gpt", "messages": MESSAGES, "stream": True, "mock": {"drop_after": 3}}
    resp = requests.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {MASTER_KEY}"}, stream=True
    )
    assert resp.status_code == 200
    events = sse_events(resp)
    assert len(events) == 5
    assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:3])
    assert json.loads(events[3])["error"]["code"] == "upstream_stream_error"
    assert events[4] == "[DONE]"


def test_mid_stream_drop_is_an_error_for_the_sdk_not_a_silent_truncation(gateway):
    stream = sdk(gateway).chat.completions.create(
        model="mock-gpt", messages=MESSAGES, stream=True, extra_body={"mock": {"drop_after": 2}}
    )
    with pytest.raises(openai.APIError, match="broke mid-stream"):
        for _ in stream:
            pass


def test_client_disconnect_closes_the_upstream_stream(gateway, mock, reset):
    body = {"model": "mock-gpt", "messages": MESSAGES, "stream": True, "mock": {"chunks": 100, "delay": 0.1}}
    resp = requests.post(
        f"{gateway.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {MASTER_KEY}"}, stream=True
    )
    lines = resp.iter_lines()
    assert next(line for line in lines if line).startswith(b"data: ")
    resp.close()
    deadline = time.monotonic() + 10
    while mock_stats(mock)["streams_aborted"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    stats = mock_stats(mock)
    assert stats["streams_aborted"] == 1
    assert stats["streams_completed"] == 0
    assert "outcome=client_disconnect" in gateway.log()


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
def test_non_streaming_endpoints_with_the_sdk(gateway, prefix):
    client = sdk(gateway, prefix)
    reply = client.chat.completions.create(model="mock-gpt", messages=MESSAGES)
    assert reply.choices[0].message.content.startswith("Hello")
    assert reply.usage.total_tokens > 0
    legacy = client.completions.create(model="mock-gpt", prompt="Say hi")
    assert legacy.choices[0].text
    vectors = client.embeddings.create(model="mock-embed", input=["a", "b"])
    assert len(vectors.data) == 2
    ids = [m.id for m in client.models.list()]
    assert {"mock-gpt", "mock-embed"} <= set(ids)
    assert client.models.retrieve("mock-gpt").id == "mock-gpt"


def test_legacy_completions_stream(gateway):
    stream = sdk(gateway).completions.create(model="mock-gpt", prompt="Say hi", stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices).startswith("Hello")


def test_wrong_key_and_unknown_paths_are_openai_errors(gateway):
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, key="sk-not-the-key-000000000").chat.completions.create(model="mock-gpt", messages=MESSAGES)
    resp = requests.get(f"{gateway.url}/v1/does-not-exist")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "unknown_url"


def test_request_id_is_echoed_and_forwarded(gateway, mock, reset):
    resp = requests.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "mock-gpt", "messages": MESSAGES},
        headers={"Authorization": f"Bearer {MASTER_KEY}", "X-Request-ID": "trace-42", "Cookie": "sid=secret"},
    )
    assert resp.headers["X-Request-ID"] == "trace-42"
    seen = mock_stats(mock)["recent"][-1]["headers"]
    assert seen["X-Request-Id"] == "trace-42"
    assert "Cookie" not in seen
    assert seen["Authorization"].startswith("Bearer main-token-")


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_the_limit_is_413_with_gunicorn(gateway, chunked):
    payload = json.dumps({"model": "mock-gpt", "messages": MESSAGES, "pad": "x" * 200_000}).encode()
    body = (payload[i : i + 8192] for i in range(0, len(payload), 8192)) if chunked else payload
    resp = requests.post(
        f"{gateway.url}/v1/chat/completions",
        data=body,
        headers={"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"},
    )
    assert resp.status_code == 413
    assert resp.json()["error"]["code"] == "request_too_large"


def test_chunked_body_under_the_limit_is_read_whole(gateway):
    payload = json.dumps({"model": "mock-gpt", "messages": MESSAGES, "pad": "x" * 30_000}).encode()
    resp = requests.post(
        f"{gateway.url}/v1/chat/completions",
        data=(payload[i : i + 4096] for i in range(0, len(payload), 4096)),
        headers={"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"},
    )
    assert resp.status_code == 200


def test_readiness_and_liveness(gateway):
    assert requests.get(f"{gateway.url}/healthz").status_code == 200
    assert requests.get(f"{gateway.url}/readyz").json()["status"] == "ready"


def test_invalid_config_stops_start_up_naming_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[upstreams]]\nname = "p"\nbase_url = "ftp://nope"\n')
    env = {"SLUICE_CONFIG": str(bad), "SLUICE_BIND": "127.0.0.1:0", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert f"{bad}: upstreams[0].base_url" in done.stderr


def test_no_secret_in_the_gateway_log_after_faults(tmp_path, mock):
    tokens = ["revoked-token-00000011", "limited-token-00000012", "expired-token-00000013", "good-token-0000000014"]
    gateway = start_gateway(tmp_path, upstream_toml("main", mock.url, tokens, ["*"]))
    try:
        for key in (MASTER_KEY, "sk-wrong-0000000000000000"):
            for stream in (False, True):
                body = {"model": "mock-gpt", "messages": MESSAGES, "stream": stream}
                resp = requests.post(
                    f"{gateway.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                )
                assert resp.status_code in (200, 401, 502)
                assert key not in resp.text
        text = gateway.log()
        assert "reason=http_403" in text and "reason=http_429" in text
        for secret in (*tokens, MASTER_KEY, "sk-wrong-0000000000000000"):
            assert secret not in text
    finally:
        gateway.stop()


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header Name: v\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + MASTER_KEY.encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
    ],
)
def test_malformed_or_oversized_requests_get_a_4xx_never_a_5xx(gateway, raw):
    import socket

    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(raw)
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    status = int(status_line.split()[1])
    assert 400 <= status < 500, status_line


def test_too_low_open_file_limit_stops_start_up_with_a_clear_error(tmp_path):
    cmd = f"ulimit -n 512 && exec {sys.executable} -m gunicorn -c gunicorn.conf.py wsgi:app"
    env = {"SLUICE_WORKER_CONNECTIONS": "1000", "SLUICE_BIND": "127.0.0.1:0", "PATH": "/usr/bin:/bin",
           "SLUICE_DATA_DIR": str(tmp_path)}  # fmt: skip
    done = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "open-file limit (512)" in done.stderr and "SLUICE_WORKER_CONNECTIONS" in done.stderr
