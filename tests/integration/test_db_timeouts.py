"""Start-up cannot hang on a PostgreSQL server that accepts connections and never answers: the
start-up module fails within its connect timeout, and gunicorn's on_starting bounds it anyway."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import MASTER_KEY
from tests.integration.conftest import upstream_toml
from tests.storage.test_pg_timeouts import silent_listener

ROOT = Path(__file__).resolve().parents[2]


def environment(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    config = tmp_path / "sluice.toml"
    config.write_text(upstream_toml("m", "http://127.0.0.1:9", ["tok-aaaaaaaaaaaaaaaa"], ["*"]))
    return {
        **os.environ,
        "SLUICE_CONFIG": str(config),
        "SLUICE_MASTER_KEY": MASTER_KEY,
        "SLUICE_DATA_DIR": str(tmp_path / "data"),
        "SLUICE_DATABASE_URL": f"postgresql+psycopg://sluice:sluice@127.0.0.1:{port}/sluice",
        "SLUICE_REDIS_URL": "",
        **extra,
    }


def test_the_start_up_module_fails_within_the_connect_timeout(tmp_path):
    with silent_listener() as port:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "app.storage.startup"],
            env=environment(tmp_path, port),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode != 0
    assert time.monotonic() - started < 5 + 10  # the connect timeout, plus Python's start-up
    assert "timeout" in done.stderr.lower()


def test_gunicorn_gives_up_on_a_start_up_that_takes_too_long(tmp_path):
    with silent_listener() as port:
        env = environment(tmp_path, port, SLUICE_BIND="127.0.0.1:0", SLUICE_STARTUP_TIMEOUT="1", SLUICE_WORKERS="1")
        done = subprocess.run(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if "SLUICE_STARTUP_TIMEOUT" in line]
    assert lines == ["sluice: database start-up took over 1 s (SLUICE_STARTUP_TIMEOUT); is the database up?"]
