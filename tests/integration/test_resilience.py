"""The fault suite's fast subset (the whole suite: `make faults`, docs/resilience.md), through gunicorn and the
mock: a cut and an error event after three text deltas on every streaming dialect path, resume off (an explicit
error, never a silently wrong answer) and on (the whole reply), and the hedged first event on chat."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator

import pytest

from app.config import parse_config
from bench.faults import TIMEOUTS, Stack, log_counts, percentile, run_cells, run_hedging, stack
from bench.faults_client import Answer, summarise, verdict
from bench.faults_plan import HEDGE_NAMES, HEDGE_RUNS, HedgeRun, cells, gateway_toml

pytestmark = pytest.mark.integration

CELLS = cells(["cut", "errorafter"], modes=("none", "prefill"), hedges=(False,))
# Fast tokens with a 200 ms first event: the target then leaves the hedge 100 ms for its own start (with
# the mock's instant first event it would leave a few milliseconds, too few on a loaded test machine).
HEDGE = HedgeRun(slow_ms=2000, fast_ms=200, hedge_after=0.3)
HEDGE_STREAMS = 9  # per alias: three of them meet the slow token when hedging is on


EXPECTED = "Hello world "
CHAT_END = b'data: {"id": "a", "choices": [], "usage": {"total_tokens": 3}}\n\ndata: [DONE]\n\n'


def chat(*deltas: str, role: bool = True, end: bytes = CHAT_END) -> bytes:
    chunks = [{"id": "a", "choices": [{"delta": {"content": d, **({"role": "assistant"} if role and not i else {})}}]}
              for i, d in enumerate(deltas)]  # fmt: skip
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + end


ERROR = b'data: {"error": {"code": "upstream_stream_error"}}\n\n'


@pytest.mark.parametrize(
    ("raw", "aborted", "expected"),
    [
        (chat("Hello ", "world "), None, ("complete", "")),
        (chat("Hello ", "world ")[:-6], None, ("wrong", "ended mid-event; 0 ends")),
        (chat("Hello "), None, ("wrong", "truncated (6 of 12 chars)")),
        (chat("Hello ", "Hello ", "world "), None, ("wrong", "longer text (18 of 12 chars: duplicated?)")),
        (chat("Hello ", end=b""), "ChunkedEncodingError",
         ("wrong", "connection ChunkedEncodingError; truncated (6 of 12 chars); 0 ends; 0 usage reports")),
        (chat("Hello ", end=ERROR + b"data: [DONE]\n\n"), None, ("error", "error event (upstream_stream_error)")),
        (chat("Hello ", "world ", role=False), None, ("wrong", "0 starts")),
        (chat("Hel", "lo ", "world ") + CHAT_END, None, ("wrong", "2 ends; 2 usage reports")),
    ],
)  # fmt: skip
def test_verdicts_on_chat_streams(raw, aborted, expected):
    answer = Answer(status=200, aborted=aborted)
    summarise("chat", raw, answer)
    assert verdict(answer, EXPECTED) == expected


def messages(*deltas: str, stop: bool = True) -> bytes:
    events = [("message_start", {"message": {"id": "msg_1"}})]
    events += [("content_block_delta", {"delta": {"type": "text_delta", "text": d}}) for d in deltas]
    events += [("message_delta", {"usage": {"output_tokens": 2}})] + ([("message_stop", {})] if stop else [])
    return b"".join(f"event: {n}\ndata: {json.dumps({'type': n, **e})}\n\n".encode() for n, e in events)


# An event whose data stops after the first byte of a two-byte character, then a blank line.
HALF_CHAR = 'event: content_block_delta\ndata: {"delta": {"type": "text_delta", "text": "é'.encode()[:-1] + b"\n\n"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (messages("Hello ", "world "), ("complete", "")),
        (messages("Hello ", "world ", stop=False), ("wrong", "0 ends")),
        (messages("Hello ") + b'event: error\ndata: {"type": "error", "error": {"type": "api_error"}}\n\n',
         ("error", "error event (api_error)")),
        (HALF_CHAR + messages("Hello ", "world "), ("wrong", "garbled event (UnicodeDecodeError)")),
    ],
)  # fmt: skip
def test_verdicts_on_messages_streams(raw, expected):
    answer = Answer(status=200)
    summarise("messages", raw, answer)
    assert verdict(answer, EXPECTED) == expected


def test_an_http_error_is_explicit():
    assert verdict(Answer(status=503), EXPECTED) == ("error", "HTTP 503")


def test_the_whole_suite_config_is_accepted_by_the_gateway():
    text = gateway_toml("http://127.0.0.1:9", cells(), HEDGE_RUNS, TIMEOUTS)
    config = parse_config(tomllib.loads(text), source="faults.toml", env={})
    aliases = {a.name: a for a in config.models}
    assert len(aliases) == len(cells()) + len(HEDGE_RUNS) * len(HEDGE_NAMES)
    assert aliases["h200-on"].hedge is not None and aliases["h200-off"].hedge is None
    assert {u.name: u.tokens for u in config.upstreams}["h200-on"] == (
        "slowfirst2000-h200-on-1",
        "slowfirst200-h200-on-2",
        "slowfirst200-h200-on-3",
    )
    assert aliases["c-cut-chat-prefill-h1"].hedge is not None and aliases["c-cut-chat-prefill-h0"].hedge is None
    upstreams = {u.name: u for u in config.upstreams}
    assert upstreams["f-cut-msg-prefill-h0"].tokens == ("cut6-cut-msg-prefill-h0",)  # after the 3rd delta (5)
    assert (
        upstreams["f-cut-msg-prefill-h0"].api == "anthropic" and upstreams["f-cut-resp-none-h0"].responses == "native"
    )


def test_log_counts_reads_hedges_and_resumes():
    text = (
        "INFO request request_id=r1 client=- method=POST path=/v1/chat/completions key=master model=c-x stream=true "
        "upstream=u status=200 outcome=ok attempts=2 latency_ms=5 bytes=9 resumed=1 resume=stream_broken\n"
        "INFO request request_id=r2 client=- method=POST path=/v1/chat/completions key=master model=c-x stream=true "
        "upstream=u status=200 outcome=ok attempts=2 latency_ms=5 bytes=9 hedges=1 hedge_won=1\n"
        "INFO something else model=c-x\n"
    )
    assert log_counts(text) == {"c-x": {"requests": 2, "resumed": 1, "resumes": 1, "hedged": 1, "hedges": 1,
                                         "hedge_won": 1}}  # fmt: skip


@pytest.fixture(scope="module")
def faults_stack(tmp_path_factory) -> Iterator[Stack]:
    with stack(tmp_path_factory.mktemp("faults"), CELLS, [HEDGE]) as st:
        yield st


@pytest.fixture(scope="module")
def results(faults_stack):
    return {r.cell.id: r for r in run_cells(faults_stack, CELLS, rounds=1, concurrency=6, log=lambda _: None)}


def resumable(cell) -> bool:
    """Resume on, on a path that can resume: the Responses API has no prefill, so a stream an upstream passes
    through natively (`responses = "native"`) cannot be continued and ends with its explicit error."""
    return cell.mode != "none" and cell.path.api != "openai-native"


@pytest.mark.parametrize("cell", [c for c in CELLS if not resumable(c)], ids=lambda c: c.id)
def test_without_resume_a_break_after_text_is_an_explicit_error(results, cell):
    result = results[cell.id]
    assert result.met == 1, "the faulty first target was not tried"
    assert [v for v, _ in result.verdicts] == ["error"], result.verdicts


@pytest.mark.parametrize("cell", [c for c in CELLS if resumable(c)], ids=lambda c: c.id)
def test_with_resume_a_break_after_text_is_the_whole_reply(results, cell):
    result = results[cell.id]
    assert result.met == 1, "the faulty first target was not tried"
    assert result.verdicts == [("complete", "")]


def test_no_answer_is_silently_wrong(results):
    wrong = {cid: r.verdicts for cid, r in results.items() if r.count("wrong")}
    assert wrong == {}


def test_a_hedge_takes_the_first_event_from_a_fast_token(faults_stack):
    hedged = run_hedging(faults_stack, HEDGE, HEDGE_STREAMS, names=("fast", "on"))
    assert all(v == "complete" for name in ("fast", "on") for v, _ in hedged.verdicts[name]), hedged.verdicts
    on, fast = hedged.times["on"], hedged.times["fast"]
    assert len(on) == len(fast) == HEDGE_STREAMS
    assert percentile(on, 0.95) <= hedged.bound, (sorted(on), sorted(fast))
    assert hedged.logged["on"]["hedge_won"] >= 1  # the slow token was met, and a hedge answered
    assert max(on) < HEDGE.slow_ms / 1000 / 2  # no stream waited for the slow token's first event
