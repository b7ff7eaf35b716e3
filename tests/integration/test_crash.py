"""Crash semantics (issue 15 part 4) over real gunicorn: a worker whose master was killed stops
gracefully (every stream ends whole or with its error event and [DONE], usage is written), and
the max_parallel slots of a whole crashed instance are freed by another instance within seconds,
on SQLite, PostgreSQL and Redis (app/storage/liveness.py)."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import requests

from app.storage.liveness import STALE, SWEEP_EVERY
from tests.integration.conftest import MASTER_KEY, Server, child_pids, start_gateway, upstream_toml
from tests.integration.test_slots import own_redis  # noqa: F401  (a fixture: a redis-server of this module's own)
from tests.services import _worker_database, postgres_url, reset_postgres

pytestmark = pytest.mark.integration
CLOSE = {"Connection": "close"}
GRACE = 8  # SLUICE_GRACE_SECONDS: streams still running 2 s before its end get their error event


class Stream(threading.Thread):
    """A streamed chat request of `chunks` events 0.1 s apart, read to its end in the background."""

    def __init__(self, gateway: Server, key: str, chunks: int) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.chunks = f"{gateway.url}/v1/chat/completions", key, chunks
        self.started = threading.Event()
        self.lines: list[str] = []
        self.failure: str | None = None

    def run(self) -> None:
        body = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                "mock": {"chunks": self.chunks, "delay": 0.1}}  # fmt: skip
        headers = {"Authorization": f"Bearer {self.key}", **CLOSE}
        try:
            with requests.post(self.url, json=body, headers=headers, stream=True, timeout=60) as resp:
                for line in resp.iter_lines(decode_unicode=True):
                    self.lines.append(line)
                    self.started.set()
        except requests.RequestException as exc:  # cut under it
            self.failure = type(exc).__name__
        self.started.set()

    @property
    def events(self) -> list[str]:
        return [line for line in self.lines if line.startswith("data: ")]


def _start(gateway: Server, key: str, chunks: int) -> Stream:
    stream = Stream(gateway, key, chunks)
    stream.start()
    assert stream.started.wait(15) and stream.failure is None, stream.failure
    return stream


def _running(pid: int) -> bool:
    """Whether `pid` still runs (an exited process nobody reaps yet is a zombie: it does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill_group(gateway: Server) -> None:
    try:
        os.killpg(gateway.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    gateway.process.wait(timeout=10)


def test_a_worker_whose_master_died_finishes_its_streams_and_writes_their_usage(tmp_path, mock):
    gateway = start_gateway(tmp_path, upstream_toml("main", mock.url, ["good-token-00000001"], ["*"]),
                            workers=2, SLUICE_GRACE_SECONDS=str(GRACE))  # fmt: skip
    try:
        workers = child_pids(gateway.process.pid)
        assert len(workers) == 2
        short = [_start(gateway, MASTER_KEY, 30) for _ in range(3)]  # 3 s: within the grace
        long = [_start(gateway, MASTER_KEY, 300) for _ in range(2)]  # 30 s: past it
        os.kill(gateway.process.pid, signal.SIGKILL)
        killed = time.monotonic()
        for stream in short + long:
            stream.join(GRACE + 10)
        while any(_running(pid) for pid in workers) and time.monotonic() - killed < GRACE + 10:
            time.sleep(0.1)
        exited = time.monotonic() - killed
    finally:
        _kill_group(gateway)
    log = gateway.log()
    assert "is gone: stopping gracefully" in log and "Parent changed" not in log, log[-3000:]
    assert exited < GRACE + 1, f"workers ran {exited:.1f} s after the master died"
    for stream in short:  # whole, as if nothing happened
        assert stream.failure is None and stream.events[-1] == "data: [DONE]", stream.lines[-5:]
        assert not any('"error"' in event for event in stream.events)
    for stream in long:  # an explicit error event, then [DONE]: never a silent cut
        assert stream.failure is None and stream.events[-1] == "data: [DONE]", stream.lines[-5:]
        assert '"error"' in stream.events[-2] and "restarting" in stream.events[-2]
    with sqlite3.connect(tmp_path / "data" / "sluice.db") as conn:
        rows = conn.execute("SELECT outcome FROM usage WHERE streamed = 1").fetchall()
    assert len(rows) == 5, rows


def _database(backend: str, tmp_path: Path) -> str:
    if backend != "postgresql":
        return f"sqlite:///{tmp_path}/data/sluice.db"
    url = _worker_database(postgres_url(), "crash")  # a database of its own: other tests reset theirs
    reset_postgres(url)
    return url


def _key(gateway: Server, **limits: int) -> str:
    headers = {"Authorization": f"Bearer {MASTER_KEY}", **CLOSE}
    resp = requests.post(f"{gateway.url}/admin/api/keys", json={"name": "p", **limits}, headers=headers, timeout=20)
    assert resp.status_code == 201, resp.text
    return resp.json()["key"]


def _admitted(gateway: Server, key: str) -> bool:
    body = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {key}", **CLOSE}
    resp = requests.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    if resp.status_code == 429:
        assert resp.json()["error"]["code"] == "too_many_parallel_requests", resp.text
        return False
    assert resp.status_code == 200, resp.text
    return True


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "redis"])
def test_a_crashed_instances_slots_are_freed_by_another_within_seconds(tmp_path, mock, backend, request):
    env = {"SLUICE_DATABASE_URL": _database(backend, tmp_path)}
    if backend == "redis":
        env["SLUICE_REDIS_URL"] = request.getfixturevalue("own_redis")
    config = upstream_toml("main", mock.url, ["good-token-00000001"], ["*"])
    crashing = start_gateway(tmp_path, config, workers=1, SLUICE_INSTANCE_ID="crashing", **env)
    other = start_gateway(tmp_path, config, workers=1, SLUICE_INSTANCE_ID="other", **env)
    try:
        key = _key(crashing, max_parallel=2)
        for _ in range(2):
            _start(crashing, key, 900)  # 90 s: the slots stay taken while the instance runs
        assert not _admitted(other, key)
        time.sleep(STALE + SWEEP_EVERY)  # long enough to be swept, were the live worker taken for dead
        assert not _admitted(other, key), "a live worker's slots were freed"
        _kill_group(crashing)  # master and worker at once: nobody frees the slots of its own
        killed = time.monotonic()
        while not _admitted(other, key) and time.monotonic() - killed < 3 * STALE:
            time.sleep(0.5)
        waited = time.monotonic() - killed
    finally:
        _kill_group(crashing)
        other.stop()
    assert waited <= STALE + 2 * SWEEP_EVERY + 2, f"freed {waited:.1f} s after the crash"
    assert "freed 2 in-flight slot(s) of worker crashing:" in other.log(), other.log()[-3000:]
