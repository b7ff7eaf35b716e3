"""Metric labels never carry client-chosen strings: /metrics stays small and always renders."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from app.config import UpstreamConfig
from app.requestlog import RequestLine
from app.services import metrics
from app.services.accounting import observe
from tests.conftest import BASE, MASTER_KEY, TOKENS, make_config

AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}


def model_labels(client) -> set[str]:
    resp = client.get("/metrics", headers=AUTH)
    assert resp.status_code == 200
    return set(re.findall(r'^sluice_requests_total\{[^}]*model="([^"]*)"', resp.get_data(as_text=True), re.M))


def chat_raw(client, model_json: str):
    """A chat request whose model is given as raw JSON text (so "\\ud800" reaches the server as is)."""
    body = '{"model": ' + model_json + ', "messages": [{"role": "user", "content": "hi"}]}'
    return client.post("/v1/chat/completions", data=body, headers={**AUTH, "Content-Type": "application/json"})


@pytest.fixture
def gpt_only(make_app):
    """A gateway that routes gpt-* only: anything else is an unknown model."""
    upstream = UpstreamConfig(name="primary", base_url=BASE, tokens=TOKENS, models=("gpt-*",))
    return make_app(make_config(upstream)).test_client()


def test_a_thousand_bogus_model_names_add_one_label(gpt_only):
    assert chat_raw(gpt_only, '"\\ud800"').status_code in (400, 404)  # 400 once bodies are checked
    assert chat_raw(gpt_only, '"bogus-first"').status_code == 404
    gpt_only.get("/metrics", headers=AUTH)  # the series of these requests (and of /metrics) exist from here on
    before = len(gpt_only.get("/metrics", headers=AUTH).get_data())
    for index in range(1000):
        assert chat_raw(gpt_only, f'"bogus-{index}"').status_code == 404
    labels = model_labels(gpt_only)
    assert metrics.UNROUTED in labels and not any(label.startswith("bogus-") for label in labels)
    assert len(gpt_only.get("/metrics", headers=AUTH).get_data()) - before < 200  # only the counts grew


def test_routed_model_names_are_capped_and_a_lone_surrogate_never_breaks_metrics(client, upstream, monkeypatch):
    """`*` routes every name to the upstream: those labels are bounded by MAX_MODELS per process."""
    monkeypatch.setattr(metrics, "_models", set())  # as in a fresh worker: the cap is not reached yet
    upstream.add("POST", f"{BASE}/chat/completions", status=404, json={"error": {"message": "no such model"}})
    chat_raw(client, '"\\ud800"')
    model_labels(client)  # answers 200
    for index in range(metrics.MAX_MODELS + 50):
        chat_raw(client, f'"routed-{index}"')
    labels = model_labels(client)  # the registry is the process's: other tests' models are there too
    routed = {label for label in labels if label.startswith("routed-")}
    assert len(routed) <= metrics.MAX_MODELS and "routed-0" in routed
    assert "other" in labels and f"routed-{metrics.MAX_MODELS + 49}" not in labels


def test_a_routed_lone_surrogate_model_still_renders(client, monkeypatch):
    """Below the request parser (which may refuse such a body): the label itself stays encodable."""
    monkeypatch.setattr(metrics, "_models", set())
    line = RequestLine(request_id="r", method="POST", path="/v1/chat/completions", route="/v1/chat/completions",
                       model="\ud800", attempts=[SimpleNamespace(upstream="primary")], status=404)  # fmt: skip
    observe(line)
    assert "\ud800" not in model_labels(client)  # answers 200


def test_model_label():
    assert metrics.model_label("anything", routed=False) == metrics.UNROUTED
    assert metrics.model_label("\ud800", routed=True) == "other"
    assert metrics.model_label("x" * 101, routed=True) == "other"
