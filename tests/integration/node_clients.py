"""Run real JS clients (the Vercel AI SDK, the Codex CLI) from tests/node_modules against a base URL.

`make test` installs the pinned packages (tests/package.json, `npm ci`). Without node or the packages
the tests that need them skip locally and fail under CI=true, like the nginx and Chromium ones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT
from tests.services import program

NODE_DIR = ROOT / "tests"
MODULES = NODE_DIR / "node_modules"
VERCEL_SCRIPT = NODE_DIR / "node" / "vercel_stream.mjs"
CODEX = MODULES / ".bin" / "codex"
PACKAGES = ("ai", "@ai-sdk/openai", "zod", "@openai/codex")
CODEX_KEY_ENV = "SLUICE_CODEX_KEY"


def require_node() -> str:
    """The node binary, with the pinned packages installed; skips locally, fails under CI=true."""
    node = program("Node.js", "nodejs", "node")
    missing = [name for name in PACKAGES if not (MODULES / name / "package.json").is_file()]
    if missing or not CODEX.exists():
        message = f"npm packages {missing or ['@openai/codex']} are not installed in tests/node_modules (`make test`)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return node


@dataclass
class Run:
    """One client run: its exit status, the JSON lines it printed, and its stderr."""

    returncode: int
    events: list[dict]
    stderr: str

    def of_type(self, kind: str) -> list[dict]:
        return [event for event in self.events if event.get("type") == kind]

    def check(self) -> Run:
        """This run, if it succeeded; else an AssertionError showing what the client said."""
        assert self.returncode == 0, f"exit {self.returncode}\nstdout: {self.events}\nstderr: {self.stderr[-4000:]}"
        return self


def run_client(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float) -> Run:
    """Run a client in its own process group with a minimal environment plus `env`; killed after `timeout`."""
    # A minimal environment: no OPENAI_* or proxy settings of the machine leak into the client.
    base = {k: os.environ[k] for k in ("PATH", "LANG", "TZ") if k in os.environ}
    # Its own process group: `codex` is a node wrapper around a native binary, and a timeout kills both.
    process = subprocess.Popen(
        cmd, cwd=cwd, env={**base, **env}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        stderr += f"\n[killed after {timeout} s]"
    events = []
    for line in stdout.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append({"type": "non-json", "line": line})
    return Run(process.returncode, events, stderr)


def vercel_stream(mode: str, base_url: str, key: str, model: str, timeout: float = 60) -> Run:
    """tests/node/vercel_stream.mjs (`text` or `tool`): streamText with the SDK's default OpenAI model."""
    node = require_node()
    env = {"SLUICE_BASE_URL": base_url, "SLUICE_API_KEY": key, "SLUICE_MODEL": model,
           "SLUICE_TIMEOUT_MS": str(int(timeout * 1000) - 5000), "HOME": str(NODE_DIR)}  # fmt: skip
    return run_client([node, str(VERCEL_SCRIPT), mode], env, NODE_DIR, timeout)


def codex_config(base_url: str, model: str) -> str:
    """A Codex config.toml: one custom provider at base_url, nothing run, nothing asked, no other network."""
    return f"""\
model = "{model}"
model_provider = "sluice"
# Codex may run nothing: a read-only sandbox and no approval prompts (a request would be refused).
approval_policy = "never"
sandbox_mode = "read-only"
check_for_update_on_startup = false

[analytics]
enabled = false

[feedback]
enabled = false

[otel]
exporter = "none"
log_user_prompt = false

[history]
persistence = "none"

# On by default, and each reaches outside: `plugins` clones a git repository and looks up two hosts
# on every start; the others are remote plugins and connectors. Unbounded retries would hide failures,
# and the shell snapshot runs a login shell (the user's rc files) that nothing here needs.
[features]
plugins = false
remote_plugin = false
apps = false
unbounded_connection_retries = false
shell_snapshot = false

[model_providers.sluice]
name = "Sluice"
base_url = "{base_url}"
env_key = "{CODEX_KEY_ENV}"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
stream_idle_timeout_ms = 20000
"""


def codex_exec(tmp_path: Path, base_url: str, key: str, model: str, prompt: str, timeout: float = 60) -> Run:
    """`codex exec --json` with an isolated CODEX_HOME (and HOME) under tmp_path; events as JSON lines."""
    require_node()
    home, work = tmp_path / "codex-home", tmp_path / "codex-work"
    home.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    (home / "config.toml").write_text(codex_config(base_url, model))
    env = {"CODEX_HOME": str(home), "HOME": str(home), CODEX_KEY_ENV: key}
    cmd = [str(CODEX), "exec", "--json", "--ephemeral", "--strict-config", "--skip-git-repo-check", prompt]
    return run_client(cmd, env, work, timeout)


def codex_answer(run: Run) -> str:
    """The text of Codex's last agent message."""
    messages = [e["item"]["text"] for e in run.of_type("item.completed") if e["item"].get("type") == "agent_message"]
    assert messages, f"no agent message in {run.events}\nstderr: {run.stderr[-4000:]}"
    return messages[-1]
