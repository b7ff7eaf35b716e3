"""The deployment files, checked without a Docker engine (none runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from app.config import load_settings

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
    assert seconds(sluice["stop_grace_period"]) > grace
    assert seconds(COMPOSE["services"]["nginx"]["stop_grace_period"]) > grace


def test_nginx_service_rewrites_the_shipped_config():
    command = " ".join(COMPOSE["services"]["nginx"]["command"])
    config = (ROOT / "deploy" / "nginx.conf").read_text()
    for original in ("server 127.0.0.1:8000;", "listen 8080;"):
        assert original in config and original in command


def test_dockerfile_is_slim_non_root_with_healthcheck():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert re.search(r"^USER sluice$", dockerfile, re.M)
    assert "SLUICE_BIND=0.0.0.0:8000" in dockerfile and "HEALTHCHECK" in dockerfile and 'VOLUME ["/data"]' in dockerfile
    assert 'ENTRYPOINT ["./deploy/entrypoint.sh"]' in dockerfile


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
