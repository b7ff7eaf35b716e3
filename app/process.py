"""This process's id without a system call per use (os.getpid is one on Linux, and costs
microseconds in a VM); refreshed in every forked child, such as a gunicorn worker."""

from __future__ import annotations

import os

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def pid() -> int:
    return _pid
