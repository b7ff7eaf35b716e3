"""A client that stops reading a stream cannot hold its connection past the request's deadline.

Its max_parallel slot expires at the deadline (plus a margin): before this, each write to the
client could block for as long as the deadline was away *at the commit*, so a client that read
for a while and then stopped held the connection until nearly twice the deadline.
"""

from __future__ import annotations

import json
import re
import socket
import time

import pytest

from tests.integration.conftest import MASTER_KEY, chat_request_head
from tests.integration.test_faults import faulty  # noqa: F401 (the fixture: deadline = 6 s)

pytestmark = pytest.mark.integration
DEADLINE = 6.0


def test_a_client_that_stops_reading_is_let_go_at_the_deadline(faulty):  # noqa: F811
    host, port = faulty.url.removeprefix("http://").split(":")
    body = json.dumps({
        "model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "x"}],
        "mock": {"chunks": 1_000_000, "delay": 0},  # far more than socket buffers hold
    }).encode()  # fmt: skip
    request_id = f"slow-reader-{time.time_ns()}"
    head = chat_request_head(host, MASTER_KEY, len(body), request_id)
    with socket.create_connection((host, int(port))) as client:
        started = time.monotonic()
        client.sendall(head + body)
        while time.monotonic() - started < DEADLINE / 2:  # keep up for a while...
            assert client.recv(65536)
        # ...then stop reading, keep the connection open, and wait for the gateway to end the request.
        ended = None
        while time.monotonic() - started < DEADLINE * 2 + 5:
            if re.search(rf"request request_id={re.escape(request_id)} .*path=/v1/chat/completions", faulty.log()):
                ended = time.monotonic() - started
                break
            time.sleep(0.1)
    assert ended is not None, faulty.log()[-3000:]
    # The blocked write got only the time left to the deadline (at least 1 s), not the deadline again.
    assert ended < DEADLINE + 2.5, f"the stream ended {ended:.1f} s after it started (deadline {DEADLINE} s)"
    time.sleep(1.5)  # the write's timeout ends the connection just after the request line
    log = faulty.log()
    assert "client stopped reading (write timed out)" in log, log[-2000:]
    assert "Socket error processing request" not in log  # no traceback for a client's doing
