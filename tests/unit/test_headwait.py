"""The wait for a request head (app/headwait.py) on gevent's loop, without sockets."""

from __future__ import annotations

import json
import time

import gevent

from app.headwait import RequestWait, write_json_error


def waited(wait: RequestWait, *steps) -> tuple[bool, float]:
    """Run `steps` (seconds to sleep, or callables) inside `wait`: (completed, elapsed)."""
    started, completed = time.monotonic(), False
    with wait:
        for step in steps:
            step() if callable(step) else gevent.sleep(step)
        completed = True
    return completed, time.monotonic() - started


def test_a_new_connection_gets_the_head_timeout_from_the_start():
    completed, elapsed = waited(RequestWait(idle=30, head=0.1, fresh=True), 5)
    assert not completed and elapsed < 3


def test_an_idle_kept_alive_connection_gets_the_idle_timeout():
    completed, _ = waited(RequestWait(idle=5, head=0.05, fresh=False), 0.2)
    assert completed  # idling past the head timeout is fine


def test_the_first_byte_starts_the_head_timeout():
    wait = RequestWait(idle=30, head=0.1, fresh=False)
    completed, elapsed = waited(wait, 0.2, wait.data_arrived, 5)
    assert not completed and elapsed < 3


def test_bytes_after_the_head_start_no_timer():
    wait = RequestWait(idle=0.05, head=0.05, fresh=False)
    with wait:
        pass  # the head was already buffered: parsed without a byte arriving
    wait.data_arrived()  # the body's first bytes
    gevent.sleep(0.2)  # a timer started here would interrupt the request


def test_gunicorns_errors_are_written_as_openai_json():
    class Sock:
        sent = b""

        def gettimeout(self):
            return 0.0

        def sendall(self, data):
            self.sent += data

    sock = Sock()
    write_json_error(sock, 414, "URI Too Long", "limit exceeded")
    head, _, body = sock.sent.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414 URI Too Long\r\n") and b"Content-Type: application/json" in head
    assert json.loads(body) == {
        "error": {"message": "URI Too Long: limit exceeded", "type": "invalid_request_error", "param": None,
                  "code": "uri_too_long"}
    }  # fmt: skip
