"""Plain (non-streamed) answers over real gunicorn and SQLite (issue #10, review findings 2 and 3).

A client that stops reading a plain answer is let go at the deadline, and its key's max_parallel
slot stays taken until then (it was released before gunicorn had written a byte of the body).
A graceful stop answers a plain request still waiting for its upstream with a 503 before the
server exits, and records it (it was cut without a word, its slot left taken).
"""

from __future__ import annotations

import json
import re
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import MASTER_KEY, Server, chat_request_head, start_gateway, upstream_toml

pytestmark = pytest.mark.integration
DEADLINE = 4.0
CLOSE = {"Connection": "close"}
MESSAGES = [{"role": "user", "content": "hi"}]


def _gateway(tmp_path: Path, mock: Server, deadline: float = DEADLINE, workers: int = 1, **env: str) -> Server:
    config = f"[gateway]\ndeadline = {deadline}\n\n" + upstream_toml("main", mock.url, ["good-token-00000001"], ["*"])
    return start_gateway(tmp_path, config, workers=workers, **env)


def _key(gateway: Server) -> str:
    headers = {"Authorization": f"Bearer {MASTER_KEY}", **CLOSE}
    body = {"name": "plain", "max_parallel": 1}
    resp = requests.post(f"{gateway.url}/admin/api/keys", json=body, headers=headers, timeout=20)
    assert resp.status_code == 201, resp.text
    return resp.json()["key"]


def _chat(gateway: Server, key: str, **mock: object) -> requests.Response:
    payload = {"model": "mock-gpt", "messages": MESSAGES, "mock": mock}
    headers = {"Authorization": f"Bearer {key}", **CLOSE}
    return requests.post(f"{gateway.url}/v1/chat/completions", json=payload, headers=headers, timeout=30)


def _db(tmp_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp_path / "data" / "sluice.db", timeout=10)


def _usage(tmp_path: Path, request_id: str, within: float = 10.0) -> list[tuple]:
    """The usage rows of one request, once written (the writer batches them off the request path)."""
    end = time.monotonic() + within
    while True:
        with _db(tmp_path) as db:
            query = "select outcome, status, total_tokens from usage where request_id = ?"
            rows = db.execute(query, (request_id,)).fetchall()
        if rows or time.monotonic() > end:
            return rows
        time.sleep(0.1)


def _inflight(tmp_path: Path) -> list[tuple]:
    with _db(tmp_path) as db:
        return db.execute("select request_id from inflight").fetchall()


@pytest.fixture
def gateway(tmp_path, mock) -> Iterator[Server]:
    server = _gateway(tmp_path, mock, workers=2)
    yield server
    server.stop()


def test_a_client_that_stops_reading_a_plain_answer_holds_its_slot_only_until_the_deadline(gateway, tmp_path):
    key = _key(gateway)
    host, port = gateway.url.removeprefix("http://").split(":")
    # About 12 MB: far more than the socket buffers on both sides hold.
    body = json.dumps({"model": "mock-gpt", "messages": MESSAGES, "mock": {"chunks": 2_000_000}}).encode()
    request_id = f"plain-slow-{time.time_ns()}"
    head = chat_request_head(host, key, len(body), request_id)
    with socket.create_connection((host, int(port))) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.settimeout(10)
        started = time.monotonic()
        client.sendall(head + body)
        first = client.recv(4096)  # the answer has begun; now stop reading
        assert first.startswith(b"HTTP/1.1 200"), first[:200]
        # The body is not written yet: the key's one slot is still taken.
        refused = _chat(gateway, key)
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["code"] == "too_many_parallel_requests"
        ended = None
        pattern = rf"request request_id={re.escape(request_id)} "
        while time.monotonic() - started < DEADLINE * 2 + 5:
            if re.search(pattern, gateway.log()):
                ended = time.monotonic() - started
                break
            time.sleep(0.1)
        assert ended is not None, gateway.log()[-3000:]
        # The blocked write got only the time left to the deadline (at least 1 s).
        assert ended < DEADLINE + 2.5, f"the request ended {ended:.1f} s after it started (deadline {DEADLINE} s)"
    lines = re.findall(pattern + r".*", gateway.log())
    assert len(lines) == 1 and "status=200 outcome=client_disconnect" in lines[0], lines
    rows = _usage(tmp_path, request_id)
    assert len(rows) == 1 and rows[0][:2] == ("client_disconnect", 200) and rows[0][2] > 0, rows
    assert _chat(gateway, key).status_code == 200  # the slot is free again
    assert _inflight(tmp_path) == []


def test_a_plain_answer_read_to_its_end_is_recorded_once_and_frees_its_slot_before_it_is_complete(gateway, tmp_path):
    key = _key(gateway)
    request_id = f"plain-ok-{time.time_ns()}"
    headers = {"Authorization": f"Bearer {key}", "X-Request-Id": request_id, **CLOSE}
    payload = {"model": "mock-gpt", "messages": MESSAGES, "mock": {"chunks": 200_000}}
    resp = requests.post(f"{gateway.url}/v1/chat/completions", json=payload, headers=headers, timeout=30)
    assert resp.status_code == 200
    assert int(resp.headers["Content-Length"]) == len(resp.content)
    assert resp.json()["usage"]["total_tokens"] > 0
    rows = _usage(tmp_path, request_id)
    assert rows == [("ok", 200, resp.json()["usage"]["total_tokens"])]
    lines = re.findall(rf"request request_id={re.escape(request_id)} .*", gateway.log())
    assert len(lines) == 1 and f"bytes={len(resp.content)}" in lines[0], lines
    # One request after the other, over two workers: the slot is free by the time an answer is
    # complete (its last byte is sent after the release), so the next one is never refused.
    statuses = [_chat(gateway, key).status_code for _ in range(30)]
    assert statuses == [200] * 30, statuses
    assert _inflight(tmp_path) == []


def test_a_graceful_stop_answers_a_waiting_plain_request_with_a_503(tmp_path, mock):
    server = _gateway(tmp_path, mock, deadline=60, SLUICE_GRACE_SECONDS="4")  # the stop comes first
    try:
        key = _key(server)
        request_id = f"plain-stop-{time.time_ns()}"
        answer: dict[str, object] = {}

        def call() -> None:
            headers = {"Authorization": f"Bearer {key}", "X-Request-Id": request_id, **CLOSE}
            payload = {"model": "mock-gpt", "messages": MESSAGES, "mock": {"first_delay": 20}}
            try:
                answer["response"] = requests.post(
                    f"{server.url}/v1/chat/completions", json=payload, headers=headers, timeout=15
                )
            except requests.RequestException as exc:  # the connection cut without an answer
                answer["error"] = exc
            answer["at"] = time.monotonic()

        client = threading.Thread(target=call, daemon=True)
        client.start()
        end = time.monotonic() + 10
        while not _inflight(tmp_path) and time.monotonic() < end:  # admitted: now waiting upstream
            time.sleep(0.05)
        assert _inflight(tmp_path), server.log()[-2000:]
        time.sleep(0.3)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=15) == 0
        exited = time.monotonic()
        client.join(15)
        resp = answer.get("response")
        assert isinstance(resp, requests.Response), (answer, server.log()[-3000:])
        assert answer["at"] < exited  # answered before the server went away
        assert resp.status_code == 503, resp.text
        assert resp.json()["error"]["code"] == "server_shutdown"
        assert resp.json()["error"]["type"] == "server_error"
        assert int(resp.headers["Retry-After"]) >= 1
        assert _usage(tmp_path, request_id, within=0) == [("server_shutdown", 503, 0)]
        assert _inflight(tmp_path) == []
    finally:
        server.stop()
