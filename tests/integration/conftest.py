"""The live stack: the bundled mock upstream and gunicorn serving Sluice, as real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
MASTER_KEY = "sk-integration-master-0123456789"

pytestmark = pytest.mark.integration


def child_pids(parent: int) -> list[int]:
    """The processes whose parent is `parent` (e.g. a gunicorn master's workers), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(entry.name))
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path
    env: dict[str, str] | None = None
    cmd: list[str] | None = None

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        """Run `flask --app wsgi ARGS` against this server's configuration and database."""
        return subprocess.run(
            [sys.executable, "-m", "flask", "--app", "wsgi", *args],
            cwd=ROOT, env={**os.environ, **(self.env or {})}, input=stdin, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def restart(self) -> Server:
        self.stop()
        assert self.cmd is not None and self.env is not None
        self.process = start(self.cmd, f"{self.url}/healthz", self.log_path, self.env)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM; after `grace` seconds (a stream still running, or a mock that ignores it), SIGKILL all."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start(cmd: list[str], ready_url: str, log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a server process and wait (bounded) until `ready_url` answers."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{cmd} exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            requests.get(ready_url, timeout=2, headers={"Connection": "close"})
            return process
        except requests.RequestException:  # not listening yet, or workers still booting
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{cmd} did not become ready:\n{log_path.read_text()}")


# Requests no HTTP server can parse, and what nginx and gunicorn (app/headwait.py) answer, as JSON.
MALFORMED_REQUESTS = [
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\nHost: sluice\r\n\r\n", 414, "uri_too_long"),
    (b"GET / HTTP/1.1\r\nHost: sluice\r\nX-Big: " + b"a" * 10000 + b"\r\n\r\n", 431, "headers_too_large"),
    (b"POST / HTTP/1.1\r\nHost: sluice\r\nTransfer-Encoding: bogus\r\n\r\n", 501, "not_implemented"),
]
# ... and what gunicorn answers where nginx does not: an empty coding is a malformed header to the gateway (a
# request whose codings do not end in chunked, RFC 9112 6.3), nginx calls it an unknown coding (501).
GUNICORN_MALFORMED_REQUESTS = [
    *MALFORMED_REQUESTS,
    (b"GET /metrics HTTP/1.1\r\nHost: sluice\r\nTRANSFER-ENCODING: \r\n\r\n", 400, "bad_request"),  # found by fuzzing
    (b"POST / HTTP/1.1\r\nHost: sluice\r\nTransfer-Encoding: chunked, \r\n\r\n", 400, "bad_request"),
]


def chat_request_head(host: str, key: str, body_length: int, request_id: str | None = None) -> bytes:
    """The request line and headers of a raw `POST /v1/chat/completions` (for socket-level tests)."""
    extra = f"X-Request-Id: {request_id}\r\n" if request_id else ""
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {body_length}\r\n{extra}\r\n"
    ).encode()


def start_mock(tmp_path: Path, *args: str) -> Server:
    port = free_port()
    log_path = tmp_path / f"mock-{port}.log"
    cmd = [sys.executable, "-m", "app.mock_upstream", "--port", str(port), *args]
    process = start(cmd, f"http://127.0.0.1:{port}/_mock/stats", log_path)
    return Server(f"http://127.0.0.1:{port}", process, log_path)


def start_gateway(tmp_path: Path, config_toml: str, workers: int = 1, **env: str) -> Server:
    """gunicorn serving Sluice on a free port, with its data (SQLite) under tmp_path."""
    port = free_port()
    config_path = tmp_path / f"sluice-{port}.toml"
    config_path.write_text(config_toml)
    log_path = tmp_path / f"gateway-{port}.log"
    env = {
        "SLUICE_BIND": f"127.0.0.1:{port}",
        "SLUICE_CONFIG": str(config_path),
        "SLUICE_MASTER_KEY": MASTER_KEY,
        "SLUICE_WORKERS": str(workers),
        "SLUICE_LOG_LEVEL": "DEBUG",
        "SLUICE_DATA_DIR": str(tmp_path / "data"),
        "SLUICE_DATABASE_URL": f"sqlite:///{tmp_path}/data/sluice.db",
        "SLUICE_REDIS_URL": "",
        **env,
    }
    cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    process = start(cmd, f"http://127.0.0.1:{port}/healthz", log_path, env)
    return Server(f"http://127.0.0.1:{port}", process, log_path, env, cmd)


def upstream_toml(name: str, url: str, tokens: list[str], models: list[str], **extra: object) -> str:
    lines = [
        "[[upstreams]]",
        f'name = "{name}"',
        f'base_url = "{url}/v1"',
        "tokens = [" + ", ".join(f'"{t}"' for t in tokens) + "]",
        "models = [" + ", ".join(f'"{m}"' for m in models) + "]",
    ]
    lines += [f"{key} = {_toml(value)}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value).replace("'", '"')


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def mock(stack_dir):
    server = start_mock(stack_dir, "--delay", "0.02")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def edge(stack_dir):
    server = start_mock(stack_dir, "--strict-edge", "--delay", "0.02")
    yield server
    server.stop()


MAIN_TOKENS = ["main-token-000000000001", "main-token-000000000002"]
EDGE_TOKENS = ["edge-token-000000000001"]


@pytest.fixture(scope="session")
def gateway(stack_dir, mock, edge):
    config = (
        "[gateway]\nmax_body_bytes = 65536\n\n"
        + upstream_toml("edge", edge.url, EDGE_TOKENS, ["edge-*"])
        + upstream_toml("main", mock.url, MAIN_TOKENS, ["*"])
    )
    server = start_gateway(stack_dir, config, workers=2)
    yield server
    server.stop()


@pytest.fixture
def reset(mock, edge):
    for server in (mock, edge):
        requests.post(f"{server.url}/_mock/reset", timeout=5)


def mock_stats(server: Server) -> dict:
    return requests.get(f"{server.url}/_mock/stats", timeout=5).json()
