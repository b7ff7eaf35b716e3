"""What the fault suite runs (bench/faults.py): the faults, the client dialect paths, the settings, and the
gateway config that gives every cell its own faulty first target.

A cell is one fault x one dialect path x one resume mode x hedging off/on. Its alias is `ordered`: first an
upstream of its own holding one faulty token (app/mock_resume.py's token prefixes), then a healthy upstream of
the same API with two good tokens. The faulty target's model id is the cell's own (`x-<cell>`), so the mock's
per-model request counts prove the fault was met; the faulty token is benched for 5 s after each failure (the
retry table's cooldown), so a cell's requests are spaced further apart than that (bench/faults.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# The index of the third text delta of a stream, per upstream API (chat chunks; Responses and Messages events).
THIRD_DELTA = {"openai": 2, "openai-native": 6, "anthropic": 5}
HEALTHY_TOKENS = 2
BREAKER_FAILURES = 1000  # a faulty upstream fails every time: its breaker must not skip it
CELL_HEDGE_AFTER = 0.3  # seconds: the fault cells with hedging on


@dataclass(frozen=True)
class Fault:
    key: str
    label: str
    prefix: str  # the token prefix, "<name><N>-" (no prefix: the control row)
    offset: int | None  # N = the third text delta's index + offset
    multibyte: bool = False  # the reply words carry multi-byte characters (every attempt alike)

    def token(self, api: str, cell: str) -> str:
        if self.offset is None:
            return f"fine-{cell}"
        return f"{self.prefix}{THIRD_DELTA[api] + self.offset}-{cell}"


FAULTS = (
    Fault("none", "no fault (control)", "", None),
    Fault("cut", "cut after 3 deltas", "cut", 1),
    Fault("cutevent", "cut mid-event (3rd delta)", "cutevent", 0),
    Fault("cutchar", "cut mid multi-byte char (3rd delta)", "cutchar", 0, multibyte=True),
    Fault("stall", "stall after 3 deltas (idle timeout)", "stall", 1),
    Fault("errorafter", "error event after 3 deltas", "errorafter", 1),
)
FAULT_BY_KEY = {f.key: f for f in FAULTS}


@dataclass(frozen=True)
class DialectPath:
    key: str
    label: str
    client: str  # "chat" | "responses" | "messages": what the client speaks
    api: str  # "openai" | "openai-native" (Responses passed through) | "anthropic": what the upstream speaks

    @property
    def modes(self) -> tuple[str, ...]:
        """The resume settings worth running: "continue" is a chat-completions (vLLM) request option."""
        return ("none", "prefill") if self.api == "anthropic" else ("none", "prefill", "continue")


PATHS = (
    DialectPath("chat", "chat native", "chat", "openai"),
    DialectPath("chatx", "chat on Messages upstream", "chat", "anthropic"),
    DialectPath("resp", "Responses native", "responses", "openai-native"),
    DialectPath("respx", "Responses on chat upstream", "responses", "openai"),
    DialectPath("msg", "Messages native", "messages", "anthropic"),
    DialectPath("msgx", "Messages on chat upstream", "messages", "openai"),
)
PATH_BY_KEY = {p.key: p for p in PATHS}


@dataclass(frozen=True)
class Cell:
    fault: Fault
    path: DialectPath
    mode: str  # resume: "none" | "prefill" | "continue"
    hedge: bool

    @property
    def id(self) -> str:
        return f"{self.fault.key}-{self.path.key}-{self.mode}-h{int(self.hedge)}"

    @property
    def alias(self) -> str:
        return f"c-{self.id}"

    @property
    def faulty_model(self) -> str:
        return f"x-{self.id}"

    @property
    def healthy_model(self) -> str:
        return "mock-mb" if self.fault.multibyte else "mock-gpt"

    @property
    def setting(self) -> str:
        return f"resume {self.mode}, hedge {'on' if self.hedge else 'off'}"


def cells(faults: Iterable[str] | None = None, paths: Iterable[str] | None = None,
          modes: Iterable[str] | None = None, hedges: Sequence[bool] = (False, True)) -> list[Cell]:  # fmt: skip
    """Every cell of the chosen faults x paths x modes (each path's own) x hedging; the control row once."""
    chosen = [FAULT_BY_KEY[k] for k in faults] if faults is not None else list(FAULTS)
    walked = [PATH_BY_KEY[k] for k in paths] if paths is not None else list(PATHS)
    found = []
    for fault in chosen:
        for path in walked:
            for mode in path.modes:
                if modes is not None and mode not in modes:
                    continue
                for hedge in hedges:
                    if fault.offset is None and (mode != "none" or hedge):
                        continue  # the control row: nothing to resume or hedge
                    found.append(Cell(fault, path, mode, hedge))
    return found


@dataclass(frozen=True)
class HedgeRun:
    """One hedging measurement: three aliases ("fast", "off", "on"), each on an upstream of its own. The fast
    tokens send their first event after `fast_ms` (0: at once, as the mock does by default)."""

    slow_ms: int = 2000
    fast_ms: int = 0
    hedge_after: float = 0.3

    def alias(self, name: str) -> str:
        return f"h{self.fast_ms}-{name}"

    def tokens(self, name: str) -> list[str]:
        fast = f"slowfirst{self.fast_ms}" if self.fast_ms else "fast"
        if name == "fast":
            return [f"{fast}-{self.alias(name)}-1", f"{fast}-{self.alias(name)}-2"]
        return [f"slowfirst{self.slow_ms}-{self.alias(name)}-1", *(f"{fast}-{self.alias(name)}-{i}" for i in (2, 3))]


HEDGE_NAMES = ("fast", "off", "on")
# The target leaves 0.5 x the fast p95 for the hedge's own start: the mock's instant first event leaves
# almost none, so the run is made twice, the second with fast tokens a little more like a real model's.
HEDGE_RUNS = (HedgeRun(fast_ms=0), HedgeRun(fast_ms=200))


def gateway_toml(mock_url: str, chosen: Sequence[Cell], hedges: Sequence[HedgeRun], timeouts: dict[str, float]) -> str:
    """The whole config: [gateway], the healthy upstreams, one faulty upstream and one alias per cell."""
    lines = ["[gateway]", f"breaker_failures = {BREAKER_FAILURES}"]
    lines += [f"{key} = {value}" for key, value in timeouts.items()]
    blocks = ["\n".join(lines) + "\n"]
    for api, mode in sorted({(c.path.api, c.mode) for c in chosen}):
        tokens = [f"good-{api}-{mode}-{i}" for i in range(1, HEALTHY_TOKENS + 1)]
        blocks.append(_upstream(f"ok-{api}-{mode}", mock_url, api, mode, tokens, ["mock-gpt", "mock-mb"]))
    for cell in chosen:
        token = cell.fault.token(cell.path.api, cell.id)
        blocks.append(_upstream(f"f-{cell.id}", mock_url, cell.path.api, cell.mode, [token], [cell.faulty_model]))
        targets = [(f"f-{cell.id}", cell.faulty_model), (f"ok-{cell.path.api}-{cell.mode}", cell.healthy_model)]
        blocks.append(_alias(cell.alias, targets, CELL_HEDGE_AFTER if cell.hedge else None))
    for run in hedges:
        for name in HEDGE_NAMES:
            alias = run.alias(name)
            blocks.append(_upstream(alias, mock_url, "openai", "none", run.tokens(name), ["mock-gpt"]))
            blocks.append(_alias(alias, [(alias, "mock-gpt")], run.hedge_after if name == "on" else None))
    return "\n".join(blocks)


def _upstream(name: str, mock_url: str, api: str, mode: str, tokens: list[str], models: list[str]) -> str:
    lines = ["[[upstreams]]", f'name = "{name}"', f'base_url = "{mock_url}/v1"', f"tokens = {json.dumps(tokens)}",
             f"models = {json.dumps(models)}", f'resume = "{mode}"']  # fmt: skip
    if api == "anthropic":
        lines.append('api = "anthropic"')
    if api == "openai-native":
        lines.append('responses = "native"')
    return "\n".join(lines) + "\n"


def _alias(name: str, targets: list[tuple[str, str]], hedge_after: float | None) -> str:
    listed = ", ".join(f'{{ upstream = "{u}", model = "{m}" }}' for u, m in targets)
    lines = ["[[models]]", f'name = "{name}"', 'strategy = "ordered"', f"targets = [{listed}]"]
    if hedge_after is not None:
        lines.append(f"hedge_after = {hedge_after}")
    return "\n".join(lines) + "\n"


def model_options(chosen: Sequence[Cell]) -> dict[str, dict]:
    """The mock's per-model options: multi-byte replies for the faulty and the healthy model of such cells."""
    options = {"mock-mb": {"multibyte": True}}
    options.update({c.faulty_model: {"multibyte": True} for c in chosen if c.fault.multibyte})
    return options
