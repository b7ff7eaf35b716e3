"""The benchmark floor (bench/bare_proxy.py) really proxies, so comparisons against it mean something."""

from __future__ import annotations

import sys

import pytest
import requests

from tests.integration.conftest import Server, free_port, start

pytestmark = pytest.mark.integration


def test_bare_proxy_streams_through(tmp_path, mock):
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-b", f"127.0.0.1:{port}", "--no-control-socket",
           "bench.bare_proxy:app"]  # fmt: skip
    env = {"BARE_UPSTREAM": mock.url}
    process = start(cmd, f"http://127.0.0.1:{port}/v1/models", tmp_path / "bare.log", env)
    server = Server(f"http://127.0.0.1:{port}", process, tmp_path / "bare.log")
    try:
        body = {"model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        resp = requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
        assert resp.status_code == 200 and resp.text.rstrip().endswith("data: [DONE]")
        plain = requests.post(f"{server.url}/v1/chat/completions", json={**body, "stream": False}, timeout=30)
        assert plain.json()["object"] == "chat.completion"
    finally:
        server.stop()
