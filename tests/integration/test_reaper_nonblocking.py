"""gunicorn's master does not wait for the reaper of a dead worker's slots (gunicorn.conf.py's
child_exit): while another process holds the SQLite write lock, for which the reaper waits, the
replacement worker is already started; once the lock is gone the reaper frees the slot."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import Server, child_pids
from tests.integration.test_slots import _admitted_within, _gateway, _key, _start_stream

pytestmark = pytest.mark.integration
LOCK_HELD = 2.5  # seconds at most: below the 5 s SQLite busy timeout of the reaper and of the booting worker


def _replacement(gateway: Server, dead: int, seconds: float) -> int | None:
    """The pid of a worker other than `dead`, once one runs (None: none within `seconds`)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        others = [pid for pid in child_pids(gateway.process.pid) if pid != dead and _is_worker(pid)]
        if others:
            return others[0]
        time.sleep(0.05)
    return None


def _is_worker(pid: int) -> bool:
    """A gunicorn worker, not another child of the master (the reaper)."""
    try:
        return b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # ended meanwhile
        return False


def _serves(gateway: Server, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{gateway.url}/healthz", timeout=1).status_code == 200:
                return True
        except requests.RequestException:  # still booting
            pass
        time.sleep(0.1)
    return False


def test_the_replacement_worker_starts_while_the_reaper_waits_for_the_database(tmp_path, mock):
    gateway = _gateway(tmp_path, mock)
    try:
        key = _key(gateway, max_parallel=1)
        _start_stream(gateway, key)
        (worker,) = child_pids(gateway.process.pid)
        locker = sqlite3.connect(tmp_path / "data" / "sluice.db", isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # the reaper waits for it
        try:
            os.kill(worker, signal.SIGKILL)
            replacement = _replacement(gateway, worker, LOCK_HELD)
            assert "freed 1 in-flight slot" not in gateway.log()  # the reaper is still waiting
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert replacement is not None, gateway.log()[-3000:]  # before: only after the reaper ended
        assert _serves(gateway, 10), gateway.log()[-3000:]
        assert _admitted_within(gateway, key, 10) is not None, gateway.log()[-3000:]
        freed = [line for line in gateway.log().splitlines() if "freed 1 in-flight slot(s) of worker" in line]
        assert [line.rsplit(":", 1)[-1] for line in freed] == [str(worker)]  # "<instance id>:<pid>"
    finally:
        gateway.stop()
