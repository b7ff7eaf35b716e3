"""The routing strategies (app/services/strategies.py): pure orderings of an alias's targets."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from app.config_routing import Target
from app.services import strategies

A, B, C = Target("a", "m1", 3.0), Target("b", "m2", 1.0), Target("c", "m3", 1.0)


def ordered(strategy: str, targets, *, failed=(), inflight=None, ttfe=None, seed=0):
    return strategies.order(
        strategy, targets, failed=set(failed), rng=random.Random(seed),
        inflight=lambda t: (inflight or {}).get(t.key, 0), ttfe=lambda t: (ttfe or {}).get(t.key),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("strategy", "kwargs", "first"),
    [
        ("ordered", {"failed": {A.key}}, A),  # today's behaviour: a failed target's other tokens come first
        ("least_busy", {"inflight": {A.key: 2, B.key: 1, C.key: 1}}, B),  # ties keep config order
        ("least_busy", {"inflight": {A.key: 0, B.key: 1}}, A),
        ("least_busy", {"inflight": {A.key: 0}, "failed": {A.key}}, B),  # a failed target goes last
        ("latency", {"ttfe": {A.key: 0.5, B.key: 0.1, C.key: 0.2}, "seed": 1}, B),
        ("latency", {"ttfe": {A.key: 0.5, B.key: 0.1}, "seed": 1}, C),  # no sample yet: tried first
        ("latency", {"ttfe": {A.key: 0.5, B.key: 0.1, C.key: 0.2}, "failed": {B.key}, "seed": 1}, C),
    ],
)
def test_the_first_target(strategy, kwargs, first):
    order = ordered(strategy, (A, B, C), **kwargs)
    assert order[0] == first and sorted(order, key=str) == sorted((A, B, C), key=str)


def test_a_failed_target_goes_last_for_every_strategy_but_ordered():
    for strategy in ("weighted", "least_busy", "latency"):
        for seed in range(20):
            assert ordered(strategy, (A, B, C), failed={A.key}, seed=seed)[-1] == A


def test_the_weighted_split_over_ten_thousand_draws_is_within_two_points():
    rng = random.Random(13)
    firsts = Counter(strategies.weighted((A, B, C), rng)[0] for _ in range(10_000))
    for target, share in ((A, 0.6), (B, 0.2), (C, 0.2)):
        assert abs(firsts[target] / 10_000 - share) < 0.02


def test_weighted_orders_every_target_once():
    rng = random.Random(5)
    for _ in range(200):
        assert Counter(strategies.weighted((A, B, C), rng)) == Counter((A, B, C))


def test_latency_explores_another_target_now_and_then():
    ttfe = {A.key: 0.01, B.key: 0.5, C.key: 0.9}
    firsts = Counter(ordered("latency", (A, B, C), ttfe=ttfe, seed=seed)[0] for seed in range(2000))
    assert 0.85 < firsts[A] / 2000 < 0.95  # EXPLORE = 10% go elsewhere, so a recovered target is measured again
    assert firsts[B] > 50 and firsts[C] > 50


@pytest.mark.parametrize("strategy", ["ordered", "weighted", "least_busy", "latency"])
def test_one_target_is_its_own_order(strategy):
    assert ordered(strategy, (B,)) == [B]


def test_an_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown strategy"):
        ordered("fastest", (A, B))
