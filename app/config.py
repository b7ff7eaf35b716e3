"""Every setting in one place: the TOML file schema and the environment variables.

The file is read and validated once at start-up; a bad value stops start-up with a
message naming the file and the key. The hot path trusts what this module returns.
"""

from __future__ import annotations

import os
import re
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config_reader import ConfigError, Reader
from app.config_routing import (
    AlertConfig,
    Hedge,
    ModelAlias,
    ProbeConfig,
    parse_alerts,
    parse_hedge,
    parse_models,
    parse_probe,
)
from app.jsontext import encodable
from app.passwords import password_hash, password_mark
from app.version import __version__

DEFAULT_USER_AGENT = f"sluice/{__version__}"
DEMO_SOURCE = "<built-in demo config>"
DEMO_MOCK_PORT = 9100
DEMO_TOKENS = ("demo-upstream-token-0001", "demo-upstream-token-0002")

# Headers an operator may not set through `headers`: they are built per request by
# services/headers.py, describe the connection, or have a dedicated key.
RESERVED_HEADERS = {
    "authorization": "the token pool sets it",
    "host": "it is derived from base_url",
    "content-length": "it is computed from the body",
    "content-type": "it is always application/json",
    "accept": "it is chosen per request type (streaming or not)",
    "accept-encoding": "it is chosen per request type (streaming or not)",
    "user-agent": "use the `user_agent` key",
    "connection": "hop-by-hop headers are managed by the HTTP client",
    "keep-alive": "hop-by-hop headers are managed by the HTTP client",
    "transfer-encoding": "hop-by-hop headers are managed by the HTTP client",
    "te": "hop-by-hop headers are managed by the HTTP client",
    "upgrade": "hop-by-hop headers are managed by the HTTP client",
    "proxy-authorization": "put proxy credentials in the `proxy` URL",
    "anthropic-version": "use the `anthropic_version` key",
}
# Always used with fullmatch: `$` would also match before a final newline ("X-Foo\n").
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
RESUME_MODES = ("none", "prefill", "continue")
_UPSTREAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class GatewayConfig:
    max_attempts: int = 3
    max_body_bytes: int = 10 * 1024 * 1024
    trust_env: bool = False
    usage_retention_days: int = 90
    usage_records: bool = True  # false: no per-request usage records (limits and budgets still apply)
    breaker_failures: int = 5  # consecutive failed attempts that open an upstream's circuit breaker
    breaker_cooldown: float = 30.0  # seconds an open breaker waits before a trial request
    queue_timeout: float = 0.0  # seconds to wait for a token when none is usable (0 = answer 503 at once)
    max_queued: int = 100  # waiting requests per worker; beyond, the answer is immediate
    heartbeat_interval: float = 10.0  # commit a waiting stream and send ": keep-alive" this often
    first_byte_timeout: float = 120.0  # per attempt: until the first data event (headers, for non-streams)
    idle_timeout: float = 120.0  # longest gap between two events of a committed stream
    deadline: float = 900.0  # the whole client request, queueing and retries included
    on_client_disconnect: str = "cancel"  # or "drain": read the upstream to its end to record usage
    body_timeout: float = 30.0  # the whole request body must arrive within this long after its headers
    probe_interval: float = 60.0  # seconds between health probes of an upstream with `probe` set (jittered)
    auto_disable_after: int = 3  # 401/403 answers in a row that take a token out until a probe passes (0: never)
    max_resumes: int = 2  # times one stream may be resumed after a mid-stream break (upstreams with `resume`)


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    base_url: str
    tokens: tuple[str, ...] = ()
    models: tuple[str, ...] = ("*",)
    user_agent: str = DEFAULT_USER_AGENT
    headers: Mapping[str, str] = field(default_factory=dict)
    proxy: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 300.0
    inject_usage: bool = True  # ask streams for a usage chunk (stream_options.include_usage)
    first_byte_timeout: float | None = None  # None: [gateway] first_byte_timeout
    idle_timeout: float | None = None  # None: [gateway] idle_timeout
    api: str = "openai"  # what the upstream speaks: "openai" (chat completions, ...) or "anthropic" (Messages)
    anthropic_version: str = "2023-06-01"  # the anthropic-version header, for api = "anthropic"
    responses: str = "translate"  # /v1/responses: "native" (passed through) or "translate" (onto chat completions)
    drop_builtin_tools: bool = False  # translating: drop built-in tools (web_search, ...) instead of a 400
    probe: ProbeConfig | None = None  # background health probe of the tokens; None: off
    hedge: Hedge | None = None  # hedge_after / max_hedges: a second attempt when the first event is late
    resume: str = "none"  # a stream broken mid-way goes on elsewhere: "none", "prefill" or "continue"


@dataclass(frozen=True)
class Config:
    gateway: GatewayConfig
    upstreams: tuple[UpstreamConfig, ...]
    source: str
    models: tuple[ModelAlias, ...] = ()  # [[models]]: aliases clients may ask for
    alerts: tuple[AlertConfig, ...] = ()  # [[alerts]]: webhooks
    loaded_at: float = 0.0  # UNIX time the file was read (shown on the dashboard)

    def alias(self, name: str) -> ModelAlias | None:
        return next((a for a in self.models if a.name == name), None)


@dataclass(frozen=True)
class Settings:
    """Process settings from the environment (SLUICE_*)."""

    config_path: str | None = None
    master_key: str | None = None
    log_level: str = "INFO"
    bind: str = "127.0.0.1:8000"
    workers: int = 1
    data_dir: str = "./data"
    trusted_proxies: int = 0
    database_url: str = "sqlite:///./data/sluice.db"
    redis_url: str | None = None
    secret_key: str | None = None
    secret_key_previous: str | None = None
    metrics_token: str | None = None
    header_timeout: int = 15  # seconds for a request line and headers, from their first byte (app/worker.py)
    admin_password_hash: str | None = field(default=None, repr=False)  # werkzeug format
    # Identifies the configured password in every worker, so sessions of an old password end.
    admin_password_mark: str | None = field(default=None, repr=False)


def admin_password(env: Mapping[str, str]) -> dict[str, str | None]:
    try:
        return {"admin_password_hash": password_hash(env), "admin_password_mark": password_mark(env)}
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def settings_or_exit() -> Settings:
    """For command-line entry points: the settings, or an exit with the one-line configuration error."""
    try:
        return load_settings()
    except ConfigError as exc:
        raise SystemExit(f"sluice: configuration error: {exc}") from None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read SLUICE_* variables; raise ConfigError naming the variable when one is invalid."""
    env = os.environ if env is None else env
    for name, value in env.items():
        if name.startswith("SLUICE_") and not encodable(value):
            raise ConfigError(f"{name}: is not valid UTF-8")
    log_level = env.get("SLUICE_LOG_LEVEL", "").upper() or (
        "DEBUG" if env.get("SLUICE_DEBUG", "") in ("1", "true", "yes") else "INFO"
    )
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"SLUICE_LOG_LEVEL: {log_level!r} is not DEBUG, INFO, WARNING or ERROR")
    data_dir = env.get("SLUICE_DATA_DIR") or "./data"
    return Settings(
        config_path=env.get("SLUICE_CONFIG") or None,
        master_key=_master_key(env),
        log_level=log_level,
        bind=env.get("SLUICE_BIND") or "127.0.0.1:8000",
        workers=_env_int(env, "SLUICE_WORKERS", 1, minimum=1),
        data_dir=data_dir,
        trusted_proxies=_env_int(env, "SLUICE_TRUSTED_PROXIES", 0, minimum=0),
        database_url=_database_url(env, data_dir),
        redis_url=_redis_url(env),
        secret_key=_secret(env, "SLUICE_SECRET_KEY"),
        secret_key_previous=_secret(env, "SLUICE_SECRET_KEY_PREVIOUS"),
        metrics_token=_metrics_token(env),
        header_timeout=_env_int(env, "SLUICE_HEADER_TIMEOUT", 15, minimum=1),
        **admin_password(env),
    )


def _metrics_token(env: Mapping[str, str]) -> str | None:
    token = env.get("SLUICE_METRICS_TOKEN") or None
    if token is not None and len(token) < 16:
        raise ConfigError("SLUICE_METRICS_TOKEN: must be at least 16 characters")
    return token


def _database_url(env: Mapping[str, str], data_dir: str) -> str:
    url = env.get("SLUICE_DATABASE_URL") or f"sqlite:///{data_dir}/sluice.db"
    if not url.startswith(("sqlite://", "postgresql+psycopg://", "postgresql://")):
        raise ConfigError("SLUICE_DATABASE_URL: use sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST/DB")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


def _redis_url(env: Mapping[str, str]) -> str | None:
    url = env.get("SLUICE_REDIS_URL") or None
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("SLUICE_REDIS_URL: use redis://HOST:PORT/DB, rediss://... or unix://PATH")
    return url


def _secret(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name) or None
    if value is not None and len(value) < 32:
        raise ConfigError(f"{name}: must be at least 32 characters")
    return value


def _master_key(env: Mapping[str, str]) -> str | None:
    key = env.get("SLUICE_MASTER_KEY", "")
    path = env.get("SLUICE_MASTER_KEY_FILE", "")
    if not key and path:
        try:
            key = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"SLUICE_MASTER_KEY_FILE: cannot read {path}: {exc.strerror}") from None
    if key and len(key) < 16:
        raise ConfigError("SLUICE_MASTER_KEY: must be at least 16 characters")
    return key or None


def _env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not a whole number") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}")
    return value


# The text of the config file gunicorn's master last accepted (at start-up, then at each valid SIGHUP):
# a worker it forks later (a crash, a recycled worker) starts on that, not on whatever the file holds
# now, which may be an edit refused by a reload, or one not reloaded yet (gunicorn.conf.py).
ACCEPTED_CONFIG = "SLUICE_ACCEPTED_CONFIG"


def load_config(path: str | None, env: Mapping[str, str] | None = None, *, accepted: bool = False) -> Config:
    """Load the config file at `path`, else ./sluice.toml if present, else the demo config.
    `accepted`: the text the master accepted last, when there is one, instead of the file's."""
    env = os.environ if env is None else env
    path = _config_path(path)
    if path is None:
        return demo_config(_env_int(env, "SLUICE_DEMO_MOCK_PORT", DEMO_MOCK_PORT, minimum=1))
    text = env.get(ACCEPTED_CONFIG) if accepted else None
    return _parse_text(path, text if text is not None else _read(path), env)


def accept_config(path: str | None, env: dict[str, str] | None = None) -> Config:
    """Validate the config file and, when valid, remember its text in `env` (os.environ: the master's,
    inherited by every worker it forks from now on). Raises ConfigError, remembering nothing."""
    env = os.environ if env is None else env
    path = _config_path(path)
    if path is None:
        return load_config(None, env)
    text = _read(path)
    config = _parse_text(path, text, env)
    env[ACCEPTED_CONFIG] = text
    return config


def _config_path(path: str | None) -> str | None:
    if path is None and Path("sluice.toml").is_file():
        return "sluice.toml"
    return path


def _read(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (set by SLUICE_CONFIG)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8") from None


def _parse_text(path: str, text: str, env: Mapping[str, str]) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_config(data, source=path, env=env)


def demo_config(port: int = DEMO_MOCK_PORT) -> Config:
    """The built-in config: one upstream, the bundled mock on 127.0.0.1:<port> (9100)."""
    mock = UpstreamConfig(name="mock", base_url=f"http://127.0.0.1:{port}/v1", tokens=DEMO_TOKENS)
    return Config(gateway=GatewayConfig(), upstreams=(mock,), source=DEMO_SOURCE, loaded_at=time.time())


def parse_config(data: Mapping[str, Any], *, source: str, env: Mapping[str, str]) -> Config:
    """Validate a parsed TOML document; raise ConfigError naming `source` and the key."""
    reader = Reader(source)
    reader.no_unknown(data, "", {"gateway", "upstreams", "models", "alerts"})
    gateway = _parse_gateway(reader, data.get("gateway", {}))
    raw_upstreams = data.get("upstreams")
    if not isinstance(raw_upstreams, list) or not raw_upstreams:
        raise reader.error("upstreams", "at least one [[upstreams]] table is required")
    upstreams = tuple(_parse_upstream(reader, item, f"upstreams[{i}]", env) for i, item in enumerate(raw_upstreams))
    names = [u.name for u in upstreams]
    for name in names:
        if names.count(name) > 1:
            raise reader.error("upstreams", f"name {name!r} is used more than once")
    models = parse_models(reader, data.get("models"), upstreams)
    alerts = parse_alerts(reader, data.get("alerts"))
    return Config(gateway, upstreams, source, models, alerts, loaded_at=time.time())


def _parse_gateway(reader: Reader, raw: Any) -> GatewayConfig:
    if not isinstance(raw, dict):
        raise reader.error("gateway", "must be a table")
    reader.no_unknown(raw, "gateway", set(GatewayConfig.__dataclass_fields__))
    return GatewayConfig(
        max_attempts=reader.integer(raw, "gateway", "max_attempts", 3, minimum=1, maximum=20),
        max_body_bytes=reader.integer(raw, "gateway", "max_body_bytes", 10 * 1024 * 1024, minimum=1024),
        trust_env=reader.boolean(raw, "gateway", "trust_env", False),
        usage_retention_days=reader.integer(raw, "gateway", "usage_retention_days", 90, minimum=1),
        usage_records=reader.boolean(raw, "gateway", "usage_records", True),
        breaker_failures=reader.integer(raw, "gateway", "breaker_failures", 5, minimum=1),
        breaker_cooldown=reader.number(raw, "gateway", "breaker_cooldown", 30.0),
        queue_timeout=reader.number(raw, "gateway", "queue_timeout", 0.0, allow_zero=True),
        max_queued=reader.integer(raw, "gateway", "max_queued", 100, minimum=0),
        heartbeat_interval=reader.number(raw, "gateway", "heartbeat_interval", 10.0),
        first_byte_timeout=reader.number(raw, "gateway", "first_byte_timeout", 120.0),
        idle_timeout=reader.number(raw, "gateway", "idle_timeout", 120.0),
        deadline=reader.number(raw, "gateway", "deadline", 900.0),
        on_client_disconnect=reader.choice(raw, "gateway", "on_client_disconnect", "cancel", ("cancel", "drain")),
        body_timeout=reader.number(raw, "gateway", "body_timeout", 30.0),
        probe_interval=reader.number(raw, "gateway", "probe_interval", 60.0),
        auto_disable_after=reader.integer(raw, "gateway", "auto_disable_after", 3, minimum=0),
        max_resumes=reader.integer(raw, "gateway", "max_resumes", 2, minimum=0, maximum=10),
    )


_UPSTREAM_KEYS = {
    "name", "base_url", "tokens", "tokens_env", "models", "user_agent",
    "headers", "proxy", "connect_timeout", "read_timeout", "inject_usage", "first_byte_timeout", "idle_timeout",
    "responses", "drop_builtin_tools", "api", "anthropic_version", "probe", "hedge_after", "max_hedges", "resume",
}  # fmt: skip


def _parse_upstream(reader: Reader, raw: Any, where: str, env: Mapping[str, str]) -> UpstreamConfig:
    if not isinstance(raw, dict):
        raise reader.error(where, "must be a table")
    reader.no_unknown(raw, where, _UPSTREAM_KEYS)
    name = reader.string(raw, where, "name", required=True)
    if not _UPSTREAM_NAME.fullmatch(name):
        raise reader.error(f"{where}.name", "use 1-64 of letters, digits, '_', '.', '-'")
    base_url = reader.url(raw, where, "base_url", required=True, schemes=("http", "https"))
    proxy = reader.url(raw, where, "proxy", required=False, schemes=("http", "https"))
    user_agent = reader.string(raw, where, "user_agent") or DEFAULT_USER_AGENT
    reader.header_value(f"{where}.user_agent", user_agent)
    return UpstreamConfig(
        name=name,
        base_url=base_url.rstrip("/"),
        tokens=_parse_tokens(reader, raw, where, env),
        models=tuple(reader.string_list(raw, where, "models", ["*"], non_empty=True)),
        user_agent=user_agent,
        headers=_parse_headers(reader, raw.get("headers", {}), f"{where}.headers"),
        proxy=proxy,
        connect_timeout=reader.number(raw, where, "connect_timeout", 5.0),
        read_timeout=reader.number(raw, where, "read_timeout", 300.0),
        inject_usage=reader.boolean(raw, where, "inject_usage", True),
        first_byte_timeout=reader.number(raw, where, "first_byte_timeout", 0.0, allow_zero=True) or None,
        idle_timeout=reader.number(raw, where, "idle_timeout", 0.0, allow_zero=True) or None,
        api=reader.choice(raw, where, "api", "openai", ("openai", "anthropic")),
        anthropic_version=_anthropic_version(reader, raw, where),
        responses=reader.choice(raw, where, "responses", "translate", ("native", "translate")),
        drop_builtin_tools=reader.boolean(raw, where, "drop_builtin_tools", False),
        probe=parse_probe(reader, raw, where),
        hedge=parse_hedge(reader, raw, where),
        resume=reader.choice(raw, where, "resume", "none", RESUME_MODES),
    )


def _anthropic_version(reader: Reader, raw: dict, where: str) -> str:
    version = reader.string(raw, where, "anthropic_version") or "2023-06-01"
    reader.header_value(f"{where}.anthropic_version", version)
    return version


def _parse_tokens(reader: Reader, raw: dict, where: str, env: Mapping[str, str]) -> tuple[str, ...]:
    if "tokens" in raw and "tokens_env" in raw:
        raise reader.error(f"{where}.tokens_env", "set either tokens or tokens_env, not both")
    if "tokens_env" in raw:
        var = reader.string(raw, where, "tokens_env", required=True)
        if var not in env:
            raise reader.error(f"{where}.tokens_env", f"environment variable {var} is not set")
        tokens = [t.strip() for t in env[var].split(",") if t.strip()]
    else:
        tokens = reader.string_list(raw, where, "tokens", [])
    for i, token in enumerate(tokens):
        if not token or any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in token):
            # The token itself is never echoed: only its position.
            raise reader.error(f"{where}.tokens[{i}]", "must be non-empty printable ASCII without spaces")
    if len(set(tokens)) != len(tokens):
        raise reader.error(f"{where}.tokens", "the same token is listed twice")
    return tuple(tokens)


def validate_overrides(upstream: str, user_agent: Any, headers: Any) -> tuple[str | None, dict[str, str] | None]:
    """Check run-time overrides of an upstream with the config file's rules (ConfigError if bad)."""
    reader = Reader(f"upstream {upstream}")
    if user_agent is not None:
        if not isinstance(user_agent, str) or not user_agent:
            raise reader.error("user_agent", "must be a non-empty string")
        reader.header_value("user_agent", user_agent)
    return user_agent, None if headers is None else _parse_headers(reader, headers, "headers")


def _parse_headers(reader: Reader, raw: Any, where: str) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise reader.error(where, "must be a table of header names to string values")
    headers: dict[str, str] = {}
    for name, value in raw.items():
        if not _HEADER_NAME.fullmatch(name):
            raise reader.error(f"{where}.{name}", "is not a valid HTTP header name")
        if name.lower() in RESERVED_HEADERS:
            raise reader.error(f"{where}.{name}", f"may not be set here: {RESERVED_HEADERS[name.lower()]}")
        if not isinstance(value, str):
            raise reader.error(f"{where}.{name}", "must be a string")
        reader.header_value(f"{where}.{name}", value)
        headers[name] = value
    return headers
