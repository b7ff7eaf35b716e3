"""Resumer (app/services/resume.py): when a broken stream may go on, and where its continuation may go."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.config import UpstreamConfig
from app.dialects.base import Dialect, Leg
from app.dialects.resume import Partial
from app.errors import ApiError
from app.services.calls import Hop, Route, UpstreamCall
from app.services.resume import BREAKS, Resumer

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
