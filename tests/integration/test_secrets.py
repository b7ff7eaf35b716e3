"""No secret ever leaks: a run full of faults, then every log line, body and header is searched."""

from __future__ import annotations

import json

import pytest
import requests

from tests.integration.conftest import MASTER_KEY, mock_stats, start_gateway, upstream_toml

pytestmark = pytest.mark.integration
TOKENS = [
    "revoked-secret-token-01",
    "expired-secret-token-02",
    "limited-secret-token-03",
    "broken-secret-token-04",
    "errorfirst-secret-tok-05",
    "good-secret-token-000006",
]
WRONG_KEY = "sk-sluice-not-a-real-key-000000000000"


def test_no_token_or_key_appears_in_logs_bodies_or_headers(tmp_path, mock, reset):
    config = "[gateway]\nmax_attempts = 6\nheartbeat_interval = 0.5\n" + upstream_toml("main", mock.url, TOKENS, ["*"])
    gateway = start_gateway(tmp_path, config, SLUICE_SECRET_KEY="k" * 40, SLUICE_TRUSTED_PROXIES="0")
    seen: list[str] = []
    try:
        admin = {"Authorization": f"Bearer {MASTER_KEY}", "Connection": "close"}
        created = requests.post(f"{gateway.url}/admin/api/keys", json={"name": "team"}, headers=admin).json()
        managed = created["key"]
        runtime = "runtime-secret-token-07"
        added = requests.post(
            f"{gateway.url}/admin/api/tokens", json={"upstream": "main", "token": runtime}, headers=admin
        )
        seen.append(added.text)
        for key in (MASTER_KEY, managed, WRONG_KEY, ""):
            headers = {"Authorization": f"Bearer {key}", "Cookie": "client-session=c00kie", "Connection": "close",
                       "X-Forwarded-For": "203.0.113.50"}  # fmt: skip
            for body in (
                {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]},
                {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], "stream": True},
                {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], "stream": True,
                 "mock": {"drop_after": 2}},
                {"model": 7},
            ):  # fmt: skip
                resp = requests.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
                seen.append(resp.text + json.dumps(dict(resp.headers)))
                assert "Set-Cookie" not in resp.headers
            for path in ("/v1/models", "/readyz", "/healthz", "/v1/nope"):
                resp = requests.get(f"{gateway.url}{path}", headers=headers, timeout=30)
                seen.append(resp.text + json.dumps(dict(resp.headers)))
        for path in ("/admin/api/keys", "/admin/api/tokens", "/admin/api/usage", "/admin/api/upstreams"):
            seen.append(requests.get(f"{gateway.url}{path}", headers=admin, timeout=30).text)
        seen.append(gateway.cli("tokens", "list").stdout + gateway.cli("keys", "list", "--json").stdout)
    finally:
        gateway.stop()
    everything = gateway.log() + "".join(seen)
    for secret in (*TOKENS, runtime, MASTER_KEY, managed, WRONG_KEY):
        assert secret not in everything, f"a secret ending in {secret[-4:]} leaked"
    assert "reason=http_403" in everything and "reason=http_429" in everything  # the faults did happen
    assert "client=127.0.0.1 " in everything and "203.0.113.50" not in everything  # no trusted proxy hops
    upstream_saw = mock_stats(mock)["recent"]
    for request in upstream_saw:
        assert "Cookie" not in request["headers"]
        assert request["headers"]["Authorization"].removeprefix("Bearer ") in (*TOKENS, runtime)
