"""The secret box loads cryptography only when a secret is sealed or opened: a gateway whose upstream tokens all
come from its config never maps the library (about 6 MiB in every process)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = """
import sys
from app.services.secrets import SecretBox
box = SecretBox("k" * 40)
assert "cryptography" not in sys.modules
sealed = box.encrypt("sk-upstream")
assert "cryptography" in sys.modules and box.decrypt(sealed) == "sk-upstream"
assert SecretBox("j" * 40, "k" * 40).decrypt(sealed) == "sk-upstream"  # the previous key still opens it
print("ok")
"""


def test_cryptography_is_loaded_on_first_use_only():
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr
