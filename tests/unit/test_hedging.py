"""Hedged first event (issue 14 part 1): the retry loop driven against scripted upstream exchanges.

Each token's upstream is a `Script` (or a list of them, one per exchange opened on it): when its
headers come, its status, when its body (or first event) comes; None means never (until the exchange
is closed). Timings are real but short: hedge_after is 0.1 s and a fast answer comes at once, so every
assertion has a wide margin.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import pytest
import requests
from requests.structures import CaseInsensitiveDict

from app.config import UpstreamConfig
from app.config_routing import Hedge
from app.dialects.base import Leg
from app.dialects.openai_chat import CHAT
from app.requestlog import RequestLine
from app.services import metrics
from app.services.attempts import Accepted, Attempt, Attempts, Failed
from app.services.calls import Hop, Route, UpstreamCall
from app.services.exchange import Exchange, Message
from app.services.hedging import hedge_delay, ring_key
from app.services.load import MIN_SAMPLES, RING_SIZE, Load, token_key
from app.services.outcomes import Outcome
from app.services.tokens import token_id
from app.services.transport import Transport
from tests.conftest import BASE, TOKENS, make_config

A, B, C = TOKENS
NEVER = None
EVENTS = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
PLAIN = json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode()
CONTEXT = "context_length_exceeded"
HEDGE = Hedge(0.1, 1)
LIMIT = 5.0  # no scripted wait lasts longer, whatever happens


@dataclass(frozen=True)
class Script:
    headers: float | None = 0.0  # seconds before the status line and headers
    body: float | None = 0.0  # seconds after the headers before the body (a stream: its events)
    status: int = 200
    error: str = "no"  # an error status's message (CONTEXT: the prompt is too long for the model)

    def error_body(self) -> bytes:
        code = CONTEXT if self.error == CONTEXT else None
        return json.dumps({"error": {"message": self.error, "type": "t", "param": None, "code": code}}).encode()


def _wait(exchange: Exchange, seconds: float | None) -> bool:
    """Sleep `seconds` (None: until closed) in small steps; False when the exchange was closed meanwhile."""
    end = time.monotonic() + (LIMIT if seconds is None else seconds)
    while time.monotonic() < end:
        if exchange.closed:
            return False
        time.sleep(0.005)
    return not exchange.closed


class Raw:
    """A response body read by the exchange's reader: `data` after `delay`, or an error once closed."""

    def __init__(self, exchange: Exchange, data: bytes, delay: float | None) -> None:
        self.exchange, self.data, self.delay = exchange, data, delay

    def read1(self, size: int, decode_content: bool = True) -> bytes:
        if self.delay != 0.0:
            delay, self.delay = self.delay, 0.0
            if not _wait(self.exchange, delay):
                raise OSError("closed")
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk

    def read(self, size: int, decode_content: bool = True) -> bytes:
        return self.read1(size)

    def close(self) -> None:
        return None


class ScriptedTransport(Transport):
    """Opens exchanges whose upstream plays each token's Script; remembers them in order."""

    def __init__(self, scripts: dict[str, Script]) -> None:
        super().__init__(requests.Session(), time.time)
        self.scripts = scripts
        self.opened: list[tuple[str, float, Exchange]] = []  # token, when, exchange

    def open(self, call, upstream, token, leg) -> Exchange:
        script, holder = self.scripts[token], []
        if isinstance(script, list):
            script = script.pop(0)

        def send() -> requests.Response:
            while not holder:  # the exchange is made before its reader runs this, but let it be set
                time.sleep(0.001)
            exchange = holder[0]
            if not _wait(exchange, script.headers):
                raise requests.ConnectionError("closed")
            response = requests.Response()
            response.status_code = script.status
            streamed = call.streaming and script.status == 200
            ctype = "text/event-stream" if streamed else "application/json"
            response.headers = CaseInsensitiveDict({"Content-Type": ctype})
            data = script.error_body() if script.status != 200 else EVENTS if streamed else PLAIN
            response.raw = Raw(exchange, data, script.body if script.status == 200 else 0.0)
            return response

        exchange = Exchange(send, streaming=call.streaming, sse=True)
        holder.append(exchange)
        self.opened.append((token, time.time(), exchange))
        return exchange

    def tokens(self) -> list[str]:
        return [token for token, _, _ in self.opened]


def _leg(route: Route) -> Leg:
    return Leg("/chat/completions", b"{}", CHAT, lambda: CHAT.relay(hide_usage=False))


@pytest.fixture
def loop(make_app):
    """make(scripts, hedge=..., streaming=..., ...) -> (Attempts, ScriptedTransport); abandoned at teardown."""
    made: list[Attempts] = []

    def make(scripts, hedge=HEDGE, streaming=True, max_attempts=3, deadline=10.0, alias_hedge=None, first_byte=None):
        upstream = UpstreamConfig(
            name="primary", base_url=BASE, tokens=TOKENS, hedge=hedge, first_byte_timeout=first_byte
        )
        app = make_app(make_config(upstream, max_attempts=max_attempts))
        client = app.extensions["sluice"].client
        transport = ScriptedTransport(scripts)
        bigger = Hop("big", (Route(upstream, model="big"),))  # the context fallback: same tokens, another model
        hop = Hop("m", (Route(upstream),), hedge=alias_hedge, context_fallbacks=(bigger,))
        call = UpstreamCall("POST", _leg, streaming, hop, "req_test")
        attempts = Attempts(client.selector, transport, client.settings, call, time.time() + deadline)
        made.append(attempts)
        return attempts, transport

    yield make
    for attempts in made:
        attempts.abandon(Outcome.CLIENT_DISCONNECT)
        attempts.finish()


def run(attempts: Attempts, seconds: float = 3.0) -> Accepted | Failed | None:
    return attempts.advance(until=time.time() + seconds)


def outcomes(attempts: Attempts) -> list[tuple[str, str, bool]]:
    """(token, outcome, hedge) per record, the token as "A", "B" or "C"."""
    names = {token_id("primary", token): "ABC"[i] for i, token in enumerate(TOKENS)}
    return [(names[r.token_id], r.outcome.value, r.hedge) for r in attempts.records]


def hedges(result: str) -> float:
    return metrics.HEDGES.labels(upstream="primary", result=result)._value.get()


def test_a_late_first_event_starts_a_hedge_on_another_token_after_hedge_after_and_the_hedge_wins(loop):
    attempts, transport = loop({A: Script(body=NEVER), B: Script()})
    started, won = hedges("started"), hedges("won")
    outcome = run(attempts)
    assert isinstance(outcome, Accepted) and outcome.token.value == B
    assert transport.tokens() == [A, B]
    (_, first_at, first), (_, hedge_at, _) = transport.opened
    assert 0.09 <= hedge_at - first_at < 0.5  # not before hedge_after
    assert first.closed  # the loser is closed at once, not blamed
    assert outcomes(attempts) == [("A", "hedge_lost", False), ("B", "ok", True)]
    assert attempts.records[-1].token_id == outcome.token.id  # the last record is the answer's (accounting)
    assert (hedges("started") - started, hedges("won") - won) == (1, 1)
    assert b"hi" in b"".join(outcome.prefix)


def test_the_first_attempt_still_wins_when_its_event_comes_before_the_hedges(loop):
    attempts, transport = loop({A: Script(body=0.25), B: Script(headers=NEVER)})
    lost = hedges("lost")
    outcome = run(attempts)
    assert isinstance(outcome, Accepted) and outcome.token.value == A
    assert transport.tokens() == [A, B] and transport.opened[1][2].closed
    assert outcomes(attempts) == [("B", "hedge_lost", True), ("A", "ok", False)]
    assert hedges("lost") - lost == 1
    assert outcome.exchange.waker is None  # the winner's reader stops waking the loop


def test_a_loser_gives_a_lower_bound_sample_to_the_latency_figures(loop):
    attempts, _ = loop({A: Script(body=NEVER), B: Script()})
    run(attempts)
    load, route = attempts.selector.load, attempts.call.hop.routes[0]
    assert 0.09 < load.ttfe(f"token:{token_id('primary', A)}") < 0.5  # its time when it lost: the hedge's start, ~0.1 s
    assert load.ttfe_p95(route.load_key) is None  # two samples (the loser's and the winner's): too few


def test_a_hedge_that_loses_at_once_does_not_make_its_token_look_fast(loop):
    attempts, _ = loop({A: Script(body=0.13), B: Script(headers=NEVER)})  # B starts at 0.1 s, loses at 0.13 s
    load, b_key = attempts.selector.load, token_key(token_id("primary", B))
    load.first_event(0.5, b_key)  # what B is known for
    assert run(attempts).token.value == A
    assert outcomes(attempts) == [("B", "hedge_lost", True), ("A", "ok", False)]
    assert load.ttfe(b_key) == 0.5  # its ~0.03 s without a first event is no news


@pytest.mark.parametrize(
    ("mine", "others", "bound", "expected"),
    [
        (None, None, 0.2, 0.2),  # no estimate: the lower bound is the first one
        (0.5, None, 0.2, 0.5),  # below the estimate: says nothing
        (0.5, None, 0.5, 0.5),
        (0.5, None, 0.9, 0.62),  # above: a sample (EWMA 0.3)
        (None, 0.5, 0.2, 0.5),  # the other workers' estimate counts too
        (None, 0.5, 0.9, 0.9),
    ],
)
def test_a_lower_bound_feeds_the_ewma_only_where_it_raises_the_estimate(mine, others, bound, expected):
    load = Load()
    if mine is not None:
        load.first_event(mine, "token:t")
    if others is not None:
        load.merge({"token:t": (0, others)})
    load.first_event_at_least(bound, "token:t")
    assert load.ttfe("token:t") == pytest.approx(expected)


@pytest.mark.parametrize(
    ("before", "bound", "after", "expected"),
    [
        # (nearest rank: of 20 samples the 19th, of 22 the 21st)
        ([0.5] * (MIN_SAMPLES - 1), 0.01, [], None),  # below the ring's p95: not kept (19 samples: no p95)
        ([0.5] * (MIN_SAMPLES - 1), 0.5, [], None),
        ([0.5] * (MIN_SAMPLES - 1), 0.8, [], 0.5),  # above: kept (the 20th sample)
        ([0.5] * MIN_SAMPLES, 0.8, [0.9], 0.8),
        ([0.5] * MIN_SAMPLES, 0.4, [0.9], 0.5),
        ([0.1] * 5 + [0.6], 0.3, [0.1] * 14, 0.1),  # few samples: their p95 is their highest (0.6): not kept
        ([], 0.9, [0.1] * (MIN_SAMPLES - 1), 0.1),  # an empty ring: kept (the 20th sample)
    ],
)
def test_a_lower_bound_joins_the_p95_ring_only_above_its_current_p95(before, bound, after, expected):
    load = Load()
    for sample in before:
        load.ttfe_sample(sample, "target:u/m")
    load.ttfe_sample_at_least(bound, "target:u/m")
    for sample in after:
        load.ttfe_sample(sample, "target:u/m")
    assert load.ttfe_p95("target:u/m") == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize("streaming", [True, False])
def test_plain_and_streamed_first_events_keep_separate_p95_rings(loop, streaming):
    attempts, _ = loop({A: Script(headers=0.08)}, streaming=streaming, hedge=None)
    load, route = attempts.selector.load, attempts.call.hop.routes[0]
    mine, other = ring_key(route, streaming), ring_key(route, not streaming)
    assert mine != other and ring_key(route, True) == route.load_key
    for _ in range(MIN_SAMPLES - 1):
        load.ttfe_sample(0.01, mine)
        load.ttfe_sample(0.01, other)
    assert isinstance(run(attempts), Accepted)
    assert load.ttfe_p95(mine) == 0.01  # its 20th sample (19 fast ones: nearest rank 19 of 20)
    assert load.ttfe_p95(other) is None  # a plain status time never reaches a stream's p95, nor the reverse
    assert load.ttfe(token_key(token_id("primary", A))) == pytest.approx(0.08, abs=0.05)  # the EWMA: both


@pytest.mark.parametrize(("plain_ring", "hedged"), [(True, True), (False, False)])
def test_a_plain_request_hedging_on_p95_reads_the_plain_ring(loop, plain_ring, hedged):
    attempts, transport = loop({A: Script(headers=0.4), B: Script()}, streaming=False, hedge=Hedge(None, 1))
    load, route = attempts.selector.load, attempts.call.hop.routes[0]
    for _ in range(MIN_SAMPLES):
        load.ttfe_sample(0.1, ring_key(route, not plain_ring))
    outcome = run(attempts)
    assert isinstance(outcome, Accepted) and outcome.token.value == (B if hedged else A)
    assert transport.tokens() == ([A, B] if hedged else [A])


@pytest.mark.parametrize(
    ("scripts", "hedge", "max_attempts"),
    [
        ({A: Script(body=0.03), B: Script()}, Hedge(0.2, 1), 3),  # the first event came before hedge_after
        ({A: Script(body=0.2), B: Script()}, None, 3),  # hedging off
        ({A: Script(body=0.2), B: Script()}, Hedge(0.05, 1), 1),  # max_attempts leaves no room for a hedge
        ({A: Script(body=0.2), B: Script()}, Hedge(None, 1), 3),  # "p95" with no samples yet
    ],
)
def test_no_hedge_one_exchange_and_no_waker(loop, scripts, hedge, max_attempts):
    attempts, transport = loop(scripts, hedge=hedge, max_attempts=max_attempts)
    outcome = run(attempts)
    assert isinstance(outcome, Accepted) and outcome.token.value == A
    assert transport.tokens() == [A]
    assert transport.opened[0][2].waker is None and attempts.hedging.waker is None
    assert attempts.hedging.started == 0 and not any(r.hedge for r in attempts.records)


@pytest.mark.parametrize(("max_hedges", "expected"), [(1, [A, B]), (2, [A, B, C])])
def test_max_hedges_are_started_one_hedge_after_apart_and_abandon_closes_them_all(loop, max_hedges, expected):
    slow = Script(body=NEVER)
    attempts, transport = loop({A: slow, B: slow, C: slow}, hedge=Hedge(0.1, max_hedges))
    assert run(attempts, 0.45) is None  # still waiting
    assert transport.tokens() == expected
    times = [at for _, at, _ in transport.opened]
    assert all(0.09 <= later - earlier < 0.35 for earlier, later in zip(times, times[1:], strict=False))
    attempts.abandon(Outcome.CLIENT_DISCONNECT)
    assert all(exchange.closed for _, _, exchange in transport.opened)
    assert [r.outcome for r in attempts.records] == [Outcome.CLIENT_DISCONNECT] * len(expected)
    assert not attempts.hedging.running


def test_the_alias_hedge_overrides_the_upstreams(loop):
    attempts, transport = loop({A: Script(body=0.3), B: Script()}, hedge=None, alias_hedge=Hedge(0.1, 1))
    outcome = run(attempts)
    assert isinstance(outcome, Accepted) and outcome.token.value == B
    assert transport.tokens() == [A, B]


def test_no_hedge_after_the_deadline(loop):
    attempts, transport = loop({A: Script(body=NEVER), B: Script()}, hedge=Hedge(0.3, 1), deadline=0.15)
    outcome = run(attempts)
    assert isinstance(outcome, Failed) and outcome.error.code == "deadline_exceeded"
    assert transport.tokens() == [A] and transport.opened[0][2].closed


def test_p95_hedges_after_the_targets_recent_95th_percentile(loop):
    attempts, transport = loop({A: Script(body=NEVER), B: Script()}, hedge=Hedge(None, 1))
    key = attempts.call.hop.routes[0].load_key
    for _ in range(MIN_SAMPLES):
        attempts.selector.load.ttfe_sample(0.1, key)
    outcome = run(attempts)
    assert isinstance(outcome, Accepted) and outcome.token.value == B
    (_, first_at, _), (_, hedge_at, _) = transport.opened
    assert 0.09 <= hedge_at - first_at < 0.5


def test_a_retryable_failure_beside_a_running_attempt_waits_for_it_without_a_replacement(loop):
    attempts, transport = loop({A: Script(body=0.35), B: Script(status=500), C: Script()})
    outcome = run(attempts)
    assert isinstance(outcome, Accepted) and outcome.token.value == A
    assert transport.tokens() == [A, B]  # no replacement for B while A ran
    assert outcomes(attempts) == [("B", "server_error", True), ("A", "ok", False)]


# A is the first attempt, B its hedge (started at 0.2 s: SLOW_HEDGE); each fails or answers at the time given.
# After a non-retryable failure, the others have one hedge delay (0.2 s) to have their first event.
SLOW_HEDGE = Hedge(0.2, 1)
# The table below at 2.5 times those times (B starts at 0.5 s, the others have 0.5 s): under `make test` on two
# busy cores a hedge started 0.1 s late once, and A's failure at 0.3 s came before B's at 0.2 s.
WIDE_HEDGE = Hedge(0.5, 1)


def _at(seconds: float, status: int = 500, error: str = "no") -> Script:
    return Script(headers=seconds, status=status, error=error)


@pytest.mark.parametrize(
    ("a", "b", "answer", "records"),
    [
        # A non-retryable failure beside a running attempt waits for it: a good answer in time wins.
        (Script(body=0.75), _at(0.0, 400), ("ok", None), [("B", "client_error", True), ("A", "ok", False)]),
        (Script(body=0.75), _at(0.0, 400, CONTEXT), ("ok", None),
         [("B", "context_length_exceeded", True), ("A", "ok", False)]),
        # ... but one hedge delay at most (B failed at 0.5 s: A is dropped at 1 s, not at its first-byte limit).
        (Script(body=NEVER), _at(0.0, 400, "bad B"), (400, "bad B"),
         [("B", "client_error", True), ("A", "hedge_lost", False)]),
        (Script(body=1.5), _at(0.0, 400, "bad B"), (400, "bad B"),
         [("B", "client_error", True), ("A", "hedge_lost", False)]),
        # Every attempt failed: the first non-retryable failure is the answer, whatever failed after it.
        (_at(0.75), _at(0.0, 400, "bad B"), (400, "bad B"),
         [("B", "client_error", True), ("A", "server_error", False)]),
        (_at(0.75, 400, "bad A"), _at(0.0, 500), (400, "bad A"),
         [("B", "server_error", True), ("A", "client_error", False)]),
        (_at(0.75, 400, "bad A"), _at(0.0, 400, "bad B"), (400, "bad B"),
         [("B", "client_error", True), ("A", "client_error", False)]),
        (_at(0.625, 400, "bad A"), _at(0.375, 400, "bad B"), (400, "bad A"),
         [("A", "client_error", False), ("B", "client_error", True)]),
        (_at(0.75, 400, CONTEXT), _at(0.0, 400, "bad B"), (400, "bad B"),
         [("B", "client_error", True), ("A", "context_length_exceeded", False)]),
    ],
)  # fmt: skip
def test_a_failure_beside_a_running_attempt_waits_for_it_and_the_first_non_retryable_one_decides(
    loop, a, b, answer, records
):
    attempts, transport = loop({A: a, B: b, C: Script()}, hedge=WIDE_HEDGE)
    started = time.time()
    outcome = run(attempts)
    # At most one hedge delay after the first non-retryable failure (1 s at most here), not the 10 s deadline a
    # wrong wait would reach; the bound leaves room for a loaded machine.
    assert time.time() - started < 3.0
    if answer[0] == "ok":
        assert isinstance(outcome, Accepted) and outcome.token.value == A and outcome.choice.route.model is None
    else:
        assert isinstance(outcome, Failed) and (outcome.error.status, outcome.error.message) == answer
    assert transport.tokens() == [A, B]  # no replacement, and no retry after a non-retryable failure
    answered = outcome.exchange if isinstance(outcome, Accepted) else None
    assert all(exchange.closed for _, _, exchange in transport.opened if exchange is not answered)
    assert outcomes(attempts) == records
    assert not attempts.hedging.running


@pytest.mark.parametrize(
    "a",
    [_at(0.3), _at(0.3, 400, "bad A")],  # a context-length failure came first: it decides either way
)
def test_a_context_length_failure_beside_a_running_attempt_moves_to_the_context_fallback_once_all_failed(loop, a):
    attempts, transport = loop({A: [a, Script()], B: _at(0.0, 400, CONTEXT), C: Script()}, hedge=SLOW_HEDGE)
    outcome = run(attempts)
    assert isinstance(outcome, Accepted) and outcome.choice.route.model == "big"
    assert transport.tokens()[:2] == [A, B] and len(transport.tokens()) == 3
    assert [r.model for r in attempts.records] == [None, None, "big"]


def test_no_hedge_starts_after_a_non_retryable_failure_while_the_others_run(loop):
    # B starts at 0.25 s and fails at 0.4 s; A answers at 0.58 s, within 0.25 s of B's failure
    attempts, transport = loop({A: Script(body=0.58), B: _at(0.15, 400), C: Script()}, hedge=Hedge(0.25, 2))
    outcome = run(attempts)
    assert isinstance(outcome, Accepted) and outcome.token.value == A
    assert transport.tokens() == [A, B]  # C would have started at 0.5 s beside A


def test_the_deadline_answers_with_the_decisive_failure_held_not_a_504(loop):
    attempts, transport = loop({A: _at(0.15, 400, "bad A"), B: Script(headers=NEVER)}, deadline=0.2)
    outcome = run(attempts)  # A failed at 0.15 s beside B (started at 0.1 s); the deadline comes before 0.25 s
    assert isinstance(outcome, Failed) and (outcome.error.status, outcome.error.message) == (400, "bad A")
    assert outcomes(attempts) == [("A", "client_error", False), ("B", "deadline", True)]
    assert all(exchange.closed for _, _, exchange in transport.opened)


def test_abandon_hands_back_the_decisive_failure_held(loop):
    attempts, transport = loop({A: _at(0.25, 400, "bad A"), B: Script(headers=NEVER)}, hedge=SLOW_HEDGE)
    assert run(attempts, 0.35) is None  # A failed at 0.25 s; B runs until 0.45 s
    held = attempts.abandon(Outcome.SERVER_SHUTDOWN)  # a graceful stop's deadline
    assert isinstance(held, Failed) and (held.error.status, held.error.message) == (400, "bad A")
    assert outcomes(attempts) == [("A", "client_error", False), ("B", "server_shutdown", True)]
    assert attempts.abandon(Outcome.SERVER_SHUTDOWN) is None  # handed back once


def test_when_every_running_attempt_failed_the_loop_goes_on_as_before(loop):
    attempts, transport = loop({A: Script(headers=0.2, status=500), B: Script(headers=0.2, status=500), C: Script()})
    outcome = run(attempts)
    assert isinstance(outcome, Accepted) and outcome.token.value == C
    assert transport.tokens() == [A, B, C]
    assert [r.outcome.value for r in attempts.records] == ["server_error", "server_error", "ok"]


def test_a_first_byte_timeout_applies_per_attempt(loop):
    attempts, transport = loop({A: Script(body=NEVER), B: Script(body=NEVER), C: Script()}, first_byte=0.25)
    outcome = run(attempts)
    assert isinstance(outcome, Accepted) and outcome.token.value == C
    assert outcomes(attempts) == [("A", "first_byte_timeout", False), ("B", "first_byte_timeout", True),
                                  ("C", "ok", False)]  # fmt: skip
    a, b, c = (at for _, at, _ in transport.opened)
    assert 0.3 <= c - a < 0.8  # C after B's own limit (0.1 + 0.25), not A's (0.25)


def test_a_plain_request_hedges_too(loop):
    attempts, transport = loop({A: Script(headers=NEVER), B: Script()}, streaming=False)
    outcome = run(attempts)
    assert isinstance(outcome, Accepted) and outcome.token.value == B and outcome.body == PLAIN
    assert transport.opened[0][2].closed
    assert outcomes(attempts) == [("A", "hedge_lost", False), ("B", "ok", True)]


def test_a_plain_answers_2xx_status_is_its_first_event_and_wins_at_once(loop):
    attempts, transport = loop({A: Script(headers=0.2, body=0.6), B: Script(headers=NEVER)}, streaming=False)
    assert run(attempts, 0.4) is None  # A's headers came (after B started), its body not yet
    assert transport.tokens() == [A, B] and transport.opened[1][2].closed
    outcome = run(attempts)
    assert isinstance(outcome, Accepted) and outcome.token.value == A and outcome.body == PLAIN
    assert outcomes(attempts) == [("B", "hedge_lost", True), ("A", "ok", False)]


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([], None),
        ([0.5] * (MIN_SAMPLES - 1), None),
        ([0.5] * MIN_SAMPLES, 0.5),
        ([i / 100 for i in range(1, 21)], 0.19),  # nearest rank: the 19th of 20
        ([i / 100 for i in range(1, 101)], 0.97),  # the last RING_SIZE kept (0.37..1.00): the 61st of 64
    ],
)
def test_ttfe_p95(samples, expected):
    load = Load()
    for sample in samples:
        load.ttfe_sample(sample, "target:u/m")
    p95 = load.ttfe_p95("target:u/m")
    assert RING_SIZE == 64
    assert p95 == (None if expected is None else pytest.approx(expected))
    assert "target:u/m" not in load.snapshot()  # the samples stay out of the reported load table


def test_an_exchange_sets_its_waker_after_each_message():
    release = threading.Event()

    def send() -> requests.Response:
        release.wait(LIMIT)
        raise requests.ConnectionError("refused")

    exchange = Exchange(send, streaming=True)
    exchange.waker = waker = threading.Event()
    assert not waker.is_set()
    release.set()
    assert waker.wait(LIMIT)
    message = exchange.next(0)
    assert isinstance(message, Message) and message.kind == "error"
    exchange.close()


def _attempt(outcome: Outcome, hedge: bool) -> Attempt:
    return Attempt("primary", "t1", 200, outcome.value, 0.1, outcome, None, hedge)


@pytest.mark.parametrize(
    ("attempts", "resumes", "text"),
    [
        ([_attempt(Outcome.OK, False)], [], ""),
        ([_attempt(Outcome.HEDGE_LOST, False), _attempt(Outcome.OK, True)], [], " hedges=1 hedge_won=1"),
        ([_attempt(Outcome.HEDGE_LOST, True), _attempt(Outcome.OK, False)], [], " hedges=1 hedge_won=0"),
        ([_attempt(Outcome.OK, False)], ["stream_broken", "upstream_timeout"],
         " resumed=2 resume=stream_broken,upstream_timeout"),
    ],
)  # fmt: skip
def test_the_request_log_line_names_hedges_and_resumes(attempts, resumes, text):
    line = RequestLine("req_1", "POST", "/v1/chat/completions", attempts=attempts, resumes=resumes)
    assert line.resilience() == text


@pytest.mark.parametrize(
    ("hedge", "p95", "first_byte", "expected"),
    [
        (Hedge(0.5, 1), None, 10.0, 0.5),  # a fixed hedge_after needs no samples
        (Hedge(0.5, 1), 3.0, 0.2, 0.5),  # ... and ignores the p95 and the first-byte limit
        (Hedge(None, 1), None, 10.0, None),  # "p95" with too few samples: no hedge
        (Hedge(None, 1), 0.8, 10.0, 0.8),
        (Hedge(None, 1), 12.0, 10.0, 10.0),  # bounded by the attempt's first-byte limit
    ],
)
def test_hedge_delay(hedge, p95, first_byte, expected):
    assert hedge_delay(hedge, p95, first_byte) == expected
