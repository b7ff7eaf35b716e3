"""The directory where gunicorn's workers keep their Prometheus samples (multiprocess mode).

By default each gunicorn master uses `<tmp>/sluice-metrics-<master pid>`: created empty at
start, removed at exit, and the directories of masters that are gone (killed, or a host
crash) are swept at the next start. A directory the operator names in
PROMETHEUS_MULTIPROC_DIR is emptied at start and left in place at exit.

Imported by gunicorn.conf.py in the master: standard library only.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import MutableMapping

ENV = "PROMETHEUS_MULTIPROC_DIR"
_DEFAULT = re.compile(r"sluice-metrics-(\d+)")


def default_dir(pid: int) -> str:
    return os.path.join(tempfile.gettempdir(), f"sluice-metrics-{pid}")


def choose(environ: MutableMapping[str, str], pid: int) -> str:
    """Set and return this master's directory: the operator's, or a default one of its own.

    A default inherited from another master (gunicorn re-executing itself on SIGUSR2 keeps the
    environment) is replaced: that master still uses and will remove its own.
    """
    current = environ.get(ENV)
    if not current or is_default(current):
        environ[ENV] = current = default_dir(pid)
    return current


def is_default(path: str) -> bool:
    parent, name = os.path.split(os.path.abspath(path))
    return parent == os.path.abspath(tempfile.gettempdir()) and _DEFAULT.fullmatch(name) is not None


def prepare(path: str) -> None:
    """An empty directory: samples of an earlier run would be merged into this one's."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
    """At the master's exit: remove a default directory (an operator's one stays)."""
    if is_default(path):
        shutil.rmtree(path, ignore_errors=True)


def remove_stale() -> list[str]:
    """Remove the default directories of masters no longer running; returns those removed."""
    parent = tempfile.gettempdir()
    removed = []
    for name in os.listdir(parent):
        match = _DEFAULT.fullmatch(name)
        path = os.path.join(parent, name)
        if match is None or _running(int(match.group(1))) or not os.path.isdir(path):
            continue
        shutil.rmtree(path, ignore_errors=True)  # another user's directory stays; nothing to do about it
        if not os.path.exists(path):
            removed.append(path)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OverflowError:
        return False  # not a pid at all
    return True
