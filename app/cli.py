"""`flask --app wsgi ...` commands: db, keys, tokens, usage, secrets, admin (changes audited as "cli")."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext

from app.services.admin import Admin, AdminError

db_cli = AppGroup("db", help="Database schema.")
keys_cli = AppGroup("keys", help="Client API keys.")
tokens_cli = AppGroup("tokens", help="Upstream tokens.")
secrets_cli = AppGroup("secrets", help="Encryption of stored upstream tokens.")
admin_cli = AppGroup("admin", help="The dashboard's sign-in.")


def register_commands(app: Flask) -> None:
    for group in (db_cli, keys_cli, tokens_cli, secrets_cli, admin_cli):
        app.cli.add_command(group)
    app.cli.add_command(usage_command)


def _admin() -> Admin:
    return Admin(current_app.extensions["sluice"], actor="cli")


def _errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """One-line errors, never a traceback: arguments that are not UTF-8 are refused before the command runs."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        for name, value in kwargs.items():
            _require_utf8(name, value)
        try:
            return command(*args, **kwargs)
        except AdminError as exc:
            raise click.ClickException(exc.message) from None

    return run


def _require_utf8(name: str, value: object) -> None:
    """On Linux, argv bytes that are not UTF-8 reach Python as lone surrogates, which no store can write."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise click.ClickException(f"{name.upper()}: not valid UTF-8 (check the terminal's encoding)") from None


def _stdin_line(name: str) -> str:
    """One line from stdin (a token or a password), refused with one line when it is not UTF-8."""
    try:
        line = sys.stdin.readline()
    except UnicodeDecodeError:
        raise click.ClickException(f"{name.upper()}: stdin is not valid UTF-8") from None
    _require_utf8(name, line)
    return line


def _when(value: float | None) -> str:
    return "-" if value is None else datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [[str(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


@db_cli.command("upgrade")
@_errors
def db_upgrade() -> None:
    """Apply schema migrations (also done automatically at start-up)."""
    from app.storage.migrate import upgrade

    upgrade(current_app.extensions["sluice"].db)
    click.echo("database schema is up to date")


@keys_cli.command("create")
@click.argument("name")
@click.option("--rpm", type=int)
@click.option("--tpm", type=int)
@click.option("--models", help="comma-separated model ids or globs (default: *)")
@click.option("--max-parallel", type=int)
@click.option("--monthly-tokens", type=int)
@click.option("--expires", help="ISO 8601 time, e.g. 2027-01-31T00:00:00Z")
@_errors
def keys_create(name: str, rpm, tpm, models, max_parallel, monthly_tokens, expires) -> None:  # type: ignore[no-untyped-def]
    """Create a key and print it (this is the only time it is shown)."""
    options = {"rpm": rpm, "tpm": tpm, "max_parallel": max_parallel, "monthly_tokens": monthly_tokens}
    if models:
        options["models"] = models
    if expires:
        options["expires_at"] = expires
    key, secret = _admin().create_key(name, **options)
    click.echo(secret)
    click.echo(f"created key {key.name!r} ({key.id}); store it now, it is not shown again", err=True)


@keys_cli.command("list")
@click.option("--json", "as_json", is_flag=True)
@_errors
def keys_list(as_json: bool) -> None:
    """List keys with their state and limits (never their values)."""
    rows = _admin().list_keys()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        row["created"], row["expires"] = _when(row["created_at"]), _when(row["expires_at"])
        row["models"] = ",".join(row["models"])
    _table(rows, ["id", "name", "prefix", "state", "rpm", "tpm", "max_parallel", "monthly_tokens", "models", "expires"])


def _key_action(name: str, action: Callable[[Admin, str], Any], done: str) -> None:
    @keys_cli.command(name)
    @click.argument("name_or_prefix")
    @_errors
    def command(name_or_prefix: str) -> None:
        key = action(_admin(), name_or_prefix)
        click.echo(f"{done} key {key.name!r} ({key.id})")

    command.__doc__ = f"{done.capitalize()} a key, by id, name or display prefix."


_key_action("enable", lambda a, ref: a.update_key(ref, enabled=True), "enabled")
_key_action("disable", lambda a, ref: a.update_key(ref, enabled=False), "disabled")
_key_action("revoke", lambda a, ref: a.revoke_key(ref), "revoked")


@tokens_cli.command("add")
@click.argument("upstream")
@click.argument("token")
@_errors
def tokens_add(upstream: str, token: str) -> None:
    """Add a run-time token to UPSTREAM; TOKEN '-' reads it from stdin (out of shell history)."""
    if token == "-":
        token = _stdin_line("token").strip()
    row = _admin().add_token(upstream, token)
    click.echo(f"added token {row['id']} ({row['masked']})")


@tokens_cli.command("list")
@click.option("--json", "as_json", is_flag=True)
@_errors
def tokens_list(as_json: bool) -> None:
    """List upstream tokens, masked, with their state."""
    rows = _admin().list_tokens()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        row["cooldown_until"], row["last_at"] = _when(row["cooldown_until"]), _when(row["last_at"])
    _table(
        rows, ["id", "upstream", "source", "masked", "state", "cooldown_until", "last_status", "successes", "failures"]
    )


@tokens_cli.command("enable")
@click.argument("token_id")
@_errors
def tokens_enable(token_id: str) -> None:
    """Enable a token (also brings back a removed config token)."""
    click.echo(f"token {_admin().set_token_enabled(token_id, True)['id']} enabled")


@tokens_cli.command("disable")
@click.argument("token_id")
@_errors
def tokens_disable(token_id: str) -> None:
    """Disable a token in every worker."""
    click.echo(f"token {_admin().set_token_enabled(token_id, False)['id']} disabled")


@tokens_cli.command("remove")
@click.argument("token_id")
@_errors
def tokens_remove(token_id: str) -> None:
    """Remove a token (a config token stays removed across restarts until enabled)."""
    _admin().remove_token(token_id)
    click.echo(f"token {token_id} removed")


@click.command("usage")
@with_appcontext
@click.option("--since", default="24h", show_default=True, help="30m, 24h, 7d or an ISO 8601 time")
@click.option("--by", default="key", show_default=True, type=click.Choice(["key", "model", "upstream", "day"]))
@click.option("--json", "as_json", is_flag=True)
@_errors
def usage_command(since: str, by: str, as_json: bool) -> None:
    """Requests and prompt/completion/total tokens, grouped."""
    rows = _admin().usage(since, by)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _table(rows, ["group", "requests", "prompt_tokens", "completion_tokens", "total_tokens"])


@secrets_cli.command("rotate")
@_errors
def secrets_rotate() -> None:
    """Re-encrypt stored tokens under SLUICE_SECRET_KEY (old key in SLUICE_SECRET_KEY_PREVIOUS)."""
    count = _admin().rotate_secrets()
    click.echo(f"re-encrypted {count} tokens under the current key")


@tokens_cli.command("validate")
@click.argument("token_id")
@_errors
def tokens_validate(token_id: str) -> None:
    """Probe the token's upstream with it (GET /models); exit 1 when it is not accepted."""
    result = _admin().validate_token(token_id)
    click.echo(f"{token_id}: {'valid' if result.ok else 'NOT valid'} ({result.detail}, {result.latency_ms:.0f} ms)")
    if not result.ok:
        sys.exit(1)


@admin_cli.command("hash-password", with_appcontext=False)
@_errors
def hash_password() -> None:
    """Print a hash of the dashboard password for SLUICE_ADMIN_PASSWORD_HASH (prompts go to stderr)."""
    from werkzeug.security import generate_password_hash

    if sys.stdin.isatty():
        password = click.prompt("Dashboard password", hide_input=True, confirmation_prompt=True, err=True)
    else:
        password = _stdin_line("password").rstrip("\n")
    _require_utf8("password", password)
    if len(password) < 12:
        raise click.ClickException("The password must be at least 12 characters.")
    click.echo(generate_password_hash(password))
