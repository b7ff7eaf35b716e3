"""`make faults`: every stream fault against every streaming dialect path, resume and hedging off and on,
through gunicorn (gevent, 2 workers), and the hedging first-event times; writes docs/resilience.md.

    python bench/faults.py [--rounds 6] [--concurrency 8] [--hedge-requests 30] [--out docs/resilience.md]

The cells, the config and the faulty tokens: bench/faults_plan.py; the client and its verdicts:
bench/faults_client.py; the page: bench/faults_report.py. Bounded everywhere: a fixed number of rounds
and requests, a read timeout on every request, and the processes stopped by process group at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/faults.py` from the repo root

from bench import faults_report
from bench.faults_client import send, verdict
from bench.faults_plan import HEDGE_NAMES, HEDGE_RUNS, Cell, HedgeRun, cells, gateway_toml, model_options
from bench.stack import ROOT, Server, clean_env, free_port, launch, wait_ready

MASTER_KEY = "sk-faults-master-0123456789abcdef"
TIMEOUTS = {"idle_timeout": 1.0, "first_byte_timeout": 3.0, "heartbeat_interval": 0.5, "deadline": 20.0}
MOCK_DELAY = 0.02  # seconds between the mock's events
ROUND_GAP = 6.5  # seconds between a cell's requests: longer than a failed token's 5 s cooldown
CLIENT_TIMEOUT = 25.0  # seconds between reads; the gateway's deadline is 20
# The request log line (app/requestlog.py): its model, and the hedging and resume fields when there were any.
LOG_MODEL, LOG_HEDGES, LOG_RESUMED = (
    re.compile(r" model=(\S+)"),
    re.compile(r" hedges=(\d+) hedge_won=(\d)"),
    re.compile(r" resumed=(\d+)"),
)


@dataclass
class Stack:
    mock: Server
    gateway: Server
    key: str = MASTER_KEY

    def expected(self, multibyte: bool) -> str:
        """The mock's full reply, from an unfaulted plain request straight to it."""
        body = {"model": "mock-mb" if multibyte else "mock-gpt", "messages": [{"role": "user", "content": "Hi"}]}
        reply = requests.post(f"{self.mock.url}/v1/chat/completions", json=body,
                              headers={"Authorization": "Bearer reference-token"}, timeout=10)  # fmt: skip
        reply.raise_for_status()
        return reply.json()["choices"][0]["message"]["content"]

    def mock_models(self) -> dict[str, int]:
        return requests.get(f"{self.mock.url}/_mock/stats", timeout=10).json()["models"]

    def logged(self) -> dict[str, Counter]:
        """Per model (alias) named in the gateway's request log lines: requests, and those hedged or resumed."""
        time.sleep(0.5)  # a stream's line is written just after its last byte
        return log_counts(self.gateway.log_path.read_text(errors="replace"))


def log_counts(text: str) -> dict[str, Counter]:
    """Count the request log lines per model: `requests`, `hedged` / `hedges` / `hedge_won`, `resumed` / `resumes`."""
    counts: dict[str, Counter] = {}
    for line in text.splitlines():
        model = LOG_MODEL.search(line) if " request request_id=" in line else None
        if model is None:
            continue
        seen = counts.setdefault(model.group(1), Counter())
        seen["requests"] += 1
        hedges, resumed = LOG_HEDGES.search(line), LOG_RESUMED.search(line)
        if hedges is not None:
            seen.update(hedged=1, hedges=int(hedges.group(1)), hedge_won=int(hedges.group(2)))
        if resumed is not None:
            seen.update(resumed=1, resumes=int(resumed.group(1)))
    return counts


@contextmanager
def stack(workdir: Path, chosen: Sequence[Cell], hedges: Sequence[HedgeRun], workers: int = 2) -> Iterator[Stack]:
    """The mock (per-model multibyte options set) and Sluice under gunicorn, stopped by process group after."""
    port = free_port()
    mock_log = workdir / f"mock-{port}.log"
    cmd = [sys.executable, "-m", "app.mock_upstream", "--port", str(port), "--delay", str(MOCK_DELAY),
           "--model-options", json.dumps(model_options(chosen))]  # fmt: skip
    mock = Server("mock", f"http://127.0.0.1:{port}", launch("mock", cmd, clean_env(), mock_log), mock_log, "")
    try:
        wait_ready(f"{mock.url}/_mock/stats", mock.process, mock_log, 30)
        gateway = start_gateway(workdir, gateway_toml(mock.url, chosen, hedges, TIMEOUTS), workers)
        try:
            yield Stack(mock, gateway)
        finally:
            gateway.stop()
    finally:
        mock.stop()


def start_gateway(workdir: Path, config: str, workers: int) -> Server:
    port = free_port()
    (workdir / "sluice.toml").write_text(config)
    env = clean_env(
        SLUICE_CONFIG=str(workdir / "sluice.toml"), SLUICE_BIND=f"127.0.0.1:{port}", SLUICE_MASTER_KEY=MASTER_KEY,
        SLUICE_WORKERS=str(workers), SLUICE_DATA_DIR=str(workdir / "data"), SLUICE_REDIS_URL="",
        SLUICE_DATABASE_URL=f"sqlite:///{workdir}/data/sluice.db", PROMETHEUS_MULTIPROC_DIR=str(workdir / "metrics"),
    )  # fmt: skip
    log_path = workdir / f"sluice-{port}.log"
    cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    process = launch("sluice", cmd, env, log_path)
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/healthz", process, log_path, 60)
    return Server("sluice", url, process, log_path, MASTER_KEY)


@dataclass
class CellResult:
    cell: Cell
    verdicts: list[tuple[str, str]] = field(default_factory=list)
    met: int = 0  # requests the faulty first target received (the mock's count for its model)
    logged: Counter = field(default_factory=Counter)  # the gateway's request log for the cell's alias

    def count(self, kind: str) -> int:
        return sum(1 for v, _ in self.verdicts if v == kind)


def run_cells(st: Stack, chosen: Sequence[Cell], rounds: int, concurrency: int,
              log: Callable[[str], None] = print) -> list[CellResult]:  # fmt: skip
    """`rounds` requests per cell, a round at a time (each cell once per round, `concurrency` at once), the
    rounds at least ROUND_GAP apart so every request meets the faulty token out of its cooldown."""
    results = [CellResult(c) for c in chosen]
    expected = {mb: st.expected(mb) for mb in {c.fault.multibyte for c in chosen}}
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for number in range(rounds):
            started = time.monotonic()
            answers = pool.map(lambda c: send(st.gateway.url, st.key, c.path.client, c.alias, CLIENT_TIMEOUT), chosen)
            for result, answer in zip(results, answers, strict=True):
                result.verdicts.append(verdict(answer, expected[result.cell.fault.multibyte]))
            took = time.monotonic() - started
            log(f"round {number + 1}/{rounds}: {len(chosen)} requests in {took:.1f} s")
            if number + 1 < rounds and took < ROUND_GAP:
                time.sleep(ROUND_GAP - took)
    seen, logged = st.mock_models(), st.logged()
    for result in results:
        result.met = seen.get(result.cell.faulty_model, 0)
        result.logged = logged.get(result.cell.alias, Counter())
    return results


@dataclass
class HedgeResult:
    run: HedgeRun
    times: dict[str, list[float]]  # first-event seconds per alias ("fast", "off", "on")
    verdicts: dict[str, list[tuple[str, str]]]
    logged: dict[str, Counter]  # the gateway's request log per alias name ("fast", "off", "on")

    def p(self, name: str, q: float) -> float:
        return percentile(self.times[name], q)

    @property
    def bound(self) -> float:
        """The issue's target: hedged p95 <= 1.5 x the fast tokens' p95 + hedge_after."""
        return 1.5 * self.p("fast", 0.95) + self.run.hedge_after

    @property
    def passed(self) -> bool:
        return bool(self.times["on"]) and self.p("on", 0.95) <= self.bound


def run_hedging(st: Stack, run: HedgeRun, requests_each: int, names: Sequence[str] = HEDGE_NAMES) -> HedgeResult:
    """`requests_each` sequential chat streams per alias: fast tokens only, then hedging off, then on."""
    expected = st.expected(False)
    times: dict[str, list[float]] = {}
    verdicts: dict[str, list[tuple[str, str]]] = {}
    for name in names:
        answers = [send(st.gateway.url, st.key, "chat", run.alias(name), CLIENT_TIMEOUT) for _ in range(requests_each)]
        times[name] = [a.first_event for a in answers if a.first_event is not None]
        verdicts[name] = [verdict(a, expected) for a in answers]
    logged = st.logged()
    return HedgeResult(run, times, verdicts, {name: logged.get(run.alias(name), Counter()) for name in names})


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/faults.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="requests per cell (default 6)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests at once within a round (default 8)")
    parser.add_argument("--hedge-requests", type=int, default=30, help="streams per hedging alias (default 30)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "resilience.md"), help="the page to write ('' none)")
    parser.add_argument("--faults", nargs="*", help="only these faults (none cut cutevent cutchar stall errorafter)")
    args = parser.parse_args(argv)
    chosen = cells(args.faults)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sluice-faults-") as tmp, stack(Path(tmp), chosen, HEDGE_RUNS) as st:
        print(f"{len(chosen)} cells x {args.rounds} rounds, then {args.hedge_requests} streams per hedging alias")
        results = run_cells(st, chosen, args.rounds, args.concurrency)
        hedged = [run_hedging(st, run, args.hedge_requests) for run in HEDGE_RUNS]
    took = time.monotonic() - began
    page = faults_report.render(results, hedged, rounds=args.rounds, took=took, timeouts=TIMEOUTS)
    print(faults_report.summary(results, hedged))
    if args.out:
        Path(args.out).write_text(page)
        print(f"wrote {args.out} ({took:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
