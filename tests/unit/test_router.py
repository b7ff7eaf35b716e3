"""The /v1/models catalogue: cached, refreshed one at a time, stale rather than empty on failure."""

from __future__ import annotations

import responses

from app.config import UpstreamConfig
from tests.conftest import BASE, TOKENS, make_config


def test_a_failed_refresh_keeps_serving_the_last_list(make_app, upstream):
    app = make_app(make_config(UpstreamConfig(name="p", base_url=BASE, tokens=TOKENS, models=("gpt-*",))))
    catalog = app.extensions["sluice"].catalog
    now = [1000.0]
    catalog.clock = lambda: now[0]
    upstream.add(responses.GET, f"{BASE}/models", json={"data": [{"id": "gpt-4o"}]})
    assert [m["id"] for m in catalog.models("r1")] == ["gpt-4o"]
    upstream.replace(responses.GET, f"{BASE}/models", status=503)
    now[0] += catalog.ttl + 1
    assert [m["id"] for m in catalog.models("r2")] == ["gpt-4o"]  # stale, not empty
    fetches = [c for c in upstream.calls if c.request.url.endswith("/models")]
    assert len(fetches) == 2  # one attempt per refresh, not max_attempts
    assert [m["id"] for m in catalog.models("r3")] == ["gpt-4o"]
    assert len([c for c in upstream.calls if c.request.url.endswith("/models")]) == 2  # failure cached too
