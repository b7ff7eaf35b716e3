"""The Docker image, built from the real Dockerfile and run for real with podman (no registry).

deploy/podman-base.sh makes a stand-in for the Dockerfile's pinned base (Debian bookworm with
python3 by debootstrap, cached between runs), `podman build` builds the Dockerfile on it through
its BASE_IMAGE argument, and containers run with runc and explicit ulimits (this VM refuses
podman's defaults and crun's cgroup mode) on the host's network, so the gateway and the bundled
mock it starts in the demo configuration listen on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import MASTER_KEY, ROOT, free_port
from tests.services import program

pytestmark = pytest.mark.integration

TAG = "localhost/sluice:image-test"
UID = GID = 10001
RUN_OPTIONS = (
    "--runtime", "runc",
    "--ulimit", "nofile=20000:20000",
    "--ulimit", "nproc=32768:32768",
    "--network=host",
)  # fmt: skip
DOCKER_STOP_TIMEOUT = 10  # `docker stop`'s default before SIGKILL (podman's too)
IDLE_STOP_LIMIT = 3.0  # the gateway's own stop is under ~1 s idle; the rest is podman's CLI
CLOSE = {"Connection": "close"}  # an idle keep-alive connection would hold gunicorn's stop


def _unavailable(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _run(cmd: list[str], log: Path, timeout: float) -> str:
    """Run a build step from the repository root; its output goes to `log`, its stdout is returned."""
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        pytest.fail(f"{cmd[:2]} exited with {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    return done.stdout


@pytest.fixture(scope="module")
def podman(tmp_path_factory) -> Iterator[str]:
    """Build the image once for this module: the cached base, then the Dockerfile (layer cache too)."""
    podman = program("podman", "podman", "podman")
    program("runc", "runc", "runc", "/usr/sbin/runc")
    program("debootstrap", "debootstrap", "debootstrap", "/usr/sbin/debootstrap")
    if os.geteuid() != 0:
        _unavailable("the image test runs podman as root (debootstrap, runc); .ci/run runs as root")
    log = tmp_path_factory.mktemp("image") / "build.log"
    base = _run(["bash", "deploy/podman-base.sh"], log, timeout=900).split()[-1]
    build = [podman, "build", "--format", "docker", "--network=host", "--build-arg", f"BASE_IMAGE={base}"]
    _run([*build, "--tag", TAG, "."], log, timeout=900)
    yield podman


@dataclass
class Container:
    podman: str
    name: str
    url: str
    data: Path

    def cmd(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.podman, *args], capture_output=True, text=True, timeout=timeout, check=False
        )  # fmt: skip

    def logs(self) -> str:
        done = self.cmd("logs", self.name)
        return done.stdout + done.stderr

    def state(self, field: str) -> str:
        return self.cmd("inspect", "--format", f"{{{{.State.{field}}}}}", self.name).stdout.strip()

    def stop(self) -> subprocess.Popen:
        """`podman stop` with docker's default timeout, started in the background."""
        return subprocess.Popen(
            [self.podman, "stop", "--time", str(DOCKER_STOP_TIMEOUT), self.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip


@pytest.fixture
def container(podman, tmp_path) -> Iterator[Container]:
    """The image in its demo configuration (bundled mock), /data bind-mounted from a host directory."""
    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, UID, GID)  # what an operator does for a bind mount; the image's ids are fixed
    port, mock_port = free_port(), free_port()
    box = Container(podman, f"sluice-image-test-{port}", f"http://127.0.0.1:{port}", data)
    env = {"SLUICE_BIND": f"127.0.0.1:{port}", "SLUICE_DEMO_MOCK_PORT": str(mock_port), "SLUICE_MASTER_KEY": MASTER_KEY}
    run = ["run", "--detach", "--name", box.name, *RUN_OPTIONS, "--volume", f"{data}:/data"]
    started = box.cmd(*run, *(f"--env={k}={v}" for k, v in env.items()), TAG)
    assert started.returncode == 0, started.stderr
    try:
        _wait_ready(box, mock_port)
        yield box
    finally:
        box.cmd("rm", "--force", "--time", "0", box.name)


def _wait_ready(box: Container, mock_port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ready = requests.get(f"{box.url}/readyz", timeout=2, headers=CLOSE).status_code == 200
        except requests.RequestException:  # not listening yet, or the worker still booting
            ready = False
        if ready and _listening(mock_port):
            return
        assert box.state("Running") == "true", box.logs()
        time.sleep(0.3)
    pytest.fail(f"the container did not become ready:\n{box.logs()}")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _chat(url: str, **extra) -> requests.Response:
    body = {"model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "hi"}], **extra}
    headers = {"Authorization": f"Bearer {MASTER_KEY}", **CLOSE}
    return requests.post(f"{url}/v1/chat/completions", json=body, headers=headers, stream=True, timeout=30)


def _usage(data: Path) -> list[dict]:
    with sqlite3.connect(data / "sluice.db") as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT outcome, streamed, endpoint FROM usage ORDER BY id")]


def test_image_serves_health_and_a_stream_as_non_root_and_stops_at_once_when_idle(container):
    assert requests.get(f"{container.url}/healthz", timeout=5, headers=CLOSE).json() == {"status": "ok"}
    health = container.cmd("healthcheck", "run", container.name)  # the Dockerfile's HEALTHCHECK command
    assert health.returncode == 0, health.stdout + health.stderr
    with _chat(container.url) as resp:
        assert resp.status_code == 200
        assert resp.text.rstrip().endswith("data: [DONE]")
    # Every process of the container (gunicorn, its worker, the mock) as 10001:10001, on the host too.
    users = container.cmd("top", container.name, "huser", "hgroup").stdout.split()
    assert users[:2] == ["HUSER", "HGROUP"] and set(users[2:]) == {str(UID)}, users
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in container.data.iterdir()}
    assert owners == {(UID, GID)}, owners

    began = time.monotonic()
    assert container.stop().wait(timeout=30) == 0
    took = time.monotonic() - began
    assert container.state("ExitCode") == "0", container.logs()  # 137 would be docker's SIGKILL
    assert took < IDLE_STOP_LIMIT, f"an idle container took {took:.1f} s to stop:\n{container.logs()}"
    assert _usage(container.data) == [{"outcome": "ok", "streamed": 1, "endpoint": "chat"}]  # written by then


def test_docker_stop_during_a_long_stream_ends_it_with_an_error_event_and_records_usage(container):
    # A 40 s stream: far longer than docker's 10 s, so only the image's grace can end it in time.
    with _chat(container.url, mock={"chunks": 800, "delay": 0.05}) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines(decode_unicode=True)
        first = next(line for line in lines if line.startswith("data: "))
        stopping = container.stop()
        try:
            events = [first, *(line for line in lines if line.startswith("data: "))]
        except requests.exceptions.ChunkedEncodingError:
            pytest.fail(f"the stream was cut without an error event:\n{container.logs()}")
    assert stopping.wait(timeout=30) == 0
    assert container.state("ExitCode") == "0", container.logs()  # it ended itself before SIGKILL
    assert events[-1] == "data: [DONE]", events[-3:]  # never a silent cut
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["code"] == "server_shutdown", error
    assert 1 < len(events) < 800, len(events)
    assert _usage(container.data)[-1] == {"outcome": "server_shutdown", "streamed": 1, "endpoint": "chat"}
