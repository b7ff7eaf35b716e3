"""Bounded soak: faults and load mixed for a while; prints RSS, outcomes and any badly shaped error.

    .venv/bin/python bench/soak.py --duration 600 --concurrency 20      (not part of `make test`)

Starts the bundled mock upstream and gunicorn serving Sluice (2 gevent workers, SQLite, a
managed key with limits), then sends a random mix of requests until the duration ends:
plain and streamed chats, streams the mock drops or stalls, streams the client abandons,
upstreams whose first token stalls, answers 5xx, 429 with an HTTP-date, an error event or
nothing, and malformed client requests. Every answer from the app must be OpenAI-shaped
(or a stream ending in data: [DONE]); the count of those that are not must be zero.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.limits_overhead import ROOT, free_port, wait_ready

MASTER = "sk-soak-master-key-0123456789"
MESSAGES = [{"role": "user", "content": "Hello"}]
CONFIG = """
[gateway]
max_attempts = 3
heartbeat_interval = 1
first_byte_timeout = 3
idle_timeout = 2
deadline = 20
queue_timeout = 2
"""
UPSTREAMS = {
    "good": ["good-token-000000001", "good-token-000000002"],
    "flaky": ["slow-token-000000001", "errorfirst-token-001", "empty-token-00000001", "good-token-000000003"],
    "limited": ["limiteddate-token-01", "good-token-000000004"],
    "broken": ["broken-token-0000001"],
}


def scenario(rng: random.Random) -> tuple[str, dict, bytes | None, str | None]:
    """(kind, JSON body, raw body override, content type override)."""
    base = {"model": "good-mock", "messages": MESSAGES}
    kinds = [
        ("plain", base, None, None),
        ("stream", {**base, "stream": True}, None, None),
        ("stream_drop", {**base, "stream": True, "mock": {"drop_after": rng.randrange(1, 6)}}, None, None),
        ("stream_stall", {**base, "stream": True, "mock": {"stall_after": 2, "stall": 4}}, None, None),
        ("client_abort", {**base, "stream": True, "mock": {"chunks": 50, "delay": 0.02}}, None, None),
        ("flaky", {**base, "model": "flaky-mock", "stream": True}, None, None),
        ("limited", {**base, "model": "limited-mock"}, None, None),
        ("broken", {**base, "model": "broken-mock"}, None, None),
        ("bad_json", base, b'{"model": ', None),
        ("bad_type", base, None, "text/plain"),
        ("no_messages", {"model": "good-mock"}, None, None),
    ]
    return rng.choice(kinds)


def one(url: str, rng: random.Random, key: str) -> tuple[str, str, bool]:
    """Send one scenario; returns (kind, outcome, well_shaped)."""
    kind, body, raw, content_type = scenario(rng)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": content_type or "application/json"}
    data = raw if raw is not None else json.dumps(body).encode()
    streaming = bool(body.get("stream")) and raw is None and content_type is None
    try:
        with requests.post(f"{url}/v1/chat/completions", data=data, headers=headers, stream=True, timeout=60) as resp:
            if resp.status_code != 200 or not streaming:
                return kind, str(resp.status_code), resp.status_code == 200 or _shaped(resp)
            lines = []
            for line in resp.iter_lines(decode_unicode=True):
                if line:
                    lines.append(line)
                if kind == "client_abort" and len(lines) >= rng.randrange(1, 10):
                    return kind, "aborted", True
            errors = [json.loads(line[6:])["error"]["code"] for line in lines if line.startswith('data: {"error"')]
            return kind, errors[0] if errors else "ok", bool(lines) and lines[-1] == "data: [DONE]"
    except requests.RequestException as exc:
        return kind, f"exception:{type(exc).__name__}", False


def _shaped(resp: requests.Response) -> bool:
    try:
        error = resp.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return set(error) == {"message", "type", "param", "code"}


def rss_kb(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    total = 0
    for pid in [master, *children]:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mock_port, port = free_port(), free_port()
        mock = subprocess.Popen(
            [sys.executable, "-m", "app.mock_upstream", "--port", str(mock_port), "--delay", "0.02"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        mock_url = f"http://127.0.0.1:{mock_port}"
        wait_ready(f"{mock_url}/_mock/stats", mock)
        config = Path(tmp) / "sluice.toml"
        config.write_text(
            CONFIG
            + "".join(
                f'\n[[upstreams]]\nname = "{name}"\nbase_url = "{mock_url}/v1"\n'
                f'tokens = {json.dumps(tokens)}\nmodels = ["{name}-*"]\n'
                for name, tokens in UPSTREAMS.items()
            )
        )
        env = {**os.environ, "SLUICE_CONFIG": str(config), "SLUICE_BIND": f"127.0.0.1:{port}",
               "SLUICE_MASTER_KEY": MASTER, "SLUICE_WORKERS": "2", "SLUICE_LOG_LEVEL": "WARNING",
               "SLUICE_DATABASE_URL": f"sqlite:///{tmp}/soak.db"}  # fmt: skip
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(f"{url}/healthz", gateway)
            limits = {"name": "soak", "rpm": 100000, "tpm": 100000000}
            key = requests.post(
                f"{url}/admin/api/keys", json=limits, headers={"Authorization": f"Bearer {MASTER}"}
            ).json()["key"]
            run(url, key, gateway.pid, args.duration, args.concurrency)
        finally:
            for process in (gateway, mock):
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)


def run(url: str, key: str, master: int, duration: float, concurrency: int) -> None:
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    misshaped: list[tuple[str, str]] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration
    start_rss = rss_kb(master)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop_at:
            kind, outcome, shaped = one(url, rng, key)
            with lock:
                counts[(kind, outcome)] += 1
                if not shaped:
                    misshaped.append((kind, outcome))

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"duration {duration:.0f} s, concurrency {concurrency}, requests {sum(counts.values())}")
    print(f"gateway RSS (master + workers): start {start_rss / 1024:.1f} MiB, end {rss_kb(master) / 1024:.1f} MiB")
    for (kind, outcome), count in sorted(counts.items()):
        print(f"  {kind:<14} {outcome:<32} {count}")
    print(f"non-OpenAI-shaped answers from the app: {len(misshaped)}")
    for kind, outcome in misshaped[:20]:
        print(f"  {kind} {outcome}")


if __name__ == "__main__":
    main()
