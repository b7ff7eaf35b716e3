"""The chunked body reader of the event path (app/services/exchange.py `Chunked`), over real sockets: a scripted
HTTP server sends each answer in the segments given, and requests reads it as the gateway does."""

from __future__ import annotations

import gzip
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from app.errors import StreamBroken
from app.services.exchange import MAX_LINE, Chunked, body_reader, iter_events

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"


class Scripted:
    """Answers each request on a connection with the next script: a list of byte segments sent apart (a
    short pause between them, so each arrives as a read of its own); None closes the connection there."""

    def __init__(self, scripts: list[list[bytes | None]]) -> None:
        self.scripts = scripts
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1/chat/completions"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.scripts:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while self.scripts and _read_request(conn):
                    if not self._answer(conn, self.scripts.pop(0)):
                        break

    @staticmethod
    def _answer(conn: socket.socket, script: list[bytes | None]) -> bool:
        for segment in script:
            if segment is None:
                return False
            conn.sendall(segment)
            time.sleep(0.005)
        return True

    def close(self) -> None:
        self.listener.close()


def _read_request(conn: socket.socket) -> bool:
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            return False
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    sizes = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = int(sizes[0]) if sizes else 0
    while len(body) < length:
        body += conn.recv(65536)
    return True


@pytest.fixture
def serve() -> Iterator:
    servers: list[Scripted] = []

    def start(*scripts: list[bytes | None]) -> Scripted:
        servers.append(Scripted(list(scripts)))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def stream(session: requests.Session, url: str) -> tuple[requests.Response, list[bytes]]:
    response = session.post(url, json={"stream": True}, stream=True, timeout=5)
    events: list[bytes] = []
    try:
        for event in iter_events(body_reader(response)):
            events.append(event)
    finally:
        response.close()
    return response, events


def read_all(session: requests.Session, url: str) -> list[bytes]:
    return stream(session, url)[1]


def test_events_come_whole_across_any_chunking_and_the_connection_is_reused(serve):
    first = [CHUNKED, b"7\r\ndata: 1", b"\r\n", b"2\r\n\n\n\r\n", b"16;ext=1\r\ndata: 2\n\ndata: 3\n\n:c\n\n\r\n",
             b"1", b"8\r\ndata: 4444444444444444\n\n\r\n", b"0\r\nX-Trailer: t\r\n\r\n"]  # fmt: skip
    second = [CHUNKED, b"D\r\ndata: again\n\n\r\n0\r\n\r\n"]
    server = serve(first, second)
    with requests.Session() as session:
        response, events = stream(session, server.url)
        assert events == [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n", b":c\n\n", b"data: 4444444444444444\n\n"]
        assert read_all(session, server.url) == [b"data: again\n\n"]
    assert server.connections == 1  # the body was read to its end: the connection went back to the pool


def test_the_fast_reader_takes_only_unencoded_chunked_bodies(serve):
    zipped = gzip.compress(b"data: 1\n\ndata: 2\n\n")
    encoded = HEAD + b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
    sized = HEAD + b"Content-Length: 9\r\n\r\ndata: 1\n\n"
    chunked_gzip = [encoded, b"%x\r\n" % len(zipped) + zipped + b"\r\n0\r\n\r\n"]
    server = serve([CHUNKED, b"0\r\n\r\n"], chunked_gzip, [sized])
    with requests.Session() as session:
        for expected, fast in (([], True), ([b"data: 1\n\n", b"data: 2\n\n"], False), ([b"data: 1\n\n"], False)):
            response = session.post(server.url, json={}, stream=True, timeout=5)
            assert (Chunked.over(response) is not None) is fast
            assert list(iter_events(body_reader(response))) == expected
            response.close()


@pytest.mark.parametrize(
    "rest",
    [
        [b"zz\r\ndata: 1\n\n\r\n"],  # not a hex size
        [b"9\r\ndata: 1\n\nXX0\r\n\r\n"],  # no CRLF after the chunk's data
        [b"9\r\ndata:", None],  # closed inside a chunk
        [b"9\r\ndata: 1\n\n\r\n", None],  # closed before the last chunk
        [b"1" * (MAX_LINE + 2) + b"\r\n"],  # a size line past the bound
        [b"0\r\n" + b"X: y\r\n" * 101 + b"\r\n"],  # too many trailer lines
    ],
    ids=["bad-size", "no-crlf", "cut-in-chunk", "cut-between-chunks", "long-line", "trailers"],
)
def test_a_broken_body_breaks_the_stream_and_its_connection_is_not_reused(serve, rest):
    server = serve([CHUNKED, *rest], [CHUNKED, b"0\r\n\r\n"])
    with requests.Session() as session:
        with pytest.raises(StreamBroken) as broken:
            read_all(session, server.url)
        assert broken.value.code == "upstream_stream_error"
        assert read_all(session, server.url) == []
    assert server.connections == 2


def test_a_body_left_unread_closes_its_connection(serve):
    server = serve([CHUNKED, b"9\r\ndata: 1\n\n\r\n", b"9\r\ndata: 2\n\n\r\n0\r\n\r\n"], [CHUNKED, b"0\r\n\r\n"])
    with requests.Session() as session:
        response = session.post(server.url, json={}, stream=True, timeout=5)
        assert next(iter_events(body_reader(response))) == b"data: 1\n\n"
        response.close()  # the client went away after one event
        assert read_all(session, server.url) == []
    assert server.connections == 2
