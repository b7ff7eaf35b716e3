"""Images, audio, moderations and rerank through the gateway, with a `responses` upstream."""

from __future__ import annotations

import json

import pytest
import responses

from app.dialects.openai_media import error_event, event_verdict, media_usage
from tests.conftest import BASE, TOKENS, make_config

PREFIXES = ("/v1", "/api/v1")
BOUNDARY = "sluice-test-boundary-0123"
AUDIO = b"ID3" + bytes(range(256)) * 8 + b"\n\n" + b"data: not an event\r\n\r\n" + bytes(range(255, -1, -1))
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def form(values: dict, files: dict | None = None, boundary: str = BOUNDARY) -> tuple[bytes, str]:
    """A multipart body (text fields, then files as (filename, bytes)) and its Content-Type."""
    parts = [f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value.encode()
             for name, value in values.items()]  # fmt: skip
    parts += [f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
              "Content-Type: application/octet-stream\r\n\r\n".encode() + content
              for name, (filename, content) in (files or {}).items()]  # fmt: skip
    delimiter = b"--" + boundary.encode()
    body = b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts) + delimiter + b"--\r\n"
    return body, f"multipart/form-data; boundary={boundary}"


def post(client, auth, path: str, body: bytes, content_type: str):
    return client.post(path, data=body, headers={**auth, "Content-Type": content_type})


def as_json(body: dict) -> tuple[bytes, str]:
    return json.dumps(body).encode(), "application/json"


IMAGE_OK = {"created": 1, "data": [{"b64_json": "AAAA"}], "usage": {"input_tokens": 7, "output_tokens": 272,
            "total_tokens": 279, "input_tokens_details": {"text_tokens": 7, "image_tokens": 0}}}  # fmt: skip
TRANSCRIPT_OK = {"text": "hello", "usage": {"type": "tokens", "input_tokens": 10, "output_tokens": 2,
                 "total_tokens": 12}}  # fmt: skip
RERANK_OK = {"id": "r", "results": [{"index": 0, "relevance_score": 1.0}], "usage": {"total_tokens": 9}}
MODERATION_OK = {"id": "m", "model": "omni-moderation-latest", "results": [{"flagged": False}]}

# (upstream path, request body, reply, usage record (prompt, completion, total))
ROUTES = {
    "images/generations": (as_json({"model": "gpt-image-1", "prompt": "a cat", "n": 1}), IMAGE_OK, (7, 272, 279)),
    "images/edits": (form({"model": "gpt-image-1", "prompt": "a hat"}, {"image[]": ("a.png", PNG)}), IMAGE_OK,
                     (7, 272, 279)),
    "images/variations": (form({"model": "dall-e-2", "n": "2"}, {"image": ("a.png", PNG)}),
                          {"created": 1, "data": [{"url": "https://x/a.png"}]}, (0, 0, 0)),
    "audio/transcriptions": (form({"model": "whisper-1"}, {"file": ("a.wav", AUDIO)}), TRANSCRIPT_OK, (10, 2, 12)),
    "audio/translations": (form({"model": "whisper-1", "temperature": "0.2"}, {"file": ("a.mp3", AUDIO)}),
                           {"text": "hello"}, (0, 0, 0)),
    "moderations": (as_json({"model": "omni-moderation-latest", "input": ["a", "b"]}), MODERATION_OK, (0, 0, 0)),
    "rerank": (as_json({"model": "bge-reranker", "query": "q", "documents": ["a", {"text": "b"}]}), RERANK_OK,
               (0, 0, 9)),
}  # fmt: skip


@pytest.fixture
def gw(app):
    return app.extensions["sluice"]


def records(gw) -> list[dict]:
    gw.writer.flush()
    return gw.usage.recent()


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("route", ROUTES)
def test_every_route_forwards_the_body_unchanged_and_records_usage(client, auth, upstream, gw, prefix, route):
    (body, content_type), reply, (prompt, completion, total) = ROUTES[route]
    upstream.add(responses.POST, f"{BASE}/{route}", json=reply, headers={"openai-processing-ms": "5"})
    resp = post(client, auth, f"{prefix}/{route}", body, content_type)
    assert resp.status_code == 200 and resp.get_json() == reply
    sent = upstream.calls[0].request
    assert sent.body == body and sent.headers["Content-Type"] == content_type
    assert sent.headers["Accept"] == "*/*" and sent.headers["User-Agent"]
    assert sent.headers["Authorization"] == f"Bearer {TOKENS[0]}"
    (record,) = records(gw)
    assert (record["prompt_tokens"], record["completion_tokens"], record["total_tokens"]) == (prompt, completion, total)
    assert record["status"] == 200 and record["outcome"] == "ok" and not record["streamed"]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_speech_audio_is_relayed_byte_for_byte(client, auth, upstream, gw, prefix):
    upstream.add(responses.POST, f"{BASE}/audio/speech", body=AUDIO, content_type="audio/mpeg")
    request = {"model": "tts-1", "input": "hello", "voice": "alloy"}
    resp = client.post(f"{prefix}/audio/speech", json=request, headers=auth)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "audio/mpeg"
    assert resp.get_data() == AUDIO
    sent = upstream.calls[0].request
    assert json.loads(sent.body) == request and sent.headers["Accept"] == "*/*" and sent.headers["User-Agent"]
    (record,) = records(gw)
    assert record["endpoint"] == "speech" and record["streamed"] and record["outcome"] == "ok"


def sse_body(*events: dict) -> str:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events)


DELTAS = ({"type": "transcript.text.delta", "delta": "error "}, {"type": "transcript.text.delta", "delta": "word"})
DONE = {"type": "transcript.text.done", "text": "error word",
        "usage": {"type": "tokens", "input_tokens": 10, "output_tokens": 2, "total_tokens": 12}}  # fmt: skip


@pytest.mark.parametrize("prefix", PREFIXES)
def test_a_streamed_transcription_passes_its_events_through(client, auth, upstream, gw, prefix):
    upstream.add(responses.POST, f"{BASE}/audio/transcriptions", body=sse_body(*DELTAS, DONE),
                 content_type="text/event-stream")  # fmt: skip
    body, content_type = form({"model": "gpt-4o-transcribe", "stream": "true"}, {"file": ("a.wav", AUDIO)})
    resp = post(client, auth, f"{prefix}/audio/transcriptions", body, content_type)
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.get_data(as_text=True) == sse_body(*DELTAS, DONE)
    sent = upstream.calls[0].request
    assert sent.body == body and sent.headers["Accept"] == "text/event-stream" and sent.headers["User-Agent"]
    (record,) = records(gw)
    assert (record["prompt_tokens"], record["completion_tokens"], record["total_tokens"]) == (10, 2, 12)
    assert record["streamed"] and record["outcome"] == "ok" and record["endpoint"] == "transcriptions"


def test_a_transcription_stream_cut_short_ends_with_an_error_event(client, auth, upstream, gw):
    upstream.add(responses.POST, f"{BASE}/audio/transcriptions", body=sse_body(*DELTAS),
                 content_type="text/event-stream")  # fmt: skip
    body, content_type = form({"model": "whisper-1", "stream": "true"}, {"file": ("a.wav", AUDIO)})
    text = post(client, auth, "/v1/audio/transcriptions", body, content_type).get_data(as_text=True)
    assert text.startswith(sse_body(*DELTAS))
    tail = json.loads(text[len(sse_body(*DELTAS)) :].removeprefix("data: "))
    assert tail["type"] == "error" and tail["error"]["code"] == "upstream_stream_error"
    assert records(gw)[0]["outcome"] == "upstream_error"  # the usage outcome of upstream_stream_error


def test_speech_events_and_image_streams_pass_through_with_usage(client, auth, upstream, gw):
    speech = sse_body(
        {"type": "speech.audio.delta", "audio": "AAAA"},
        {"type": "speech.audio.done", "usage": {"input_tokens": 3, "output_tokens": 9, "total_tokens": 12}},
    )
    upstream.add(responses.POST, f"{BASE}/audio/speech", body=speech, content_type="text/event-stream")
    images = ("event: image_generation.partial_image\ndata: {\"type\":\"image_generation.partial_image\"}\n\n"
              "event: image_generation.completed\ndata: {\"type\":\"image_generation.completed\",\"usage\":"
              "{\"input_tokens\":5,\"output_tokens\":100,\"total_tokens\":105}}\n\n")  # fmt: skip
    upstream.add(responses.POST, f"{BASE}/images/generations", body=images, content_type="text/event-stream")
    asked = {"model": "gpt-4o-mini-tts", "input": "hi", "voice": "alloy", "stream_format": "sse"}
    assert client.post("/v1/audio/speech", json=asked, headers=auth).get_data(as_text=True) == speech
    drawn = {"model": "gpt-image-1", "prompt": "a cat", "stream": True, "partial_images": 1}
    assert client.post("/v1/images/generations", json=drawn, headers=auth).get_data(as_text=True) == images
    assert [c.request.headers["Accept"] for c in upstream.calls] == ["text/event-stream"] * 2
    assert [(r["endpoint"], r["total_tokens"]) for r in records(gw)[::-1]] == [("speech", 12), ("images", 105)]


def by_token(upstream, path: str, first: int, reply: dict | bytes, content_type: str) -> list[str]:
    """The first token answers `first`, the others `reply`; returns the tokens tried, in order."""
    seen: list[str] = []

    def callback(request):
        token = request.headers["Authorization"].removeprefix("Bearer ")
        seen.append(token)
        if token == TOKENS[0]:
            error = {"error": {"message": "no", "type": "t", "param": None, "code": str(first)}}
            return first, {"Content-Type": "application/json"}, json.dumps(error)
        return 200, {"Content-Type": content_type}, reply if isinstance(reply, bytes) else json.dumps(reply)

    upstream.add_callback(responses.POST, f"{BASE}/{path}", callback=callback)
    return seen


@pytest.mark.parametrize("status", [401, 429, 500, 503])
@pytest.mark.parametrize("route", ["images/edits", "audio/transcriptions", "rerank", "audio/speech"])
def test_a_failed_token_is_retried_on_another_before_the_first_byte(client, auth, upstream, status, route):
    if route == "audio/speech":
        (body, content_type), reply, kind = (
            as_json({"model": "tts-1", "input": "hi", "voice": "alloy"}),
            AUDIO,
            "audio/mpeg",
        )
    else:
        (body, content_type), reply, _ = ROUTES[route]
        kind = "application/json"
    seen = by_token(upstream, route, status, reply, kind)
    resp = post(client, auth, f"/v1/{route}", body, content_type)
    assert resp.status_code == 200 and seen == list(TOKENS[:2])
    assert resp.get_data() == (reply if isinstance(reply, bytes) else json.dumps(reply).encode())
    assert [c.request.body for c in upstream.calls] == [body, body]  # the same upload bytes to each token


def test_a_key_allow_list_hides_the_model_of_a_form(app, client, upstream, gw):
    _, secret = gw.keys.create("k", now=0.0, models=("gpt-*",))
    body, content_type = form({"model": "whisper-1"}, {"file": ("a.wav", AUDIO)})
    resp = post(client, {"Authorization": f"Bearer {secret}"}, "/v1/audio/transcriptions", body, content_type)
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "model_not_found"
    resp = client.post("/api/v1/rerank", json={"model": "bge", "query": "q", "documents": ["a"]},
                       headers={"Authorization": f"Bearer {secret}"})  # fmt: skip
    assert resp.status_code == 404 and resp.get_json()["error"]["param"] == "model"
    assert not upstream.calls


def test_models_route_to_their_upstream(upstream, auth, make_app):
    from app.config import UpstreamConfig

    speech = UpstreamConfig(name="speech", base_url="http://speech.test/v1", tokens=("tok-s",), models=("tts-*",))
    client = make_app(make_config(speech, UpstreamConfig(name="rest", base_url=BASE, tokens=TOKENS))).test_client()
    upstream.add(responses.POST, "http://speech.test/v1/audio/speech", body=AUDIO, content_type="audio/mpeg")
    resp = client.post("/v1/audio/speech", json={"model": "tts-1", "input": "hi", "voice": "alloy"}, headers=auth)
    assert resp.get_data() == AUDIO and upstream.calls[0].request.headers["Authorization"] == "Bearer tok-s"


TRANSCRIBE = {"model": "whisper-1"}
WAV = {"file": ("a.wav", b"RIFF")}
# (path, body, content type) -> (status, param or error code)
BAD_INPUT = [
    ("images/generations", *as_json({"prompt": "x"}), 400, "model"),
    ("images/generations", *as_json({"model": "m"}), 400, "prompt"),
    ("images/generations", *as_json({"model": "m", "prompt": 3}), 400, "prompt"),
    ("images/generations", *as_json({"model": "m", "prompt": "x", "n": "2"}), 400, "n"),
    ("images/generations", *as_json({"model": 7, "prompt": "x"}), 400, "model"),
    ("images/generations", *as_json({"model": "m", "prompt": "x", "stream": "yes"}), 400, "stream"),
    ("images/generations", b"[1, 2]", "application/json", 400, "invalid_request_error"),
    ("images/generations", b'{"model": "m",', "application/json", 400, "invalid_request_error"),
    ("images/edits", *form({"prompt": "x"}, {"image": ("a.png", PNG)}), 400, "model"),
    ("images/edits", *form({"model": "m"}, {"image": ("a.png", PNG)}), 400, "prompt"),
    ("images/edits", *form({"model": "m", "prompt": "x"}), 400, "image"),
    ("images/edits", *form({"model": "m", "prompt": "x", "image": "not a file"}), 400, "image"),
    ("images/variations", *form({"model": "m", "n": "two"}, {"image": ("a.png", PNG)}), 400, "n"),
    ("images/variations", *form({"model": "m", "stream": "true"}, {"image": ("a.png", PNG)}), 400, "stream"),
    ("audio/transcriptions", *form(TRANSCRIBE), 400, "file"),
    ("audio/transcriptions", *form({}, WAV), 400, "model"),
    ("audio/transcriptions", *form({"model": ""}, WAV), 400, "model"),
    ("audio/transcriptions", *form({**TRANSCRIBE, "stream": "maybe"}, WAV), 400, "stream"),
    ("audio/transcriptions", *form({**TRANSCRIBE, "temperature": "hot"}, WAV), 400, "temperature"),
    ("audio/translations", *form({**TRANSCRIBE, "stream": "true"}, WAV), 400, "stream"),
    ("audio/speech", *as_json({"model": "tts-1", "voice": "alloy"}), 400, "input"),
    ("audio/speech", *as_json({"model": "tts-1", "input": "hi", "voice": 1}), 400, "voice"),
    ("audio/speech", *as_json({"model": "tts-1", "input": "hi", "voice": "a", "speed": "fast"}), 400, "speed"),
    ("audio/speech", *as_json({"model": "tts-1", "input": "hi", "voice": "a", "stream_format": "x"}), 400,
     "stream_format"),
    ("moderations", *as_json({"input": "hi"}), 400, "model"),
    ("moderations", *as_json({"model": "m"}), 400, "input"),
    ("moderations", *as_json({"model": "m", "input": 5}), 400, "input"),
    ("rerank", *as_json({"model": "m", "query": "q", "documents": []}), 400, "documents"),
    ("rerank", *as_json({"model": "m", "query": "q", "documents": "a"}), 400, "documents"),
    ("rerank", *as_json({"model": "m", "query": "q", "documents": ["a", 1]}), 400, "documents"),
    ("rerank", *as_json({"model": "m", "documents": ["a"]}), 400, "query"),
    ("rerank", *as_json({"model": "m", "query": "q", "documents": ["a"], "top_n": "1"}), 400, "top_n"),
    # broken multipart bodies
    ("audio/transcriptions", form(TRANSCRIBE, WAV)[0], "multipart/form-data", 400, "invalid_multipart"),
    ("audio/transcriptions", form(TRANSCRIBE, WAV)[0], "multipart/form-data; boundary=other", 400, "invalid_multipart"),
    ("audio/transcriptions", form(TRANSCRIBE, WAV)[0][:-40], form({})[1], 400, "invalid_multipart"),
    ("images/edits", b"--" + BOUNDARY.encode() + b"\r\nnonsense\r\n\r\n", form({})[1], 400, "invalid_multipart"),
    ("images/edits", *form({"model": "m", "prompt": "x"}, {"image": ("a.png", PNG)}, boundary="x" * 201), 400,
     "invalid_multipart"),
    # the wrong kind of body
    ("audio/transcriptions", *as_json({"model": "whisper-1"}), 415, "unsupported_media_type"),
    ("images/variations", b"model=m", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ("rerank", *form({"model": "m"}), 415, "unsupported_media_type"),
    ("audio/speech", b"hi", "text/plain", 415, "unsupported_media_type"),
    # over [gateway] max_body_bytes (16 KiB in tests)
    ("audio/transcriptions", *form(TRANSCRIBE, {"file": ("a.wav", b"x" * 20_000)}), 413, "request_too_large"),
    ("images/generations", *as_json({"model": "m", "prompt": "x" * 20_000}), 413, "request_too_large"),
]  # fmt: skip


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize(("path", "body", "content_type", "status", "what"), BAD_INPUT)
def test_bad_input_is_an_openai_shaped_4xx(client, auth, upstream, prefix, path, body, content_type, status, what):
    resp = post(client, auth, f"{prefix}/{path}", body, content_type)
    assert resp.status_code == status, resp.get_data(as_text=True)
    error = resp.get_json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert what in (error["param"], error["code"], error["type"])
    assert not upstream.calls


@pytest.mark.parametrize(
    ("usage", "counts"),
    [
        ({"input_tokens": 3, "output_tokens": 4, "total_tokens": 7}, {"prompt_tokens": 3, "completion_tokens": 4,
                                                                      "total_tokens": 7}),
        ({"input_tokens": 3, "output_tokens": 4}, {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}),
        ({"type": "tokens", "input_tokens": 3, "input_tokens_details": {"cached_tokens": 2}, "output_tokens": 1,
          "total_tokens": 4}, {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4, "cached_tokens": 2}),
        ({"total_tokens": 9}, {"total_tokens": 9}),
        ({"prompt_tokens": 2, "total_tokens": 2}, {"prompt_tokens": 2, "total_tokens": 2}),
        ({"type": "duration", "seconds": 3.5}, None),
        ({"input_tokens": True, "output_tokens": -1}, None),
        ("12", None),
        (None, None),
    ],
)  # fmt: skip
def test_media_usage(usage, counts):
    assert media_usage({"usage": usage}) == counts


@pytest.mark.parametrize(
    ("raw", "verdict"),
    [
        (b": keep-alive\n\n", "wait"),
        (b'data: {"type":"transcript.text.delta","delta":"error"}\n\n', "accept"),
        (b'data: {"type":"error","error":{"message":"x"}}\n\n', "error"),
        (b'data: {"error":{"message":"x"}}\n\n', "error"),
        (b'event: error\ndata: {"error":{"message":"x"}}\n\n', "error"),
        (b'data: {"error": not json\n\n', "accept"),
        (b'event: image_generation.partial_image\ndata: {"b64_json":"A"}\n\n', "accept"),
    ],
)
def test_event_verdict(raw, verdict):
    assert event_verdict(raw).value == verdict


def test_the_error_tail_is_what_the_openai_sdk_raises():
    data = json.loads(error_event("upstream_timeout", "late").removeprefix(b"data: "))
    assert data == {"type": "error", "error": {"message": "late", "type": "server_error", "param": None,
                                               "code": "upstream_timeout"}}  # fmt: skip
