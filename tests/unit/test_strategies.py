"""The routing strategies (app/services/strategies.py): pure orderings of an alias's targets, and the
real Selector using them (a TokenPool on SQLite): the weighted split, the latency penalty of a failure."""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import replace

import pytest
import requests
import responses

from app.config import GatewayConfig, UpstreamConfig
from app.config_routing import ModelAlias, Target
from app.services import aliases, strategies
from app.services.load import target_key, token_key
from tests.conftest import make_config

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


# --- through the real Selector (a TokenPool on SQLite; no HTTP for the split) ----------------------------------

URLS = {name: f"http://{name}.test/v1" for name in "abc"}


def selector_config(strategy: str, first_byte_timeout: float | None = None):
    upstreams = [
        UpstreamConfig(name=n, base_url=u, tokens=(f"{n}-token-0000000001",), models=("m*",)) for n, u in URLS.items()
    ]
    upstreams[0] = replace(upstreams[0], first_byte_timeout=first_byte_timeout)
    alias = ModelAlias("split", (Target("a", "m1", 3.0), Target("b", "m2", 1.0), Target("c", "m3", 1.0)), strategy)
    return replace(
        make_config(*upstreams), models=(alias,), gateway=GatewayConfig(max_body_bytes=16384, first_byte_timeout=9.0)
    )


def test_the_selector_splits_ten_thousand_weighted_choices_within_two_points(make_app):
    cfg = selector_config("weighted")
    selector = make_app(cfg).extensions["sluice"].client.selector
    selector.rng = random.Random(13)
    hop, overrides = aliases.resolve(cfg, "split"), selector.overrides()
    assert hop is not None
    chosen = Counter(selector.pick(selector.order(hop, set()), {}, overrides).route.key for _ in range(10_000))
    for key, share in (("a/m1", 0.6), ("b/m2", 0.2), ("c/m3", 0.2)):
        assert abs(chosen[key] / 10_000 - share) < 0.02, chosen


class NoExploring(random.Random):
    def random(self) -> float:
        return 0.99  # above EXPLORE: the fastest target goes first


def chat_reply(stream: bool) -> tuple[int, dict, str]:
    if stream:
        chunk = {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": "hi"}}],
        }
        return 200, {"Content-Type": "text/event-stream"}, f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n"
    return (
        200,
        {"Content-Type": "application/json"},
        json.dumps({"id": "c", "object": "chat.completion", "model": "m", "choices": []}),
    )


@pytest.mark.parametrize(
    ("fault", "stream", "first_byte_timeout", "penalty"),
    [
        ({"status": 500}, False, 7.0, 7.0),  # the upstream's first_byte_timeout
        ({"status": 503}, False, None, 9.0),  # else [gateway]'s
        ({"status": 529}, False, 7.0, 7.0),
        ({"body": requests.ConnectionError("refused")}, False, 7.0, 7.0),
        ({"body": "data: [DONE]\n\n", "content_type": "text/event-stream"}, True, 7.0, 7.0),  # an empty stream
        ({"status": 429}, False, 7.0, None),  # the token's fault, not the upstream's: no sample
        ({"status": 400, "json": {"error": {"message": "bad", "code": None}}}, False, 7.0, None),
    ],
    ids=["500", "503-gateway-timeout", "529", "transport", "empty-stream", "429", "400"],
)
def test_an_upstream_fault_is_a_slow_latency_sample(
    make_app, auth, upstream, fault, stream, first_byte_timeout, penalty
):
    cfg = selector_config("latency", first_byte_timeout)
    app = make_app(replace(cfg, gateway=replace(cfg.gateway, breaker_failures=50)))
    selector = app.extensions["sluice"].client.selector
    selector.rng = NoExploring()
    upstream.add(responses.POST, f"{URLS['a']}/chat/completions", **fault)
    for name in "bc":
        upstream.add_callback(responses.POST, f"{URLS[name]}/chat/completions", callback=lambda r: chat_reply(stream))
    body = {"model": "split", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    app.test_client().post("/v1/chat/completions", json=body, headers=auth).get_data()
    token = app.extensions["sluice"].pool.candidates("a")[0][0]
    load = selector.load
    assert load.ttfe(target_key("a", "m1")) == penalty and load.ttfe(token_key(token.id)) == penalty
    if penalty is not None:  # the failing target sinks below the one that answered (exploration brings it back)
        hop = aliases.resolve(cfg, "split")
        assert hop is not None and selector.order(hop, set())[0].key != "a/m1"
