"""Hostile clients against gunicorn exposed directly, over raw sockets: slow heads, slow bodies,
oversized bodies, malformed requests (app/headwait.py, app/bodylimit.py)."""

from __future__ import annotations

import json
import select
import socket
import threading
import time

import pytest
import requests

from tests.integration.conftest import GUNICORN_MALFORMED_REQUESTS, MASTER_KEY, start_gateway, upstream_toml

pytestmark = pytest.mark.integration
HEAD_TIMEOUT = 2
BODY_TIMEOUT = 2
CONNECTIONS = 20


@pytest.fixture(scope="module")
def small(tmp_path_factory, mock):
    """One worker with 20 connection slots, 2 s for a request head and 2 s for a body."""
    tmp = tmp_path_factory.mktemp("slow")
    upstream = upstream_toml("main", mock.url, ["tok-000000000001"], ["*"])
    limits = {"SLUICE_WORKER_CONNECTIONS": str(CONNECTIONS), "SLUICE_HEADER_TIMEOUT": str(HEAD_TIMEOUT)}
    dashboard = {"SLUICE_ADMIN_PASSWORD": "correct horse battery staple", "SLUICE_SECRET_KEY": "s" * 40}
    server = start_gateway(tmp, f"[gateway]\nbody_timeout = {BODY_TIMEOUT}\n\n{upstream}", **limits, **dashboard)
    yield server
    server.stop()


def connect(server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=20)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One response with a Content-Length: status, headers, body ((0, {}, b"") if closed first)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            return 0, {}, b""
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    while len(body) < int(headers.get("Content-Length", "0")):
        piece = sock.recv(65536)
        if not piece:
            break
        body += piece
    return int(lines[0].split()[1]), headers, body


class Trickler(threading.Thread):
    """Sends `prefix`, then one byte of `drip` every 0.3 s until the server answers or closes (20 s at most)."""

    def __init__(self, server, prefix: bytes, drip: bytes) -> None:
        super().__init__(daemon=True)
        self.sock = connect(server)
        self.prefix, self.drip = prefix, drip
        self.answer: bytes | None = None
        self.ended_after: float | None = None

    def run(self) -> None:
        started = time.monotonic()
        self.sock.sendall(self.prefix)
        received = b""
        for byte in self.drip[:66]:  # 66 x 0.3 s: 20 s at most
            readable, _, _ = select.select([self.sock], [], [], 0.3)
            if readable:
                try:
                    piece = self.sock.recv(65536)
                except ConnectionResetError:
                    piece = b""
                received += piece
                if not piece or b"\r\n\r\n" in received:
                    break
            try:
                self.sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
        self.answer = received
        self.ended_after = time.monotonic() - started
        self.sock.close()


def test_slow_heads_and_bodies_are_dropped_and_healthz_stays_reachable(small):
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: sluice\r\n"
    body_head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: sluice\r\nAuthorization: Bearer {MASTER_KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
    ).encode()
    slow_heads = [Trickler(small, head, b"X-Slow: " + b"a" * 100) for _ in range(CONNECTIONS // 2)]
    slow_bodies = [Trickler(small, body_head, b'{"model": "' + b"m" * 100) for _ in range(CONNECTIONS // 2)]
    for client in slow_heads + slow_bodies:
        client.start()
    time.sleep(0.5)  # every slot of the worker is taken now
    started = time.monotonic()
    assert requests.get(f"{small.url}/healthz", timeout=30).status_code == 200
    healthz_after = time.monotonic() - started
    for client in slow_heads + slow_bodies:
        client.join(timeout=30)
    for client in slow_heads:
        assert client.answer == b"" and client.ended_after < HEAD_TIMEOUT + 4  # closed without a word
    for client in slow_bodies:
        assert client.ended_after < BODY_TIMEOUT + 4
        status_line, _, rest = client.answer.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 408"), client.answer
    assert healthz_after < max(HEAD_TIMEOUT, BODY_TIMEOUT) + 6  # was 74 s with keepalive as the only bound


def test_a_slow_body_gets_an_openai_shaped_408(small):
    sock = connect(small)
    sock.sendall(
        f"POST /admin/api/keys HTTP/1.1\r\nHost: sluice\r\nAuthorization: Bearer {MASTER_KEY}\r\n"
        'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"name": '.encode()
    )
    status, headers, body = read_response(sock)
    sock.close()
    assert status == 408
    assert json.loads(body)["error"]["code"] == "request_timeout"


def test_idle_keep_alive_outlasts_the_head_timeout(small):
    sock = connect(small)
    request = b"GET /healthz HTTP/1.1\r\nHost: sluice\r\n\r\n"
    sock.sendall(request)
    assert read_response(sock)[0] == 200
    time.sleep(HEAD_TIMEOUT + 1)  # idle between requests: bounded by keepalive (75 s), not the head timeout
    sock.sendall(request)
    assert read_response(sock)[0] == 200
    sock.close()


def test_a_chunked_upload_to_the_login_form_is_refused_without_reading_it_all(small):
    sock = connect(small)
    sock.sendall(
        b"POST /dashboard/login HTTP/1.1\r\nHost: sluice\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\n"
    )
    chunk = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"
    total, sent = 128 * len(chunk), 0  # 8 MiB
    while sent < total:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            break
        sock.sendall(chunk)
        sent += len(chunk)
    status, _, body = read_response(sock)
    sock.close()
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    assert sent < total // 2  # answered long before the upload could end


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    GUNICORN_MALFORMED_REQUESTS,
)
def test_gunicorns_own_errors_are_openai_shaped(small, request_bytes, status, code):
    sock = connect(small)
    sock.sendall(request_bytes)
    answer_status, headers, body = read_response(sock)
    sock.close()
    assert answer_status == status and headers["Content-Type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == code and set(error) == {"message", "type", "param", "code"}
