"""app/firstwrite.py: a response's head leaves with its first body bytes, in one send; the rest as gunicorn."""

from __future__ import annotations

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.message import Request
from gunicorn.http.unreader import IterUnreader

import app.worker  # noqa: F401 - installs the response class, as the worker process does
from app.firstwrite import FirstWriteResponse


class Sock:
    """A client socket that keeps each send (one of `takes` bytes at most) and sendall."""

    def __init__(self, takes: int | None = None) -> None:
        self.sends: list[bytes] = []
        self.calls: list[str] = []
        self.takes = takes

    def send(self, data: bytes) -> int:
        taken = bytes(data[: self.takes])
        self.sends.append(taken)
        self.calls.append("send")
        return len(taken)

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))
        self.calls.append("sendall")


def response(method: str = "POST", takes: int | None = None) -> tuple[FirstWriteResponse, Sock]:
    cfg = Config()
    req = Request(
        cfg,
        IterUnreader([f"{method} /v1/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n".encode()]),
        ("127.0.0.1", 1),
    )
    sock = Sock(takes)
    resp, _ = wsgi.create(req, sock, ("127.0.0.1", 1), ("127.0.0.1", 2), cfg)
    assert isinstance(resp, FirstWriteResponse)  # what gunicorn builds in a worker
    return resp, sock


def test_a_streams_head_and_first_event_leave_in_one_send_and_later_events_in_their_own():
    resp, sock = response()
    resp.start_response("200 OK", [("Content-Type", "text/event-stream")])
    resp.write(b"data: 1\n\n")
    resp.write(b"data: 2\n\n")
    resp.close()
    assert len(sock.sends) == 3
    head, _, first = sock.sends[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Transfer-Encoding: chunked" in head
    assert first == b"9\r\ndata: 1\n\n\r\n"
    assert sock.sends[1:] == [b"9\r\ndata: 2\n\n\r\n", b"0\r\n\r\n"]


def test_a_plain_answer_is_one_send():
    resp, sock = response()
    resp.start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
    resp.write(b"{}")
    resp.close()
    assert len(sock.sends) == 1 and sock.sends[0].endswith(b"\r\n\r\n{}")


def test_an_empty_answer_still_sends_its_head_at_close():
    resp, sock = response()
    resp.start_response("204 No Content", [])
    resp.close()
    assert len(sock.sends) == 1 and sock.sends[0].startswith(b"HTTP/1.1 204 No Content")


def test_the_head_is_sent_even_when_the_body_write_fails():
    resp, sock = response()
    resp.start_response("200 OK", [("Content-Type", "text/plain")])
    with pytest.raises(TypeError):
        resp.write("not bytes")  # type: ignore[arg-type]
    assert len(sock.sends) == 1 and sock.sends[0].startswith(b"HTTP/1.1 200 OK") and resp.sock is sock


def test_a_later_event_leaves_in_one_send_framed_as_gunicorn_frames_it():
    resp, sock = response()
    resp.start_response("200 OK", [("Content-Type", "text/event-stream")])
    resp.write(b"data: 1\n\n")
    resp.write(b"x" * 300)
    assert sock.calls == ["sendall", "send"]  # the first write gathered; the next one sent, not sendall'd
    assert sock.sends[1] == b"12C\r\n" + b"x" * 300 + b"\r\n"


def test_what_one_send_does_not_take_goes_by_sendall():
    resp, sock = response(takes=5)
    resp.start_response("200 OK", [("Content-Type", "text/event-stream")])
    resp.write(b"data: 1\n\n")
    resp.write(b"data: 2\n\n")
    resp.close()
    assert sock.calls[1:3] == ["send", "sendall"]
    assert b"".join(sock.sends[1:3]) == b"9\r\ndata: 2\n\n\r\n"
    assert sock.calls[3:] == ["sendall"] and sock.sends[3] == b"0\r\n\r\n"  # gunicorn's own last chunk
