"""The routing parts of the config file: model aliases ([[models]]), health probes and alerts ([[alerts]]).

Validated once, with the rest of the file (app/config.py): an unknown upstream, a cycle in
fallbacks or a weight <= 0 stops start-up (or a reload) with one line naming the key.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.config_reader import Reader

STRATEGIES = ("ordered", "weighted", "least_busy", "latency")
ALERT_EVENTS = (
    "pool_exhausted", "token_auto_disabled", "breaker_open", "breaker_closed", "budget_80", "budget_100",
    "upstream_recovered",
)  # fmt: skip
MAX_MODEL_NAME = 200


@dataclass(frozen=True)
class Target:
    """One place an alias can send a request: an upstream and the model id it is sent there as."""

    upstream: str
    model: str
    weight: float = 1.0

    @property
    def key(self) -> str:
        """The target's name in metrics, the load table and the dashboard."""
        return f"{self.upstream}/{self.model}"


@dataclass(frozen=True)
class Hedge:
    """`hedge_after` / `max_hedges`: one more attempt when the first event is late (docs/resilience.md)."""

    after: float | None = None  # seconds without a first event; None: the target's recent p95
    max_hedges: int = 1  # extra attempts at most, within max_attempts and the deadline


@dataclass(frozen=True)
class ModelAlias:
    name: str
    targets: tuple[Target, ...]
    strategy: str = "ordered"
    fallbacks: tuple[str, ...] = ()  # tried when every target failed
    context_fallbacks: tuple[str, ...] = ()  # tried instead when the upstream says the context is too long
    hedge: Hedge | None = None  # overrides the targets' upstreams' hedging


@dataclass(frozen=True)
class ProbeConfig:
    """A background health probe of an upstream's tokens: its model list, or a tiny completion."""

    kind: str  # "models" | "completion"
    model: str | None = None
    max_tokens: int = 1


@dataclass(frozen=True)
class AlertConfig:
    url: str
    events: tuple[str, ...]
    secret: str | None = None  # signs the body: X-Sluice-Signature: sha256=<hex HMAC>
    repeat_after: float = 900.0  # one alert per event and subject this often at most


def parse_probe(reader: Reader, raw: dict, where: str) -> ProbeConfig | None:
    """`probe = "models"` or `probe = { model = "x", max_tokens = 1 }`; absent: no probe."""
    value = raw.get("probe")
    if value is None:
        return None
    if value == "models":
        return ProbeConfig("models")
    if isinstance(value, dict):
        reader.no_unknown(value, f"{where}.probe", {"model", "max_tokens"})
        model = reader.string(value, f"{where}.probe", "model", required=True)
        max_tokens = reader.integer(value, f"{where}.probe", "max_tokens", 1, minimum=1, maximum=64)
        return ProbeConfig("completion", model, max_tokens)
    raise reader.error(f"{where}.probe", 'must be "models" or a table { model = "...", max_tokens = 1 }')


def parse_hedge(reader: Reader, raw: dict, where: str) -> Hedge | None:
    """`hedge_after = 2.5` (seconds) or `"p95"`, with `max_hedges` (1-5); no hedge_after: off."""
    value = raw.get("hedge_after")
    if value is None:
        if "max_hedges" in raw:
            raise reader.error(f"{where}.max_hedges", "needs hedge_after")
        return None
    if value == "p95":
        after = None
    elif isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise reader.error(f"{where}.hedge_after", 'must be a positive number of seconds or "p95"')
    else:
        after = float(value)
    return Hedge(after, reader.integer(raw, where, "max_hedges", 1, minimum=1, maximum=5))


def parse_models(reader: Reader, raw: Any, upstreams: Sequence[Any]) -> tuple[ModelAlias, ...]:
    """The [[models]] tables, checked against the configured upstreams and each other."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise reader.error("models", "must be an array of tables ([[models]])")
    by_upstream = {u.name: u for u in upstreams}
    aliases = tuple(_alias(reader, item, f"models[{i}]", by_upstream) for i, item in enumerate(raw))
    names = [a.name for a in aliases]
    for i, alias in enumerate(aliases):
        if names.count(alias.name) > 1:
            raise reader.error(f"models[{i}].name", f"{alias.name!r} is used more than once")
        for key in ("fallbacks", "context_fallbacks"):
            for name in getattr(alias, key):
                if name not in names and not any(_serves(u, name) for u in upstreams):
                    raise reader.error(f"models[{i}].{key}", f"{name!r} is no alias and no upstream serves it")
    _no_cycle(reader, {a.name: a for a in aliases})
    return aliases


def _alias(reader: Reader, raw: Any, where: str, upstreams: dict[str, Any]) -> ModelAlias:
    if not isinstance(raw, dict):
        raise reader.error(where, "must be a table")
    reader.no_unknown(
        raw, where, {"name", "strategy", "targets", "fallbacks", "context_fallbacks", "hedge_after", "max_hedges"}
    )
    name = reader.string(raw, where, "name", required=True)
    if len(name) > MAX_MODEL_NAME or any(c.isspace() or ord(c) < 0x20 for c in name):
        raise reader.error(f"{where}.name", f"must be at most {MAX_MODEL_NAME} characters without spaces")
    targets = raw.get("targets")
    if not isinstance(targets, list) or not targets:
        raise reader.error(f"{where}.targets", "must list at least one { upstream = ..., model = ... }")
    return ModelAlias(
        name=name,
        targets=tuple(_target(reader, t, f"{where}.targets[{j}]", upstreams) for j, t in enumerate(targets)),
        strategy=reader.choice(raw, where, "strategy", "ordered", STRATEGIES),
        fallbacks=tuple(reader.string_list(raw, where, "fallbacks", [])),
        context_fallbacks=tuple(reader.string_list(raw, where, "context_fallbacks", [])),
        hedge=parse_hedge(reader, raw, where),
    )


def _target(reader: Reader, raw: Any, where: str, upstreams: dict[str, Any]) -> Target:
    if not isinstance(raw, dict):
        raise reader.error(where, "must be a table { upstream = ..., model = ..., weight = ... }")
    reader.no_unknown(raw, where, {"upstream", "model", "weight"})
    upstream = reader.string(raw, where, "upstream", required=True)
    if upstream not in upstreams:
        raise reader.error(f"{where}.upstream", f"{upstream!r} is not a configured upstream")
    model = reader.string(raw, where, "model", required=True)
    weight = raw.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        raise reader.error(f"{where}.weight", "must be a number greater than 0")
    return Target(upstream, model, float(weight))


def _serves(upstream: Any, model: str) -> bool:
    return any(fnmatch.fnmatchcase(model, pattern) for pattern in upstream.models)


def _no_cycle(reader: Reader, aliases: dict[str, ModelAlias]) -> None:
    """A fallback chain must end: alias A falling back to B falling back to A is refused."""
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycle = " -> ".join([*path[path.index(name) :], name])
            raise reader.error("models", f"fallbacks form a cycle: {cycle}")
        if name in done or name not in aliases:
            return
        alias = aliases[name]
        for nxt in (*alias.fallbacks, *alias.context_fallbacks):
            visit(nxt, [*path, name])
        done.add(name)

    for name in aliases:
        visit(name, [])


def parse_alerts(reader: Reader, raw: Any) -> tuple[AlertConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise reader.error("alerts", "must be an array of tables ([[alerts]])")
    return tuple(_alert(reader, item, f"alerts[{i}]") for i, item in enumerate(raw))


def _alert(reader: Reader, raw: Any, where: str) -> AlertConfig:
    if not isinstance(raw, dict):
        raise reader.error(where, "must be a table")
    reader.no_unknown(raw, where, {"url", "events", "secret", "repeat_after"})
    url = reader.url(raw, where, "url", required=True, schemes=("http", "https"))
    events = reader.string_list(raw, where, "events", [])
    if not events:
        raise reader.error(f"{where}.events", f"must list at least one of {', '.join(ALERT_EVENTS)}")
    for event in events:
        if event not in ALERT_EVENTS:
            raise reader.error(f"{where}.events", f"unknown event {event!r} (known: {', '.join(ALERT_EVENTS)})")
    secret = reader.string(raw, where, "secret") or None
    if secret is not None and len(secret) < 16:
        raise reader.error(f"{where}.secret", "must be at least 16 characters")
    return AlertConfig(
        url=url or "", events=tuple(dict.fromkeys(events)), secret=secret,
        repeat_after=reader.number(raw, where, "repeat_after", 900.0),
    )  # fmt: skip
