"""Hot reload under the real gunicorn master (2 workers): SIGHUP and the admin API swap the config in every
worker while streams run; none is cut, no worker is replaced, an invalid config changes nothing."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import MASTER_KEY, Server, start_gateway, start_mock, upstream_toml

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
MESSAGES = [{"role": "user", "content": "Hello"}]
CHUNKS = 30  # x 0.1 s: each stream runs for about 3 s, across the reload


@pytest.fixture
def mock(tmp_path):
    server = start_mock(tmp_path)
    yield server
    server.stop()


def config(mock: Server, extra: bool) -> str:
    """`main` serves mock-gpt; with `extra`, a second upstream serves mock-gpt-mini."""
    text = upstream_toml("main", mock.url, ["main-token-000000000001"], ["mock-gpt"])
    if extra:
        text += upstream_toml("extra", mock.url, ["extra-token-00000000001"], ["mock-gpt-mini"])
    return text


def workers(gateway: Server) -> set[int]:
    pid = gateway.process.pid
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


class Stream(threading.Thread):
    """A slow chat stream read to its end in the background; `lines` is what arrived."""

    def __init__(self, gateway: Server) -> None:
        super().__init__(daemon=True)
        self.gateway, self.lines, self.error = gateway, [], None

    def run(self) -> None:
        body = {"model": "mock-gpt", "messages": MESSAGES, "stream": True, "mock": {"chunks": CHUNKS, "delay": 0.1}}
        try:
            with requests.post(f"{self.gateway.url}/v1/chat/completions", json=body, headers=AUTH, stream=True,
                               timeout=30) as answer:  # fmt: skip
                answer.raise_for_status()
                self.lines = [line for line in answer.iter_lines() if line.startswith(b"data: ")]
        except requests.RequestException as exc:
            self.error = exc

    def check(self) -> None:
        self.join(timeout=30)
        assert not self.is_alive() and self.error is None
        assert self.lines[-1] == b"data: [DONE]"  # not cut
        text = "".join(
            choice["delta"].get("content") or ""
            for line in self.lines[:-1]
            for choice in json.loads(line[6:])["choices"]
        )
        assert len(text.split()) == CHUNKS


def start_streams(gateway: Server, count: int = 4) -> list[Stream]:
    streams = [Stream(gateway) for _ in range(count)]
    for stream in streams:
        stream.start()
    time.sleep(0.5)  # under way: headers sent, chunks flowing
    assert all(s.is_alive() for s in streams)
    return streams


def served(gateway: Server, model: str, times: int = 8) -> set[int]:
    """The statuses of `times` requests for `model`, each on a new connection (so both workers answer)."""
    statuses = set()
    for _ in range(times):
        body = {"model": model, "messages": MESSAGES}
        answer = requests.post(f"{gateway.url}/v1/chat/completions", json=body,
                               headers={**AUTH, "Connection": "close"}, timeout=10)  # fmt: skip
        statuses.add(answer.status_code)
    return statuses


def wait_for_log(gateway: Server, text: str, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while gateway.log().count(text) < count:
        assert time.monotonic() < deadline, f"{count} x {text!r} not in the log:\n{gateway.log()[-3000:]}"
        time.sleep(0.1)


def test_reloads_swap_the_config_in_every_worker_without_cutting_a_stream(tmp_path, mock):
    gateway = start_gateway(tmp_path, config(mock, extra=False), workers=2)
    try:
        config_path = Path(gateway.env["SLUICE_CONFIG"])
        pids = workers(gateway)
        assert len(pids) == 2
        assert served(gateway, "mock-gpt-mini", 2) == {404}

        # A valid config by SIGHUP: each worker reloads; new requests on both see the new upstream.
        streams = start_streams(gateway)
        config_path.write_text(config(mock, extra=True))
        gateway.process.send_signal(signal.SIGHUP)
        wait_for_log(gateway, "config reloaded source=", 2)
        assert "upstreams=2 models=0" in gateway.log()
        assert served(gateway, "mock-gpt-mini") == {200}

        # An invalid config by SIGHUP: the one-line error is logged and nothing changes.
        streams += start_streams(gateway)
        config_path.write_text(config(mock, extra=True) + "bogus = 1\n")
        gateway.process.send_signal(signal.SIGHUP)
        wait_for_log(gateway, "sluice: configuration error: ", 1)
        error = next(line for line in gateway.log().splitlines() if "sluice: configuration error: " in line)
        assert f"{config_path}: upstreams[1].bogus: unknown key" in error
        assert served(gateway, "mock-gpt-mini") == {200} and served(gateway, "mock-gpt", 2) == {200}

        # The API: invalid answers 400 with the same error; valid reloads every worker (through the master).
        streams += start_streams(gateway)
        refused = requests.post(f"{gateway.url}/admin/api/reload", headers=AUTH, timeout=10)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_config"
        assert refused.json()["error"]["message"] in error
        config_path.write_text(config(mock, extra=False))
        done = requests.post(f"{gateway.url}/admin/api/reload", headers=AUTH, timeout=10)
        assert done.status_code == 200, done.text
        assert (done.json()["source"], done.json()["upstreams"]) == (str(config_path), ["main"])
        wait_for_log(gateway, "upstreams=1 models=0", 3)  # the API's worker, then both on the master's SIGHUP
        assert served(gateway, "mock-gpt-mini") == {404}

        for stream in streams:
            stream.check()
        assert workers(gateway) == pids  # no worker was replaced
        assert gateway.log().count("Booting worker") == 2
    finally:
        gateway.stop()


def test_a_worker_started_after_a_refused_reload_runs_the_accepted_config(tmp_path, mock):
    """A worker gunicorn forks later (a crash here) starts on the config the master accepted last, not on an
    edit the master refused (which would stop it booting, and the whole gateway with it) or never reloaded."""
    gateway = start_gateway(tmp_path, config(mock, extra=True), workers=2)
    try:
        config_path = Path(gateway.env["SLUICE_CONFIG"])
        config_path.write_text(config(mock, extra=True) + "bogus = 1\n")
        gateway.process.send_signal(signal.SIGHUP)
        wait_for_log(gateway, "reload refused", 1)
        victim = min(workers(gateway))
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while len(workers(gateway) - {victim}) < 2:  # gunicorn forks a replacement
            assert gateway.process.poll() is None, gateway.log()[-2000:]
            assert time.monotonic() < deadline, gateway.log()[-2000:]
            time.sleep(0.1)
        wait_for_log(gateway, "Booting worker", 3)
        assert served(gateway, "mock-gpt-mini") == {200} and served(gateway, "mock-gpt", 4) == {200}

        # An edit never reloaded is not picked up by a new worker either: every worker keeps one config.
        config_path.write_text(config(mock, extra=False))
        os.kill(min(workers(gateway)), signal.SIGKILL)
        wait_for_log(gateway, "Booting worker", 4, timeout=20)
        assert served(gateway, "mock-gpt-mini") == {200}
        assert gateway.process.poll() is None
    finally:
        gateway.stop()
