"""The per-event path: queued messages without a timer, the direct read after take_over, the relays' cheap checks,
and the client write bound kept up to date without a socket call per event."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import requests

from app.dialects.anthropic_wire import AnthropicRelay
from app.dialects.openai_chat import ChatRelay
from app.errors import StreamBroken
from app.services.exchange import Clock as LoopClock
from app.services.exchange import Direct, Exchange, Message
from app.services.streaming import REBOUND, StreamBody, StreamLimits
from tests.unit.test_streaming import CHAT_LEG, FakeResponse


class FakeSocket:
    def __init__(self) -> None:
        self.set: list[float | None] = []

    def settimeout(self, value: float | None) -> None:
        self.set.append(value)


class FakeBound:
    """Records the waits armed around each direct read."""

    def __init__(self) -> None:
        self.armed: list[float] = []
        self.disarmed = 0
        self.closed = False

    def arm(self, wait: float) -> None:
        self.armed.append(wait)

    def disarm(self) -> None:
        self.disarmed += 1

    def close(self) -> None:
        self.closed = True


def events(*items):
    """An event iterator that yields bytes and raises exceptions, as iter_events does."""
    for item in items:
        if isinstance(item, Exception):
            raise item
        yield item


def test_queued_messages_are_taken_in_order_without_waiting():
    exchange = Exchange(lambda: FakeResponse([b"data: 1\n\ndata: 2\n\n", b"data: [DONE]\n\n"]), streaming=True)
    got = [exchange.next(5.0)]
    while got[-1].kind != "end":
        got.append(exchange.next(5.0))
    assert [m.kind for m in got] == ["status", "event", "event", "event", "end"]
    assert exchange.next(0) is None  # nothing queued, no wait
    exchange.close()


def test_take_over_outside_gevent_changes_nothing():
    exchange = Exchange(lambda: FakeResponse([b"data: 1\n\n"]), streaming=True)
    exchange.take_over()  # threads: the reader goes on queueing
    assert [exchange.next(5.0).kind for _ in range(3)] == ["status", "event", "end"]
    exchange.close()


@pytest.mark.parametrize(
    ("items", "kinds"),
    [
        ([b"data: 1\n\n", b"data: 2\n\n"], ["event", "event", "end", "end"]),
        ([b"data: 1\n\n", StreamBroken("upstream_stream_error", "cut")], ["event", "broken", "broken"]),
        ([requests.ConnectionError("reset")], ["error", "error"]),
        ([RuntimeError("a bug")], ["broken", "broken"]),
    ],
)
def test_direct_reads_give_the_messages_the_reader_would_have_queued(items, kinds):
    direct = Direct(events(*items), 600.0, FakeBound())
    assert [direct.next(30.0).kind for _ in kinds] == kinds


def test_each_direct_read_is_bounded_by_its_wait_within_the_read_timeout():
    bound = FakeBound()
    direct = Direct(events(b"a\n\n", b"b\n\n", b"c\n\n", b"d\n\n"), 600.0, bound)
    for wait in (30.0, 30.0, 29.5, 900.0):
        assert direct.next(wait).kind == "event"
    assert bound.armed == [30.0, 30.0, 29.5, 600.0]  # the read timeout (backstop) still bounds each wait
    assert bound.disarmed == 4 and not bound.closed
    assert direct.next(30.0).kind == "end" and bound.closed


def test_the_clock_clears_the_sockets_timeout_and_makes_a_timer_only_when_the_wait_changes():
    sock = FakeSocket()
    clock = LoopClock(sock)
    timers = []
    for wait in (30.0, 30.0, 29.5, 29.5):
        clock.arm(wait)
        timers.append(clock.timer)
        clock.disarm()
    assert sock.set == [None]  # gevent then waits in the read without a Timeout of its own
    assert timers[0] is timers[1] and timers[1] is not timers[2] and timers[2] is timers[3]
    clock.close()
    assert clock.timer is None


def test_a_direct_wait_that_passes_ends_the_exchange():
    timeout = StreamBroken("upstream_timeout", "The upstream stopped sending events (read timeout).")
    direct = Direct(events(b"a\n\n", timeout, b"never\n\n"), 600.0, FakeBound())
    assert direct.next(30.0).kind == "event"
    assert direct.next(0) is None  # no time left: nothing read
    assert direct.next(30.0) is None  # the caller's wait passed
    assert direct.next(30.0) is None  # and the framing is undefined from there on


def test_the_read_timeout_passing_in_a_direct_read_is_the_upstreams():
    timeout = StreamBroken("upstream_timeout", "The upstream stopped sending events (read timeout).")
    direct = Direct(events(timeout), 10.0, FakeBound())
    message = direct.next(30.0)
    assert message.kind == "broken" and message.value.code == "upstream_timeout"


# A gevent-patched process serving `EVENTS` events PACE s apart (then STALL s of nothing) and an Exchange on
# them, its status read and take_over() asked; each test script goes on from there.
GEVENT_PRELUDE = """
from gevent import monkey; monkey.patch_all()
import time, gevent, requests
from gevent.pywsgi import WSGIServer
from app.services.exchange import Clock, Direct, Exchange

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/event-stream")])
    def body():
        for i in range(EVENTS):
            gevent.sleep(PACE)
            yield b"data: %d\\n\\n" % i
        gevent.sleep(STALL)
    return body()

server = WSGIServer(("127.0.0.1", 0), app, log=None); server.start()
url = "http://127.0.0.1:%d/" % server.server_port
exchange = Exchange(lambda: requests.post(url, stream=True, timeout=(5, 60)), streaming=True)
assert exchange.next(5).kind == "status"
exchange.take_over()
"""

GEVENT_HANDOVER = """
got = []
while (message := exchange.next(5)).kind == "event":
    got.append(message.value)
assert message.kind == "end", message
assert got == [b"data: %d\\n\\n" % i for i in range(EVENTS)], got
assert isinstance(exchange._direct, Direct)
assert exchange._reader is None and type(exchange._queue).__name__ == "_HandedOver"  # let go while the stream lives
exchange.close()
print("ok")
"""

GEVENT_STALL = """
got = [exchange.next(0.35).value for _ in range(EVENTS)]  # each read gets the whole wait, not what the last left
assert got == [b"data: %d\\n\\n" % i for i in range(EVENTS)], got
direct = exchange._direct
assert isinstance(direct.bound, Clock) and exchange.response.raw.connection.sock.gettimeout() is None
started = time.monotonic()
assert exchange.next(0.3) is None  # the wait passed: the loop's timer ended the read, not a socket timeout
waited = time.monotonic() - started
assert 0.25 < waited < 2.0, waited
assert exchange.next(5) is None and direct.bound.timer is None  # ended for good; its timer closed
exchange.close()
assert exchange.response.raw.closed  # closed by close(), though the reader that opened it is gone
print("ok")
"""

GEVENT_FIRST_EVENT = """
burst = Exchange(lambda: requests.post(url, stream=True, timeout=(5, 60)), streaming=True)
assert burst.next(5).kind == "status"
first = burst.next(5)
assert first.kind == "event" and first.value == b"data: 0\\n\\n", first
assert burst._queue.qsize() == 0, burst._queue.qsize()  # taken before the reader read the events that came with it
rest = [burst.next(5) for _ in range(EVENTS)]
assert [m.value for m in rest[:-1]] == [b"data: %d\\n\\n" % i for i in range(1, EVENTS)] and rest[-1].kind == "end"
burst.close(); exchange.close()
print("ok")
"""


def run_under_gevent(script: str, events: int, pace: float, stall: float) -> None:
    prelude = f"EVENTS, PACE, STALL = {events}, {pace}, {stall}\n" + textwrap.dedent(GEVENT_PRELUDE)
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(script)], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_under_gevent_a_direct_read_is_bounded_by_one_loop_timer_not_the_sockets_timeout():
    run_under_gevent(GEVENT_STALL, events=6, pace=0.1, stall=30)  # six events 0.1 s apart, then a stalled upstream


def test_under_gevent_the_reader_hands_its_events_over_between_two_events():
    run_under_gevent(GEVENT_HANDOVER, events=20, pace=0.005, stall=0)


def test_under_gevent_the_waiting_side_takes_an_event_before_the_reader_reads_the_ones_that_came_with_it():
    run_under_gevent(GEVENT_FIRST_EVENT, events=20, pace=0, stall=0)  # twenty events written at once


def test_chat_relay_passes_chunks_without_usage_untouched_and_hides_the_injected_usage_chunk():
    relay = ChatRelay(hide_usage=True)
    chunk = b'data: {"choices": [{"delta": {"content": "hi"}}], "usage": null}\n\n'
    assert relay.feed(b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n') == (
        b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n',
    )
    assert relay.feed(chunk) == (chunk,)
    assert relay.feed(b'data: {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3}}\n\n') == ()
    assert relay.usage == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert relay.feed(b"data: [DONE]\n\n") and relay.done


@pytest.mark.parametrize(
    ("raw", "read"),
    [
        (b'event: content_block_delta\ndata: {"type": "content_block_delta"}\n\n', False),
        (b'event: content_block_delta\r\ndata: {"type": "content_block_delta"}\r\n\r\n', False),
        (b'event: ping\ndata: {"type": "ping"}\n\n', False),
        (b'event: message_stop\ndata: {"type": "message_stop"}\n\n', True),
        (b'data: {"type": "message_stop"}\n\n', True),
    ],
)
def test_anthropic_relay_reads_only_events_that_can_carry_usage_or_the_end(raw, read):
    relay = AnthropicRelay()
    assert relay.feed(raw) == (raw,)
    assert relay.done is read


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ListExchange:
    def __init__(self, messages) -> None:
        self.messages = list(messages)

    def next(self, timeout):
        return self.messages.pop(0)

    def close(self):
        pass


def test_the_client_write_bound_is_told_when_it_changes_or_is_old():
    clock, bounds = Clock(), []
    chunks = [Message("event", b"data: %d\n\n" % i) for i in range(4)] + [Message("event", b"data: [DONE]\n\n")]

    class Accepted:
        prefix: list[bytes] = []
        upstream = None
        leg = CHAT_LEG
        exchange = ListExchange([*chunks, Message("end")])

    limits = StreamLimits(heartbeat_interval=10, idle_timeout=30, deadline=clock.now + 60, drain=False)
    body = iter(
        StreamBody(None, Accepted(), lambda stats: None, limits=limits, clock=clock, before_write=bounds.append)
    )
    next(body), next(body)  # two writes within REBOUND: told once
    clock.now += REBOUND
    next(body)
    assert bounds == [limits.deadline, limits.deadline]
    assert len(list(body)) == 2
