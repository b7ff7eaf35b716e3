"""The processes a comparison run measures: the mock upstream, the bare proxy, Sluice, LiteLLM.

Each runs in its own session (so its own process group) on a free 127.0.0.1 port, logs to
a file in the run's work directory, and is stopped by signalling its whole group: a run
leaves nothing behind, and never touches a process it did not start.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")  # clock ticks per second, the unit of /proc/<pid>/stat times
PEERS_VENV = ROOT / ".venv-peers"
UPSTREAM_TOKEN = "bench-token-000000001"
LITELLM_MASTER = "sk-bench-litellm-master-0123456789"
METRICS_TOKEN = "bench-metrics-token-0123456789"
MODEL = "mock-gpt"


@dataclass
class Server:
    """One running process group and how clients reach it."""

    name: str
    url: str
    process: subprocess.Popen
    log_path: Path
    key: str  # the bearer key clients send
    db_path: Path | None = None  # Sluice's SQLite file

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").split(":")
        return host, int(port)

    def stop(self) -> None:
        stop_group(self.process)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the caller's own settings for any of the systems measured."""
    prefixes = ("SLUICE_", "PROMETHEUS_", "LITELLM_", "BARE_", "AIOHTTP_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    return {**env, **extra}


def launch(name: str, cmd: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    """Poll `url` until it answers anything (bounded); stop the group and raise if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stop_group(process)
            raise RuntimeError(f"{process.args[:4]} exited with {process.returncode}:\n{tail(log_path)}")
        try:
            requests.get(url, timeout=2, headers={"Connection": "close"})
            return
        except requests.RequestException:
            time.sleep(0.1)
    stop_group(process)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n{tail(log_path)}")


def stop_group(process: subprocess.Popen, grace: float = 3.0) -> None:
    """SIGTERM the process group; SIGKILL whatever is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break  # the whole group is gone
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if not group_pids(process.pid):
            break


def group_cpu_ticks(pgid: int) -> int:
    """User + system CPU time of a process group's live processes, in clock ticks."""
    total = 0
    for pid in group_pids(pgid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total


def group_pids(pgid: int) -> list[int]:
    """Every live process in process group `pgid`, read from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        fields = stat.rpartition(")")[2].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def rss_kb(pgid: int) -> int:
    """Resident memory of a whole process group (master and workers), in KiB."""
    total = 0
    for pid in group_pids(pgid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_mock(workdir: Path) -> Server:
    port = free_port()
    log_path = workdir / f"mock-{port}.log"
    cmd = [sys.executable, "-m", "app.mock_upstream", "--port", str(port)]
    process = launch("mock", cmd, clean_env(), log_path)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/_mock/stats", process, log_path, 30)
    return Server("mock", url, process, log_path, UPSTREAM_TOKEN)


def start_bare(workdir: Path, upstream: str, workers: int, connections: int) -> Server:
    """bench/bare_proxy.py under gunicorn's gevent worker: the floor."""
    port = free_port()
    log_path = workdir / f"bare-{port}.log"
    cmd = [sys.executable, "-m", "gunicorn", "-c", "bench/bare_gunicorn.conf.py", "-k", "gevent", "-w", str(workers),
           "--worker-connections", str(connections), "-b", f"127.0.0.1:{port}", "bench.bare_proxy:app"]  # fmt: skip
    process = launch("bare", cmd, clean_env(BARE_UPSTREAM=upstream, BARE_TOKEN=UPSTREAM_TOKEN), log_path)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/healthz", process, log_path, 30)  # any answer (a 404) means it serves
    return Server("bare", url, process, log_path, "unused-by-the-bare-proxy")


def start_stamped_mock(
    workdir: Path, paced_chunks: int, paced_delay: float, events_chunks: int = 400, events_delay: float = 0.0025
) -> Server:
    """bench/stamped_mock.py: the mock paced by path (/short, /paced, /events), its chunks' text stamped with
    mock_ts."""
    port = free_port()
    log_path = workdir / f"stamped-mock-{port}.log"
    cmd = [sys.executable, "-m", "bench.stamped_mock", "--port", str(port), "--paced-chunks", str(paced_chunks),
           "--paced-delay", str(paced_delay), "--events-chunks", str(events_chunks),
           "--events-delay", str(events_delay)]  # fmt: skip
    process = launch("stamped-mock", cmd, clean_env(), log_path)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/short/_mock/stats", process, log_path, 30)
    return Server("stamped-mock", url, process, log_path, UPSTREAM_TOKEN)


KEY_LIMITS = {"rpm": 10**9, "tpm": 2 * 10**9, "max_parallel": 10**6}  # far above what a run reaches


def start_sluice(
    workdir: Path,
    upstream: str,
    workers: int,
    connections: int,
    limits: tuple[str, ...] = tuple(KEY_LIMITS),
    routed: Sequence[tuple[str, str, str]] = (),
) -> Server:
    """Sluice under gunicorn.conf.py, SQLite, default settings, with a managed key made by the CLI.

    `upstream` serves every model; each (model, base_url, api) in `routed` is an upstream of its own for that
    one model (listed first, so it is the one tried) speaking `api` ("openai": chat completions, /v1/responses
    translated onto them; "anthropic": Messages, chat completions translated onto it).
    """
    port = free_port()
    config = workdir / f"sluice-{port}.toml"
    config.write_text(sluice_config(upstream, routed))
    db_path = workdir / f"sluice-{port}.db"
    env = clean_env(
        SLUICE_CONFIG=str(config), SLUICE_BIND=f"127.0.0.1:{port}", SLUICE_DATABASE_URL=f"sqlite:///{db_path}",
        SLUICE_DATA_DIR=str(workdir / f"data-{port}"), SLUICE_WORKERS=str(workers),
        SLUICE_WORKER_CONNECTIONS=str(connections), SLUICE_METRICS_TOKEN=METRICS_TOKEN,
    )  # fmt: skip
    key = create_key(env, limits)
    log_path = workdir / f"sluice-{port}.log"
    gunicorn_env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(workdir / f"metrics-{port}")}
    cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    process = launch("sluice", cmd, gunicorn_env, log_path)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/healthz", process, log_path, 60)
    return Server("sluice", url, process, log_path, key, db_path)


# Hedging and resume configured but never triggered (no first event takes 60 s, no stream breaks): what they
# cost when nothing goes wrong is part of every measurement.
# SLUICE_BENCH_RESILIENCE=0 leaves them off (to measure that cost).
RESILIENCE = "" if os.environ.get("SLUICE_BENCH_RESILIENCE") == "0" else 'resume = "prefill"\nhedge_after = 60\n'


def sluice_config(upstream: str, routed: Sequence[tuple[str, str, str]]) -> str:
    tables = [f'[[upstreams]]\nname = "{model}"\nbase_url = "{url}"\ntokens = ["{UPSTREAM_TOKEN}"]\n'
              f'models = ["{model}"]\napi = "{api}"\nresponses = "translate"\n{RESILIENCE}'
              for model, url, api in routed]  # fmt: skip
    main = f'[[upstreams]]\nname = "mock"\nbase_url = "{upstream}/v1"\ntokens = ["{UPSTREAM_TOKEN}"]\n{RESILIENCE}'
    return "\n".join([*tables, main])


def create_key(env: dict[str, str], limits: tuple[str, ...]) -> str:
    """`flask --app wsgi keys create` with the named limits set (never reached)."""
    options = [arg for name in limits for arg in (f"--{name.replace('_', '-')}", str(KEY_LIMITS[name]))]
    cmd = [sys.executable, "-m", "flask", "--app", "wsgi", "keys", "create", "bench", *options]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    keys = [line for line in done.stdout.splitlines() if line.startswith("sk-")]
    if done.returncode != 0 or not keys:
        raise RuntimeError(f"keys create failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return keys[-1]


def litellm_installed() -> bool:
    return (PEERS_VENV / "bin" / "litellm").exists()


def litellm_version() -> str:
    found = list((PEERS_VENV / "lib").glob("python3*/site-packages/litellm-*.dist-info"))
    return found[0].name.removeprefix("litellm-").removesuffix(".dist-info") if found else "?"


def start_litellm(workdir: Path, upstream: str, workers: int, connections: int) -> Server:
    """LiteLLM proxy from .venv-peers (make bench-peers), offline, one model pointing at the mock.

    Its upstream connection pool allows 500 per host by default; like the others' worker
    connections, it is raised to the number of streams the run holds open.
    """
    port = free_port()
    config = workdir / f"litellm-{port}.yaml"
    model = {"model_name": MODEL, "litellm_params": {"model": f"openai/{MODEL}", "api_base": f"{upstream}/v1",
                                                     "api_key": UPSTREAM_TOKEN}}  # fmt: skip
    config.write_text(json.dumps({"model_list": [model]}))  # JSON is YAML
    env = clean_env(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY_DISABLED="true",
                    LITELLM_MASTER_KEY=LITELLM_MASTER, AIOHTTP_CONNECTOR_LIMIT=str(connections),
                    AIOHTTP_CONNECTOR_LIMIT_PER_HOST=str(connections))  # fmt: skip
    log_path = workdir / f"litellm-{port}.log"
    cmd = [str(PEERS_VENV / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
           "--port", str(port), "--num_workers", str(workers)]  # fmt: skip
    process = launch("litellm", cmd, env, log_path)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/health/liveliness", process, log_path, 180)
    return Server("litellm", url, process, log_path, LITELLM_MASTER)


def sluice_bookkeeping(server: Server) -> tuple[int, bool]:
    """(usage records written, /metrics counts requests): proof that accounting was on."""
    metrics = requests.get(
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=10
    ).text
    assert server.db_path is not None
    conn = sqlite3.connect(server.db_path)
    try:
        (records,) = conn.execute("SELECT count(*) FROM usage").fetchone()
    finally:
        conn.close()
    return records, "sluice_requests_total{" in metrics
