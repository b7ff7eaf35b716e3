"""/metrics under gunicorn: every worker's samples merged (prometheus-client multiprocess mode)."""

from __future__ import annotations

import re
import threading
import time

import pytest
import requests

from tests.integration.conftest import MASTER_KEY, start_gateway, upstream_toml

pytestmark = pytest.mark.integration
METRICS_TOKEN = "metrics-token-0123456789"
CLOSE = {"Connection": "close"}


def scrape(gateway, token: str = METRICS_TOKEN) -> str:
    resp = requests.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {token}", **CLOSE}, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.text


def value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_count_every_worker_and_are_protected(tmp_path, mock):
    tokens = ["revoked-token-00000001", "good-token-000000002"]
    gateway = start_gateway(
        tmp_path, upstream_toml("main", mock.url, tokens, ["mock-gpt"]), workers=2, SLUICE_METRICS_TOKEN=METRICS_TOKEN
    )
    try:
        body = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}
        auth = {"Authorization": f"Bearer {MASTER_KEY}", **CLOSE}
        for _ in range(20):
            assert requests.post(f"{gateway.url}/v1/chat/completions", json=body, headers=auth).status_code == 200
        streaming = {**body, "stream": True, "mock": {"chunks": 30, "delay": 0.1}}
        thread = threading.Thread(
            target=lambda: requests.post(f"{gateway.url}/v1/chat/completions", json=streaming, headers=auth).content
        )
        thread.start()
        time.sleep(1)
        during = scrape(gateway)
        thread.join(timeout=30)
        after = scrape(gateway, MASTER_KEY)  # the master key works too
    finally:
        gateway.stop()
    assert value(during, "sluice_active_streams") == 1
    assert value(after, "sluice_active_streams") == 0
    assert value(after, "sluice_requests_total", route="/v1/chat/completions", status="200", model="mock-gpt") == 21
    assert value(after, "sluice_upstream_attempts_total", upstream="main", outcome="retry", reason="http_403") == 1
    assert value(after, "sluice_token_cooldowns_total", upstream="main", reason="http_403") == 1
    assert value(after, "sluice_time_to_first_byte_seconds_count", route="/v1/chat/completions") == 21
    assert re.search(r'sluice_request_duration_seconds_bucket\{.*streamed="true"', after)
    for token in tokens:
        assert token not in after


def test_metrics_refuse_other_callers(gateway):
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
        resp = requests.get(f"{gateway.url}/metrics", headers=headers, timeout=10)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
