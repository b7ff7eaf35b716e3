"""Routing strategies: the order in which an alias's targets are tried, as pure functions.

Each takes the targets (anything with a `.key` and a `.weight`) and returns them all, best first;
the retry loop asks again before every attempt, so `least_busy` and `latency` see the load as it is
then. A target that already failed in this request goes last (except for `ordered`, which keeps
today's behaviour: the next token of the same upstream before the next upstream).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

EXPLORE = 0.1  # latency: how often another target goes first, so a recovered one gets new samples


class Weighted(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def weight(self) -> float: ...


T = TypeVar("T", bound=Weighted)


def order(
    strategy: str,
    targets: Sequence[T],
    *,
    failed: set[str],
    inflight: Callable[[T], int],
    ttfe: Callable[[T], float | None],
    rng: random.Random,
) -> list[T]:
    """Every target, in the order `strategy` would try them now."""
    if strategy == "ordered" or len(targets) < 2:
        return list(targets)
    fresh = [t for t in targets if t.key not in failed]
    spent = [t for t in targets if t.key in failed]
    if strategy == "weighted":
        return weighted(fresh, rng) + spent
    if strategy == "least_busy":
        return least_busy(fresh, inflight) + spent
    if strategy == "latency":
        return fastest(fresh, ttfe, rng) + spent
    raise ValueError(f"unknown strategy {strategy!r}")


def weighted(targets: Sequence[T], rng: random.Random) -> list[T]:
    """A random order where each place goes to a remaining target with probability proportional to its weight."""
    left, out = list(targets), []
    while left:
        draw = rng.random() * sum(t.weight for t in left)
        index = len(left) - 1  # rounding can leave `draw` a hair above the last boundary
        for i, target in enumerate(left):
            draw -= target.weight
            if draw < 0:
                index = i
                break
        out.append(left.pop(index))
    return out


def least_busy(targets: Sequence[T], inflight: Callable[[T], int]) -> list[T]:
    """Fewest requests in flight first; ties keep config order (sorting is stable)."""
    return sorted(targets, key=inflight)


def fastest(targets: Sequence[T], ttfe: Callable[[T], float | None], rng: random.Random) -> list[T]:
    """Lowest recent time to first event first; a target without a sample counts as fastest (it needs one).
    Now and then (EXPLORE) another target goes first, so one that has recovered is measured again."""
    ranked = sorted(targets, key=lambda t: (ttfe(t) is not None, ttfe(t) or 0.0))
    if len(ranked) > 1 and rng.random() < EXPLORE:
        ranked.insert(0, ranked.pop(rng.randrange(1, len(ranked))))
    return ranked
