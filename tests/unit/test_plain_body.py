"""Plain (non-streamed) answers: the request ends when the body has been written, each write is
bounded, and a graceful stop answers a request still waiting with a 503 (issue #10 review)."""

from __future__ import annotations

import threading
import time

import pytest
import responses

from app.api.writer import ClientSocket, PlainBody
from app.services import lifecycle
from tests.conftest import BASE, chat

USAGE = {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}
OK = {"id": "x", "object": "chat.completion", "choices": [], "usage": USAGE}


class FakeSocket:
    """Stands in for gunicorn's client socket: records the write timeouts it is given."""

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    def settimeout(self, value: float | None) -> None:
        self.timeouts.append(value)


@pytest.fixture(autouse=True)
def _no_shutdown():
    lifecycle.reset()
    yield
    lifecycle.reset()


@pytest.fixture
def keys(app):
    return app.extensions["sluice"].keys


def post(client, secret: str, sock: FakeSocket | None = None, **extra):
    environ = {"gunicorn.socket": sock or FakeSocket()}
    headers = {"Authorization": f"Bearer {secret}", **extra}
    return client.post("/v1/chat/completions", json=chat(), headers=headers, environ_base=environ)


def request_lines(logs, request_id: str) -> list[str]:
    return [line for line in logs.getvalue().splitlines() if f"request request_id={request_id} " in line]


def records(app) -> list[dict]:
    gw = app.extensions["sluice"]
    gw.writer.flush()
    return gw.usage.recent()


def test_a_plain_answer_holds_its_slot_until_the_body_is_written(app, client, keys, upstream, logs):
    upstream.add(responses.POST, f"{BASE}/chat/completions", json=OK)
    _, secret = keys.create("k", now=time.time(), max_parallel=1)
    sock = FakeSocket()
    first = post(client, secret, sock, **{"X-Request-ID": "plain-first"})  # headers out, body not yet written
    assert first.status_code == 200 and request_lines(logs, "plain-first") == []
    refused = post(client, secret)
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "too_many_parallel_requests"
    assert first.get_json() == OK  # the server asks for more: the body has been written
    again = post(client, secret)
    assert again.status_code == 200 and again.get_json() == OK
    [line] = request_lines(logs, "plain-first")
    assert "status=200 outcome=ok" in line and f"bytes={len(first.data)}" in line
    assert first.headers["Content-Length"] == str(len(first.data))
    first.close()  # as gunicorn does after the last write
    # Each write (all but the last byte, then the last byte) was bounded by the deadline (900 s
    # away), and the bound lifted for the connection's next request.
    assert len(sock.timeouts) == 3 and all(890 < t <= 900 for t in sock.timeouts[:2]), sock.timeouts
    assert sock.timeouts[2] is None
    assert [r["outcome"] for r in records(app)].count("ok") == 2


def test_a_plain_answer_whose_write_fails_is_recorded_once_as_a_client_disconnect(app, client, keys, upstream, logs):
    upstream.add(responses.POST, f"{BASE}/chat/completions", json=OK)
    _, secret = keys.create("k", now=time.time(), max_parallel=1)
    sock = FakeSocket()
    resp = post(client, secret, sock, **{"X-Request-ID": "plain-cut"})
    resp.close()  # what gunicorn does when the write fails or times out
    resp.close()
    [line] = request_lines(logs, "plain-cut")
    assert "status=200 outcome=client_disconnect" in line and "bytes=0" in line
    [record] = records(app)
    assert record["outcome"] == "client_disconnect" and record["total_tokens"] == 10  # the upstream's work counts
    assert sock.timeouts[-1] is None
    assert post(client, secret).status_code == 200  # the slot was released


def test_each_write_gets_the_time_left_to_the_deadline_or_the_shutdown_at_least_a_second():
    now = time.time()
    for deadline, shutdown_grace, low, high in [
        (now + 30, None, 29, 30),
        (now + 30, lifecycle.SHUTDOWN_MARGIN + 5, 4, 5),
        (now - 1, None, 1.0, 1.0),
    ]:
        lifecycle.reset()
        if shutdown_grace is not None:
            lifecycle.begin_shutdown(shutdown_grace, now)
        sock, ends = FakeSocket(), []
        body = PlainBody(b"{}", deadline, ClientSocket(sock), ends.append)
        writes = iter(body)
        assert next(writes) == b"{" and ends == []  # not finished while the first write may block
        assert next(writes) == b"}" and ends == [True]  # finished before the last byte goes out
        assert list(writes) == []
        body.close()
        assert ends == [True]  # once, though closed after the end
        assert all(low <= t <= high for t in sock.timeouts[:2]) and sock.timeouts[2:] == [None], sock.timeouts
    ends = []
    PlainBody(b"", now + 30, ClientSocket(None), ends.append).close()  # e.g. a 204: nothing to write
    assert ends == [True]


def test_a_graceful_stop_answers_a_waiting_plain_request_with_a_503(app, client, keys, upstream, logs):
    release = threading.Event()

    def slow(request):
        release.wait(10)  # the upstream is still thinking when the worker is told to stop
        return 200, {"Content-Type": "application/json"}, '{"choices": []}'

    upstream.add_callback(responses.POST, f"{BASE}/chat/completions", callback=slow)
    _, secret = keys.create("k", now=time.time(), max_parallel=1)
    stop = threading.Timer(0.3, lambda: lifecycle.begin_shutdown(lifecycle.SHUTDOWN_MARGIN + 0.3, time.time()))
    stop.start()
    try:
        resp = post(client, secret, **{"X-Request-ID": "plain-stop"})
    finally:
        release.set()
        stop.join()
    assert resp.status_code == 503, resp.data
    assert resp.get_json()["error"] == {
        "message": "The gateway is restarting; retry the request.",
        "type": "server_error",
        "param": None,
        "code": "server_shutdown",
    }
    assert int(resp.headers["Retry-After"]) >= 1
    [line] = request_lines(logs, "plain-stop")
    assert "status=503 outcome=server_shutdown attempts=1" in line
    [record] = records(app)
    assert record["outcome"] == "server_shutdown" and record["status"] == 503
    assert record["token_ids"].startswith("primary:")
    lifecycle.reset()
    upstream.replace(responses.POST, f"{BASE}/chat/completions", json=OK)
    assert post(client, secret).status_code == 200  # the slot was released
