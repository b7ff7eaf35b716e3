"""What keys, limits and usage accounting cost: throughput with them on versus off, one run.

    make bench        (or: .venv/bin/python bench/limits_overhead.py --requests 2000 --concurrency 10)

Starts the bundled mock upstream (no delay) and gunicorn serving Sluice on SQLite, then
drives non-streaming chat requests over loopback, first with everything off (the master
key: no key lookup, no limits; `usage_records = false`), then on (a managed key with rpm,
tpm and max_parallel set, usage records written). Prints requests/s, p50/p99 latency and
the on/off ratio. Both runs share this machine: compare ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
MASTER = "sk-bench-master-key-0123456789"
BODY = {"model": "mock-gpt", "messages": [{"role": "user", "content": "Hello"}], "mock": {"chunks": 4, "delay": 0}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{process.args} exited with {process.returncode}")
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.1)
    sys.exit(f"{url} did not come up")


def start_gateway(workdir: Path, mock_url: str, records: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    config = workdir / f"sluice-{port}.toml"
    config.write_text(
        f"[gateway]\nusage_records = {str(records).lower()}\n\n"
        f'[[upstreams]]\nname = "mock"\nbase_url = "{mock_url}/v1"\ntokens = ["bench-token-000000001"]\n'
    )
    env = {
        **os.environ,
        "SLUICE_CONFIG": str(config),
        "SLUICE_BIND": f"127.0.0.1:{port}",
        "SLUICE_MASTER_KEY": MASTER,
        "SLUICE_DATABASE_URL": f"sqlite:///{workdir}/bench-{port}.db",
        "SLUICE_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/healthz", process)
    return process, url


def drive(url: str, key: str, total: int, concurrency: int) -> tuple[float, list[float]]:
    """Send `total` requests from `concurrency` threads; return (seconds, latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()
    remaining = [total]

    def worker() -> None:
        with requests.Session() as http:
            headers = {"Authorization": f"Bearer {key}"}
            while True:
                with lock:
                    if remaining[0] == 0:
                        return
                    remaining[0] -= 1
                started = time.perf_counter()
                resp = http.post(f"{url}/v1/chat/completions", json=BODY, headers=headers, timeout=30)
                elapsed = time.perf_counter() - started
                if resp.status_code != 200:
                    sys.exit(f"unexpected {resp.status_code}: {resp.text[:200]}")
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies


def measure(label: str, url: str, key: str, total: int, concurrency: int) -> float:
    drive(url, key, min(200, total), concurrency)  # warm-up: connections, caches
    seconds, latencies = drive(url, key, total, concurrency)
    latencies.sort()
    rps = total / seconds
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(f"{label:<34} {rps:9.1f} req/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms")
    return rps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        mock_port = free_port()
        mock = subprocess.Popen(
            [sys.executable, "-m", "app.mock_upstream", "--port", str(mock_port), "--delay", "0"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        mock_url = f"http://127.0.0.1:{mock_port}"
        wait_ready(f"{mock_url}/_mock/stats", mock)
        processes = [mock]
        try:
            off, off_url = start_gateway(workdir, mock_url, records=False)
            processes.append(off)
            print(f"{args.requests} non-streaming requests, concurrency {args.concurrency}, 1 gevent worker, SQLite")
            rps_off = measure("off (master key, no records)", off_url, MASTER, args.requests, args.concurrency)
            on, on_url = start_gateway(workdir, mock_url, records=True)
            processes.append(on)
            limits = {"name": "bench", "rpm": 10**9, "tpm": 10**12, "max_parallel": 10**6}
            created = requests.post(
                f"{on_url}/admin/api/keys", json=limits, headers={"Authorization": f"Bearer {MASTER}"}, timeout=10
            )
            key = created.json()["key"]
            rps_on = measure("on (managed key, limits, records)", on_url, key, args.requests, args.concurrency)
            print(f"ratio on/off: {rps_on / rps_off:.2f}")
        finally:
            for process in processes:
                stop(process)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:  # idle keep-alive connections hold a graceful stop
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


if __name__ == "__main__":
    main()
