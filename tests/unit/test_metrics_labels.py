"""Metric labels never carry client-chosen strings: /metrics stays small and always renders.
The model label is a configured id or the configured glob that matched (issue #10 item 1c)."""

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


@pytest.fixture(autouse=True)
def configured(monkeypatch):
    """Each test configures the labels afresh; other tests' configs are put back after it."""
    monkeypatch.setattr(metrics, "_configured", {})


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


def _served_by(make_app, upstream, *models: str):
    """A gateway whose only upstream lists `models` and answers every chat with a 404, and whose
    model labels are configured as build_gateway configures them."""
    config = make_config(UpstreamConfig(name="primary", base_url=BASE, tokens=TOKENS, models=models))
    client = make_app(config).test_client()
    metrics.configure(config.upstreams)
    upstream.add("POST", f"{BASE}/chat/completions", status=404, json={"error": {"message": "no such model"}})
    return client


def _labels_of(client, prefix: str) -> set[str]:
    return {label for label in model_labels(client) if label.startswith(prefix)}


def test_a_thousand_junk_names_routed_by_star_add_one_label(make_app, upstream):
    """Finding 5: `*` routes any name; the label is the glob, so no client string reaches a label."""
    client = _served_by(make_app, upstream, "*")
    for index in range(1000):
        assert chat_raw(client, f'"junk-{index}-<script>"').status_code == 404
    assert chat_raw(client, '"\\ud800"').status_code in (400, 404)
    labels = model_labels(client)  # answers 200
    assert "*" in labels and not any("junk-" in label for label in labels)
    assert len(upstream.calls) >= 1000  # they were routed, not refused before the upstream


def test_a_literal_model_keeps_its_name_and_a_glob_match_is_labelled_by_the_glob(make_app, upstream):
    client = _served_by(make_app, upstream, "gpt-4o-mini-literal", "gpt-4*", "*")
    for model in ("gpt-4o-mini-literal", "gpt-4-turbo-xyz", "gpt-4.1-abc", "claude-xyz"):
        assert chat_raw(client, f'"{model}"').status_code == 404
    assert _labels_of(client, "gpt-4") == {"gpt-4o-mini-literal", "gpt-4*"}
    assert "*" in model_labels(client) and "claude-xyz" not in model_labels(client)  # (other tests' globs may show)


def test_a_routed_lone_surrogate_model_still_renders(client, config):
    """Below the request parser (which may refuse such a body): the label itself stays encodable."""
    metrics.configure(config.upstreams)
    line = RequestLine(request_id="r", method="POST", path="/v1/chat/completions", route="/v1/chat/completions",
                       model="\ud800", attempts=[SimpleNamespace(upstream="primary", status=404)],
                       status=404)  # fmt: skip
    observe(line)
    assert "\ud800" not in model_labels(client)  # answers 200


@pytest.mark.parametrize(
    ("model", "upstream", "label"),
    [
        ("anything", None, metrics.UNROUTED),
        ("gpt-4o", "a", "gpt-4o"),  # listed literally
        ("gpt-4-new", "a", "gpt-4*"),  # the first pattern that matches, in config order
        ("gpt-4*", "a", "gpt-4*"),  # a configured string either way
        ("o1-anything", "a", "*"),
        ("\ud800", "a", "*"),
        ("x" * 10_000, "a", "*"),
        ("gpt-4o", "b", "gpt-?o"),  # only the serving upstream's list counts
        ("gpt-4o", "unknown", metrics.OTHER),  # an upstream this process was not configured with
    ],
)
def test_model_label(model, upstream, label):
    metrics.configure(
        [
            UpstreamConfig(name="a", base_url=BASE, tokens=TOKENS, models=("gpt-4o", "gpt-4*", "*")),
            UpstreamConfig(name="b", base_url=BASE, tokens=TOKENS, models=("gpt-?o",)),
        ]
    )
    assert metrics.model_label(model, upstream) == label


def test_an_alias_name_is_its_own_label_value():
    metrics.configure([UpstreamConfig(name="b", base_url=BASE, tokens=TOKENS, models=("gpt-?o",))], ["smart"])
    try:
        assert metrics.model_label("smart", "b") == "smart"  # configured in [[models]]
        assert metrics.model_label("smarter", "b") == metrics.OTHER
        assert metrics.model_label("smart", None) == metrics.UNROUTED
    finally:
        metrics.configure([])
