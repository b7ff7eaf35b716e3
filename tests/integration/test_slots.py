"""max_parallel slots over real gunicorn, SQLite and a Redis of the test's own (issue #10 items 2
and 4): a worker killed mid-stream, a store that stops answering while streams end, and
clients that trickle their bodies never keep a key's slots taken while nothing runs."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import (
    MASTER_KEY,
    Server,
    chat_request_head,
    child_pids,
    free_port,
    start_gateway,
    upstream_toml,
)
from tests.services import program

pytestmark = pytest.mark.integration
CLOSE = {"Connection": "close"}
SLOW_STREAM = {"stream": True, "mock": {"chunks": 12, "delay": 0.1}}  # about 1.2 s


@pytest.fixture
def own_redis(tmp_path) -> Iterator[str]:
    """A redis-server of this test only (it gets paused: never the shared one)."""
    binary = program("redis-server", "redis-server", "redis-server", "/usr/bin/redis-server")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    server = subprocess.Popen([*args, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=2)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def _gateway(tmp_path: Path, mock, **env: str) -> Server:
    return start_gateway(tmp_path, upstream_toml("main", mock.url, ["good-token-00000001"], ["*"]), workers=1, **env)


def _key(gateway: Server, **limits: int) -> str:
    headers = {"Authorization": f"Bearer {MASTER_KEY}", **CLOSE}
    resp = requests.post(f"{gateway.url}/admin/api/keys", json={"name": "p", **limits}, headers=headers, timeout=20)
    assert resp.status_code == 201, resp.text
    return resp.json()["key"]


def _chat(gateway: Server, key: str, **body) -> requests.Response:
    payload = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], **body}
    headers = {"Authorization": f"Bearer {key}", **CLOSE}
    return requests.post(f"{gateway.url}/v1/chat/completions", json=payload, headers=headers, timeout=30)


class _Stream(threading.Thread):
    """A streamed request read to its end in the background; `started` once its first event came."""

    def __init__(self, gateway: Server, key: str) -> None:
        super().__init__(daemon=True)
        self.gateway, self.key = gateway, key
        self.started = threading.Event()
        self.text = ""

    def run(self) -> None:
        payload = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], **SLOW_STREAM}
        headers = {"Authorization": f"Bearer {self.key}", **CLOSE}
        url = f"{self.gateway.url}/v1/chat/completions"
        try:
            with requests.post(url, json=payload, headers=headers, stream=True, timeout=30) as resp:
                for chunk in resp.iter_content(None):
                    self.text += chunk.decode(errors="replace")
                    if "data: {" in self.text:
                        self.started.set()
        except requests.RequestException as exc:  # the worker was killed under it
            self.text += f"\n[{type(exc).__name__}]"
        self.started.set()


def _start_stream(gateway: Server, key: str) -> _Stream:
    stream = _Stream(gateway, key)
    stream.start()
    assert stream.started.wait(15)
    return stream


def _parallel_refused(gateway: Server, key: str) -> bool:
    resp = _chat(gateway, key)
    return resp.status_code == 429 and resp.json()["error"]["code"] == "too_many_parallel_requests"


def _admitted_within(gateway: Server, key: str, seconds: float) -> float | None:
    """Seconds until a request of the key is admitted (None: still refused after `seconds`)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            if _chat(gateway, key).status_code == 200:
                return time.monotonic() - started
        except requests.ConnectionError:  # a replacement worker is still booting
            pass
        time.sleep(0.25)
    return None


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_worker_killed_mid_stream_frees_its_slot_within_seconds(tmp_path, mock, backend, request):
    env = {"SLUICE_REDIS_URL": request.getfixturevalue("own_redis")} if backend == "redis" else {}
    gateway = _gateway(tmp_path, mock, **env)
    try:
        key = _key(gateway, max_parallel=1)
        _start_stream(gateway, key)
        assert _parallel_refused(gateway, key)
        (worker,) = child_pids(gateway.process.pid)
        os.kill(worker, signal.SIGKILL)
        waited = _admitted_within(gateway, key, 15)
        assert waited is not None, gateway.log()[-3000:]
        assert "freed 1 in-flight slot(s) of worker" in gateway.log()
    finally:
        gateway.stop()


def test_a_release_during_a_redis_pause_lands_when_redis_is_back(tmp_path, mock, own_redis):
    import redis

    gateway = _gateway(tmp_path, mock, SLUICE_REDIS_URL=own_redis)
    control = redis.Redis.from_url(own_redis)
    try:
        key = _key(gateway, max_parallel=1)
        stream = _start_stream(gateway, key)
        # Redis 7.0 blocks even CLIENT UNPAUSE under a pause of ALL: the pause runs its course.
        pause, paused_at = 10.0, time.monotonic()
        control.execute_command("CLIENT", "PAUSE", str(int(pause * 1000)), "ALL")  # the stream ends in it
        assert _logged(gateway, "could not release admission", within=pause)  # after the 5 s socket timeout
        time.sleep(max(0.0, pause - (time.monotonic() - paused_at)))
        stream.join(20)
        assert stream.text.rstrip().endswith("data: [DONE]")
        assert _admitted_within(gateway, key, 10) is not None, gateway.log()[-3000:]
    finally:
        control.close()
        gateway.stop()


def test_a_release_during_a_sqlite_write_lock_lands_after_it(tmp_path, mock):
    gateway = _gateway(tmp_path, mock)
    try:
        key = _key(gateway, max_parallel=1)
        stream = _start_stream(gateway, key)
        locker = sqlite3.connect(tmp_path / "data" / "sluice.db", isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock past busy_timeout (5 s)
        try:
            assert _logged(gateway, "could not release admission", within=30)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        stream.join(20)
        assert stream.text.rstrip().endswith("data: [DONE]")
        assert _admitted_within(gateway, key, 10) is not None, gateway.log()[-3000:]
    finally:
        gateway.stop()


def _logged(gateway: Server, text: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if text in gateway.log():
            return True
        time.sleep(0.1)
    return False


def _trickling(gateway: Server, key: str) -> socket.socket:
    """A connection that sent its headers and the start of a body it never finishes quickly."""
    host, port = gateway.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    body = json.dumps({"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}).encode()
    sock.sendall(chat_request_head(host, key, len(body)) + body[:5])
    return sock


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_slow_bodies_hold_no_more_connections_than_max_parallel(tmp_path, mock, backend, request):
    env = {"SLUICE_REDIS_URL": request.getfixturevalue("own_redis")} if backend == "redis" else {}
    gateway = _gateway(tmp_path, mock, **env)
    socks: list[socket.socket] = []
    try:
        key = _key(gateway, max_parallel=2)
        socks = [_trickling(gateway, key) for _ in range(5)]
        answers = _trickle_until_answered(socks, wanted=3, seconds=3.0)
        assert len(answers) == 3, f"{len(answers)} of 5 answered in 3 s"
        for answer in answers:
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 429"), answer
            assert json.loads(body)["error"]["code"] == "too_many_parallel_requests"
        assert _parallel_refused(gateway, key)  # the two still trickling hold both slots
    finally:
        for sock in socks:
            sock.close()
        gateway.stop()


def _trickle_until_answered(socks: list[socket.socket], wanted: int, seconds: float) -> list[bytes]:
    """Send one more body byte to each unanswered connection every 0.5 s; collect the answers."""
    answers: dict[socket.socket, bytes] = {}
    started = next_drip = time.monotonic()
    while time.monotonic() - started < seconds and len(answers) < wanted:
        waiting = [s for s in socks if s not in answers]
        readable, _, _ = select.select(waiting, [], [], 0.1)
        for sock in readable:
            answers[sock] = _read_until_closed(sock)
        if time.monotonic() >= next_drip:
            next_drip += 0.5
            for sock in waiting:
                if sock not in answers and not select.select([sock], [], [], 0)[0]:
                    sock.sendall(b" ")  # JSON allows whitespace: the body is still arriving
    return list(answers.values())


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends before it closes the connection (10 s at most)."""
    data, deadline = b"", time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:  # closed with our last byte unread: the answer came before
            break
        if not piece:
            break
        data += piece
    return data
