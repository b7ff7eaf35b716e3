"""Capacity: N slow streams held at once through 2 workers, the bare proxy and Sluice side by side.

    .venv/bin/python bench/capacity.py [--streams 1000,5000,10000] [--hold 60]     (make bench-capacity)

For each N and system (each on a fresh bench/stamped_mock.py, paced one event every `--interval` s,
its streams longer than the run): client processes open N streams at `--rate` streams/s, wait
`--settle` s, then hold them `--hold` s. Over the hold window it measures the streams still live at
its end (an event within 2 intervals + 1 s, no error), forwarding lag p50/p99 (receive time minus the
mock's `mock_ts`), RSS of the gateway's process group (largest sample), its CPU time per event the
clients received in the window, the whole machine's busy share, and connection errors (refused, reset,
timed out, a non-200 answer, a stream that ended early). Both gateways get `--workers` workers; Sluice
its default worker_connections (from the open-file limit, gunicorn.conf.py), the bare proxy 10,000.
Everything runs on this machine: the mock and the clients take their share of its cores too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import gevent
from gevent import socket as gsocket

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import stack
from bench.load import StreamReader, stream_request

BARE_CONNECTIONS = 10_000
SLUICE_DEFAULT = ""  # SLUICE_WORKER_CONNECTIONS empty: gunicorn.conf.py sizes it from the open-file limit
CONNECT_TIMEOUT = 30.0  # also the longest silence a held stream's read waits
_MOCK_TS = re.compile(rb'"mock_ts":\s*([0-9.]+)')
TARGETS = "at 10,000: every stream live, no connection errors, lag p99 <= 2x bare, RSS <= 1.3x bare"


@dataclass
class Window:
    """One system's timeline, in wall-clock seconds: streams open from `start`, counted from `hold` to `end`."""

    start: float
    hold: float
    end: float
    interval: float


@dataclass
class ClientReport:
    """What one client process saw over the window."""

    live: int = 0
    events: int = 0
    lags: list[float] = field(default_factory=list)  # ms, events received in the window
    opens: list[float] = field(default_factory=list)  # ms from connecting to the first event, per stream
    errors: dict[str, int] = field(default_factory=dict)
    cpu_s: float = 0.0  # this process's own CPU time over the window


@dataclass
class Row:
    """One system at one N."""

    system: str
    streams: int
    live: int = 0
    lag_p50: float | None = None
    lag_p99: float | None = None
    open_p50: float | None = None
    open_p99: float | None = None
    rss_mib: float = 0.0
    cpu_us: float | None = None
    harness_us: float | None = None  # the mock's and the clients' CPU per event: what the gateway competes with
    busy: float = 0.0  # the machine's CPU busy share over the window, 0..1
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


# --- the client process: `python -m bench.capacity --client '<json>'` ---------------------------------------


class Held(StreamReader):
    """A stream held open: counts the events it receives inside the window and when it last got one."""

    def __init__(self, sock: socket.socket, started: float, window: Window, report: ClientReport) -> None:
        super().__init__(sock, started)
        self.window, self.report, self.last = window, report, 0.0

    def _events(self, arrived: float, wall: float) -> None:
        """Every upstream event carries its `mock_ts`: found with one scan of the complete events, not parsed."""
        cut = self._body.rfind(b"\n\n")
        if cut == -1:
            return
        complete = bytes(self._body[: cut + 2])
        del self._body[: cut + 2]
        for found in _MOCK_TS.finditer(complete):
            self._stamped(float(found.group(1)), arrived, wall)
        self.result.done = self.result.done or b"data: [DONE]" in complete

    def _stamped(self, produced: float, arrived: float, wall: float) -> None:
        self.last = wall
        if self.result.ttfb is None:
            self.result.ttfb = arrived - self.started
            self.report.opens.append(self.result.ttfb * 1000)
        if self.window.hold <= wall <= self.window.end:
            self.report.events += 1
            self.report.lags.append((wall - produced) * 1000)


def hold_one(address: tuple[str, int], request: bytes, window: Window, report: ClientReport, held: list) -> None:
    """Open one stream and read it until killed; an error or an early end is counted, and it is not live."""
    started = time.perf_counter()
    try:
        sock = gsocket.create_connection(address, timeout=CONNECT_TIMEOUT)
    except OSError as exc:
        _count(report.errors, f"connect: {type(exc).__name__}")
        return
    reader = Held(sock, started, window, report)
    held.append(reader)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        result = reader.read()
        _count(report.errors, "ended early" if result.status == 200 else f"status {result.status}")
    except OSError as exc:
        _count(report.errors, f"read: {type(exc).__name__}")
    reader.last = -1.0
    sock.close()


def run_client(address: tuple[str, int], key: str, count: int, rate: float, window: Window) -> ClientReport:
    """Open `count` streams at `rate`/s from window.start, hold them to window.end, report the window."""
    report, held = ClientReport(), []
    request = stream_request(address, key, {})
    jobs = [
        gevent.spawn_later(
            max(0.0, window.start + i / rate - time.time()), hold_one, address, request, window, report, held
        )
        for i in range(count)
    ]
    gevent.sleep(max(0.0, window.hold - time.time()))
    cpu0 = _own_cpu()
    gevent.sleep(max(0.0, window.end - time.time()))
    report.cpu_s = _own_cpu() - cpu0
    recent = window.end - 2 * window.interval - 1
    report.live = sum(1 for r in held if r.result.status == 200 and r.last >= recent)
    connecting = count - len(held) - sum(n for kind, n in report.errors.items() if kind.startswith("connect"))
    unanswered = sum(1 for r in held if r.result.status == 0 and r.last >= 0)  # no status line yet, no error
    for kind, n in (("still connecting at the end", connecting), ("no answer by the end", unanswered)):
        if n:
            report.errors[kind] = n
    gevent.killall(jobs, block=True, timeout=10)
    for reader in held:
        reader.sock.close()
    return report


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _count(errors: dict[str, int], kind: str) -> None:
    errors[kind] = errors.get(kind, 0) + 1


def client_main(spec: str) -> None:
    """Run one client from its JSON spec; print its report as one JSON line."""
    args = json.loads(spec)
    window = Window(**args["window"])
    report = run_client(tuple(args["address"]), args["key"], args["count"], args["rate"], window)
    print(json.dumps(asdict(report)), flush=True)


# --- the driver ----------------------------------------------------------------------------------------------


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


def start_system(system: str, workdir: Path, upstream: str, workers: int) -> stack.Server:
    if system == "bare":
        return stack.start_bare(workdir, upstream, workers, BARE_CONNECTIONS)
    return stack.start_sluice(workdir, upstream, workers, SLUICE_DEFAULT)  # type: ignore[arg-type]


def measure(system: str, streams: int, args: argparse.Namespace, workdir: Path) -> Row:
    """One system at `streams` streams on a fresh mock; both stopped after."""
    ramp = streams / args.rate
    chunks = math.ceil((ramp + args.settle + args.hold + 30) / args.interval)  # outlasts the run
    mock = stack.start_stamped_mock(workdir, chunks, args.interval)
    try:
        server = start_system(system, workdir, f"{mock.url}/paced", args.workers)
    except BaseException:
        mock.stop()
        raise
    try:
        chosen = [line for line in stack.tail(server.log_path, 200).splitlines() if "worker_connections=" in line]
        if chosen:
            print(f"{system}: {chosen[-1].split('sluice: ', 1)[-1]}", flush=True)
        return hold_streams(server, mock, streams, args, ramp)
    finally:
        mock.stop()  # first: the gateway's upstream streams end, so it stops at once
        server.stop()


def hold_streams(server: stack.Server, mock: stack.Server, streams: int, args: argparse.Namespace, ramp: float) -> Row:
    start = time.time() + 2  # the clients' start-up
    window = Window(start, start + ramp + args.settle, start + ramp + args.settle + args.hold, args.interval)
    clients = launch_clients(server, streams, args, window)
    row, pgid = Row(server.name, streams), server.process.pid
    time.sleep(max(0.0, window.hold - time.time()))
    cpu0, mock0, box0, rss = stack.group_cpu_ticks(pgid), stack.group_cpu_ticks(mock.process.pid), machine_ticks(), 0
    while time.time() < window.end:
        rss = max(rss, stack.rss_kb(pgid))
        time.sleep(min(2.0, max(0.0, window.end - time.time())))
    cpu1, mock1, box1 = stack.group_cpu_ticks(pgid), stack.group_cpu_ticks(mock.process.pid), machine_ticks()
    reports = collect(clients, window)
    row.live = sum(r.live for r in reports)
    events = sum(r.events for r in reports)
    lags = sorted(lag for r in reports for lag in r.lags)
    row.lag_p50, row.lag_p99 = percentile(lags, 50), percentile(lags, 99)
    opens = sorted(ms for r in reports for ms in r.opens)
    row.open_p50, row.open_p99 = percentile(opens, 50), percentile(opens, 99)
    row.rss_mib = rss / 1024
    row.cpu_us = (cpu1 - cpu0) / stack.TICK * 1e6 / events if events else None
    harness = (mock1 - mock0) / stack.TICK + sum(r.cpu_s for r in reports)
    row.harness_us = harness * 1e6 / events if events else None
    row.busy = (box1[0] - box0[0]) / max(1, box1[1] - box0[1])
    for report in reports:
        for kind, n in report.errors.items():
            row.errors[kind] = row.errors.get(kind, 0) + n
    row.errors = {k: v for k, v in row.errors.items() if v}
    return row


def launch_clients(server: stack.Server, streams: int, args: argparse.Namespace, window: Window) -> list:
    count = max(1, min(args.clients, streams))
    shares = [streams // count + (1 if i < streams % count else 0) for i in range(count)]
    processes = []
    for share in shares:
        spec = {
            "address": list(server.address),
            "key": server.key,
            "count": share,
            "rate": args.rate * share / streams,
            "window": asdict(window),
        }
        cmd = [sys.executable, "-m", "bench.capacity", "--client", json.dumps(spec)]
        processes.append(subprocess.Popen(cmd, cwd=stack.ROOT, stdout=subprocess.PIPE, text=True))
    return processes


def collect(clients: list[subprocess.Popen], window: Window) -> list[ClientReport]:
    """Each client's report (bounded wait); a client that failed counts its streams as errors."""
    reports = []
    for process in clients:
        try:
            out, _ = process.communicate(timeout=max(5.0, window.end - time.time()) + 30)
            reports.append(ClientReport(**json.loads(out.strip().splitlines()[-1])))
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            process.kill()
            process.wait()
            reports.append(ClientReport(errors={"client process failed": 1}))
    return reports


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))]


# --- the report -----------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def table(rows: list[Row]) -> list[str]:
    """A Markdown table: one line per N and system."""
    lines = [
        "| streams | system | live after hold | lag p50 ms | lag p99 ms | first event p50/p99 ms | RSS MiB | "
        "CPU us/event | mock + client CPU us/event | machine busy | connection errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        errors = ", ".join(f"{kind} {n}" for kind, n in sorted(row.errors.items())) or "0"
        cpu = "-" if row.cpu_us is None else f"{row.cpu_us:.0f}"
        harness = "-" if row.harness_us is None else f"{row.harness_us:.0f}"
        lines.append(
            f"| {row.streams:,} | {row.system} | {row.live:,} | {_ms(row.lag_p50)} | {_ms(row.lag_p99)} | "
            f"{_ms(row.open_p50)}/{_ms(row.open_p99)} | "
            f"{row.rss_mib:.0f} | {cpu} | {harness} | {row.busy:.0%} | {errors} |"
        )
    return lines


def verdicts(rows: list[Row]) -> list[str]:
    """The targets at the largest N both systems ran, PASS/MISS, ratios from this run."""
    by = {(r.system, r.streams): r for r in rows}
    both = [n for n in sorted({r.streams for r in rows}) if ("bare", n) in by and ("sluice", n) in by]
    if not both:
        return ["targets: need both bare and sluice at one N"]
    n = both[-1]
    bare, sluice = by[("bare", n)], by[("sluice", n)]
    lag = sluice.lag_p99 / bare.lag_p99 if sluice.lag_p99 and bare.lag_p99 else None
    rss = sluice.rss_mib / bare.rss_mib if bare.rss_mib else None
    checks = [
        (f"every stream live ({sluice.live:,}/{n:,})", sluice.live == n),
        (f"no connection errors ({sluice.error_count})", sluice.error_count == 0),
        (
            f"lag p99 sluice/bare {lag:.2f}x <= 2x" if lag else "lag p99 sluice/bare: no figure",
            lag is not None and lag <= 2,
        ),
        (f"RSS sluice/bare {rss:.2f}x <= 1.3x" if rss else "RSS: no figure", rss is not None and rss <= 1.3),
    ]
    cpu = f"{sluice.cpu_us / bare.cpu_us:.2f}x" if sluice.cpu_us and bare.cpu_us else "-"
    head = f"targets at {n:,} streams ({TARGETS}; 10,000 is the target's N):"
    return [head, *(f"  {'PASS' if ok else 'MISS'}  {text}" for text, ok in checks), f"  (CPU per event {cpu})"]


def describe(args: argparse.Namespace) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=stack.ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return (
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, commit {commit}, load average "
        f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}; {cpu}, {os.cpu_count()} "
        f"cores, Linux {platform.release()}, Python {platform.python_version()}, open-file hard limit {limit}; "
        f"{args.workers} workers per gateway; one event every {args.interval:g} s per stream, opened at "
        f"{args.rate:g}/s by {args.clients} client processes, {args.settle:g} s settle, {args.hold:g} s hold"
    )


# --- entry ----------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", help=argparse.SUPPRESS)  # internal: run one client process
    parser.add_argument("--streams", default="1000,5000,10000", help="comma-separated N (default 1000,5000,10000)")
    parser.add_argument("--systems", default="bare,sluice")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds the streams are held and measured")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between a stream's events")
    parser.add_argument("--rate", type=float, default=250.0, help="streams opened per second")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds between the last opening and the hold")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=2, help="client processes (each holds its share)")
    return parser.parse_args(argv)


def raise_open_files() -> None:
    """Soft to hard: the clients and the mock (they inherit it) hold a socket per stream."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_open_files()
    if args.client:
        client_main(args.client)
        return 0
    print(describe(args), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="sluice-capacity-") as tmp:
        for streams in (int(n) for n in args.streams.split(",")):
            for system in args.systems.split(","):
                clock = time.monotonic()
                rows.append(measure(system, streams, args, Path(tmp)))
                print(f"{system} at {streams:,} streams: {time.monotonic() - clock:.0f} s", flush=True)
                print("\n".join(table(rows[-1:])[2:]), flush=True)
    print()
    print("\n".join(table(rows)))
    print()
    print("\n".join(verdicts(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
