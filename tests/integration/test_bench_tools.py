"""The benchmark tools work: the floor (bench/bare_proxy.py) really proxies, and the comparison
harness (bench/compare.py) runs end to end, printing every row and writing its chart."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest
import requests

from tests.integration.conftest import ROOT, Server, free_port, start

pytestmark = pytest.mark.integration


def test_bare_proxy_streams_through(tmp_path, mock):
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "-c", "bench/bare_gunicorn.conf.py", "-k", "gevent",
           "-b", f"127.0.0.1:{port}", "bench.bare_proxy:app"]  # fmt: skip
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


def _require_bench_tools() -> None:
    """wrk and matplotlib (`make bench-deps`): skipped locally without them, a failure in CI."""
    tools = {"wrk": shutil.which("wrk"), "matplotlib": importlib.util.find_spec("matplotlib")}
    missing = [name for name, found in tools.items() if not found]
    if not missing:
        return
    message = f"the benchmark harness needs {' and '.join(missing)}: run `make bench-deps`"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def test_comparison_harness_quick_run(tmp_path):
    _require_bench_tools()
    from bench.compare import ROWS

    chart = tmp_path / "bench.png"
    cmd = [sys.executable, "bench/compare.py", "--quick", "--chart", str(chart)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.split() == ["direct", "bare", "sluice"])
    table = lines[lines.index(header) + 1 : lines.index(header) + 1 + len(ROWS)]
    for (_, label, _), line in zip(ROWS, table, strict=True):
        assert line.startswith(label) and len(line[len(label) :].split()) == 3, output
    measured = {line[:28].strip(): line[28:].split() for line in table}
    assert "-" not in measured["plain req/s, c=10"] + measured["stream first event p50 ms"], output
    assert measured["failed requests"] == ["0", "0", "0"], output
    assert measured["streams held open"][1:] == ["50", "50"], output
    for target in ("throughput sluice/bare, c=10", "first-event overhead sluice/bare p50",
                   "forwarding lag p99 sluice/bare", "RSS with open streams sluice/bare",
                   "events forwarded one for one (sluice)"):  # fmt: skip
        verdict = next(line for line in lines if line.startswith(target))
        assert verdict.endswith(("PASS", "MISS")), output
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
