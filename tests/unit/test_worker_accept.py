"""app/worker.py: a worker accepts a batch of waiting connections per event-loop turn, not gunicorn's one."""

from __future__ import annotations

import socket

from gunicorn.workers import ggevent

from app.worker import ACCEPT_BATCH, AcceptingServer


def test_gunicorn_builds_its_servers_from_the_batch_accepting_class():
    assert ggevent.StreamServer is AcceptingServer


def test_the_one_per_turn_that_gunicorn_sets_with_several_workers_is_ignored():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    server = AcceptingServer(listener, handle=lambda *_: None)
    try:
        server.max_accept = 1  # what GeventWorker.run does when workers > 1
        assert server.max_accept == ACCEPT_BATCH == 64
    finally:
        server.close()
