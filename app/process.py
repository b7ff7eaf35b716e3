"""This process's id, and unique ids, without a system call per use (os.getpid and
os.urandom are system calls, microseconds each in a VM); both are renewed in every forked
child, such as a gunicorn worker."""

from __future__ import annotations

import itertools
import os
import secrets

_pid = os.getpid()
_prefix = secrets.token_hex(8)
_counter = itertools.count()


def _forked() -> None:
    global _pid, _prefix, _counter
    _pid, _prefix, _counter = os.getpid(), secrets.token_hex(8), itertools.count()


os.register_at_fork(after_in_child=_forked)


def pid() -> int:
    return _pid


def unique_id() -> str:
    """32 hex digits, unique across processes and restarts: 64 random bits drawn once per
    process, then a counter. Not a secret (request ids are shown to clients)."""
    return f"{_prefix}{next(_counter):016x}"
