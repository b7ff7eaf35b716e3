"""Model aliases (app/services/aliases.py): resolving, the body each target gets, the answer's model name,
fallbacks by error class, queueing, in-flight counts, pool_exhausted and the model list, through the app
with a `responses` upstream. Like a real provider, the fake answers with a dated snapshot of the model sent."""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace

import pytest
import responses

from app.config import GatewayConfig, UpstreamConfig
from app.config_routing import ModelAlias, Target
from app.dialects.base import ClientRequest
from app.services import aliases, events
from app.services.load import target_key, token_key
from app.storage.db import StorageError
from tests.conftest import make_config

ONE, TWO, THREE = "http://one.test/v1", "http://two.test/v1", "http://three.test/v1"
TOKENS = ("one-token-00000001", "one-token-00000002")
SMART = ModelAlias(
    "smart", (Target("one", "big-1"), Target("two", "big-2")), fallbacks=("cheap",), context_fallbacks=("long",)
)
ALIASES = (SMART, ModelAlias("cheap", (Target("three", "small"),)), ModelAlias("long", (Target("two", "long-1"),)))
DATED = "-2025-04-14"  # OpenAI answers gpt-4.1-2025-04-14 for gpt-4.1; Anthropic and Azure rename too


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
    """A reply naming the dated snapshot of the model it was sent (or `body` with `status`), noting
    (model sent, token) in `calls`."""

    def callback(request):
        model = json.loads(request.body)["model"]
        if calls is not None:
            calls.append((model, request.headers["Authorization"][-2:]))
        return status, {"Content-Type": "application/json"}, json.dumps(body or answer(model + DATED))

    return callback


def chat(model: str = "smart", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": 'say "model": "big-1"'}], **extra}


# --- pure parts ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"model":"big-1","x":1}', b'{"model":"smart","x":1}'),
        (b'{"model": "gpt-4.1-2025-04-14"}', b'{"model":"smart"}'),  # whatever the upstream names
        (b'data: {"message":{"model" :\t"claude-x-20250514"}}\n\n', b'data: {"message":{"model":"smart"}}\n\n'),
        (b'{"model":"my-deployment","response":{"model":"b"}}', b'{"model":"smart","response":{"model":"smart"}}'),
        (b'{"model":"a\\"b\\\\","n":1}', b'{"model":"smart","n":1}'),  # escapes inside the value
        (b'{"content":"\\"model\\": \\"big-1\\""}', b'{"content":"\\"model\\": \\"big-1\\""}'),  # escaped: content
        (b'{"model":null,"other":"big-1"}', b'{"model":null,"other":"big-1"}'),
    ],
)
def test_rename_sets_every_model_member_and_nothing_else(data, expected):
    assert aliases.rename(data, "smart") == expected


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
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "big-1" + DATED,
             "choices": [{"delta": {"content": "hi"}}]}  # fmt: skip
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


# --- the answer names the alias, whatever the upstream names (real providers answer dated snapshots) ----------

OAI, CLAUDE = "http://oai.test/v1", "http://claude.test/v1"


def sse(data: dict, kind: str | None = None) -> str:
    return (f"event: {kind}\n" if kind else "") + f"data: {json.dumps(data)}\n\n"


def chat_answer(model: str) -> dict:
    message = {"role": "assistant", "content": "hi"}
    return {"id": "c1", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}  # fmt: skip


def chat_events(model: str) -> list[str]:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": model}
    return [sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}}]}),
            sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            sse({**chunk, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}),
            "data: [DONE]\n\n"]  # fmt: skip


def message(model: str) -> dict:
    return {"id": "msg_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 1, "output_tokens": 1}}  # fmt: skip


def message_events(model: str) -> list[str]:
    start = {**message(model), "content": [], "stop_reason": None, "usage": {"input_tokens": 1, "output_tokens": 0}}
    delta = {"type": "text_delta", "text": "hi"}
    events = [("message_start", {"message": start}),
              ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
              ("content_block_delta", {"index": 0, "delta": delta}), ("content_block_stop", {"index": 0}),
              ("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}}),
              ("message_stop", {})]  # fmt: skip
    return [sse({"type": kind, **data}, kind) for kind, data in events]


def response(model: str, status: str = "completed") -> dict:
    text = {"type": "output_text", "text": "hi", "annotations": []}
    output = [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant", "content": [text]}]
    return {"id": "resp_abc123", "object": "response", "created_at": 0, "status": status, "model": model,
            "output": output, "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}}  # fmt: skip


def response_events(model: str) -> list[str]:
    created = {**response(model, "in_progress"), "output": [], "usage": None}
    delta = {"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "hi"}
    events = [("response.created", {"response": created}), ("response.output_text.delta", delta),
              ("response.completed", {"response": response(model)})]  # fmt: skip
    return [sse({"type": kind, "sequence_number": i, **data}, kind) for i, (kind, data) in enumerate(events)]


WIRE = {"completions": (chat_answer, chat_events), "messages": (message, message_events),
        "responses": (response, response_events)}  # fmt: skip


def dated(request):
    """A provider's answer in the wire form of its path, plain or streamed, naming the dated model."""
    body = json.loads(request.body)
    plain, events = WIRE[request.url.rsplit("/", 1)[-1]]
    if body.get("stream"):
        return 200, {"Content-Type": "text/event-stream"}, "".join(events(body["model"] + DATED))
    return 200, {"Content-Type": "application/json"}, json.dumps(plain(body["model"] + DATED))


def dated_config(**gateway):
    base = make_config(
        UpstreamConfig(name="oai", base_url=OAI, tokens=("oai-token-00000001",), models=("gpt-*",), responses="native"),
        UpstreamConfig(name="claude", base_url=CLAUDE, tokens=("sk-ant-000000001",), models=("claude-*",),
                       api="anthropic"),
    )  # fmt: skip
    models = (ModelAlias("smart", (Target("oai", "gpt-4.1"),)), ModelAlias("sonnet", (Target("claude", "claude-x"),)))
    return replace(base, models=models, gateway=GatewayConfig(max_body_bytes=16384, **gateway))


CLIENT_BODIES = {
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
    "/v1/responses": {"input": "hi"},
    "/v1/messages": {"max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]},
}


def model_members(text: str) -> set[str]:
    return {json.loads(m) for m in re.findall(r'"model"\s*:\s*("(?:[^"\\]|\\.)*")', text)}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("alias", ["smart", "sonnet"])  # an OpenAI target, an Anthropic one
@pytest.mark.parametrize("path", list(CLIENT_BODIES))
def test_a_dated_model_name_never_reaches_the_client(make_app, auth, upstream, path, alias, stream):
    for url in (f"{OAI}/chat/completions", f"{OAI}/responses", f"{CLAUDE}/messages"):
        upstream.add_callback(responses.POST, url, callback=dated)
    headers = {**auth, "anthropic-version": "2023-06-01"}
    body = {"model": alias, **CLIENT_BODIES[path], **({"stream": True} if stream else {})}
    resp = make_app(dated_config()).test_client().post(path, json=body, headers=headers)
    text = resp.get_data(as_text=True)
    assert resp.status_code == 200 and model_members(text) == {alias}, text[:600]
    assert DATED not in text and "gpt-4.1" not in text and "claude-x" not in text


def test_a_stored_response_fetched_later_names_the_alias(make_app, auth, upstream):
    upstream.add_callback(responses.POST, f"{OAI}/responses", callback=dated)
    upstream.add(responses.GET, f"{OAI}/responses/resp_abc123", json=response("gpt-4.1" + DATED))
    client = make_app(dated_config()).test_client()
    created = client.post("/v1/responses", json={"model": "smart", "input": "hi"}, headers=auth)
    fetched = client.get("/v1/responses/resp_abc123", headers=auth)
    assert created.get_json()["model"] == "smart" and fetched.status_code == 200
    assert fetched.get_json()["model"] == "smart"


# --- failures the store or the pool add -------------------------------------------------------------------


def test_a_store_failure_while_recording_a_failed_attempt_ends_its_counts_once(make_app, auth, upstream, caplog):
    upstream.add(responses.POST, f"{ONE}/chat/completions", status=500, json=error("server_error"))
    app = make_app(config(ModelAlias("solo", (Target("one", "big-1"),))))
    gw = app.extensions["sluice"]
    load = gw.client.selector.load
    held = (target_key("one", "big-1"), *(token_key(t.id) for t, _ in gw.pool.candidates("one")))
    load.begin(*held)  # another request holds the target and both tokens

    def down(*args, **kwargs):
        raise StorageError("the database is down")

    gw.pool.repo.report = down
    resp = app.test_client().post("/v1/chat/completions", json=chat("solo"), headers=auth)
    assert resp.status_code >= 500
    assert {key: load.inflight(key) for key in held} == dict.fromkeys(held, 1)  # the other request's
    line = next(r.getMessage() for r in caplog.records if r.name == "sluice.request")
    assert "attempts=1 " in line  # the failed attempt is still recorded


COOL = {"one": 60.0, "two": 60.0, "three": 60.0}


def cool(app, seconds: dict[str, float]) -> None:
    """Bench every token of each upstream for its number of seconds, as a 429 would."""
    pool, now = app.extensions["sluice"].pool, time.time()
    for name, cooldown in seconds.items():
        for token, _ in pool.candidates(name):
            pool.report(token, status=429, ok=False, cooldown=cooldown, now=now)


@pytest.mark.parametrize(
    ("models", "subject", "fields"),
    [
        (["cheap"], "cheap", {"alias": "cheap", "upstreams": "three"}),
        (["smart"], "smart", {"alias": "smart", "upstreams": "one,three,two"}),  # its fallback's upstream too
        # a glob route serves any name: the client's text is never the subject, so it can't flood or inject
        ([f"<!channel> see http://evil.example/{i}" for i in range(3)], "two", {"upstreams": "two"}),
    ],
)
def test_pool_exhausted_names_configured_things_only(make_app, auth, upstream, models, subject, fields):
    app = make_app(config())
    cool(app, COOL)
    seen: list = []
    with events.listening(lambda *event: seen.append(event)):
        for model in models:
            resp = app.test_client().post("/v1/chat/completions", json=chat(model), headers=auth)
            assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "no_upstream_available"
    exhausted = [(e[1], dict(e[3])) for e in seen if e[0] == "pool_exhausted"]
    assert exhausted == [(subject, fields)] * len(models)


def test_the_model_catalogue_fetch_emits_no_pool_exhausted(make_app, auth, upstream):
    app = make_app(config())
    cool(app, COOL)
    seen: list = []
    with events.listening(lambda *event: seen.append(event)):
        resp = app.test_client().get("/v1/models", headers=auth)
    assert resp.status_code == 200 and [e for e in seen if e[0] == "pool_exhausted"] == []


QUEUED = (ModelAlias("primary", (Target("one", "big-1"),), fallbacks=("cheap",)),
          ModelAlias("cheap", (Target("three", "small"),)))  # fmt: skip


def test_a_queued_request_waits_on_every_hop_not_just_the_last(make_app, auth, upstream):
    calls: list = []
    upstream.add_callback(responses.POST, f"{ONE}/chat/completions", callback=echo(calls=calls))
    upstream.add_callback(responses.POST, f"{THREE}/chat/completions", callback=echo(calls=calls))
    app = make_app(config(*QUEUED, queue_timeout=4.0))
    cool(app, {"one": 1.0, "three": 60.0})  # the primary is back in a second, its fallback in a minute
    started = time.monotonic()
    resp = app.test_client().post("/v1/chat/completions", json=chat("primary"), headers=auth)
    assert resp.status_code == 200 and resp.get_json()["model"] == "primary"
    assert [c[0] for c in calls] == ["big-1"] and time.monotonic() - started < 3


def test_retry_after_covers_the_upstreams_of_every_hop(make_app, auth, upstream):
    app = make_app(config(*QUEUED))
    cool(app, {"one": 30.0, "three": 60.0})
    resp = app.test_client().post("/v1/chat/completions", json=chat("primary"), headers=auth)
    assert resp.status_code == 503 and 29 <= int(resp.headers["Retry-After"]) <= 30


# --- in flight: every begin has its end ---------------------------------------------------------------------


def stalled(seconds: float):
    def callback(request):
        time.sleep(seconds)  # in the attempt's reader thread: the request keeps its own time
        return 200, {"Content-Type": "text/event-stream"}, "".join(chat_events("big-1"))

    return callback


def fail_then(callback, failures: int = 1):
    """`failures` 500s, then `callback`'s answers."""
    count = iter(range(failures))

    def reply(request):
        if next(count, None) is not None:
            return 500, {"Content-Type": "application/json"}, json.dumps(error("server_error"))
        return callback(request)

    return reply


STREAMED = lambda request: (200, {"Content-Type": "text/event-stream"}, "".join(chat_events("big-1")))  # noqa: E731
DOWN = lambda request: (500, {"Content-Type": "application/json"}, json.dumps(error("server_error")))  # noqa: E731


@pytest.mark.parametrize(
    ("one", "two", "stream", "leave"),
    [
        pytest.param(fail_then(echo()), DOWN, False, False, id="retry-on-another-token"),
        pytest.param(DOWN, DOWN, False, False, id="fallback-hop"),
        pytest.param(STREAMED, DOWN, True, False, id="streamed"),
        pytest.param(STREAMED, DOWN, True, True, id="client-leaves-mid-stream"),
        pytest.param(stalled(1.0), DOWN, True, True, id="early-committed-stream-abandoned"),
        pytest.param(fail_then(stalled(0.3)), DOWN, True, False, id="early-committed-then-retried"),
    ],
)
def test_every_load_key_is_back_to_zero(make_app, auth, upstream, one, two, stream, leave):
    upstream.add_callback(responses.POST, f"{ONE}/chat/completions", callback=one)
    upstream.add_callback(responses.POST, f"{TWO}/chat/completions", callback=two)
    upstream.add_callback(responses.POST, f"{THREE}/chat/completions", callback=echo())
    app = make_app(config(max_attempts=5, breaker_failures=50, heartbeat_interval=0.05))
    load = app.extensions["sluice"].client.selector.load
    resp = app.test_client().post("/v1/chat/completions", json=chat(stream=stream), headers=auth, buffered=not leave)
    if leave:
        next(iter(resp.response))  # the first chunk (or heartbeat), then the client goes
        resp.close()
    else:
        assert resp.status_code == 200 and resp.get_data()
    assert len(load.snapshot()) >= 2 and all(count == 0 for count, _ in load.snapshot().values()), load.snapshot()
