"""Load generators: wrk for plain requests, a raw-socket SSE client for streams.

The stream client uses gevent's sockets (no monkey-patching), so holding 1,000 open
streams costs 1,000 greenlets and sockets. It parses HTTP/1.1 itself (chunked or not) so
it sees every read: the time each event arrives, and whether a read carried several.
It speaks chat completions (`CHAT`: every data event counts, `data: [DONE]` ends it), the
Responses API (`RESPONSES`: each `response.output_text.delta` counts, one per chat chunk on
a translating upstream, and `response.completed` ends it) and Anthropic Messages
(`ANTHROPIC`: each `content_block_delta` counts, `message_stop` ends it). A chat stream Sluice
translated from an Anthropic upstream (`CHAT_TRANSLATED`) carries the mock's time at the head of
each chunk's text instead of in `mock_ts`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import gevent
from gevent import socket as gsocket

from bench.stamped_mock import STAMP_PREFIX

MESSAGES = [{"role": "user", "content": "Hello"}]
# Lua for wrk: one POST body, and a JSON summary line at the end (wrk's own text is for humans).
WRK_LUA = """wrk.method = "POST"
wrk.body = [==[%(body)s]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = [==[Bearer %(key)s]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, ' ..
    '"status_errors": %%d, "socket_errors": %%d}\\n', summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.status, e.connect + e.read + e.write + e.timeout))
end
"""


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def run_wrk(url: str, key: str, connections: int, seconds: int, workdir: Path) -> WrkResult:
    """Non-streaming chat requests for `seconds` over `connections` keep-alive connections, one thread."""
    script = workdir / f"wrk-{abs(hash((url, key)))}.lua"
    body = json.dumps({"model": "mock-gpt", "messages": MESSAGES})
    script.write_text(WRK_LUA % {"body": body, "key": key})
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "-s", str(script),
           f"{url}/v1/chat/completions"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=False)
    if done.returncode != 0:  # say why (wrk writes it to its output), not only the exit status
        output = f"{done.stdout[-800:]} {done.stderr[-800:]}"
        raise RuntimeError(f"wrk against {url} exited with {done.returncode}: {output}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    seconds_run = summary["duration_us"] / 1e6
    return WrkResult(
        rps=summary["requests"] / seconds_run,
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        requests=summary["requests"],
        errors=summary["status_errors"] + summary["socket_errors"],
    )


@dataclass(frozen=True)
class Wire:
    """A streamed request on one wire API: where it goes, for which model, which events count and what ends it."""

    path: str
    model: str = "mock-gpt"
    counted: bytes | None = None  # the SSE event name that counts (None: every data event)
    final: bytes | None = None  # the event name that ends the stream well (None: data: [DONE])
    stamped: bool = False  # a chat stream whose chunks carry the mock's time in their text (bench/stamped_mock.py)

    def body(self, mock: dict) -> dict:
        """The request body; a translated body carries no `mock` (a translation passes no unknown field on)."""
        if self.path.endswith("/responses"):
            return {"model": self.model, "stream": True, "input": MESSAGES[0]["content"]}
        if self.path.endswith("/messages"):
            return {"model": self.model, "stream": True, "max_tokens": 1024, "messages": MESSAGES}
        return {"model": self.model, "stream": True, "messages": MESSAGES, "mock": mock}

    def for_model(self, model: str) -> Wire:
        return replace(self, model=model)

    def produced_at(self, data: bytes) -> float | None:
        """When the mock produced a counted event: its `mock_ts`, or the stamp at the head of a delta's text
        (bench/stamped_mock.py); None when it carries neither."""
        if self.counted is None and not self.stamped:
            return json.loads(data)["mock_ts"] if b'"mock_ts"' in data else None
        head = str(_text(json.loads(data))).split(" ", 1)[0]
        try:
            return float(head.removeprefix(STAMP_PREFIX)) if head.startswith(STAMP_PREFIX) else None
        except ValueError:
            return None


def _text(event: dict) -> object:
    """The text of a counted event: a chat chunk's content, a Responses delta, a Messages text delta's text."""
    if "choices" in event:
        choices = event["choices"]
        return choices[0].get("delta", {}).get("content") or "" if choices else ""
    delta = event.get("delta", "")
    return delta.get("text", "") if isinstance(delta, dict) else delta


CHAT = Wire("/v1/chat/completions")
RESPONSES = Wire("/v1/responses", counted=b"response.output_text.delta", final=b"response.completed")
ANTHROPIC = Wire("/v1/messages", counted=b"content_block_delta", final=b"message_stop")
CHAT_TRANSLATED = Wire("/v1/chat/completions", stamped=True)


@dataclass
class StreamResult:
    status: int = 0
    ttfb: float | None = None  # seconds from sending the request to the first complete counted event
    events: int = 0  # counted events ([DONE] excluded; on Responses, Messages and translated chat: text ones only)
    lags: list[float] = field(default_factory=list)  # receive time minus mock_ts, seconds, per event
    arrivals: list[float] = field(default_factory=list)  # perf_counter() at each counted event's arrival
    coalesced: int = 0  # reads that completed more than one counted event
    done: bool = False  # saw data: [DONE] (chat), response.completed (Responses) or message_stop (Messages)


def stream_request(address: tuple[str, int], key: str, mock: dict, wire: Wire = CHAT) -> bytes:
    body = json.dumps(wire.body(mock)).encode()
    head = (
        f"POST {wire.path} HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class StreamReader:
    """One streamed response on a socket: headers, de-chunking, SSE events with their arrival times."""

    def __init__(self, sock: socket.socket, started: float, wire: Wire = CHAT) -> None:
        self.sock, self.started, self.wire = sock, started, wire
        self.result = StreamResult()
        self._raw = b""  # received, not yet de-chunked
        self._body = bytearray()  # de-chunked, not yet cut into events
        self._head_done = self._chunked = self._ended = False

    def read(self, until_first_event: bool = False) -> StreamResult:
        """Read until the response ends (or, with `until_first_event`, until its first data event)."""
        while not self._ended:
            data = self.sock.recv(65536)
            arrived, wall = time.perf_counter(), time.time()
            if not data:
                break
            self._raw += data
            if not self._head_done and not self._parse_head():
                continue
            self._body += self._dechunk() if self._chunked else self._take_all()
            self._events(arrived, wall)
            if until_first_event and self.result.ttfb is not None:
                break
        return self.result

    def _parse_head(self) -> bool:
        head, sep, rest = self._raw.partition(b"\r\n\r\n")
        if not sep:
            return False
        self.result.status = int(head.split(b" ", 2)[1])
        self._chunked = b"transfer-encoding: chunked" in head.lower()
        self._raw, self._head_done = rest, True
        return True

    def _take_all(self) -> bytes:
        data, self._raw = self._raw, b""
        return data

    def _dechunk(self) -> bytes:
        out = bytearray()
        while True:
            line, sep, rest = self._raw.partition(b"\r\n")
            if not sep:
                return bytes(out)
            size = int(line.split(b";")[0], 16)
            if size == 0:
                self._ended = True
                return bytes(out)
            if len(rest) < size + 2:
                return bytes(out)
            out += rest[:size]
            self._raw = rest[size + 2 :]

    def _events(self, arrived: float, wall: float) -> None:
        completed = 0
        while True:
            text = bytes(self._body)
            cut = text.find(b"\n\n")
            if cut == -1:
                break
            event, self._body = text[:cut], bytearray(text[cut + 2 :])
            lines = event.splitlines()
            data = b"".join(line[5:].strip() for line in lines if line.startswith(b"data:"))
            if not data:
                continue  # a comment or keep-alive
            name = next((line[6:].strip() for line in lines if line.startswith(b"event:")), None)
            if (data == b"[DONE]") if self.wire.final is None else (name == self.wire.final):
                self.result.done = True
                continue
            if self.wire.counted is not None and name != self.wire.counted:
                continue  # a Responses event around the text (created, output_item.added, ...)
            if self.wire.stamped and not _text(json.loads(data)):
                continue  # a translated chat stream's role, finish or usage chunk: only the text ones count
            completed += 1
            self._event(data, arrived, wall)
        if completed > 1:
            self.result.coalesced += 1

    def _event(self, data: bytes, arrived: float, wall: float) -> None:
        result = self.result
        result.events += 1
        result.arrivals.append(arrived)
        if result.ttfb is None:
            result.ttfb = arrived - self.started
        produced = self.wire.produced_at(data)
        if produced is not None:
            result.lags.append(wall - produced)


def open_stream(address: tuple[str, int], request: bytes, timeout: float, wire: Wire = CHAT) -> StreamReader:
    sock = gsocket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    started = time.perf_counter()
    sock.sendall(request)
    return StreamReader(sock, started, wire)


def one_stream(
    address: tuple[str, int], key: str, mock: dict, timeout: float = 30.0, wire: Wire = CHAT
) -> StreamResult:
    """A whole streamed request on a fresh connection."""
    reader = open_stream(address, stream_request(address, key, mock, wire), timeout, wire)
    try:
        return reader.read()
    finally:
        reader.sock.close()


def concurrent_streams(
    address: tuple[str, int], key: str, mock: dict, count: int, timeout: float, wire: Wire = CHAT
) -> list:
    """`count` whole streams at once; the results of those that finished within `timeout`."""
    jobs = [gevent.spawn(one_stream, address, key, mock, timeout, wire) for _ in range(count)]
    gevent.joinall(jobs, timeout=timeout)
    gevent.killall([j for j in jobs if not j.ready()], block=True, timeout=5)
    return [j.value for j in jobs if j.successful() and j.value is not None]


class OpenStreams:
    """Up to `count` streams opened and held (each after its first event) until `close()`."""

    def __init__(self, address: tuple[str, int], key: str, mock: dict, timeout: float) -> None:
        self.address, self.key, self.mock, self.timeout = address, key, mock, timeout
        self.readers: list[StreamReader] = []
        self.jobs: list[gevent.Greenlet] = []
        self.failures = 0

    def open(self, count: int, batch: int = 50) -> int:
        """Open `count` streams, `batch` at a time; returns how many got their first event in time."""
        deadline = time.monotonic() + self.timeout
        for start in range(0, count, batch):
            if time.monotonic() >= deadline:
                break
            self.jobs += [gevent.spawn(self._hold) for _ in range(min(batch, count - start))]
            gevent.sleep(0.02)  # let the batch connect before the next one
        gevent.joinall(self.jobs, timeout=max(0.0, deadline - time.monotonic()))
        return sum(1 for r in self.readers if r.result.ttfb is not None)

    def _hold(self) -> None:
        request = stream_request(self.address, self.key, self.mock)
        try:
            reader = open_stream(self.address, request, self.timeout)
            self.readers.append(reader)
            reader.read(until_first_event=True)
        except OSError:
            self.failures += 1

    def close(self) -> None:
        gevent.killall(self.jobs, block=True, timeout=5)
        for reader in self.readers:
            reader.sock.close()
