"""The container entrypoint, run directly (the image itself runs in test_image.py): demo config + mock, a stream."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import MASTER_KEY, ROOT, free_port

pytestmark = pytest.mark.integration
# gunicorn's graceful stop waits for idle keep-alive connections too: don't leave any.
CLOSE = {"Connection": "close"}


def test_entrypoint_serves_the_demo_stream_and_stops_cleanly(tmp_path):
    port, mock_port = free_port(), free_port()
    env = {
        **os.environ,
        "SLUICE_DEMO_MOCK_PORT": str(mock_port),
        "SLUICE_BIND": f"127.0.0.1:{port}",
        "SLUICE_MASTER_KEY": MASTER_KEY,
        "SLUICE_DATA_DIR": str(tmp_path),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",  # the image's PATH has both
    }
    env.pop("SLUICE_CONFIG", None)
    with open(tmp_path / "entrypoint.log", "wb") as log:
        process = subprocess.Popen(
            ["sh", "deploy/entrypoint.sh"], cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "entrypoint.log").read_text()
            try:
                if requests.get(f"{url}/readyz", timeout=2, headers=CLOSE).status_code == 200 and not _port_free(
                    mock_port
                ):
                    break
            except requests.RequestException:  # not listening yet, or the worker still booting
                pass
            time.sleep(0.2)
        body = {"model": "mock-gpt", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        resp = requests.post(
            f"{url}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {MASTER_KEY}", **CLOSE},
            timeout=20,
        )
        assert resp.status_code == 200
        assert resp.text.rstrip().endswith("data: [DONE]")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=20) == 0


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0
