"""Run Claude Code (npm `@anthropic-ai/claude-code`, pinned in tests/package.json) headless against a base URL.

`claude -p PROMPT --output-format json` prints one JSON result. Each run has its own HOME and CLAUDE_CONFIG_DIR
under tmp_path, the key as ANTHROPIC_API_KEY (Claude Code sends it as `x-api-key`) or ANTHROPIC_AUTH_TOKEN (sent as
`Authorization: Bearer`), its non-essential traffic off, and runs nothing here: in the `dontAsk` permission mode a
tool that needs approval is denied, and with `--permission-prompts none` nobody is asked. The package's postinstall
copies a native (Bun) binary over bin/claude.exe; without it the platform package's own copy is run.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from tests.integration.node_clients import MODULES, Run, run_client

SCOPE = MODULES / "@anthropic-ai"
VERSION = "2.1.332"  # as pinned in tests/package.json
AUTH_ENV = {"x-api-key": "ANTHROPIC_API_KEY", "bearer": "ANTHROPIC_AUTH_TOKEN"}
# The documented switches. CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC alone stops what it fetches besides the base
# URL (api.anthropic.com: feature flags, telemetry; a HEAD /api/hello preflight to the base URL); the rest name
# each part. No retries: a refused request ends the run at once instead of after a backoff.
QUIET = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_BUG_COMMAND": "1",
    "CLAUDE_CODE_MAX_RETRIES": "0",
}
FLAGS = ("--output-format", "json", "--permission-mode", "dontAsk", "--permission-prompts", "none",
         "--no-session-persistence", "--strict-mcp-config")  # fmt: skip


def claude_binary() -> Path | None:
    """The native binary: bin/claude.exe once the postinstall ran, else the platform package's copy."""
    placed = SCOPE / "claude-code" / "bin" / "claude.exe"
    if placed.is_file():
        with open(placed, "rb") as head:
            if head.read(4) == b"\x7fELF":
                return placed
    return next(iter(sorted(SCOPE.glob("claude-code-linux-*/claude"))), None)


def require_claude() -> Path:
    """The binary; skips locally, fails under CI=true when the pinned package is not installed."""
    binary = claude_binary()
    if binary is None:
        message = "npm package @anthropic-ai/claude-code is not installed in tests/node_modules (`make test`)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


def claude_env(home: Path, base_url: str, key: str, auth: str, model: str | None) -> dict[str, str]:
    """Where Claude Code keeps its state, where it sends requests, with which key and model."""
    env = {"HOME": str(home), "CLAUDE_CONFIG_DIR": str(home / ".claude"), "ANTHROPIC_BASE_URL": base_url,
           AUTH_ENV[auth]: key}  # fmt: skip
    if model:  # the main model and the small one (background calls) both go to the routed name
        env |= {"ANTHROPIC_MODEL": model, "ANTHROPIC_DEFAULT_HAIKU_MODEL": model, "ANTHROPIC_SMALL_FAST_MODEL": model}
    return env


def claude_print(tmp_path: Path, base_url: str, key: str, prompt: str, *, auth: str = "x-api-key",
                 model: str | None = None, quiet: bool = True, extra_env: dict[str, str] | None = None,
                 timeout: float = 90) -> Run:  # fmt: skip
    """`claude -p PROMPT` in print mode, isolated under tmp_path; its JSON result is the run's only event."""
    binary = require_claude()
    home, work = tmp_path / "claude-home", tmp_path / "claude-work"
    home.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    env = {**claude_env(home, base_url, key, auth, model), **(QUIET if quiet else {}), **(extra_env or {})}
    return run_client([str(binary), "-p", prompt, *FLAGS], env, work, timeout)


def claude_result(run: Run) -> dict:
    """The result Claude Code printed (`result` is the answer's text, `is_error` says whether it failed)."""
    results = run.of_type("result")
    assert len(results) == 1, f"exit {run.returncode}\nstdout: {run.events}\nstderr: {run.stderr[-4000:]}"
    return results[0]


class ProxyTrap:
    """A listener posing as the HTTP(S) proxy: every connection a client makes elsewhere shows up here.

    Handed to Claude Code as HTTPS_PROXY/HTTP_PROXY with NO_PROXY for loopback, it records the first line each
    connection sends (`CONNECT host:443 ...`) and closes it: nothing leaves the machine, and nothing is resolved.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)  # how often the accept loop sees a stop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def env(self) -> dict[str, str]:
        url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        names = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")
        local = "127.0.0.1,localhost,::1"
        return {**{n: url for n in names}, **{n.lower(): url for n in names}, "NO_PROXY": local, "no_proxy": local}

    def __enter__(self) -> ProxyTrap:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    first = conn.recv(4096)
                except OSError:  # connected and said nothing: still a connection attempt
                    first = b""
                self.lines.append(first.split(b"\r\n", 1)[0].decode("latin-1") or "(connected, sent nothing)")
