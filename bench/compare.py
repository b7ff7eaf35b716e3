"""Sluice against its floor and a peer, in one run: `make bench` (docs/benchmarks.md).

    .venv/bin/python bench/compare.py [--workers 1] [--quick] [--chart docs/bench.png]

Measures, on 127.0.0.1 against the bundled mock upstream (a fresh one per system):
(a) the mock directly, (b) the bare Flask+requests+gevent proxy (bench/bare_proxy.py),
(c) Sluice under gunicorn.conf.py with a managed key (limits, usage records, metrics on),
(d) LiteLLM proxy when .venv-peers has it (`make bench-peers`), and (e) "sluice-responses" and
"sluice-messages": the same Sluice instance answering `POST /v1/responses` and `POST /v1/messages`
streams translated from chat completions, and "sluice-from-anthropic": its chat completions streams
translated from an Anthropic Messages upstream (streams only; their upstream is bench/stamped_mock.py).
Every gateway gets the same worker count, and all run at once. Non-streaming requests/s and latency come from wrk
(-t1, c=1 and c=10), in rounds taken in turns by every system (the median is kept), so a
slow spell of the shared 2-core machine falls on all of them alike;
streams from a raw-socket client: time to the first event (sequential), forwarding lag
(receive time minus the mock's `mock_ts`, each event counted) and RSS with many streams
held open. Prints a table, the target ratios (PASS/MISS), the translated / native chat ratios
(no target) and writes a PNG chart.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import gevent
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import stack
from bench.chart import write_chart
from bench.load import (
    ANTHROPIC,
    CHAT,
    CHAT_TRANSLATED,
    RESPONSES,
    OpenStreams,
    Wire,
    concurrent_streams,
    one_stream,
    run_wrk,
)

SYSTEMS = ("direct", "bare", "sluice", "litellm")
# The models Sluice routes to bench/stamped_mock.py, which paces by path (a translated body carries no "mock"):
# (short, paced, events) on its chat completions, and the same on its Anthropic Messages API.
CHAT_MODELS = ("bench-responses-short", "bench-responses-paced", "bench-responses-events")
ANTHROPIC_MODELS = ("bench-anthropic-short", "bench-anthropic-paced", "bench-anthropic-events")
# Columns, not systems: Sluice's /v1/responses and /v1/messages streams translated from chat completions, and
# its chat completions streams translated from Anthropic Messages; each a wire and the models it asks for.
TRANSLATED = {"sluice-responses": (RESPONSES, CHAT_MODELS), "sluice-messages": (ANTHROPIC, CHAT_MODELS),
              "sluice-from-anthropic": (CHAT_TRANSLATED, ANTHROPIC_MODELS)}  # fmt: skip


@dataclass(frozen=True)
class Plan:
    wrk_seconds: int = 4  # per round; every system gets `wrk_rounds` rounds at each concurrency
    wrk_rounds: int = 3
    warmup_seconds: int = 3
    ttfb_requests: int = 200
    lag_concurrency: int = 10
    lag_rounds: int = 5
    lag_chunks: int = 20
    lag_delay: float = 0.02
    event_concurrency: int = 10  # per-event cost: this many streams at once ...
    event_chunks: int = 400  # ... of this many events ...
    event_delay: float = 0.0025  # ... this far apart: 4,000 events/s in all
    event_rounds: int = 3
    open_streams: int = 1000
    open_timeout: float = 90.0
    hold_stall: float = 300.0  # the mock stalls each held stream this long after its first event
    settle: float = 1.0  # seconds between the last stream opening and the first RSS sample


QUICK = Plan(wrk_seconds=1, wrk_rounds=1, warmup_seconds=1, ttfb_requests=20, lag_concurrency=3, lag_rounds=1,
             lag_chunks=5, lag_delay=0.01, event_chunks=100, event_rounds=1, open_streams=50, open_timeout=15.0,
             settle=0.3)  # fmt: skip


@dataclass
class Measured:
    """One system's figures (None: not measured)."""

    values: dict[str, float | None] = field(default_factory=dict)
    events: int = 0
    events_expected: int = 0
    coalesced: int = 0
    streams_open: int | None = None
    failures: int = 0
    notes: list[str] = field(default_factory=list)


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def warm_up(server: stack.Server, workdir: Path, plan: Plan) -> None:
    requests.post(f"{server.url}/v1/chat/completions", json={"model": stack.MODEL, "messages": [{"role": "user",
                  "content": "warm-up"}]}, headers={"Authorization": f"Bearer {server.key}"}, timeout=120)  # fmt: skip
    run_wrk(server.url, server.key, 10, plan.warmup_seconds, workdir)


def measure_throughput(servers: dict[str, stack.Server], workdir: Path, plan: Plan, out: dict[str, Measured]) -> None:
    """wrk rounds taken in turns (system after system, round after round) and the median of each
    figure kept: a slow spell of the shared machine then lands on every system alike, not on
    whichever ran during it."""
    for connections in (1, 10):
        rounds: dict[str, list] = {name: [] for name in servers}
        for _ in range(plan.wrk_rounds):
            for name, server in servers.items():
                result = run_wrk(server.url, server.key, connections, plan.wrk_seconds, workdir)
                rounds[name].append(result)
                out[name].failures += result.errors
        for name, results in rounds.items():
            out[name].values.update({
                f"c{connections}_rps": statistics.median(r.rps for r in results),
                f"c{connections}_p50": statistics.median(r.p50_ms for r in results),
                f"c{connections}_p99": statistics.median(r.p99_ms for r in results),
            })  # fmt: skip


def measure_streams(server: stack.Server, plan: Plan, pgid: int | None, out: Measured) -> None:
    """The streaming figures of one system, measured while the others stand idle."""
    measure_first_event(server, plan, out)
    measure_lag(server, plan, out)
    if pgid is not None:
        measure_rss(server, plan, pgid, out)


def measure_translated(server: stack.Server, plan: Plan, out: Measured, wire: Wire, models: tuple[str, ...]) -> None:
    """Sluice's translated streams: the first text delta, and each delta's lag behind its chunk."""
    measure_first_event(server, plan, out, wire.for_model(models[0]))
    measure_lag(server, plan, out, wire.for_model(models[1]))


def measure_first_event(server: stack.Server, plan: Plan, out: Measured, wire: Wire = CHAT) -> None:
    """Sequential short streams: time from sending the request to the first counted event (chat: the
    first data event; Responses, Messages: the first text delta, made from the same first chunk)."""
    short = {"chunks": 2, "delay": 0}
    for _ in range(max(3, plan.ttfb_requests // 20)):  # warm the streaming path
        one_stream(server.address, server.key, short, wire=wire)
    ttfbs = []
    for _ in range(plan.ttfb_requests):
        try:
            result = one_stream(server.address, server.key, short, wire=wire)
        except OSError:  # refused, reset or timed out: a failed request, not a crashed run
            result = None
        if result is None or result.status != 200 or not result.done or result.ttfb is None:
            out.failures += 1
            continue
        ttfbs.append(result.ttfb * 1000)
    out.values["ttfb_p50"], out.values["ttfb_p99"] = percentile(ttfbs, 50), percentile(ttfbs, 99)


def measure_lag(server: stack.Server, plan: Plan, out: Measured, wire: Wire = CHAT) -> None:
    """Concurrent paced streams: each event's receive time minus the time the mock produced it."""
    paced = {"chunks": plan.lag_chunks, "delay": plan.lag_delay}
    timeout = plan.lag_chunks * plan.lag_delay + 30
    lags: list[float] = []
    for _ in range(plan.lag_rounds):
        results = concurrent_streams(server.address, server.key, paced, plan.lag_concurrency, timeout, wire)
        out.failures += plan.lag_concurrency - sum(1 for r in results if r.status == 200 and r.done)
        out.events_expected += plan.lag_concurrency * plan.lag_chunks
        for result in results:
            out.events += result.events
            out.coalesced += result.coalesced
            lags += [lag * 1000 for lag in result.lags]
    if not lags:
        out.notes.append("no mock_ts in the events it sends (it re-encodes them): no lag figure")
    out.values["lag_p50"], out.values["lag_p99"] = percentile(lags, 50), percentile(lags, 99)


def measure_event_costs(
    servers: dict[str, tuple[stack.Server, int, Wire]], plan: Plan, out: dict[str, Measured]
) -> None:
    """Streams at 4,000 events/s through each gateway, rounds taken in turns (as the throughput rounds, so a slow
    spell of the machine lands on every system alike): its CPU time per event received (the process group's
    utime + stime over its rounds, clock ticks of 10 ms, over about 12,000 events) and the lag p99 at that rate.
    Each request's own cost is in it too, spread over its 400 events. Sluice's translated columns take the same
    streams as Responses and Messages streams (their upstream: the stamped mock's /events pacing; a text delta
    per chunk)."""
    paced = {"chunks": plan.event_chunks, "delay": plan.event_delay}
    timeout = plan.event_chunks * plan.event_delay + 30
    lags: dict[str, list[float]] = {name: [] for name in servers}
    events, ticks = dict.fromkeys(servers, 0), dict.fromkeys(servers, 0)
    for _ in range(plan.event_rounds):
        for name, (server, pgid, wire) in servers.items():
            before = stack.group_cpu_ticks(pgid)
            results = concurrent_streams(server.address, server.key, paced, plan.event_concurrency, timeout, wire)
            ticks[name] += stack.group_cpu_ticks(pgid) - before
            out[name].failures += plan.event_concurrency - sum(1 for r in results if r.status == 200 and r.done)
            events[name] += sum(r.events for r in results)
            lags[name] += [lag * 1000 for r in results for lag in r.lags]
    for name in servers:
        out[name].values["event_cpu"] = ticks[name] / stack.TICK * 1e6 / events[name] if events[name] else None
        out[name].values["event_lag_p99"] = percentile(lags[name], 99)


def measure_rss(server: stack.Server, plan: Plan, pgid: int, out: Measured) -> None:
    """RSS of the whole process group, idle and with `open_streams` streams held open."""
    out.values["rss_idle"] = stack.rss_kb(pgid) / 1024
    stalled = {"chunks": 3, "delay": 0, "stall_after": 1, "stall": plan.hold_stall}
    held = OpenStreams(server.address, server.key, stalled, plan.open_timeout)
    try:
        out.streams_open = held.open(plan.open_streams)
        gevent.sleep(plan.settle)
        samples = []
        for _ in range(3):
            samples.append(stack.rss_kb(pgid))
            gevent.sleep(0.5)
        out.values["rss_streams"] = max(samples) / 1024
    finally:
        held.close()
    out.failures += plan.open_streams - out.streams_open


def start_system(
    name: str, workdir: Path, plan: Plan, workers: int, key_limits: tuple[str, ...]
) -> tuple[list[stack.Server], stack.Server | None]:
    """Fresh mocks (Sluice's second one serves the translated streams), and the system in front of
    them (None for "direct", the mock itself)."""
    mocks = [stack.start_mock(workdir)]
    connections = max(1000, plan.open_streams + 100)
    upstream = mocks[0].url
    try:
        if name == "direct":
            return mocks, None
        if name == "bare":
            return mocks, stack.start_bare(workdir, upstream, workers, connections)
        if name == "sluice":
            mocks.append(stack.start_stamped_mock(workdir, plan.lag_chunks, plan.lag_delay, plan.event_chunks,
                                                  plan.event_delay))  # fmt: skip
            paths = [f"{mocks[1].url}/{pacing}/v1" for pacing in ("short", "paced", "events")]
            routed = [(model, url, api) for models, api in ((CHAT_MODELS, "openai"), (ANTHROPIC_MODELS, "anthropic"))
                      for model, url in zip(models, paths, strict=True)]  # fmt: skip
            return mocks, stack.start_sluice(workdir, upstream, workers, connections, key_limits, routed)
        return mocks, stack.start_litellm(workdir, upstream, workers, connections)
    except BaseException:
        for mock in mocks:
            mock.stop()
        raise


def run_all(names: list[str], workdir: Path, plan: Plan, workers: int, key_limits: tuple[str, ...]) -> dict:
    """Start every system, measure throughput in turns, then each one's streams; stop them all."""
    started: dict[str, tuple[list[stack.Server], stack.Server | None]] = {}
    results = {name: Measured() for name in names}
    if "sluice" in names:
        results.update({column: Measured() for column in TRANSLATED})
    try:
        for name in names:
            started[name] = start_system(name, workdir, plan, workers, key_limits)
        targets_ = {name: server or mocks[0] for name, (mocks, server) in started.items()}
        for server in targets_.values():
            warm_up(server, workdir, plan)
        clock = time.monotonic()
        measure_throughput(targets_, workdir, plan, results)
        print(f"measured throughput in {time.monotonic() - clock:.0f} s", flush=True)
        for name, (_mocks, server) in started.items():
            clock = time.monotonic()
            measure_streams(targets_[name], plan, server.process.pid if server else None, results[name])
            print(f"measured {name}'s streams in {time.monotonic() - clock:.0f} s", flush=True)
        clock = time.monotonic()
        costed = {name: (server, server.process.pid, CHAT) for name, (_m, server) in started.items() if server}
        if "sluice" in costed:
            for column, (wire, models) in TRANSLATED.items():
                costed[column] = (costed["sluice"][0], costed["sluice"][1], wire.for_model(models[2]))
        measure_event_costs(costed, plan, results)
        print(f"measured the cost per event in {time.monotonic() - clock:.0f} s", flush=True)
        if "sluice" in started:
            for column, (wire, models) in TRANSLATED.items():
                clock = time.monotonic()
                measure_translated(targets_["sluice"], plan, results[column], wire, models)
                print(f"measured {column}'s streams in {time.monotonic() - clock:.0f} s", flush=True)
            time.sleep(1.5)  # usage records are written in batches, about once a second
            records, counted = stack.sluice_bookkeeping(targets_["sluice"])
            results["sluice"].notes.append(f"{records} usage records written, /metrics counting requests: {counted}")
    finally:
        for mocks, server in started.values():
            for mock in mocks:
                mock.stop()  # first: the gateway's held upstream streams end, so it stops at once
            if server is not None:
                server.stop()
    return results


ROWS = [
    ("c1_rps", "plain req/s, c=1", "{:.0f}"), ("c1_p50", "plain p50 ms, c=1", "{:.2f}"),
    ("c1_p99", "plain p99 ms, c=1", "{:.2f}"), ("c10_rps", "plain req/s, c=10", "{:.0f}"),
    ("c10_p50", "plain p50 ms, c=10", "{:.2f}"), ("c10_p99", "plain p99 ms, c=10", "{:.2f}"),
    ("ttfb_p50", "stream first event p50 ms", "{:.2f}"), ("ttfb_p99", "stream first event p99 ms", "{:.2f}"),
    ("lag_p50", "forwarding lag p50 ms", "{:.2f}"), ("lag_p99", "forwarding lag p99 ms", "{:.2f}"),
    ("event_cpu", "CPU us/event at 4k ev/s", "{:.0f}"), ("event_lag_p99", "lag p99 ms at 4k ev/s", "{:.2f}"),
    ("events", "events received/expected", None), ("coalesced", "client reads with 2+ events", None),
    ("streams", "streams held open", None), ("rss_idle", "RSS idle MiB", "{:.0f}"),
    ("rss_streams", "RSS with open streams MiB", "{:.0f}"), ("failures", "failed requests", None),
]  # fmt: skip


def cell(m: Measured, key: str, fmt: str | None) -> str:
    if key == "events":
        return f"{m.events}/{m.events_expected}"
    if key == "coalesced":
        return str(m.coalesced)
    if key == "streams":
        return "-" if m.streams_open is None else str(m.streams_open)
    if key == "failures":
        return str(m.failures)
    value = m.values.get(key)
    return "-" if value is None else fmt.format(value)  # type: ignore[union-attr]


def print_table(results: dict[str, Measured]) -> None:
    names = list(results)
    widths = [max(12, len(n) + 2) for n in names]
    print(f"{'':<28}" + "".join(f"{n:>{w}}" for n, w in zip(names, widths, strict=True)))
    for key, label, fmt in ROWS:
        cells = (f"{cell(results[n], key, fmt):>{w}}" for n, w in zip(names, widths, strict=True))
        print(f"{label:<28}" + "".join(cells))
    for name, measured in results.items():
        for note in measured.notes:
            print(f"note: {name}: {note}")


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def targets(results: dict[str, Measured]) -> list[str]:
    """The issue's targets as lines 'name  value  target  PASS|MISS'."""
    value = lambda name, key: results[name].values.get(key) if name in results else None  # noqa: E731
    ttfb_over = lambda name: None if value(name, "ttfb_p50") is None or value("direct", "ttfb_p50") is None \
        else value(name, "ttfb_p50") - value("direct", "ttfb_p50")  # fmt: skip # noqa: E731
    checks = [
        ("throughput sluice/bare, c=1", ratio(value("sluice", "c1_rps"), value("bare", "c1_rps")), ">=", 0.8),
        ("throughput sluice/bare, c=10", ratio(value("sluice", "c10_rps"), value("bare", "c10_rps")), ">=", 0.8),
        ("throughput sluice/litellm, c=1", ratio(value("sluice", "c1_rps"), value("litellm", "c1_rps")), ">=", 5),
        ("throughput sluice/litellm, c=10", ratio(value("sluice", "c10_rps"), value("litellm", "c10_rps")), ">=", 5),
        ("first-event overhead sluice/bare p50", ratio(ttfb_over("sluice"), ttfb_over("bare")), "<=", 1.5),
        ("forwarding lag p99 sluice/bare", ratio(value("sluice", "lag_p99"), value("bare", "lag_p99")), "<=", 2),
        ("CPU per event sluice/bare, 4k ev/s", ratio(value("sluice", "event_cpu"), value("bare", "event_cpu")),
         "<=", 1.2),
        ("lag p99 sluice/bare, 4k ev/s", ratio(value("sluice", "event_lag_p99"), value("bare", "event_lag_p99")),
         "<=", 1.5),
        *[(f"CPU per event {column.removeprefix('sluice-')}/bare, 4k ev/s",
           ratio(value(column, "event_cpu"), value("bare", "event_cpu")), "<=", 1.5) for column in TRANSLATED],
        ("RSS with open streams sluice/bare", ratio(value("sluice", "rss_streams"), value("bare", "rss_streams")),
         "<=", 1.5),
    ]  # fmt: skip
    lines = []
    for label, measured, op, goal in checks:
        if measured is None:
            lines.append(f"{label:<43} {'-':>6}  {op} {goal:<4} not measured")
            continue
        ok = measured >= goal if op == ">=" else measured <= goal
        lines.append(f"{label:<43} {measured:6.3f}  {op} {goal:<4} {'PASS' if ok else 'MISS'}")
    if "sluice" in results:
        # One SSE event out per event in: none merged, split or lost. (Reads that carried two
        # events are in the table: they show events arriving together after a stall.)
        s = results["sluice"]
        ok = s.events == s.events_expected
        label = "events forwarded one for one (sluice)"
        lines.append(f"{label:<43} {s.events:>6}  == {s.events_expected:<4} {'PASS' if ok else 'MISS'}")
    return lines


def translated_ratios(results: dict[str, Measured]) -> list[str]:
    """Translated streams over native chat, same Sluice, same measurements: lines 'name  value' (no target)."""
    if "sluice" not in results:
        return []
    native = results["sluice"].values
    lines = []
    for column in (c for c in TRANSLATED if c in results):
        translated, dialect = results[column].values, column.removeprefix("sluice-")
        for key, label in (("ttfb_p50", "first event p50"), ("ttfb_p99", "first event p99"),
                           ("lag_p50", "forwarding lag p50"), ("lag_p99", "forwarding lag p99")):  # fmt: skip
            measured = ratio(translated.get(key), native.get(key))
            shown = "-" if measured is None else f"{measured:6.3f}"
            lines.append(f"{f'{label} {dialect}/chat':<43} {shown:>6}")
    return lines


def describe_machine(workers: int, plan: Plan, names: list[str]) -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.split("[")[0].strip()
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("flask", "requests", "gunicorn", "gevent"))
    peer = f", litellm {stack.litellm_version()}" if "litellm" in names else ""
    return [
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; load average {_load()}",
        f"machine: {cpu}, {os.cpu_count()} cores; Linux {platform.release()}; Python {platform.python_version()}",
        f"tools: {wrk}; {versions}{peer}",
        f"plan: {workers} worker(s) per gateway; wrk -t1 at c=1 and c=10, {plan.wrk_rounds} rounds of "
        f"{plan.wrk_seconds} s per system taken in turns (medians); "
        f"{plan.ttfb_requests} sequential streams; {plan.lag_rounds}x{plan.lag_concurrency} paced streams of "
        f"{plan.lag_chunks} events (both also as translated Responses, Messages and from-Anthropic streams); "
        f"{plan.event_rounds}x{plan.event_concurrency} streams of {plan.event_chunks} events at "
        f"{plan.event_concurrency / plan.event_delay:.0f} events/s, taken in turns; "
        f"{plan.open_streams} streams held open",
    ]


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def raise_open_files(streams: int) -> None:
    """Client and servers (they inherit it) hold a socket per stream, and two in a gateway."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * streams + 1024
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="worker processes per gateway (default 1)")
    parser.add_argument("--quick", action="store_true", help="seconds, not minutes: a smoke run (no LiteLLM)")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM even when installed")
    parser.add_argument("--streams", type=int, help="streams held open for the RSS figure (default 1000)")
    parser.add_argument("--key-limits", default="rpm,tpm,max_parallel",
                        help="limits set on Sluice's managed key (default: all three)")  # fmt: skip
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="which to measure (default: all four)")
    parser.add_argument("--chart", type=Path, default=stack.ROOT / "docs" / "bench.png")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else Plan()
    if args.streams:
        plan = Plan(**{**plan.__dict__, "open_streams": args.streams})
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is not installed (make bench-deps, or apt-get install wrk)")
    raise_open_files(plan.open_streams)
    with_peer = stack.litellm_installed() and not args.quick and not args.no_litellm
    names = [n for n in SYSTEMS if n in args.systems.split(",") and (n != "litellm" or with_peer)]
    header = describe_machine(args.workers, plan, names)
    header[-1] += f"; Sluice key limits: {args.key_limits}"
    print("\n".join(header), flush=True)
    with tempfile.TemporaryDirectory(prefix="sluice-bench-") as tmp:
        results = run_all(names, Path(tmp), plan, args.workers, tuple(args.key_limits.split(",")))
    print()
    print_table(results)
    verdicts = targets(results)
    print("\ntargets (ratios from this run):")
    print("\n".join(verdicts))
    print(f"\ntranslated streams / native chat stream, same Sluice ({', '.join(TRANSLATED)} / sluice, no target):")
    print("\n".join(translated_ratios(results)))
    print(f"load average at the end: {_load()}")
    when = header[0].split(";")[0].removeprefix("date: ")
    machine = header[1].removeprefix("machine: ")
    title = f"Sluice, its floor and a peer: {when}; {machine}; {args.workers} worker(s) each"
    write_chart(args.chart, {n: m.values for n, m in results.items()}, verdicts, title)
    print(f"chart: {args.chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
