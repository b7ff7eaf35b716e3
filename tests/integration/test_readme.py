"""The README's curl and OpenAI SDK examples, run as written against a live gateway."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.integration.conftest import MASTER_KEY, ROOT

pytestmark = pytest.mark.integration
README = (ROOT / "README.md").read_text()
DEFAULT_URL = "http://127.0.0.1:8000"


def block(language: str, marker: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)
    return next(b for b in blocks if marker in b)


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "demo-key").write_text(MASTER_KEY + "\n")
    return tmp_path


def test_readme_curl_example_streams(gateway, workdir):
    assert shutil.which("curl"), "curl is needed (installed by .ci/run)"
    command = block("sh", "curl -N").replace(DEFAULT_URL, gateway.url)
    done = subprocess.run(["bash", "-c", command], cwd=workdir, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    events = [line for line in done.stdout.splitlines() if line.startswith("data: ")]
    assert len(events) >= 3
    assert events[-1] == "data: [DONE]"


def test_readme_sdk_example_streams(gateway, workdir):
    code = block("python", "from openai import OpenAI").replace(DEFAULT_URL, gateway.url)
    done = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Hello from the Sluice mock upstream!")
