"""Background probes on the live stack (issue 13, section 2): gunicorn with 2 workers and the mock.

Real 401s auto-disable two tokens; the one prober of the deployment brings them back within a few
seconds (the mock's model list answers every token), while a token the operator disabled stays
disabled and is never probed. Probes are logged as probes and never count as usage or against a
key's limits.
"""

from __future__ import annotations

import time

import pytest
import requests

from tests.integration import conftest as stack
from tests.integration.conftest import MASTER_KEY, mock_stats, start_mock, upstream_toml

TOKENS = ["probe-token-0000000001", "probe-token-0000000002", "probe-token-0000000003"]
CLOSE = {"Connection": "close"}
CONFIG = "[gateway]\nprobe_interval = 1.0\nauto_disable_after = 1\nmax_attempts = 3\n\n"
RPM = 5


def admin(gateway, method: str, path: str, **kwargs) -> requests.Response:
    headers = {"Authorization": f"Bearer {MASTER_KEY}", **CLOSE}
    return requests.request(method, f"{gateway.url}/admin/api{path}", headers=headers, timeout=10, **kwargs)


def tokens(gateway) -> dict[str, dict]:
    [main] = admin(gateway, "GET", "/health").json()["data"]
    return {t["masked"]: t for t in main["tokens"]}


def wait_for(check, seconds: float = 15.0):
    """`check()`'s first truthy value within `seconds` (bounded polling), else the last one."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


@pytest.fixture
def probed(tmp_path):
    mock = start_mock(tmp_path, "--delay", "0.01")
    config = CONFIG + upstream_toml("main", mock.url, TOKENS, ["*"], probe="models")
    gateway = stack.start_gateway(tmp_path, config, workers=2)
    yield gateway, mock
    gateway.stop()
    mock.stop()


def test_probes_bring_back_what_sluice_took_out_and_never_count(probed):
    gateway, mock = probed
    operator = admin(gateway, "GET", "/tokens").json()["data"][2]["id"]
    assert admin(gateway, "PATCH", f"/tokens/{operator}", json={"enabled": False}).status_code == 200
    key = admin(gateway, "POST", "/keys", json={"name": "probe-test", "rpm": RPM}).json()["key"]

    # One request answered 401 by the upstream for every token it tries: both usable tokens are auto-disabled.
    body = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], "mock": {"status": 401}}
    headers = {"Authorization": f"Bearer {key}", **CLOSE}
    failed = requests.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert failed.status_code >= 400
    assert wait_for(lambda: gateway.log().count("auto-disabled after 1 answers") >= 2, 5)

    # Within a few probe intervals both are back, by a probe; the operator's token stays out, unprobed.
    def recovered() -> dict[str, dict] | None:
        now = tokens(gateway)
        back = [now[f"...{t[-4:]}"] for t in TOKENS[:2]]
        return now if all(t["state"] == "healthy" and t["last_probe"] for t in back) else None

    states = wait_for(recovered)
    assert states, tokens(gateway)
    for value in TOKENS[:2]:
        token = states[f"...{value[-4:]}"]
        assert token["last_error"] == "HTTP 401" and token["last_probe"]["ok"] and token["disabled_by"] is None
    kept = states[f"...{TOKENS[2][-4:]}"]
    assert (kept["state"], kept["disabled_by"], kept["last_probe"]) == ("disabled", "operator", None)

    # Probes keep going (about once a second, by one process only) and are logged as probes.
    requests.post(f"{mock.url}/_mock/reset", timeout=5)
    time.sleep(3.0)
    seen = [r for r in mock_stats(mock)["recent"] if r["path"] == "/v1/models"]
    per_token = [sum(1 for r in seen if r["headers"].get("Authorization") == f"Bearer {t}") for t in TOKENS]
    assert 1 <= per_token[0] <= 5 and 1 <= per_token[1] <= 5, per_token  # two probers would double these
    assert per_token[2] == 0
    assert all(r["headers"]["X-Request-Id"].startswith("probe-") for r in seen)  # (the mock title-cases names)
    assert "probe upstream=main token=...0001" in gateway.log()
    assert TOKENS[0] not in gateway.log()

    # No usage record and no limit spent by any probe: the key's one request is all there is.
    usage = admin(gateway, "GET", "/usage", params={"by": "key"}).json()["data"]
    assert sum(row["requests"] for row in usage) == 1, usage
    ok = requests.post(f"{gateway.url}/v1/chat/completions", json={**body, "mock": {}}, headers=headers, timeout=30)
    assert ok.status_code == 200
    assert ok.headers["x-ratelimit-remaining-requests"] == str(RPM - 2)

    # The gauges, merged for every worker: the operator's token is "disabled", no breaker is open.
    scrape = requests.get(
        f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {MASTER_KEY}", **CLOSE}, timeout=10
    )
    assert f'sluice_token_state{{state="disabled",token="{operator}",upstream="main"}} 1.0' in scrape.text
    assert 'sluice_upstream_breaker_open{upstream="main"} 0.0' in scrape.text
    assert TOKENS[0] not in scrape.text
