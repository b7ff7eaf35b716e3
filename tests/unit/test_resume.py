"""Resumer (app/services/resume.py): when a broken stream may go on, and where its continuation may go."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from app.config import UpstreamConfig
from app.dialects.base import Dialect, Leg
from app.dialects.chat_events import DONE
from app.dialects.openai_chat import CHAT, ChatRelay
from app.dialects.resume import Partial
from app.errors import ApiError, StreamBroken
from app.services.accounting import answered_by
from app.services.attempts import Attempt
from app.services.calls import Hop, Route, UpstreamCall
from app.services.exchange import Message
from app.services.outcomes import Outcome
from app.services.resume import BREAKS, Resumer
from app.services.streaming import StreamBody, StreamLimits

CHAT_LIKE, OTHER = Dialect(), Dialect()


class FakeTranscript:
    def __init__(self, text: str | None = "Hello fr", why: str = "") -> None:
        self.text, self.why, self.bodies, self.resumes = text, why, [], 0

    def is_error(self, raw: bytes) -> bool:
        return raw == b"error"

    def feed(self, raw: bytes) -> list[bytes]:
        return [raw]

    def partial(self) -> Partial:
        return Partial(self.text, self.why)

    def request(self, body: bytes, mode: str) -> bytes:
        self.bodies.append((body, mode))
        return body + f"+{mode}:{self.text}".encode()

    def resumed(self) -> None:
        self.resumes += 1


def upstream(name: str, resume: str = "prefill", api: str = "openai") -> UpstreamConfig:
    return UpstreamConfig(name, "http://127.0.0.1:1/v1", ("t",), resume=resume, api=api)


def setup(transcript: FakeTranscript | None, *routes: Route, fallbacks: tuple[Hop, ...] = (), resume="prefill"):
    dialect = SimpleNamespace(transcript=lambda: transcript)
    legs = {"openai": Leg("/chat/completions", b"{}", dialect, lambda: None),
            "anthropic": Leg("/messages", b"{m}", OTHER, lambda: None)}  # fmt: skip

    def leg(route: Route) -> Leg:
        if route.upstream.name == "refuses":
            raise ApiError(400, "cannot go there")
        return legs[route.upstream.api]

    call = UpstreamCall("POST", leg, True, Hop("alias", routes, fallbacks=fallbacks, alias=True), "req-1")
    first = routes[0].upstream if routes else upstream("first", resume)
    accepted = SimpleNamespace(leg=legs["openai"], upstream=UpstreamConfig(**{**first.__dict__, "resume": resume}))
    return Resumer(accepted, call, max_resumes=2, clock_deadline=100.0), call


def test_a_resumable_break_gets_a_continuation_with_the_transcripts_body_per_route_mode():
    transcript = FakeTranscript()
    a, b = Route(upstream("a"), "m"), Route(upstream("b", resume="continue"), "m")
    resumer, call = setup(transcript, a, b)
    resumed, reason = resumer.plan("upstream_stream_error", now=1.0)
    assert reason == "stream_broken" and resumed is not None
    assert resumed.hop.routes == (a, b) and resumed.request_id == call.request_id
    assert resumed.leg(a).body == b"{}+prefill:Hello fr" and resumed.leg(b).body == b"{}+continue:Hello fr"
    assert resumed.leg(a) is resumed.leg(a)  # built once per leg and mode
    assert transcript.bodies == [(b"{}", "prefill"), (b"{}", "continue")]


@pytest.mark.parametrize("code, reason", [(code, name) for code, (name, _) in BREAKS.items()])
def test_every_break_kind_reads_as_its_reason(code, reason):
    resumer, _ = setup(FakeTranscript(), Route(upstream("a"), "m"))
    assert resumer.plan(code, now=1.0)[1] == reason


@pytest.mark.parametrize(
    "transcript, code, now, why",
    [
        (None, "upstream_stream_error", 1.0, "off"),
        (FakeTranscript(None, "tool_call"), "upstream_stream_error", 1.0, "tool_call"),
        (FakeTranscript(), "deadline_exceeded", 1.0, "deadline_exceeded"),
        (FakeTranscript(), "server_shutdown", 1.0, "server_shutdown"),
        (FakeTranscript(), "upstream_stream_error", 100.0, "deadline"),
    ],
)
def test_a_break_that_cannot_be_resumed_says_why(transcript, code, now, why):
    resumer, _ = setup(transcript, Route(upstream("a"), "m"))
    assert resumer.plan(code, now) == (None, why)


def test_an_upstream_without_resume_keeps_no_transcript():
    transcript = FakeTranscript()
    resumer, _ = setup(transcript, Route(upstream("a"), "m"), resume="none")
    assert not resumer.enabled and resumer.feed(b"x") == (b"x",) and not resumer.is_error(b"error")


def test_max_resumes_counts_the_resumes_made():
    resumer, _ = setup(FakeTranscript(), Route(upstream("a"), "m"))
    accepted = SimpleNamespace(upstream=upstream("a"))
    for _ in range(2):
        assert resumer.plan("upstream_stream_error", 1.0)[0] is not None
        resumer.resumed("stream_broken", accepted)
    assert resumer.plan("upstream_stream_error", 1.0) == (None, "max_resumes")
    assert resumer.reasons == ["stream_broken", "stream_broken"] and resumer.transcript.resumes == 2


def test_after_a_refusal_it_stops_trying():
    resumer, _ = setup(FakeTranscript(), Route(upstream("a"), "m"))
    resumer.refused("tool_call", "a")
    assert resumer.plan("upstream_stream_error", 1.0) == (None, "off")


def test_the_continuation_goes_only_to_routes_that_resume_in_the_same_dialect():
    keep = Route(upstream("keep"), "m")
    off, other = Route(upstream("off", resume="none"), "m"), Route(upstream("claude", api="anthropic"), "m")
    refuses = Route(upstream("refuses"), "m")
    later = Hop("later", (Route(upstream("later-off", resume="none"), "m"), Route(upstream("later"), "m")))
    resumer, _ = setup(FakeTranscript(), keep, off, other, refuses, fallbacks=(later,))
    hop = resumer.plan("upstream_stream_error", 1.0)[0].hop
    assert [r.upstream.name for r in hop.routes] == ["keep"]
    assert [[r.upstream.name for r in h.routes] for h in hop.fallbacks] == [["later"]]


def test_when_no_route_of_the_first_hop_can_resume_its_fallbacks_carry_the_continuation():
    first = Route(upstream("first", resume="none"), "m")
    a, b = Hop("a", (Route(upstream("fa"), "m"),)), Hop("b", (Route(upstream("fb"), "m"),))
    resumer, _ = setup(FakeTranscript(), first, fallbacks=(a, b), resume="prefill")
    hop = resumer.plan("upstream_stream_error", 1.0)[0].hop
    assert hop.name == "a" and [h.name for h in hop.fallbacks] == ["b"]


def test_no_route_anywhere_means_no_resume():
    resumer, _ = setup(FakeTranscript(), Route(upstream("off", resume="none"), "m"), resume="prefill")
    assert resumer.plan("upstream_stream_error", 1.0) == (None, "no_target")


# StreamBody with a resume (fake attempts and exchanges; the chat transcript and relay are the real ones)

LEG = Leg("/chat/completions", b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}', CHAT,
          lambda: ChatRelay(hide_usage=False))  # fmt: skip


class FakeExchange:
    def __init__(self, messages: list) -> None:
        self.messages, self.closed = list(messages), 0

    def next(self, timeout: float):
        return self.messages.pop(0) if self.messages else Message("end")

    def close(self) -> None:
        self.closed += 1


class FakeAttempts:
    def __init__(self, call: UpstreamCall, answer=None) -> None:
        self.call, self.answer, self.continued, self.abandoned, self.broken = call, answer, [], [], []

    def continuation(self, call: UpstreamCall):
        loop = FakeAttempts(call, self.answer)
        self.continued.append(loop)
        return loop

    def broke(self, accepted, outcome) -> None:
        self.broken.append(outcome)

    def advance(self, until: float):
        return self.answer

    def abandon(self, outcome) -> None:
        self.abandoned.append(outcome)

    def finish(self) -> None:
        pass


def sse_chunk(text: str, role: bool = False) -> bytes:
    delta = {"content": text, **({"role": "assistant"} if role else {})}
    return b"data: " + json.dumps({"id": "c1", "choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n"


def accepted_on(up: UpstreamConfig, exchange: FakeExchange, prefix: list[bytes]) -> SimpleNamespace:
    return SimpleNamespace(
        leg=LEG, upstream=up, exchange=exchange, prefix=prefix, token=SimpleNamespace(id="t"),
        response=SimpleNamespace(status_code=200), choice=SimpleNamespace(route=Route(up, "m")),
    )  # fmt: skip


def run_stream(continuation_events: list) -> tuple[list[bytes], list]:
    up = UpstreamConfig("u", "http://127.0.0.1:1/v1", ("t",), resume="prefill")
    call = UpstreamCall("POST", lambda route: LEG, True, Hop("a", (Route(up, "m"),)), "req-1")
    first = FakeExchange([Message("broken", StreamBroken("upstream_stream_error", "cut"))])
    attempts = FakeAttempts(call, accepted_on(up, FakeExchange(continuation_events), []))
    finished: list = []
    limits = StreamLimits(heartbeat_interval=1, idle_timeout=30, deadline=time.time() + 60, drain=False, max_resumes=2)
    body = StreamBody(attempts, accepted_on(up, first, [sse_chunk("Hi ", role=True)]), finished.append, limits=limits)
    return list(body), finished


def test_a_resumed_stream_goes_on_in_the_same_client_stream():
    out, [stats] = run_stream([Message("event", sse_chunk("there", role=True)), Message("event", DONE)])
    text = "".join(json.loads(o[6:])["choices"][0]["delta"].get("content", "") for o in out if o != DONE)
    assert text == "Hi there" and out[-1] == DONE and b'"role"' not in b"".join(out[1:])
    assert stats.outcome == "ok" and stats.resumes == ["stream_broken"]


def test_an_unreadable_continuation_event_ends_the_stream_with_the_error_event_not_silently():
    out, [stats] = run_stream([Message("event", b"data: not json\n\n"), Message("event", DONE)])
    assert out[-2].startswith(b'data: {"error"') and b"upstream_stream_error" in out[-2] and out[-1] == DONE
    assert stats.outcome == "upstream_stream_error"


def test_no_resume_during_a_graceful_stop(monkeypatch):
    monkeypatch.setattr("app.services.resume.shutdown_deadline", lambda: 50.0)
    resumer, _ = setup(FakeTranscript(), Route(upstream("a"), "m"))
    assert resumer.plan("upstream_stream_error", 1.0) == (None, "server_shutdown")


def attempt(upstream: str, status: int | None, outcome: Outcome = Outcome.OK) -> Attempt:
    return Attempt(upstream, "t", status, outcome.value, 0.1, outcome)


@pytest.mark.parametrize(
    "records, upstream",
    [
        ([], None),
        ([attempt("a", 429, Outcome.RATE_LIMITED), attempt("b", 200)], "b"),
        ([attempt("a", 200, Outcome.STREAM_BROKEN), attempt("b", 200)], "b"),  # resumed: the continuation's
        ([attempt("a", 200, Outcome.STREAM_BROKEN), attempt("b", 500, Outcome.SERVER_ERROR)], "a"),  # it failed
        ([attempt("a", 500, Outcome.SERVER_ERROR), attempt("b", None, Outcome.CONNECT_ERROR)], "b"),
    ],
)
def test_the_usage_record_names_the_upstream_whose_answer_the_client_got(records, upstream):
    assert answered_by(records) == upstream
