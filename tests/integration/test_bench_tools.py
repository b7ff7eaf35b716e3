"""The benchmark tools work: the floor (bench/bare_proxy.py) really proxies, and the comparison
harness (bench/compare.py) runs end to end, printing every row (the translated Responses, Messages and
from-Anthropic columns included) and writing its chart."""

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
TRANSLATED = {"sluice-responses": "responses", "sluice-messages": "messages", "sluice-from-anthropic": "from-anthropic"}
COLUMNS = ["direct", "bare", "sluice", *TRANSLATED]  # the quick run's table (no LiteLLM)


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
    header = next(line for line in lines if line.split() == COLUMNS)
    table = lines[lines.index(header) + 1 : lines.index(header) + 1 + len(ROWS)]
    for (_, label, _), line in zip(ROWS, table, strict=True):
        assert line.startswith(label) and len(line[len(label) :].split()) == len(COLUMNS), output
    measured = {line[:28].strip(): dict(zip(COLUMNS, line[28:].split(), strict=True)) for line in table}
    for row in ("plain req/s, c=10", "stream first event p50 ms"):
        assert "-" not in [measured[row][name] for name in ("direct", "bare", "sluice")], output
    for row in ("CPU us/event at 4k ev/s", "lag p99 ms at 4k ev/s"):  # measured on the gateways only
        assert [measured[row][name] != "-" for name in ("direct", "bare", "sluice")] == [False, True, True], output
    assert set(measured["failed requests"].values()) == {"0"}, output
    assert [measured["streams held open"][name] for name in ("bare", "sluice")] == ["50", "50"], output
    for target in ("throughput sluice/bare, c=10", "first-event overhead sluice/bare p50",
                   "forwarding lag p99 sluice/bare", "CPU per event sluice/bare, 4k ev/s",
                   "lag p99 sluice/bare, 4k ev/s", "CPU per event responses/bare, 4k ev/s",
                   "CPU per event messages/bare, 4k ev/s", "CPU per event from-anthropic/bare, 4k ev/s",
                   "RSS with open streams sluice/bare",
                   "events forwarded one for one (sluice)"):  # fmt: skip
        verdict = next(line for line in lines if line.startswith(target))
        assert verdict.endswith(("PASS", "MISS")), output
    for column, dialect in TRANSLATED.items():
        _check_translated_column({row: cells[column] for row, cells in measured.items()}, output)
        _check_translated_ratios(lines, dialect, output)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _check_translated_column(cells: dict[str, str], output: str) -> None:
    """Sluice's translated streams: streams only, every text delta received and timed against its chunk."""
    for row in ("stream first event p50 ms", "stream first event p99 ms", "forwarding lag p50 ms",
                "forwarding lag p99 ms", "CPU us/event at 4k ev/s", "lag p99 ms at 4k ev/s"):  # fmt: skip
        assert cells[row] != "-", output
    assert cells["plain req/s, c=10"] == "-" and cells["streams held open"] == "-", output
    received, expected = cells["events received/expected"].split("/")
    assert received == expected != "0", output


def _check_translated_ratios(lines: list[str], dialect: str, output: str) -> None:
    """Translated / native chat ratios, printed as numbers (no target, so no verdict)."""
    ratios = [line for line in lines if f" {dialect}/chat " in line]
    assert [line.split(f" {dialect}/chat")[0] for line in ratios] == [
        "first event p50", "first event p99", "forwarding lag p50", "forwarding lag p99"], output  # fmt: skip
    assert all(float(line.split()[-1]) > 0 for line in ratios), output


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (b'data: {"choices": [{"delta": {"content": "Hi "}}], "mock_seq": 0, "mock_ts": 1795853934.25}\n\n',
         b'data: {"choices": [{"delta": {"content": "ts=1795853934.25 Hi "}}], "mock_seq": 0, '
         b'"mock_ts": 1795853934.25}\n\n'),
        (b'data: {"choices": [], "usage": {"total_tokens": 3}, "mock_ts": 1795853934.25}\n\n',
         b'data: {"choices": [], "usage": {"total_tokens": 3}, "mock_ts": 1795853934.25}\n\n'),  # no text
        (b"data: [DONE]\n\n", b"data: [DONE]\n\n"),
        (b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {"type": '
         b'"text_delta", "text": "Hi "}, "mock_seq": 3, "mock_ts": 1795853934.25}\n\n',
         b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {"type": '
         b'"text_delta", "text": "ts=1795853934.25 Hi "}, "mock_seq": 3, "mock_ts": 1795853934.25}\n\n'),
        (b'event: content_block_start\ndata: {"type": "content_block_start", "index": 0, "content_block": '
         b'{"type": "text", "text": ""}, "mock_seq": 2, "mock_ts": 1795853934.25}\n\n',
         b'event: content_block_start\ndata: {"type": "content_block_start", "index": 0, "content_block": '
         b'{"type": "text", "text": ""}, "mock_seq": 2, "mock_ts": 1795853934.25}\n\n'),  # no text yet
    ],
)  # fmt: skip
def test_stamped_mock_puts_the_chunks_time_at_the_head_of_its_text(event, expected):
    from bench.stamped_mock import stamp

    assert stamp(event) == expected


@pytest.mark.parametrize(
    ("responses", "data", "produced"),
    [
        (False, b'{"choices": [], "mock_ts": 1795853934.25}', 1795853934.25),
        (False, b'{"choices": []}', None),  # re-encoded by a peer: no mock_ts
        (True, b'{"type": "response.output_text.delta", "delta": "ts=1795853934.25 Hi "}', 1795853934.25),
        (True, b'{"type": "response.output_text.delta", "delta": "Hi "}', None),  # not from the stamped mock
        (True, b'{"type": "response.output_text.delta", "delta": "ts=soon Hi "}', None),
        ("messages", b'{"type": "content_block_delta", "delta": {"type": "text_delta", "text": "ts=1795853934.25 Hi"}}',
         1795853934.25),
        ("messages", b'{"type": "content_block_delta", "delta": {"type": "text_delta", "text": "Hi "}}', None),
        ("translated", b'{"choices": [{"delta": {"content": "ts=1795853934.25 Hi "}}], "mock_ts": 1.5}', 1795853934.25),
        ("translated", b'{"choices": [{"delta": {"content": "Hi "}}]}', None),
        ("translated", b'{"choices": [], "usage": {"total_tokens": 3}}', None),
    ],
)  # fmt: skip
def test_the_stream_client_reads_when_the_mock_produced_an_event(responses, data, produced):
    from bench.load import ANTHROPIC, CHAT, CHAT_TRANSLATED, RESPONSES

    wires = {"messages": ANTHROPIC, "translated": CHAT_TRANSLATED, True: RESPONSES, False: CHAT}
    wire = wires[responses]
    assert wire.produced_at(data) == produced
