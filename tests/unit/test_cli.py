"""The CLI at its boundary: one-line errors for input it cannot take, and no misleading warnings."""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest

from app import mock_upstream
from app.state import announce, serving
from app.storage.usage import audit_entries
from tests.conftest import make_config

ROOT = Path(__file__).resolve().parents[2]
NINES = "9" * 400
BAD = "\udcff"  # how Python hands over an argv byte that is not UTF-8 (surrogateescape)


def one_line_error(result: click.testing.Result) -> str:
    """The command failed with a message (no traceback): returns that message."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


def stored(app) -> tuple[list, list, list]:
    gw = app.extensions["sluice"]
    return gw.keys.list(), [(r.id, r.enabled, r.removed) for r in gw.pool.repo.rows()], audit_entries(gw.db)


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "create", BAD],
        ["keys", "create", f"team{BAD}"],
        ["keys", "create", "ok", "--models", f"mock-{BAD}"],
        ["keys", "create", "ok", "--expires", f"2030-01-01{BAD}"],
        ["keys", "disable", BAD],
        ["keys", "enable", BAD],
        ["keys", "revoke", BAD],
        ["tokens", "add", "primary", f"tok-{BAD}-0000000009"],
        ["tokens", "add", BAD, "tok-0000000009"],
        ["tokens", "enable", f"primary:{BAD}"],
        ["tokens", "disable", f"primary:{BAD}"],
        ["tokens", "remove", f"primary:{BAD}"],
        ["tokens", "validate", f"primary:{BAD}"],
        ["usage", "--since", f"7{BAD}"],
    ],
)
def test_cli_refuses_arguments_that_are_not_utf8(make_app, args):
    app = make_app(secret_key="s" * 32)
    before = stored(app)
    message = one_line_error(app.test_cli_runner().invoke(args=args))
    assert "not valid UTF-8" in message
    assert stored(app) == before


@pytest.mark.parametrize(
    "stdin", [b"\xff\xfe-token-0000000009\n", "tok-\udcff-0000000009\n".encode(errors="surrogatepass")]
)
def test_cli_refuses_a_token_on_stdin_that_is_not_utf8(make_app, stdin):
    app = make_app(secret_key="s" * 32)
    before = stored(app)
    message = one_line_error(app.test_cli_runner().invoke(args=["tokens", "add", "primary", "-"], input=stdin))
    assert "TOKEN" in message and "UTF-8" in message
    assert stored(app) == before


def test_cli_refuses_a_password_on_stdin_that_is_not_utf8(app):
    done = app.test_cli_runner().invoke(args=["admin", "hash-password"], input=b"\xff\xfe-a-long-password\n")
    assert "PASSWORD" in one_line_error(done)


@pytest.mark.parametrize(
    "args",
    [
        ["usage", "--since", f"{NINES}d"],
        ["usage", "--since", f"{NINES}m"],
        ["usage", "--since", NINES],
        ["usage", "--since", "-5d"],
        ["keys", "create", "k", "--rpm", NINES],
        ["keys", "create", "k", "--tpm", "1" + "0" * 5000],  # past Python's int-from-string digit limit
        ["keys", "create", "k", "--max-parallel", "-1"],
        ["keys", "create", "k", "--monthly-tokens", "0"],
        ["keys", "create", "k", "--expires", NINES],
        ["keys", "create", "k", "--expires", "0001-01-01T00:00:00+14:00"],
        ["keys", "create", "k", "--expires", "9999-12-31T23:59:59-14:00"],
    ],
)
def test_cli_huge_or_odd_numbers_get_a_one_line_error(app, args):
    one_line_error(app.test_cli_runner().invoke(args=args))
    assert app.extensions["sluice"].keys.list() == []


def test_cli_commands_do_not_warn_about_a_master_key_they_never_use(make_app):
    """Item 16: the server's environment holds the master key; a CLI shell need not."""
    stream = io.StringIO()
    capture = logging.StreamHandler(stream)
    logger = logging.getLogger("sluice")
    logger.addHandler(capture)
    try:
        settings = make_app(master_key=None).extensions["sluice"].settings  # built outside any command
        assert "no master key is configured" in stream.getvalue()
        for command, warns in (("keys", False), ("usage", False), ("run", True)):
            stream.truncate(0)
            with click.Context(click.Command(command), info_name=command):
                assert serving() is warns
                announce(make_config(), settings)
            assert ("no master key is configured" in stream.getvalue()) is warns, command
    finally:
        logger.removeHandler(capture)


def test_cli_as_a_process_gives_one_line_errors_and_no_master_key_warning(tmp_path):
    """The same through a real `flask` process: undecodable argv bytes, a huge --since, no master key."""
    env = {**os.environ, "SLUICE_DATA_DIR": str(tmp_path), "SLUICE_MASTER_KEY": "", "SLUICE_MASTER_KEY_FILE": ""}
    env.pop("SLUICE_CONFIG", None)
    env.pop("SLUICE_DATABASE_URL", None)
    flask = [sys.executable, "-m", "flask", "--app", "wsgi"]
    for args in ([b"keys", b"create", b"team-\xff\xfe"], [b"usage", b"--since", NINES.encode() + b"d"]):
        done = subprocess.run([*flask, *args], cwd=ROOT, env=env, capture_output=True, timeout=60)
        err = done.stderr.decode(errors="replace")
        assert done.returncode != 0 and "Traceback" not in err, err
        assert [line for line in err.splitlines() if line.startswith("Error:")], err
        assert "no master key" not in err
    listed = subprocess.run([*flask, "keys", "list", "--json"], cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr


def test_the_sluice_wrapper_says_what_to_do_before_make_run(tmp_path):
    """`./sluice` in a checkout without .venv: one line naming the fix, not bash's 'No such file'."""
    wrapper = tmp_path / "sluice"
    wrapper.write_bytes((ROOT / "sluice").read_bytes())
    wrapper.chmod(0o755)
    done = subprocess.run([str(wrapper), "keys", "list"], cwd=tmp_path, capture_output=True, text=True, timeout=10)
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        "sluice: no virtual environment yet; run 'make run' (or 'make test') once first"
    ]


@pytest.mark.parametrize("port", ["70000", "-1", "abc", "9" * 5000, "busy"])
def test_the_mock_refuses_a_port_it_cannot_listen_on_in_one_line(capsys, port):
    """`make run` with SLUICE_DEMO_MOCK_PORT taken or odd: one line and an exit, never a traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        if port == "busy":
            port = str(taken.getsockname()[1])
        with pytest.raises(SystemExit) as exit_:
            mock_upstream.main(["--port", port])
    assert exit_.value.code != 0
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert "Address already in use" in message or "is not a port (0-65535)" in message, message
