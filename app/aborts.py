"""How a response ends when it cannot say why: its connection is cut. No imports: gunicorn's worker
class (app/worker.py) loads this in the master, before gevent patches anything."""

from __future__ import annotations


class BodyCut(ConnectionAbortedError):
    """A raw answer (audio) broke after its first byte: it cannot say why, so its connection is cut
    (an OSError, so the server closes the connection; app/worker.py logs it as one line)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
