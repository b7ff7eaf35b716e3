"""The mock upstream's images, audio, moderations and rerank routes, called as a WSGI app; answers checked against
the openai SDK's types."""

from __future__ import annotations

import base64
import io
import json
import zlib

import pytest
from openai.types import ImagesResponse, ModerationCreateResponse
from openai.types.audio import (
    Transcription,
    TranscriptionTextDeltaEvent,
    TranscriptionTextDoneEvent,
    TranscriptionVerbose,
    Translation,
    TranslationVerbose,
)
from werkzeug.test import Client

from app.mock_media import overlap, png_bytes, speech_bytes, transcript_text
from app.mock_upstream import MockUpstream, Options
from tests.unit.mocks.fakes import FakeSocket

TOKEN = {"Authorization": "Bearer good-token-0001"}
SPEECH = {"model": "tts-1", "input": "Hello from the speech mock, twice as long as before.", "voice": "alloy"}


def upload(client: Client, path: str, files: dict, headers: dict | None = None, **fields):
    """A multipart POST: `files` maps a field name to (bytes, filename)."""
    data = {**fields, **{name: (io.BytesIO(content), filename) for name, (content, filename) in files.items()}}
    return client.post(path, data=data, headers=headers or TOKEN, content_type="multipart/form-data")


def data_events(raw: bytes) -> list[dict]:
    """A data-only SSE stream's events, each checked against the SDK's type."""
    events = [json.loads(block.removeprefix("data: ")) for block in raw.decode().split("\n\n") if block]
    for event in events:
        kind = TranscriptionTextDeltaEvent if event["type"] == "transcript.text.delta" else TranscriptionTextDoneEvent
        kind.model_validate(event)
    return events


def test_png_bytes_is_a_valid_png():
    png = png_bytes("seed")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png.endswith(b"IEND\xaeB`\x82")
    idat = png[png.index(b"IDAT") + 4 : png.index(b"IEND") - 8]
    assert len(zlib.decompress(idat)) == 4 * (1 + 4 * 3)  # 4 rows: a filter byte and 4 RGB pixels
    assert png_bytes("seed") == png and png_bytes("other") != png


@pytest.mark.parametrize(
    ("body", "kind", "usage"),
    [
        ({"model": "dall-e-2", "prompt": "a cat"}, "b64_json", False),
        ({"model": "dall-e-3", "prompt": "a cat", "n": 3, "response_format": "url"}, "url", False),
        ({"model": "gpt-image-1", "prompt": "a cat", "n": 2, "response_format": "url"}, "b64_json", True),
    ],
)
def test_image_generations(client, body, kind, usage):
    reply = client.post("/v1/images/generations", json=body, headers=TOKEN)
    assert reply.status_code == 200
    answer = ImagesResponse.model_validate(reply.get_json())
    assert len(answer.data) == body.get("n", 1) and all(getattr(image, kind) for image in answer.data)
    assert (answer.usage is not None) == usage
    if kind == "b64_json":
        assert base64.b64decode(answer.data[0].b64_json).startswith(b"\x89PNG")
    if usage:
        assert answer.usage.total_tokens == answer.usage.input_tokens + answer.usage.output_tokens
    again = client.post("/v1/images/generations", json=body, headers=TOKEN)
    assert again.get_json()["data"] == reply.get_json()["data"]  # deterministic


@pytest.mark.parametrize(
    ("path", "files", "fields"),
    [
        ("/v1/images/edits", {"image": (b"PNG" * 10, "a.png")}, {"prompt": "a hat", "model": "gpt-image-1"}),
        ("/v1/images/edits", {"image[]": (b"PNG" * 10, "a.png")}, {"prompt": "a hat", "n": "2"}),
        ("/v1/images/variations", {"image": (b"PNG" * 10, "a.png")}, {"n": "2", "response_format": "url"}),
    ],
)
def test_image_uploads(client, path, files, fields):
    reply = upload(client, path, files, **fields)
    assert reply.status_code == 200, reply.get_data()
    answer = ImagesResponse.model_validate(reply.get_json())
    assert len(answer.data) == int(fields.get("n", 1))


def test_speech_is_speech_bytes_in_chunks(mock):
    reply = Client(mock).post("/v1/audio/speech", json=SPEECH, headers=TOKEN, buffered=False)
    assert reply.status_code == 200 and reply.headers["Content-Type"] == "audio/mpeg"
    assert "Content-Length" not in reply.headers  # gevent sends it chunked
    pieces = [piece for piece in reply.response if piece]
    assert len(pieces) == 8 and b"".join(pieces) == speech_bytes(SPEECH)
    assert mock.stats.streams_started == mock.stats.streams_completed == 1


@pytest.mark.parametrize(
    ("response_format", "content_type", "magic"),
    [("wav", "audio/wav", b"RIFF"), ("flac", "audio/flac", b"fLaC"), ("opus", "audio/ogg", b"OggS")],
)
def test_speech_formats(client, response_format, content_type, magic):
    body = {**SPEECH, "response_format": response_format}
    reply = client.post("/v1/audio/speech", json=body, headers=TOKEN)
    assert reply.headers["Content-Type"] == content_type
    assert reply.get_data() == speech_bytes(body) and reply.get_data().startswith(magic)
    assert speech_bytes(body) != speech_bytes(SPEECH)


def test_speech_drop_after_cuts_the_body(mock):
    socket = FakeSocket()
    body = {**SPEECH, "mock": {"drop_after": 2}}
    reply = Client(mock).post("/v1/audio/speech", json=body, headers=TOKEN, environ_base={"mock.socket": socket})
    assert len(reply.get_data()) < len(speech_bytes(SPEECH)) and socket.shut  # the body is read lazily
    assert mock.stats.streams_dropped == 1


@pytest.mark.parametrize(
    ("path", "response_format", "model_type"),
    [
        ("/v1/audio/transcriptions", "json", Transcription),
        ("/v1/audio/transcriptions", "verbose_json", TranscriptionVerbose),
        ("/v1/audio/translations", "json", Translation),
        ("/v1/audio/translations", "verbose_json", TranslationVerbose),
    ],
)
def test_transcripts(client, path, response_format, model_type):
    files = {"file": (b"R" * 5000, "talk.wav")}
    reply = upload(client, path, files, model="whisper-1", response_format=response_format)
    assert reply.status_code == 200, reply.get_data()
    answer = model_type.model_validate(reply.get_json())
    assert answer.text == transcript_text(5000, "talk.wav", translate="translations" in path)
    if model_type is Transcription:
        assert answer.usage.type == "tokens" and answer.usage.total_tokens == 5 + 7


def test_transcript_as_text(client):
    files = {"file": (b"R" * 10, "a.mp3")}
    reply = upload(client, "/v1/audio/transcriptions", files, model="w", response_format="text")
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert reply.get_data(as_text=True) == "mock transcript of 10 bytes from a.mp3"


def test_transcription_stream(mock):
    reply = upload(Client(mock), "/v1/audio/transcriptions", {"file": (b"R" * 3000, "a.wav")}, model="w", stream="true")
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    events = data_events(reply.get_data())
    assert [e["type"] for e in events] == ["transcript.text.delta"] * 7 + ["transcript.text.done"]
    text = transcript_text(3000, "a.wav", translate=False)
    assert "".join(e["delta"] for e in events[:-1]) == events[-1]["text"] == text
    assert events[-1]["usage"] == {"type": "tokens", "input_tokens": 3, "output_tokens": 7, "total_tokens": 10}
    assert mock.stats.streams_completed == 1 and mock.stats.usage_total == 10


def test_translations_ignore_stream(client):
    reply = upload(client, "/v1/audio/translations", {"file": (b"R", "a.wav")}, model="w", stream="true")
    assert reply.get_json() == {"text": "mock translation of 1 bytes from a.wav"}


def test_moderations(client):
    body = {"input": ["I will kill the process", "a nice day"], "model": "omni-moderation-latest"}
    reply = client.post("/v1/moderations", json=body, headers=TOKEN)
    answer = ModerationCreateResponse.model_validate(reply.get_json())
    assert [r.flagged for r in answer.results] == [True, False]
    assert answer.results[0].categories.violence and answer.results[0].category_scores.violence > 0.5
    assert not answer.results[1].categories.violence
    single = client.post("/v1/moderations", json={"input": "hello"}, headers=TOKEN).get_json()
    assert single["model"] == "omni-moderation-latest" and len(single["results"]) == 1
    parts = {"input": [{"type": "text", "text": "bomb"}, {"type": "image_url", "image_url": {"url": "x"}}]}
    results = client.post("/v1/moderations", json=parts, headers=TOKEN).get_json()["results"]
    assert [r["flagged"] for r in results] == [True, False]  # an image part is no text


@pytest.mark.parametrize(
    ("query", "document", "score"),
    [("red apple", "a red apple pie", 1.0), ("red apple", "Green APPLE", 0.5), ("red", "blue", 0.0), ("", "x", 0.0)],
)
def test_overlap(query, document, score):
    assert overlap(query, document) == score


def test_rerank(client):
    body = {"model": "rerank-v1", "query": "red apple", "documents": ["green apple", {"text": "red apple pie"}, "car"]}
    answer = client.post("/v1/rerank", json={**body, "top_n": 2}, headers=TOKEN).get_json()
    assert answer["model"] == "rerank-v1" and answer["id"].startswith("rerank-")
    assert answer["results"] == [
        {"index": 1, "relevance_score": 1.0, "document": {"text": "red apple pie"}},
        {"index": 0, "relevance_score": 0.5, "document": {"text": "green apple"}},
    ]
    assert answer["usage"] == {"total_tokens": 2 + 2 + 3 + 1}
    plain = client.post("/v1/rerank", json={**body, "return_documents": False}, headers=TOKEN).get_json()
    assert [r["index"] for r in plain["results"]] == [1, 0, 2] and "document" not in plain["results"][0]


FORM = {"file": (b"R" * 10, "a.wav")}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/images/generations", {"model": "dall-e-2"}, "prompt"),
        ("/v1/images/generations", {"prompt": "x", "n": 0}, "n"),
        ("/v1/images/generations", [1], None),
        ("/v1/audio/speech", {"model": "tts-1", "voice": "alloy"}, "input"),
        ("/v1/audio/speech", {**SPEECH, "response_format": "ogg"}, "response_format"),
        ("/v1/moderations", {"model": "m"}, "input"),
        ("/v1/moderations", {"input": [1, 2]}, "input"),
        ("/v1/rerank", {"query": "q", "documents": ["d"]}, "model"),
        ("/v1/rerank", {"model": "r", "query": "q", "documents": [1]}, "documents"),
        ("/v1/rerank", {"model": "r", "query": "q", "documents": ["d"], "top_n": -1}, "top_n"),
        ("/v1/audio/transcriptions", {"model": "w", "file": "not a file"}, None),  # JSON, not a form
    ],
)
def test_bad_json_bodies(client, path, body, param):
    reply = client.post(path, json=body, headers=TOKEN)
    assert reply.status_code == 400
    error = reply.get_json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


@pytest.mark.parametrize(
    ("path", "files", "fields", "param"),
    [
        ("/v1/images/edits", {"mask": (b"x", "m.png")}, {"prompt": "x"}, "image"),
        ("/v1/images/variations", {}, {"n": "1"}, "image"),
        ("/v1/audio/transcriptions", {}, {"model": "w"}, "file"),
        ("/v1/audio/transcriptions", FORM, {}, "model"),
        ("/v1/audio/transcriptions", FORM, {"model": "w", "response_format": "srt"}, "response_format"),
        ("/v1/audio/translations", {"image": (b"x", "a.wav")}, {"model": "w"}, "file"),
    ],
)
def test_bad_forms(client, path, files, fields, param):
    reply = upload(client, path, files, **fields)
    assert reply.status_code == 400
    assert reply.get_json()["error"]["param"] == param


def test_a_broken_multipart_body_is_a_400(client):
    headers = {**TOKEN, "Content-Type": "multipart/form-data; boundary=abc"}
    reply = client.post("/v1/audio/transcriptions", data=b"--abc\r\nContent-Disposition: form-data", headers=headers)
    assert reply.status_code == 400 and reply.get_json()["error"]["code"] == "invalid_multipart"


def test_multipart_is_recorded_as_fields_and_sizes(client):
    upload(client, "/v1/audio/transcriptions", {"file": (b"R" * 1234, "a.wav")}, model="w", language="en")
    recent = client.get("/_mock/stats").get_json()["recent"][-1]
    assert recent["path"] == "/v1/audio/transcriptions"
    assert recent["headers"]["Content-Type"].startswith("multipart/form-data; boundary=")
    assert recent["body"]["form"] == {"model": "w", "language": "en"}
    file = {"name": "file", "filename": "a.wav", "content_type": "audio/x-wav", "size": 1234}
    assert recent["body"]["files"] == [file]  # the size, not the bytes


def test_a_form_field_mock_overrides_options(client):
    reply = upload(client, "/v1/audio/transcriptions", FORM, model="w", mock=json.dumps({"status": 503}))
    assert reply.status_code == 503


@pytest.mark.parametrize(
    ("token", "status"),
    [("limited-1", 429), ("revoked-1", 403), ("expired-1", 401), ("broken-1", 500), ("", 401)],
)
@pytest.mark.parametrize("path", ["/v1/images/edits", "/v1/audio/transcriptions", "/v1/audio/speech", "/v1/rerank"])
def test_token_faults_apply_to_every_path(client, path, token, status):
    headers = {"Authorization": f"Bearer {token}"} if token else {"X-No-Token": "1"}
    if path in ("/v1/images/edits", "/v1/audio/transcriptions"):
        reply = upload(client, path, {"image": (b"x", "a.png"), "file": (b"x", "a.wav")}, headers, model="w")
    else:
        reply = client.post(path, json={**SPEECH, "query": "q", "documents": []}, headers=headers)
    assert reply.status_code == status


def test_strict_edge_sees_a_transcription_stream_as_a_stream():
    client = Client(MockUpstream(Options(delay=0, strict_edge=True)))
    headers = {**TOKEN, "User-Agent": "OpenAI/Python 3.57.0"}
    refused = upload(client, "/v1/audio/transcriptions", FORM, headers, model="w", stream="true")
    assert refused.status_code == 403
    sse = {**headers, "Accept": "text/event-stream"}
    assert upload(client, "/v1/audio/transcriptions", FORM, sse, model="w", stream="true").status_code == 200
    assert upload(client, "/v1/audio/transcriptions", FORM, headers, model="w", stream="false").status_code == 200


def test_get_is_not_allowed(client):
    assert client.get("/v1/images/generations", headers=TOKEN).status_code == 405
