"""Model aliases (app/services/aliases.py): resolving, the body each target gets, the answer's model name,
fallbacks by error class, in-flight counts, and the model list, through the app with a `responses` upstream."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import responses

from app.config import GatewayConfig, UpstreamConfig
from app.config_routing import ModelAlias, Target
from app.dialects.base import ClientRequest
from app.services import aliases, events
from app.services.load import target_key, token_key
from tests.conftest import make_config

ONE, TWO, THREE = "http://one.test/v1", "http://two.test/v1", "http://three.test/v1"
TOKENS = ("one-token-00000001", "one-token-00000002")
SMART = ModelAlias(
    "smart", (Target("one", "big-1"), Target("two", "big-2")), fallbacks=("cheap",), context_fallbacks=("long",)
)
ALIASES = (SMART, ModelAlias("cheap", (Target("three", "small"),)), ModelAlias("long", (Target("two", "long-1"),)))


def config(*models: ModelAlias, **gateway):
    base = make_config(
        UpstreamConfig(name="one", base_url=ONE, tokens=TOKENS, models=("big-*",)),
        UpstreamConfig(name="two", base_url=TWO, tokens=("two-token-00000001",), models=("*",)),
        UpstreamConfig(name="three", base_url=THREE, tokens=("three-token-0000001",), models=("small",)),
    )
    return replace(base, models=models or ALIASES, gateway=GatewayConfig(max_body_bytes=16384, **gateway))


def answer(model: str) -> dict:
    return {"id": "x", "object": "chat.completion", "model": model, "choices": [], "usage": {"total_tokens": 2}}


def error(code: str, message: str = "no") -> dict:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def echo(status: int = 200, body: dict | None = None, calls: list | None = None):
    """A reply naming the model it was sent (or `body` with `status`), noting (model, token) in `calls`."""

    def callback(request):
        model = json.loads(request.body)["model"]
        if calls is not None:
            calls.append((model, request.headers["Authorization"][-2:]))
        return status, {"Content-Type": "application/json"}, json.dumps(body or answer(model))

    return callback


def chat(model: str = "smart", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": 'say "model": "big-1"'}], **extra}


# --- pure parts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"model":"big-1","x":1}', b'{"model":"smart","x":1}'),
        (b'{"model": "big-1"}', b'{"model":"smart"}'),
        (b'data: {"message":{"model" :\t"big-1"}}\n\n', b'data: {"message":{"model":"smart"}}\n\n'),
        (b'{"content":"\\"model\\": \\"big-1\\""}', b'{"content":"\\"model\\": \\"big-1\\""}'),  # escaped: content
        (b'{"model":"big-10"}', b'{"model":"big-10"}'),
        (b'{"other":"big-1"}', b'{"other":"big-1"}'),
    ],
)
def test_rename_touches_model_members_only(data, expected):
    assert aliases.rename(data, "big-1", "smart") == expected


def test_retarget_rewrites_the_json_body_only_when_the_model_differs():
    body = b'{"model": "smart",  "stream": true}'
    request = ClientRequest({"model": "smart", "stream": True}, body, "application/json", True)
    assert aliases.retarget(request, "smart", multipart=False) is request
    moved = aliases.retarget(request, "big-1", multipart=False)
    assert json.loads(moved.body) == {"model": "big-1", "stream": True} and moved.payload["model"] == "big-1"
    assert request.payload["model"] == "smart"


def test_retarget_rebuilds_the_multipart_model_field():
    content_type = "multipart/form-data; boundary=XyZ"
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFFmodel\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\nsmart\r\n--XyZ--\r\n'
    )
    request = ClientRequest({"model": "smart"}, body, content_type, False)
    moved = aliases.retarget(request, "whisper-1", multipart=True)
    assert moved.body == body.replace(b"\r\n\r\nsmart\r\n", b"\r\n\r\nwhisper-1\r\n")


def test_resolve_expands_an_alias_and_routes_a_plain_model():
    cfg = config()
    hop = aliases.resolve(cfg, "smart")
    assert hop is not None and [r.key for r in hop.routes] == ["one/big-1", "two/big-2"]
    assert [h.name for h in hop.fallbacks] == ["cheap"] and [h.name for h in hop.context_fallbacks] == ["long"]
    plain = aliases.resolve(cfg, "big-9")
    assert plain is not None and [r.key for r in plain.routes] == ["one/big-9", "two/big-9"]
    assert aliases.resolve(replace(cfg, upstreams=cfg.upstreams[:1]), "nothing") is None


# --- through the app ----------------------------------------------------------------------------------


def test_an_alias_sends_the_target_model_and_answers_with_the_alias(make_app, auth, upstream):
    calls: list = []
    upstream.add_callback(responses.POST, f"{ONE}/chat/completions", callback=echo(calls=calls))
    resp = make_app(config()).test_client().post("/v1/chat/completions", json=chat(), headers=auth)
    assert resp.status_code == 200 and resp.get_json()["model"] == "smart"
    assert calls == [("big-1", "01")]


def test_a_plain_model_is_sent_byte_exact(make_app, auth, upstream):
    sent: list = []
    upstream.add_callback(
        responses.POST, f"{ONE}/chat/completions", callback=lambda r: (sent.append(r.body), (200, {}, "{}"))[1]
    )
    raw = b'{"model":  "big-3", "messages": [{"role": "user", "content": "hi"}]}'
    headers = {**auth, "Content-Type": "application/json"}
    assert make_app(config()).test_client().post("/v1/chat/completions", data=raw, headers=headers).status_code == 200
    assert sent == [raw]


def test_streamed_chunks_carry_the_alias(make_app, auth, upstream):
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "big-1", "choices": [{"delta": {"content": "hi"}}]}
    stream = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n"
    upstream.add(responses.POST, f"{ONE}/chat/completions", body=stream, content_type="text/event-stream")
    resp = make_app(config()).test_client().post("/v1/chat/completions", json=chat(stream=True), headers=auth)
    text = resp.get_data(as_text=True)
    assert '"model":"smart"' in text and "big-1" not in text


def test_context_length_moves_to_the_context_fallbacks_not_another_token(make_app, auth, upstream):
    calls: list = []
    too_long = error("context_length_exceeded", "This model's maximum context length is 8 tokens.")
    upstream.add_callback(responses.POST, f"{ONE}/chat/completions", callback=echo(400, too_long, calls))
    upstream.add_callback(responses.POST, f"{TWO}/chat/completions", callback=echo(calls=calls))
    resp = make_app(config()).test_client().post("/v1/chat/completions", json=chat(), headers=auth)
    assert resp.status_code == 200 and resp.get_json()["model"] == "smart"
    assert calls == [("big-1", "01"), ("long-1", "01")]  # one token of big-1, then straight to "long"


def test_context_length_without_context_fallbacks_is_the_upstreams_400(make_app, auth, upstream):
    calls: list = []
    too_long = error("context_length_exceeded")
    upstream.add_callback(responses.POST, f"{THREE}/chat/completions", callback=echo(400, too_long, calls))
    resp = make_app(config()).test_client().post("/v1/chat/completions", json=chat("cheap"), headers=auth)
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "context_length_exceeded"
    assert len(calls) == 1


def test_a_content_policy_refusal_is_returned_as_is_and_not_retried(make_app, auth, upstream):
    calls: list = []
    refusal = error("content_policy_violation", "Refused by the safety system.")
    upstream.add_callback(responses.POST, f"{ONE}/chat/completions", callback=echo(400, refusal, calls))
    resp = make_app(config()).test_client().post("/v1/chat/completions", json=chat(), headers=auth)
    assert resp.status_code == 400 and resp.get_json()["error"]["code"] == "content_policy_violation"
    assert len(calls) == 1


def test_fallbacks_answer_when_every_target_failed(make_app, auth, upstream):
    calls: list = []
    down = error("server_error")
    upstream.add_callback(responses.POST, f"{ONE}/chat/completions", callback=echo(500, down, calls))
    upstream.add_callback(responses.POST, f"{TWO}/chat/completions", callback=echo(500, down, calls))
    upstream.add_callback(responses.POST, f"{THREE}/chat/completions", callback=echo(calls=calls))
    app = make_app(config(max_attempts=5, breaker_failures=50))
    resp = app.test_client().post("/v1/chat/completions", json=chat(), headers=auth)
    assert resp.status_code == 200 and resp.get_json()["model"] == "smart"
    assert [c[0] for c in calls] == ["big-1", "big-1", "big-2", "small"]
    app.extensions["sluice"].writer.flush()
    record = app.extensions["sluice"].usage.recent()[-1]
    assert record["model"] == "smart" and record["upstream"] == "three"


def test_max_attempts_is_a_budget_per_hop(make_app, auth, upstream):
    calls: list = []
    upstream.add_callback(responses.POST, f"{ONE}/chat/completions", callback=echo(500, error("x"), calls))
    upstream.add_callback(responses.POST, f"{THREE}/chat/completions", callback=echo(calls=calls))
    resp = make_app(config(max_attempts=1)).test_client().post("/v1/chat/completions", json=chat(), headers=auth)
    assert resp.status_code == 200 and [c[0] for c in calls] == ["big-1", "small"]


def test_in_flight_counts_return_to_zero_and_first_events_are_timed(make_app, auth, upstream):
    upstream.add_callback(responses.POST, f"{ONE}/chat/completions", callback=echo())
    app = make_app(config())
    app.test_client().post("/v1/chat/completions", json=chat(), headers=auth)
    load = app.extensions["sluice"].client.selector.load
    assert load.inflight(target_key("one", "big-1")) == 0 and load.ttfe(target_key("one", "big-1")) is not None
    assert all(count == 0 for count, _ in load.snapshot().values())


def test_the_least_busy_token_is_picked_ties_rotate(make_app, auth, upstream):
    calls: list = []
    upstream.add_callback(responses.POST, f"{ONE}/chat/completions", callback=echo(calls=calls))
    app = make_app(config())
    client, load = app.test_client(), app.extensions["sluice"].client.selector.load
    pool = app.extensions["sluice"].pool
    first = next(t for t, _ in pool.candidates("one"))
    load.begin(token_key(first.id))  # another request holds the first token
    for _ in range(3):
        client.post("/v1/chat/completions", json=chat(), headers=auth)
    load.end(token_key(first.id))
    for _ in range(2):
        client.post("/v1/chat/completions", json=chat(), headers=auth)
    assert [c[1] for c in calls] == ["02", "02", "02", "01", "02"]


def test_no_usable_token_emits_pool_exhausted(make_app, auth, upstream):
    seen: list = []
    client = make_app(config(max_attempts=1)).test_client()
    events.connect(lambda *event: seen.append(event))  # after the app, which points the hook at its alerter
    try:
        upstream.add_callback(responses.POST, f"{THREE}/chat/completions", callback=echo(429, error("rate")))
        client.post("/v1/chat/completions", json=chat("cheap"), headers=auth)
        resp = client.post("/v1/chat/completions", json=chat("cheap"), headers=auth)
    finally:
        events.connect(None)
    assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "no_upstream_available"
    assert [(e[0], e[1]) for e in seen if e[0] == "pool_exhausted"] == [("pool_exhausted", "cheap")]


def test_aliases_are_listed_and_allowed_by_name(make_app, auth, upstream):
    upstream.add_callback(responses.POST, f"{ONE}/chat/completions", callback=echo())
    app = make_app(config())
    client = app.test_client()
    listed = client.get("/v1/models", headers=auth).get_json()["data"]
    assert {"id": "smart", "object": "model", "created": 0, "owned_by": "sluice"} in listed
    _, secret = app.extensions["sluice"].keys.create("k", now=0.0, models=("smart",))
    key = {"Authorization": f"Bearer {secret}"}
    assert [m["id"] for m in client.get("/v1/models", headers=key).get_json()["data"]] == ["smart"]
    assert client.get("/v1/models/smart", headers=key).get_json()["owned_by"] == "sluice"
    assert client.post("/v1/chat/completions", json=chat(), headers=key).status_code == 200  # targets not listed
    assert client.post("/v1/chat/completions", json=chat("big-1"), headers=key).status_code == 404


def test_an_upload_gets_the_target_model_in_its_form(make_app, auth, upstream):
    from app.dialects.multipart import form_fields
    from tests.unit.test_media_gateway import form

    upstream.add(responses.POST, f"{ONE}/audio/transcriptions", json={"text": "hi", "model": "big-whisper"})
    body, content_type = form({"model": "ears"}, {"file": ("a.wav", b"RIFF0000")})
    cfg = config(*ALIASES, ModelAlias("ears", (Target("one", "big-whisper"),)))
    headers = {**auth, "Content-Type": content_type}
    resp = make_app(cfg).test_client().post("/v1/audio/transcriptions", data=body, headers=headers)
    assert resp.status_code == 200 and resp.get_json() == {"text": "hi", "model": "ears"}
    sent = upstream.calls[0].request
    assert form_fields(sent.body, sent.headers["Content-Type"], wanted=frozenset({"model"})) == {"model": "big-whisper"}
    assert sent.body.replace(b"big-whisper", b"ears") == body
