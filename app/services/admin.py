"""Admin operations shared by the CLI, the admin JSON API and the dashboard; each is audited.

Inputs are validated here once; problems raise AdminError(status, message, param).
Token values are never returned, logged or audited: only ids and masked forms.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from app.config import ConfigError, validate_overrides
from app.jsontext import storable
from app.services.health import upstream_health
from app.services.probe import ProbeResult, probe
from app.services.secrets import SecretsUnavailable, is_secret_header
from app.services.tokens import mask, token_id
from app.state import Gateway
from app.storage.keys import ApiKey, KeyConflict, KeyNotFound
from app.storage.usage import GROUPS, audit_log

LIMIT_FIELDS = ("rpm", "tpm", "max_parallel", "monthly_tokens")
LIMIT_MAX = {"rpm": 2**31 - 1, "max_parallel": 2**31 - 1, "tpm": 2**63 - 1, "monthly_tokens": 2**63 - 1}  # columns
LATEST_TIME = 253402300799.0  # 9999-12-31T23:59:59Z
_SINCE = re.compile(r"([0-9]{1,6})([mhd])")
_UNITS = {"m": 60, "h": 3600, "d": 86400}


class AdminError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


class Admin:
    def __init__(self, gw: Gateway, actor: str) -> None:
        self.gw, self.actor = gw, actor

    def record(self, action: str, target: str) -> None:
        """Write an audit entry (every operation below does; sign-in and sign-out call it directly)."""
        audit_log(self.gw.db, at=time.time(), actor=self.actor, action=action, target=target)

    # keys
    def create_key(self, name: Any, **options: Any) -> tuple[ApiKey, str]:
        values = key_options(options)
        try:
            key, secret = self.gw.keys.create(_key_name(name), now=time.time(), **values)
        except KeyConflict as exc:
            raise AdminError(409, str(exc), "name") from None
        self.record("key.create", key.name)
        return key, secret

    def update_key(self, ref: str, **changes: Any) -> ApiKey:
        key = self.find_key(ref)
        values = key_options(changes)
        if "enabled" in changes:
            if not isinstance(changes["enabled"], bool):
                raise AdminError(400, "'enabled' must be true or false.", "enabled")
            if key.revoked_at is not None and changes["enabled"]:
                raise AdminError(409, "A revoked key cannot be enabled again; create a new one.", "enabled")
            values["enabled"] = changes["enabled"]
        if "name" in changes:
            values["name"] = _key_name(changes["name"])
        try:
            updated = self.gw.keys.update(key.id, **values)
        except KeyConflict as exc:
            raise AdminError(409, str(exc), "name") from None
        action = {True: "key.enable", False: "key.disable"}.get(values.get("enabled"), "key.update")  # type: ignore[arg-type]
        self.record(action, updated.name)
        return updated

    def revoke_key(self, ref: str) -> ApiKey:
        key = self.find_key(ref)
        updated = self.gw.keys.update(key.id, revoked_at=key.revoked_at or time.time(), enabled=False)
        self.record("key.revoke", key.name)
        return updated

    def find_key(self, ref: str) -> ApiKey:
        try:
            return self.gw.keys.find(ref)
        except KeyNotFound:
            raise AdminError(404, f"No key matches {ref!r}.") from None
        except KeyConflict as exc:
            raise AdminError(409, str(exc)) from None

    def list_keys(self) -> list[dict[str, Any]]:
        now = time.time()
        return [k.public(now) for k in self.gw.keys.list()]

    # upstream tokens
    def add_token(self, upstream: Any, value: Any) -> dict[str, Any]:
        config = self._upstream(upstream)
        if not config.tokens:
            raise AdminError(400, f"Upstream {upstream!r} is configured without tokens (no Authorization).", "upstream")
        if not isinstance(value, str) or not value or any(not "!" <= c <= "~" for c in value):
            raise AdminError(400, "The token must be non-empty printable ASCII without spaces.", "token")
        tid = token_id(config.name, value)
        if self.gw.pool.repo.get(tid) is not None:
            raise AdminError(409, f"This token is already known as {tid} (enable it if it was removed).", "token")
        try:
            cipher = self.gw.box.encrypt(value)
        except SecretsUnavailable as exc:
            raise AdminError(400, f"Cannot store tokens: {exc}.", "token") from None
        self.gw.pool.repo.add_runtime(tid, config.name, cipher, mask(value), time.time())
        self.record("token.add", tid)
        return self._token(tid)

    def set_token_enabled(self, tid: str, enabled: Any) -> dict[str, Any]:
        if not isinstance(enabled, bool):
            raise AdminError(400, "'enabled' must be true or false.", "enabled")
        if not self.gw.pool.repo.set_flags(tid, **operator_flags(enabled, time.time())):
            raise AdminError(404, f"No token with id {tid!r}.")
        self.record("token.enable" if enabled else "token.disable", tid)
        return self._token(tid)

    def remove_token(self, tid: str) -> None:
        row = self.gw.pool.repo.get(tid)
        if row is None:
            raise AdminError(404, f"No token with id {tid!r}.")
        if row.source == "runtime":
            self.gw.pool.repo.delete(tid)
        else:  # a config token stays removed across restarts until re-enabled
            self.gw.pool.repo.set_flags(tid, removed=True, **operator_flags(False, time.time()))
        self.record("token.remove", tid)

    def validate_token(self, tid: str) -> ProbeResult:
        """Probe the token's upstream with it (`GET /models`); audited with the status, not the token."""
        row = self.gw.pool.repo.get(tid)
        if row is None:
            raise AdminError(404, f"No token with id {tid!r}.")
        value = self.gw.pool.value_of(row)  # the decrypted value, never returned
        if value is False:
            raise AdminError(409, f"Token {tid} has no known value (not in the config file, or undecryptable).")
        upstream = self.gw.pool.effective(self._upstream(row.upstream), self.gw.pool.stored_overrides())
        result = probe(self.gw.client.session, upstream, value)  # type: ignore[arg-type]
        self.record("token.validate", f"{tid} -> {result.detail}")
        return result

    def list_tokens(self) -> list[dict[str, Any]]:
        now = time.time()
        return [row.public(now) for row in self.gw.pool.rows()]

    def health(self) -> list[dict[str, Any]]:
        """Per upstream: breaker, probe, in flight, and its tokens' states (app/services/health.py)."""
        return upstream_health(self.gw, time.time())

    def _token(self, tid: str) -> dict[str, Any]:
        row = self.gw.pool.repo.get(tid)
        assert row is not None
        return row.public(time.time())

    def _upstream(self, name: Any):  # type: ignore[no-untyped-def]
        for upstream in self.gw.config.upstreams:
            if upstream.name == name:
                return upstream
        raise AdminError(404, f"No upstream named {name!r}.", "upstream")

    # upstream overrides
    def list_upstreams(self) -> list[dict[str, Any]]:
        """Upstreams with their effective user agent and headers; secret-looking header values masked."""
        overrides = self.gw.pool.stored_overrides()
        result = []
        for upstream in self.gw.config.upstreams:
            effective = self.gw.pool.effective(upstream, overrides)
            result.append({
                "name": upstream.name, "base_url": upstream.base_url, "models": list(upstream.models),
                "user_agent": effective.user_agent,
                "headers": {k: hide_header(k, v) for k, v in effective.headers.items()},
                "overridden": upstream.name in overrides,
            })  # fmt: skip
        return result

    def set_overrides(self, name: Any, *, user_agent: Any = None, headers: Any = None) -> dict[str, Any]:
        """Override the user agent and/or the extra headers; a header sent back in its hidden form
        (as list_upstreams shows it) keeps its current value."""
        upstream = self._upstream(name)
        overrides = self.gw.pool.stored_overrides()
        current = overrides.get(upstream.name, (None, None))
        if isinstance(headers, dict):
            known = self.gw.pool.effective(upstream, overrides).headers
            headers = {k: known[k] if k in known and v == hide_header(k, known[k]) else v for k, v in headers.items()}
        try:
            user_agent, headers = validate_overrides(upstream.name, user_agent, headers)
        except ConfigError as exc:
            raise AdminError(400, str(exc)) from None
        user_agent = user_agent if user_agent is not None else current[0]
        headers = headers if headers is not None else current[1]
        try:
            self.gw.pool.save_override(upstream.name, user_agent, headers, time.time())
        except SecretsUnavailable as exc:
            raise AdminError(400, f"Cannot store secret-looking headers: {exc}.", "headers") from None
        self.record("upstream.override", upstream.name)
        return next(u for u in self.list_upstreams() if u["name"] == upstream.name)

    def reset_overrides(self, name: Any) -> dict[str, Any]:
        """Back to the config file's user agent and headers."""
        upstream = self._upstream(name)
        if not self.gw.pool.repo.delete_override(upstream.name):
            raise AdminError(409, f"Upstream {upstream.name!r} has no run-time overrides.")
        self.record("upstream.reset", upstream.name)
        return next(u for u in self.list_upstreams() if u["name"] == upstream.name)

    # usage and secrets
    def usage(self, since: Any = "24h", by: Any = "key") -> list[dict[str, Any]]:
        if by not in GROUPS:
            raise AdminError(400, f"'by' must be one of {', '.join(GROUPS)}.", "by")
        return self.gw.usage.summary(parse_since(since, time.time()), by)

    def rotate_secrets(self) -> int:
        """Re-encrypt every run-time token under the current SLUICE_SECRET_KEY."""
        count = 0
        for row in self.gw.pool.repo.rows():
            if row.source == "runtime" and row.secret:
                try:
                    self.gw.pool.repo.set_cipher(row.id, self.gw.box.rotate(row.secret))
                except SecretsUnavailable as exc:
                    raise AdminError(400, f"Cannot rotate {row.id}: {exc}.") from None
                count += 1
        try:
            count += self.gw.pool.reseal_overrides()
        except SecretsUnavailable as exc:
            raise AdminError(400, f"Cannot re-encrypt header overrides: {exc}.") from None
        self.record("secrets.rotate", f"{count} tokens and header overrides")
        return count


def operator_flags(enabled: bool, now: float) -> dict[str, Any]:
    """An operator's enable or disable: theirs to undo, never a probe's. Enabling also forgets what
    Sluice had counted or benched (auth failures, a cooldown): the operator vouches for the token."""
    if enabled:
        return {"enabled": True, "removed": False, "disabled_by": None, "disabled_at": None,
                "auth_failures": 0, "cooldown_until": 0.0}  # fmt: skip
    return {"enabled": False, "disabled_by": "operator", "disabled_at": now}


def hide_header(name: str, value: str) -> str:
    """A header value as shown to operators: masked when its name says it carries a secret."""
    return f"(hidden) {mask(value)}" if is_secret_header(name) else value


def key_options(options: dict[str, Any]) -> dict[str, Any]:
    """Validated key settings from CLI/API/dashboard input (only the fields present)."""
    values: dict[str, Any] = {}
    for field in LIMIT_FIELDS:
        if field in options:
            value = options[field]
            top = LIMIT_MAX[field]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top):
                raise AdminError(400, f"'{field}' must be a whole number from 1 to {top}, or null.", field)
            values[field] = value
    if "models" in options and options["models"] is not None:
        models = options["models"]
        if isinstance(models, str):
            models = [m.strip() for m in models.split(",")]
        if (
            not isinstance(models, list)
            or not models
            or not all(isinstance(m, str) and m and "," not in m and len(m) <= 200 and storable(m) for m in models)
        ):
            raise AdminError(400, "'models' must be a non-empty list of model ids or globs.", "models")
        values["models"] = tuple(models)
    if "expires_at" in options:
        values["expires_at"] = parse_time(options["expires_at"], "expires_at")
        if values["expires_at"] is not None and not time.time() < values["expires_at"] < LATEST_TIME:
            raise AdminError(400, "'expires_at' must be in the future (and before the year 10000).", "expires_at")
    return values


def parse_time(value: Any, param: str) -> float | None:
    """An ISO 8601 time or UNIX seconds (between 1970 and 9999) -> UNIX seconds; AdminError(400) if not."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # Compared before converting: float() of a 400-digit integer raises OverflowError.
        if not 0 <= value <= LATEST_TIME:  # NaN fails this too
            message = f"'{param}' must be UNIX seconds before the year 10000 (0 to {LATEST_TIME:.0f})."
            raise AdminError(400, message, param)
        return float(value)
    text = str(value)
    try:
        if len(text) > 64:
            raise ValueError(text[:10])
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise AdminError(400, f"'{param}' must be an ISO 8601 time, e.g. 2027-01-31T00:00:00Z.", param) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_since(value: Any, now: float) -> float:
    """'30m', '24h', '7d' (up to 6 digits) or an ISO 8601 time -> a UNIX time."""
    match = _SINCE.fullmatch(str(value))
    if match:
        return now - int(match.group(1)) * _UNITS[match.group(2)]
    try:
        parsed = parse_time(value, "since")
    except AdminError:
        raise AdminError(
            400, "'since' must be a duration such as 30m, 24h or 7d (at most 6 digits), or an ISO 8601 time.", "since"
        ) from None
    return parsed if parsed is not None else now - 86400


def _key_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise AdminError(400, "'name' must be 1-64 characters.", "name")
    if any(not c.isprintable() for c in name):
        raise AdminError(400, "'name' may not contain control characters.", "name")
    return name.strip()
