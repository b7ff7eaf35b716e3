"""Start and stop of the real gunicorn master: a graceful stop waits for running streams only,
Ctrl-C is quiet, and the metrics directory does not outlive the master."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from tests.integration.conftest import MASTER_KEY, Server, start_gateway, upstream_toml

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}  # keep-alive on purpose: idle connections stay open
MESSAGES = [{"role": "user", "content": "Hello"}]


def gateway_for(tmp_path: Path, mock, workers: int, **env: str) -> Server:
    return start_gateway(tmp_path, upstream_toml("main", mock.url, ["good-token-00000001"], ["*"]), workers, **env)


def leave_idle_connections(gateway: Server) -> list:
    """Requests (streamed and not) over keep-alive sessions, plus a connection that never sends a
    request; all are left open, as browsers, SDK clients and proxies leave theirs."""
    sessions = [requests.Session() for _ in range(3)]
    for index, session in enumerate(sessions * 2):
        body = {"model": "mock-gpt", "messages": MESSAGES, "stream": index % 2 == 0}
        assert session.post(f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH, timeout=10).ok
        assert session.get(f"{gateway.url}/healthz", timeout=10).ok
    host, port = gateway.url.removeprefix("http://").split(":")
    silent = socket.create_connection((host, int(port)), timeout=10)
    return [*sessions, silent]


def stop_and_time(gateway: Server, sig: int = signal.SIGTERM, group: bool = False) -> float:
    started = time.monotonic()
    if group:
        os.killpg(gateway.process.pid, sig)  # as Ctrl-C in a terminal: the master and every worker
    else:
        gateway.process.send_signal(sig)
    try:
        assert gateway.process.wait(timeout=15) == 0
    finally:
        gateway.stop()  # SIGKILL, should it still run
    return time.monotonic() - started


def test_an_idle_gateway_stops_at_once(tmp_path, mock):
    """Idle keep-alive connections held gunicorn's graceful stop for the whole grace (30 s)."""
    gateway = gateway_for(tmp_path, mock, workers=3)
    clients = leave_idle_connections(gateway)
    time.sleep(1.5)  # idle
    try:
        assert stop_and_time(gateway) < 3.0
    finally:
        for client in clients:
            client.close()
    log = gateway.log()
    assert log.count("Worker exiting") == 3 and "Traceback" not in log


def test_a_busy_gateway_stops_when_its_last_stream_ends(tmp_path, mock):
    gateway = gateway_for(tmp_path, mock, workers=2)
    clients = leave_idle_connections(gateway)
    lines: list[str] = []
    first_event, ended = threading.Event(), []

    def long_stream() -> None:  # 40 events 0.05 s apart: about 2 s
        body = {"model": "mock-gpt", "messages": MESSAGES, "stream": True, "mock": {"chunks": 40, "delay": 0.05}}
        with requests.post(f"{gateway.url}/v1/chat/completions", json=body, headers=AUTH, stream=True, timeout=30) as r:
            for line in r.iter_lines(decode_unicode=True):
                lines.append(line)
                first_event.set()
        ended.append(time.monotonic())

    thread = threading.Thread(target=long_stream)
    thread.start()
    try:
        assert first_event.wait(10)
        stop_and_time(gateway)
        stopped = time.monotonic()
    finally:
        thread.join(timeout=30)
        for client in clients:
            client.close()
    assert [line for line in lines if line.startswith("data: ")][-1] == "data: [DONE]"
    assert not any('"error"' in line for line in lines)  # the stream ran to its end, well within the grace
    assert stopped - ended[0] < 2.5  # and the master stopped right after it
    with sqlite3.connect(tmp_path / "data" / "sluice.db") as conn:
        assert ("ok", 1) in conn.execute("SELECT outcome, streamed FROM usage").fetchall()


def test_a_recycled_worker_is_replaced_at_once(tmp_path, mock):
    """max_requests: the recycled worker stopped accepting but idle connections held it (and its
    replacement, which the master starts only once it has exited) for the whole grace."""
    gateway = gateway_for(tmp_path, mock, workers=1, SLUICE_MAX_REQUESTS="12")
    clients = leave_idle_connections(gateway)  # 12 requests with the readiness probe: it recycles
    try:
        time.sleep(1.5)  # the recycled worker has closed its listener
        started = time.monotonic()
        resp = requests.get(f"{gateway.url}/healthz", headers={"Connection": "close"}, timeout=15)
        assert resp.ok and time.monotonic() - started < 5.0
    finally:
        gateway.stop()
        for client in clients:
            client.close()


def test_ctrl_c_is_quiet(tmp_path, mock):
    """Ctrl-C signals the master and the workers: a worker told twice printed a SystemExit traceback
    (in about half the workers; three workers, twice). SIGINT to the master alone stays quiet too."""
    for group in (True, True, False):
        gateway = gateway_for(tmp_path, mock, workers=3)
        clients = leave_idle_connections(gateway)
        assert stop_and_time(gateway, signal.SIGINT, group=group) < 3.0
        for client in clients:
            client.close()
        assert "Traceback" not in gateway.log()


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_the_metrics_directory_is_removed_at_exit_and_stale_ones_at_start(tmp_path, mock):
    temp = tmp_path / "tmp"
    stale, alive = temp / f"sluice-metrics-{_dead_pid()}", temp / f"sluice-metrics-{os.getpid()}"
    for path in (stale, alive):
        path.mkdir(parents=True)
        (path / "counter_1.db").write_bytes(b"")
    gateway = gateway_for(tmp_path, mock, workers=2, TMPDIR=str(temp))
    own = temp / f"sluice-metrics-{gateway.process.pid}"
    assert requests.post(f"{gateway.url}/v1/chat/completions", json={"model": "m", "messages": MESSAGES},
                         headers={**AUTH, "Connection": "close"}, timeout=10).ok  # fmt: skip
    assert own.is_dir() and any(own.iterdir())  # the workers write their samples there
    assert not stale.exists() and alive.exists()  # only the directories of masters that are gone
    stop_and_time(gateway)
    assert not own.exists()
    assert sorted(p.name for p in temp.iterdir() if p.name.startswith("sluice-metrics-")) == [alive.name]
