"""deploy/nginx.conf, for real: nginx in front of gunicorn serving Sluice, the mock behind it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import openai
import pytest
import requests

from tests.integration.conftest import (
    MALFORMED_REQUESTS,
    MASTER_KEY,
    ROOT,
    Server,
    free_port,
    mock_stats,
    start,
    start_gateway,
    upstream_toml,
)
from tests.services import nginx_binary

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
MESSAGES = [{"role": "user", "content": "Hello"}]


def start_nginx(tmp_path, sluice_address: str) -> Server:
    binary = nginx_binary()
    port = free_port()
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "server 127.0.0.1:8000;" in config and "listen 8080;" in config
    config = config.replace("server 127.0.0.1:8000;", f"server {sluice_address};")
    config = config.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    prefix = tmp_path / f"nginx-{port}"
    prefix.mkdir()
    # A client-body temp directory the workers cannot reach (pytest's tmp dirs are private to
    # root), as when a packaged nginx's workers may not write its temp path: the config must
    # never need one.
    config = config.replace("http {", f"http {{\n    client_body_temp_path {prefix}/client_body;", 1)
    (prefix / "nginx.conf").write_text(config)
    # As the packaged service runs it: a root master, workers as an unprivileged user.
    globals_ = f"daemon off; pid {prefix}/nginx.pid;" + (" user nobody nogroup;" if os.geteuid() == 0 else "")
    cmd = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", globals_]
    process = start(cmd, f"http://127.0.0.1:{port}/healthz", prefix / "nginx.log")
    return Server(f"http://127.0.0.1:{port}", process, prefix / "nginx.log")


@pytest.fixture(scope="module")
def proxied(tmp_path_factory, mock):
    tmp = tmp_path_factory.mktemp("nginx")
    gateway = start_gateway(
        tmp, upstream_toml("main", mock.url, ["good-token-00000001"], ["*"]), SLUICE_TRUSTED_PROXIES="1"
    )
    nginx = start_nginx(tmp, gateway.url.removeprefix("http://"))
    yield nginx, gateway
    nginx.stop()
    gateway.stop()


def test_plain_and_streamed_requests_through_nginx(proxied):
    nginx, _ = proxied
    client = openai.OpenAI(base_url=f"{nginx.url}/v1", api_key=MASTER_KEY, max_retries=0)
    assert client.chat.completions.create(model="mock-gpt", messages=MESSAGES).choices[0].message.content
    stream = client.chat.completions.create(model="mock-gpt", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).startswith("Hello")


def test_events_arrive_through_nginx_as_they_are_produced(proxied):
    nginx, _ = proxied
    body = {"model": "mock-gpt", "messages": MESSAGES, "stream": True, "mock": {"chunks": 6, "delay": 0.2}}
    with requests.post(f"{nginx.url}/v1/chat/completions", json=body, headers=AUTH, stream=True) as resp:
        events = [
            (time.time(), json.loads(line[6:]))
            for line in resp.iter_lines(decode_unicode=True)
            if line.startswith("data: {")
        ]
    assert len(events) == 6
    for (arrived, _), (_, following) in zip(events, events[1:], strict=False):
        assert arrived < following["mock_ts"] + 0.05  # not held back by nginx
    assert events[-1][0] - events[0][0] >= 0.8


def test_a_client_abort_at_nginx_closes_the_upstream_stream(proxied, mock, reset):
    nginx, _ = proxied
    body = {"model": "mock-gpt", "messages": MESSAGES, "stream": True, "mock": {"chunks": 100, "delay": 0.1}}
    resp = requests.post(f"{nginx.url}/v1/chat/completions", json=body, headers=AUTH, stream=True)
    assert next(line for line in resp.iter_lines() if line).startswith(b"data: ")
    resp.close()
    deadline = time.monotonic() + 15
    while mock_stats(mock)["streams_aborted"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mock_stats(mock)["streams_aborted"] == 1 and mock_stats(mock)["streams_completed"] == 0


def test_nginx_own_errors_are_openai_shaped(proxied, tmp_path):
    nginx, _ = proxied
    big = b'{"model": "m", "pad": "' + b"x" * (12 * 1024 * 1024) + b'"}'
    resp = requests.post(
        f"{nginx.url}/v1/chat/completions", data=big, headers={**AUTH, "Content-Type": "application/json"}
    )
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"
    dead = start_nginx(tmp_path, f"127.0.0.1:{free_port()}")  # nothing listens there
    try:
        resp = requests.get(f"{dead.url}/v1/models", headers=AUTH)
        assert resp.status_code == 502 and set(resp.json()["error"]) == {"message", "type", "param", "code"}
    finally:
        dead.stop()


@pytest.mark.parametrize(("size", "status"), [(2_000_000, 200), (11_000_000, 413)])
def test_bodies_above_nginxs_buffer_are_proxied_or_refused_in_json(proxied, size, status):
    """Over client_body_buffer_size: proxied to Sluice (2 MB) or refused (11 MB > 10 MiB) by
    workers that cannot write a temp file (they answered 500 when the body was buffered)."""
    nginx, _ = proxied
    body = {"model": "mock-gpt", "messages": [{"role": "user", "content": "x" * size}]}
    resp = requests.post(f"{nginx.url}/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert resp.status_code == status, resp.text[:300]
    if status == 413:
        assert resp.json()["error"]["code"] == "request_too_large"
    else:
        assert resp.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    MALFORMED_REQUESTS,
)
def test_nginxs_answers_to_malformed_requests_are_openai_shaped(proxied, request_bytes, status, code):
    nginx, _ = proxied
    host, port = nginx.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request_bytes)
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split()[1] == str(status).encode(), answer[:300]
    assert b"Content-Type: application/json" in head
    error = json.loads(body)["error"]
    assert error["code"] == code and set(error) == {"message", "type", "param", "code"}


def test_forwarded_for_is_trusted_for_exactly_one_hop(proxied):
    nginx, gateway = proxied
    requests.get(f"{nginx.url}/v1/models", headers={**AUTH, "X-Forwarded-For": "198.51.100.7", "X-Request-ID": "xff-1"})
    time.sleep(0.3)
    line = next(line for line in gateway.log().splitlines() if "sluice.request" in line and "request_id=xff-1 " in line)
    assert "client=127.0.0.1 " in line  # nginx's view of the client, not the spoofed header


def test_config_has_the_required_settings():
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    for directive in ("proxy_buffering off;", "proxy_http_version 1.1;", 'proxy_set_header Connection "";',
                      "proxy_read_timeout 960s;", "client_max_body_size 10m;", "proxy_request_buffering off;",
                      "X-Forwarded-For"):  # fmt: skip
        assert directive in config
    assert subprocess.run([nginx_binary(), "-v"], capture_output=True).returncode == 0
