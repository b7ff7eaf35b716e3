"""Two Sluice instances on one PostgreSQL: a change made through one reaches the other's caches at once
(app/storage/notify.py), not after the caches' MAX_AGE."""

from __future__ import annotations

import hashlib
import time

import pytest
import requests

from tests.integration.conftest import MASTER_KEY, mock_stats, start_gateway, upstream_toml
from tests.services import postgres_url, reset_postgres

pytestmark = pytest.mark.integration
CLOSE = {"Connection": "close"}  # a new connection per request: spread over both workers
TOKENS = ["first-token-000000000001", "second-token-00000000002"]
SETTLE = 0.2  # seconds between the change and the request that must see it (MAX_AGE is 1 s)


def admin(gateway, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {MASTER_KEY}", **CLOSE}
    return requests.request(method, f"{gateway.url}/admin/api{path}", headers=headers, timeout=20, **kwargs)


def chat(gateway, key: str) -> requests.Response:
    body = {"model": "mock-gpt", "messages": [{"role": "user", "content": "Hello"}]}
    headers = {"Authorization": f"Bearer {key}", **CLOSE}
    return requests.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30)


@pytest.fixture
def instances(tmp_path, mock):
    """Instances A and B (2 workers each, data directories of their own) sharing one PostgreSQL."""
    url = postgres_url()
    reset_postgres(url)
    config = upstream_toml("main", mock.url, TOKENS, ["*"])
    started = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            started.append(start_gateway(tmp_path / name, config, workers=2, SLUICE_DATABASE_URL=url))
        yield started
    finally:
        for server in started:
            server.stop()


def test_a_key_revoked_on_one_instance_is_refused_by_the_other_at_once(instances):
    a, b = instances
    created = admin(a, "POST", "/keys", json={"name": "shared"}).json()
    for _ in range(8):  # both of B's workers have read (and cached) the key
        assert chat(b, created["key"]).status_code == 200
    assert admin(a, "DELETE", f"/keys/{created['id']}").json()["state"] == "revoked"
    time.sleep(SETTLE)
    answers = [chat(b, created["key"]) for _ in range(6)]
    assert {(r.status_code, r.json()["error"]["code"]) for r in answers} == {(401, "invalid_api_key")}


def test_a_token_disabled_on_one_instance_is_not_used_by_the_other(instances, mock):
    a, b = instances
    for _ in range(8):  # B's workers have both tokens' states cached
        assert chat(b, MASTER_KEY).status_code == 200
    first = f"main:{hashlib.sha256(TOKENS[0].encode()).hexdigest()[:12]}"
    assert admin(a, "PATCH", f"/tokens/{first}", json={"enabled": False}).json()["state"] == "disabled"
    time.sleep(SETTLE)
    before = mock_stats(mock)["requests"]
    for _ in range(6):
        assert chat(b, MASTER_KEY).status_code == 200
    stats = mock_stats(mock)
    used = [r["headers"]["Authorization"] for r in stats["recent"][-(stats["requests"] - before) :]]
    assert used == [f"Bearer {TOKENS[1]}"] * 6
