"""SSE framing and the relay generator: one write per event, error event on breakage, always closed."""

from __future__ import annotations

import json
import time

import pytest
import urllib3

from app.dialects.base import Leg
from app.dialects.openai_chat import CHAT, DONE, ChatRelay
from app.errors import StreamBroken
from app.services.exchange import MAX_EVENT_BYTES, Exchange, iter_events
from app.services.sse import split as split_events
from app.services.streaming import StreamBody, StreamLimits, StreamStats

CHAT_LEG = Leg("/chat/completions", b"{}", CHAT, lambda: ChatRelay(hide_usage=False))


class _Accepted:
    prefix: list[bytes] = []
    upstream = None
    leg = CHAT_LEG

    def __init__(self, exchange) -> None:
        self.exchange = exchange


def relay(response, on_finish):
    """Relay an already-open upstream response through a chat leg."""
    exchange = Exchange(lambda: response, streaming=True)
    status = exchange.next(5.0)
    assert status is not None and status.kind == "status"
    limits = StreamLimits(heartbeat_interval=10, idle_timeout=30, deadline=time.time() + 60, drain=False)
    return iter(StreamBody(None, _Accepted(exchange), on_finish, limits=limits))


@pytest.mark.parametrize(
    ("buffer", "events", "rest"),
    [
        (b"data: a\n\ndata: b\n\n", [b"data: a\n\n", b"data: b\n\n"], b""),
        (b"data: a\r\n\r\ndata: b", [b"data: a\r\n\r\n"], b"data: b"),
        (b"event: x\ndata: a\n\n: comment\n\n", [b"event: x\ndata: a\n\n", b": comment\n\n"], b""),
        (b"data: partial", [], b"data: partial"),
        (b"data: a\r\rdata: b\n\n", [b"data: a\r\r", b"data: b\n\n"], b""),
    ],
)
def test_split_events(buffer, events, rest):
    assert split_events(buffer) == (events, rest)


def reader(chunks):
    """A raw read() that returns the given chunks (raising the exceptions), then EOF."""
    items = iter(chunks)

    def read(_size, decode_content=True):
        item = next(items, b"")
        if isinstance(item, Exception):
            raise item
        return item

    return read


def test_events_split_across_reads_are_reassembled_and_coalesced_reads_are_split():
    chunks = [b"data: o", b"ne\n", b"\ndata: two\n\ndata: three\n\n"]
    assert list(iter_events(reader(chunks))) == [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]


@pytest.mark.parametrize("tail", [b'data: {"last": 1}', b"data: [DONE]", b"event: ping", b": comment"])
def test_a_trailing_event_without_blank_line_is_completed(tail):
    assert list(iter_events(reader([tail]))) == [tail + b"\n\n"]


@pytest.mark.parametrize(
    "tail", [b'data: {"choices": [{"delta": {"content": "caf', 'data: {"a": "caf\u00e9"}'.encode()[:-4], b"data: last"]
)
def test_a_connection_closed_inside_an_event_breaks_the_stream_instead_of_passing_half_of_it(tail):
    events = iter_events(reader([b'data: {"whole": 1}\n\n', tail]))
    assert next(events) == b'data: {"whole": 1}\n\n'
    with pytest.raises(StreamBroken, match="middle of an event"):
        next(events)


class FakeRaw:
    def __init__(self, chunks):
        self.read1 = reader(chunks)


class FakeResponse:
    status_code = 200
    headers = {"Content-Type": "text/event-stream"}

    def __init__(self, chunks):
        self.raw = FakeRaw(chunks)
        self.closed = False

    def close(self):
        self.closed = True


def test_relay_passes_each_event_as_one_write_and_closes():
    finished: list[StreamStats] = []
    response = FakeResponse([b"data: 1\n\ndata: 2\n\n", b"data: [DONE]\n\n"])
    writes = list(relay(response, finished.append))
    assert writes == [b"data: 1\n\n", b"data: 2\n\n", DONE]
    assert response.closed
    assert finished[0].outcome == "ok" and finished[0].events == 3


def test_a_stream_that_ends_without_done_is_not_a_silent_truncation():
    finished: list[StreamStats] = []
    writes = list(relay(FakeResponse([b"data: 1\n\n"]), finished.append))
    assert writes[0] == b"data: 1\n\n"
    assert json.loads(writes[1].removeprefix(b"data: "))["error"]["code"] == "upstream_stream_error"
    assert writes[2] == DONE
    assert finished[0].outcome == "upstream_stream_error"


def test_large_events_cost_linear_time_and_are_capped():
    big = b"data: " + b"x" * (2 * 1024 * 1024) + b"\n\n"
    pieces = [big[i : i + 1400] for i in range(0, len(big), 1400)]
    assert list(iter_events(reader(pieces))) == [big]  # ~1500 reads, scanned once each
    endless = [b"data: " + b"y" * 65536] * (MAX_EVENT_BYTES // 65536 + 2)
    with pytest.raises(StreamBroken):
        list(iter_events(reader(endless)))


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (urllib3.exceptions.ProtocolError("Response ended prematurely"), "upstream_stream_error"),
        (urllib3.exceptions.ReadTimeoutError(None, "/", "Read timed out."), "upstream_timeout"),
        (ConnectionResetError(104, "reset"), "upstream_stream_error"),
    ],
)
def test_breakage_after_commit_ends_with_error_event_and_done(exc, code):
    finished: list[StreamStats] = []
    response = FakeResponse([b"data: 1\n\n", exc])
    writes = list(relay(response, finished.append))
    assert writes[0] == b"data: 1\n\n"
    error = json.loads(writes[1].removeprefix(b"data: "))
    assert error["error"]["code"] == code
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert writes[2] == DONE
    assert response.closed
    assert finished[0].outcome == code


def test_client_going_away_closes_the_upstream():
    finished: list[StreamStats] = []
    response = FakeResponse([b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"])
    stream = relay(response, finished.append)
    assert next(stream) == b"data: 1\n\n"
    stream.close()  # what the WSGI server does when the client socket is gone
    assert response.closed
    assert finished[0].outcome == "client_disconnect"


def test_a_failing_drain_is_logged_and_still_finishes_the_request(caplog):
    """on_client_disconnect = "drain": an error while draining is logged once, the record still written."""
    import threading

    from app.services.exchange import Message

    class Exchange:
        calls = 0

        def next(self, timeout):
            Exchange.calls += 1
            if Exchange.calls == 1:
                return Message("event", b'data: {"choices": []}\n\n')
            raise RuntimeError("boom while draining")

        def close(self):
            pass

    class Accepted:
        prefix: list[bytes] = []
        upstream = None
        leg = CHAT_LEG
        exchange = Exchange()

    finished = threading.Event()
    limits = StreamLimits(heartbeat_interval=10, idle_timeout=30, deadline=time.time() + 30, drain=True)
    body = StreamBody(None, Accepted(), lambda stats: finished.set(), limits=limits)
    events = iter(body)
    assert next(events).startswith(b"data:")
    events.close()  # the client went away: the drain thread takes over
    assert finished.wait(5)
    assert "draining the upstream after a client disconnect failed" in caplog.text


def test_a_break_after_the_streams_last_event_adds_nothing():
    """The stream had ended in its dialect ([DONE]); the connection breaking afterwards is not the client's news."""
    finished: list[StreamStats] = []
    broken = urllib3.exceptions.ProtocolError("Response ended prematurely")
    writes = list(relay(FakeResponse([b"data: 1\n\ndata: [DONE]\n\n", broken]), finished.append))
    assert writes == [b"data: 1\n\n", DONE]
    assert finished[0].outcome == "ok"
