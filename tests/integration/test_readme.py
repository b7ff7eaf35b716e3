"""The README's examples, run as written against a gateway started the way `make run` starts it.

`deploy/demo.sh` runs with the repository as its directory (as `make run` does) and its data in
a temporary `data/` directory; the examples run in that directory's parent, so `data/demo-key`
means the same to them as to a newcomer, and `./sluice` is the checkout's CLI wrapper.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import ROOT, free_port, start

pytestmark = pytest.mark.integration
README = (ROOT / "README.md").read_text()
DEFAULT_URL = "http://127.0.0.1:8000"
VENV_BIN = str(Path(sys.executable).parent)
# What `make run` reads from the environment, blanked so the demo generates its own (as on a fresh shell).
DEMO_VARIABLES = (
    "SLUICE_CONFIG", "SLUICE_MASTER_KEY", "SLUICE_MASTER_KEY_FILE", "SLUICE_SECRET_KEY", "SLUICE_SECRET_KEY_PREVIOUS",
    "SLUICE_ADMIN_PASSWORD", "SLUICE_ADMIN_PASSWORD_HASH", "SLUICE_DATABASE_URL", "SLUICE_REDIS_URL",
    "SLUICE_DEMO_MOCK_PORT", "SLUICE_WORKERS",
)  # fmt: skip


@dataclass
class Demo:
    url: str
    workdir: Path  # holds data/, as the checkout does after `make run`
    process: subprocess.Popen
    log_path: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **dict.fromkeys(DEMO_VARIABLES, ""), "SLUICE_DATA_DIR": str(self.workdir / "data")}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def mock_url(self) -> str:
        match = re.search(r"The mock upstream: (http://\S+)/v1", self.log())
        assert match, self.log()
        return match.group(1)

    def stop(self) -> None:
        """Ctrl-C, as a newcomer stops it (SIGINT to the whole process group); bounded, then SIGKILL."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_demo(workdir: Path, **env: str) -> Demo:
    """`make run`: bash deploy/demo.sh in the checkout, with .venv/bin first on PATH."""
    assert not (ROOT / "sluice.toml").exists(), "a ./sluice.toml in the checkout would replace the demo config"
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    port = free_port()
    demo = {
        **dict.fromkeys(DEMO_VARIABLES, ""),
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "SLUICE_BIND": f"127.0.0.1:{port}",
        "SLUICE_DATA_DIR": str(workdir / "data"),
        **env,
    }
    log_path = workdir / f"demo-{port}.log"
    process = start(["bash", "deploy/demo.sh"], f"http://127.0.0.1:{port}/healthz", log_path, demo)
    return Demo(f"http://127.0.0.1:{port}", workdir, process, log_path)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    server = start_demo(tmp_path_factory.mktemp("readme"))
    yield server
    log = server.log()  # before the stop: a gevent worker's Ctrl-C noise is issue 10's item 6, not this file's
    server.stop()
    assert "Traceback" not in log, log


def blocks(language: str, marker: str) -> list[str]:
    found = [b for b in re.findall(rf"```{language}\n(.*?)```", README, flags=re.S) if marker in b]
    assert found, f"no {language} block with {marker!r} in the README"
    return found


def run_sh(demo: Demo, command: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """One README block in bash -e, as pasted into a shell in the checkout (here: the demo's workdir)."""
    command = command.replace(DEFAULT_URL, demo.url).replace("./sluice ", f"{ROOT}/sluice ")
    return subprocess.run(
        ["bash", "-e", "-c", command], cwd=demo.workdir, env=demo.env, input=stdin,
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip


def master(demo: Demo) -> dict[str, str]:
    return {"Authorization": f"Bearer {(demo.workdir / 'data' / 'demo-key').read_text().strip()}"}


def stream(url: str, key: str) -> list[str]:
    body = {"model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "Hello"}]}
    with requests.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                       stream=True, timeout=30) as response:  # fmt: skip
        assert response.status_code == 200, response.text
        return [line for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]


def test_readme_curl_example_streams(demo):
    assert shutil.which("curl"), "curl is needed (installed by .ci/run)"
    done = run_sh(demo, blocks("sh", "curl -N")[0])
    assert done.returncode == 0, done.stderr
    events = [line for line in done.stdout.splitlines() if line.startswith("data: ")]
    assert len(events) >= 3
    assert events[-1] == "data: [DONE]"


def test_readme_sdk_example_streams(demo):
    code = blocks("python", "from openai import OpenAI")[0].replace(DEFAULT_URL, demo.url)
    done = subprocess.run([sys.executable, "-c", code], cwd=demo.workdir, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Hello from the Sluice mock upstream!")


def test_readme_cli_and_admin_api_examples_run_as_written(demo):
    """Item 15: after `make run`, the CLI (./sluice) and the admin API examples work with no manual step."""
    examples = list(dict.fromkeys(blocks("sh", "./sluice ") + blocks("sh", "/admin/api/")))
    assert len(examples) >= 4
    for example in examples:
        done = run_sh(demo, example, stdin="tok-readme-000000000007\n")  # the token `read -rs TOKEN` gets
        assert done.returncode == 0, f"{example}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr and "no master key" not in done.stderr, done.stderr
    # The token the CLI added is one the running demo can decrypt and use (the same secret key).
    tokens = requests.get(f"{demo.url}/admin/api/tokens", headers=master(demo), timeout=10).json()["data"]
    added = next(t for t in tokens if t["source"] == "runtime")
    assert added["masked"].endswith("0007")
    checked = requests.post(f"{demo.url}/admin/api/tokens/{added['id']}/validate", headers=master(demo), timeout=30)
    assert checked.status_code == 200 and checked.json()["ok"], checked.text
    keys = requests.get(f"{demo.url}/admin/api/keys", headers=master(demo), timeout=10).json()["data"]
    states = {k["name"]: k["state"] for k in keys}
    assert states["team-a"] == "disabled" and "team-b" in states


def test_a_second_demo_on_another_bind_gets_its_own_mock(demo):
    """Item 17: no `Address already in use` traceback, and the second gateway streams from its own mock."""
    second = start_demo(demo.workdir)  # same checkout and data, as a second `make run` would be
    try:
        assert second.mock_url() != demo.mock_url()
        key = (demo.workdir / "data" / "demo-key").read_text().strip()
        before = requests.get(f"{second.mock_url()}/_mock/stats", timeout=5).json()["requests"]
        assert stream(second.url, key)[-1] == "data: [DONE]"
        assert stream(demo.url, key)[-1] == "data: [DONE]"
        assert requests.get(f"{second.mock_url()}/_mock/stats", timeout=5).json()["requests"] == before + 1
        assert "Traceback" not in second.log() and "Address already in use" not in second.log(), second.log()
    finally:
        second.stop()


def test_a_demo_mock_port_that_is_taken_fails_with_one_line(demo, tmp_path):
    """SLUICE_DEMO_MOCK_PORT set to a busy port: one clear line and a non-zero exit, no gateway started."""
    taken = demo.mock_url().rsplit(":", 1)[1]
    env = {**demo.env, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "SLUICE_BIND": f"127.0.0.1:{free_port()}"}
    env.update(SLUICE_DATA_DIR=str(tmp_path), SLUICE_DEMO_MOCK_PORT=taken)
    done = subprocess.run(["bash", "deploy/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{taken}: Address already in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr + done.stdout and "gunicorn" not in done.stderr, done.stderr


def test_a_second_demo_on_the_same_bind_fails_with_one_line(demo, tmp_path):
    """A second `make run` on a taken SLUICE_BIND: one line naming the fix, no gunicorn retries or mock."""
    env = {**demo.env, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "SLUICE_BIND": demo.url.removeprefix("http://")}
    env.update(SLUICE_DATA_DIR=str(tmp_path))
    done = subprocess.run(["bash", "deploy/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot listen on" in lines[0] and "SLUICE_BIND" in lines[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout
