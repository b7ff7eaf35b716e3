"""The deployment files, checked without a Docker engine (none runs here)."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from app.config import load_settings
from tests.services import program

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())


def seconds(value: str) -> int:
    match = re.fullmatch(r"(\d+)s", value)
    assert match, value
    return int(match.group(1))


def test_compose_has_the_stack_and_waits_for_health():
    services = COMPOSE["services"]
    assert set(services) == {"nginx", "sluice", "postgres", "redis"}
    for name in ("sluice", "postgres", "redis"):
        assert "healthcheck" in services[name]
    assert services["sluice"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    assert services["nginx"]["depends_on"] == {"sluice": {"condition": "service_healthy"}}


def test_sluice_environment_is_valid_and_stops_gracefully():
    sluice = COMPOSE["services"]["sluice"]
    # "${VAR:-}" is empty when unset (the dashboard stays off); "${VAR:?...}" must be set: 40 characters
    unset = {k: re.sub(r"\$\{[A-Z_]+:-\}", "", str(v)) for k, v in sluice["environment"].items()}
    env = {k: re.sub(r"\$\{[^}]+\}", "x" * 40, v) for k, v in unset.items()}
    settings = load_settings(env)  # raises ConfigError on any bad value
    assert settings.workers == 4 and settings.trusted_proxies == 1
    assert settings.database_url.startswith("postgresql+psycopg://") and settings.redis_url == "redis://redis:6379/0"
    grace = int(env["SLUICE_GRACE_SECONDS"])
    assert seconds(sluice["stop_grace_period"]) >= grace + EXIT_MARGIN
    assert seconds(COMPOSE["services"]["nginx"]["stop_grace_period"]) > grace


def test_compose_redis_persists_rate_limit_windows():
    """Append-only, in a named volume: a Redis restart keeps every key's window (issue #10, item 11)."""
    redis = COMPOSE["services"]["redis"]
    args = redis["command"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in redis["volumes"] and "redis-data" in COMPOSE["volumes"]


@pytest.mark.integration
def test_compose_redis_command_keeps_a_window_across_a_restart(tmp_path):
    """The compose file's own redis-server arguments, run for real: a key with a TTL outlives a restart."""
    import redis

    binary = program("Redis", "redis-server", "redis-server")
    args = COMPOSE["services"]["redis"]["command"][1:]
    port = free_port()
    client = redis.Redis(port=port, socket_timeout=5)
    with _redis_server(binary, args, port, tmp_path):
        client.set("sluice:rl:key-1:window", 40, ex=60)
    with _redis_server(binary, args, port, tmp_path):
        assert client.get("sluice:rl:key-1:window") == b"40"
        assert 0 < client.ttl("sluice:rl:key-1:window") <= 60
    client.close()


def test_nginx_service_rewrites_the_shipped_config():
    command = " ".join(COMPOSE["services"]["nginx"]["command"])
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    for original in ("server 127.0.0.1:8000;", "listen 8080;"):
        assert original in config and original in command


DOCKERFILE = (ROOT / "Dockerfile").read_text()
DOCKER_STOP_TIMEOUT = 10  # `docker stop` sends SIGKILL after this many seconds unless told otherwise
# After the grace period gunicorn's master still stops its workers and exits: leave it this long.
EXIT_MARGIN = 2


def test_dockerfile_is_slim_non_root_with_healthcheck():
    assert DOCKERFILE.startswith("#")
    assert re.search(r"^USER sluice$", DOCKERFILE, re.M)
    assert "SLUICE_BIND=0.0.0.0:8000" in DOCKERFILE and "HEALTHCHECK" in DOCKERFILE and 'VOLUME ["/data"]' in DOCKERFILE
    assert 'ENTRYPOINT ["./deploy/entrypoint.sh"]' in DOCKERFILE


def test_dockerfile_base_is_pinned_by_digest_and_replaceable():
    """A rebuild gets the same base; BASE_IMAGE lets the image test build without a registry."""
    pin = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE, re.M)
    assert pin, "the base image is a build argument"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", pin.group(1)), pin.group(1)
    assert re.findall(r"^FROM .*$", DOCKERFILE, re.M) == ["FROM ${BASE_IMAGE}"]


def test_dockerfile_user_and_group_have_the_fixed_ids():
    """gid 10001 too (a --system group got 999), so a bind-mounted /data can be chowned 10001:10001."""
    assert re.search(r"groupadd [^\n]*--gid 10001 sluice", DOCKERFILE)
    assert re.search(r"useradd [^\n]*--uid 10001 --gid 10001 [^\n]*sluice", DOCKERFILE)


def image_grace() -> int:
    match = re.search(r"\bSLUICE_GRACE_SECONDS=(\d+)\b", DOCKERFILE)
    assert match, "the image sets SLUICE_GRACE_SECONDS (gunicorn's default, 30, outlasts docker stop)"
    return int(match.group(1))


def test_image_grace_fits_inside_docker_stop():
    """A plain `docker stop` (10 s) must not SIGKILL running streams before they end with an error event."""
    assert image_grace() + EXIT_MARGIN <= DOCKER_STOP_TIMEOUT


def readme_docker_runs() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n### Docker\n", 1)[1].split("\n## ", 1)[0]
    commands = re.sub(r"\\\n\s*", " ", section)  # join continued lines
    return [line for line in commands.splitlines() if line.lstrip().startswith("docker run")]


def test_readme_docker_runs_stop_within_their_grace():
    runs = readme_docker_runs()
    assert len(runs) >= 2 and any("--stop-timeout" in run for run in runs), runs
    for run in runs:
        grace = re.search(r"SLUICE_GRACE_SECONDS=(\d+)", run)
        stop = re.search(r"--stop-timeout[ =](\d+)", run)
        grace_seconds = int(grace.group(1)) if grace else image_grace()
        stop_seconds = int(stop.group(1)) if stop else DOCKER_STOP_TIMEOUT
        assert grace_seconds + EXIT_MARGIN <= stop_seconds, run


def test_grafana_dashboard_uses_only_metrics_sluice_exports():
    import json

    from app.services import metrics

    exported = {m._name for m in vars(metrics).values() if hasattr(m, "_name") and hasattr(m, "_type")}
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {
        name for expr in exprs for name in re.findall(r"\b(sluice_[a-z_]+?)(?:_total|_bucket|_count|_sum)?\b", expr)
    }
    assert used and used <= exported, used - exported
    assert {"sluice_requests", "sluice_active_streams", "sluice_time_to_first_byte_seconds"} <= used


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _redis_server(binary: str, args: list[str], port: int, data: Path) -> Iterator[None]:
    """redis-server with `args` in `data` on 127.0.0.1:`port`; stopped with SIGTERM, as `docker stop` does."""
    cmd = [binary, *args, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _answers(port):
            assert process.poll() is None and time.monotonic() < deadline, f"{cmd} did not start"
            time.sleep(0.05)
        yield
    finally:
        process.terminate()
        process.wait(timeout=10)


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# deploy/docker-compose.scale.yml and deploy/nginx-multi.conf: several instances (docs/scaleout.md)
SCALE = yaml.safe_load((ROOT / "deploy" / "docker-compose.scale.yml").read_text())
MULTI = (ROOT / "deploy" / "nginx-multi.conf").read_text()
REPLICAS = ["sluice-1", "sluice-2"]
SECRETS = ("SLUICE_MASTER_KEY", "SLUICE_SECRET_KEY", "SLUICE_ADMIN_PASSWORD_HASH")


def _directives(config: str) -> list[str]:
    """The config's directive lines, comments and blank lines dropped."""
    lines = (line.split("#", 1)[0].strip() for line in config.splitlines())
    return [line for line in lines if line]


def test_scale_compose_has_two_replicas_behind_nginx_that_waits_for_both():
    services = SCALE["services"]
    assert set(services) == {"nginx", *REPLICAS, "postgres", "redis"}
    assert services["nginx"]["depends_on"] == {name: {"condition": "service_healthy"} for name in REPLICAS}
    assert services["nginx"]["volumes"] == ["./nginx-multi.conf:/etc/nginx/nginx.conf:ro"]
    assert re.findall(r"^\s*server (\S+):8000 ", MULTI, re.M) == REPLICAS  # nginx names exactly the replicas
    for name in REPLICAS:
        assert services[name]["depends_on"] == COMPOSE["services"]["sluice"]["depends_on"]
        assert services[name]["build"] == COMPOSE["services"]["sluice"]["build"] and "healthcheck" in services[name]


def test_scale_replicas_share_secrets_database_redis_and_config_but_not_their_instance():
    one, two = (SCALE["services"][name] for name in REPLICAS)
    env_one, env_two = dict(one["environment"]), dict(two["environment"])
    assert env_one.pop("SLUICE_INSTANCE_ID") != env_two.pop("SLUICE_INSTANCE_ID")  # slots: never shared
    assert env_one == env_two
    for name in (*SECRETS, "SLUICE_DATABASE_URL"):  # from the environment, never committed here
        assert re.search(r"\$\{[A-Z_]+:[?-][^}]*\}", env_one[name]), name
    assert env_one["SLUICE_DATABASE_URL"].startswith("postgresql+psycopg://") and env_one["SLUICE_REDIS_URL"]
    config_one, config_two = (next(v for v in s["volumes"] if v.endswith(":ro")) for s in (one, two))
    assert config_one == config_two == "../sluice.toml:/etc/sluice/sluice.toml:ro"
    data = [next(v for v in s["volumes"] if v.endswith(":/data")) for s in (one, two)]
    assert data[0] != data[1] and {v.split(":")[0] for v in data} <= set(SCALE["volumes"])


def test_scale_replica_environment_is_valid_and_stops_gracefully():
    replica = SCALE["services"]["sluice-1"]
    unset = {k: re.sub(r"\$\{[A-Z_]+:-\}", "", str(v)) for k, v in replica["environment"].items()}
    settings = load_settings({k: re.sub(r"\$\{[^}]+\}", "x" * 40, v) for k, v in unset.items()})
    assert settings.workers == 2 and settings.trusted_proxies == 1
    grace = int(replica["environment"]["SLUICE_GRACE_SECONDS"])
    assert seconds(replica["stop_grace_period"]) >= grace + EXIT_MARGIN
    assert seconds(SCALE["services"]["nginx"]["stop_grace_period"]) > grace


def test_multi_nginx_retries_only_requests_that_never_reached_an_instance():
    directives = _directives(MULTI)
    retries = [d for d in directives if d.startswith("proxy_next_upstream ")]
    assert retries == ["proxy_next_upstream error timeout;"]  # no non_idempotent, no http_5xx / http_429
    assert "proxy_next_upstream_tries 2;" in directives
    upstream = MULTI.split("upstream sluice {", 1)[1].split("}", 1)[0]
    assert "keepalive 64;" in upstream and len(re.findall(r"^\s*server ", upstream, re.M)) == 2


def test_multi_nginx_keeps_every_setting_of_the_single_instance_config():
    """Streaming, body limits, timeouts, headers and error pages as in nginx.conf (no drift between the two)."""
    replaced = {"server 127.0.0.1:8000;", "proxy_connect_timeout 10s;"}  # the instances; a shorter connect
    missing = [d for d in _directives((ROOT / "deploy" / "nginx.conf").read_text()) if d not in replaced]
    missing = [d for d in missing if d not in _directives(MULTI)]
    assert missing == []
