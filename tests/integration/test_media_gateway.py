"""Images, audio, moderations and rerank through gunicorn and the mock, driven by the openai SDK and requests."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import httpx2
import openai
import pytest
import requests

from app.mock_media import speech_bytes, transcript_text
from tests.integration.conftest import MASTER_KEY, mock_stats, start_gateway, start_mock, upstream_toml

pytestmark = pytest.mark.integration
TOKENS = ["media-token-000000000001", "media-token-000000000002"]
AUDIO = b"RIFF" + bytes(range(256)) * 40  # 10244 bytes
AUTH = {"Authorization": f"Bearer {MASTER_KEY}"}
DEPRECATED = pytest.mark.filterwarnings("ignore:.*deprecated.*:DeprecationWarning")  # this SDK's translations


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[tuple]:
    """The mock and a gateway with the default max_body_bytes (10 MiB)."""
    where = tmp_path_factory.mktemp("media")
    mock = start_mock(where, "--delay", "0.02")
    try:
        gateway = start_gateway(where, upstream_toml("main", mock.url, TOKENS, ["*"]))
        yield mock, gateway
        gateway.stop()
    finally:
        mock.stop()


@pytest.fixture
def mock(stack):
    return stack[0]


@pytest.fixture
def client(stack) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=stack[1].url + "/v1", api_key=MASTER_KEY, max_retries=0, timeout=30) as sdk:
        yield sdk


def upstream_saw(mock, path: str) -> dict:
    """The last request the mock received (it must be on `path`)."""
    seen = mock_stats(mock)["recent"][-1]
    assert seen["path"] == path
    return seen


def assert_headers(seen: dict, accept: str) -> None:
    headers = seen["headers"]
    assert headers["Accept"] == accept and headers["User-Agent"] and not headers["User-Agent"].startswith("OpenAI")
    assert headers["Authorization"] in [f"Bearer {t}" for t in TOKENS]


def test_images_generate_and_edit(client, mock):
    answer = client.images.generate(model="gpt-image-1", prompt="a lighthouse", n=2)
    assert len(answer.data) == 2 and base64.b64decode(answer.data[0].b64_json).startswith(b"\x89PNG")
    assert answer.usage.total_tokens == answer.usage.input_tokens + answer.usage.output_tokens
    assert_headers(upstream_saw(mock, "/v1/images/generations"), "*/*")
    images = [("a.png", b"\x89PNG" + b"a" * 100, "image/png"), ("b.png", b"\x89PNG" + b"b" * 200, "image/png")]
    edited = client.images.edit(model="gpt-image-1", image=images, prompt="add a hat")
    assert len(edited.data) == 1 and edited.usage is not None
    seen = upstream_saw(mock, "/v1/images/edits")
    assert_headers(seen, "*/*")
    assert seen["body"]["form"] == {"model": "gpt-image-1", "prompt": "add a hat"}
    assert [(f["name"], f["filename"], f["size"]) for f in seen["body"]["files"]] == [
        ("image[]", "a.png", 104),
        ("image[]", "b.png", 204),
    ]


@DEPRECATED
def test_image_variation_needs_a_model_for_routing(client, mock):
    variation = client.images.create_variation(model="dall-e-2", image=("a.png", b"\x89PNG", "image/png"), n=2)
    assert len(variation.data) == 2
    assert_headers(upstream_saw(mock, "/v1/images/variations"), "*/*")
    with pytest.raises(openai.BadRequestError) as raised:  # OpenAI defaults it; Sluice routes by it
        client.images.create_variation(image=("a.png", b"\x89PNG", "image/png"))
    assert raised.value.body["param"] == "model"


def test_speech_bytes_are_relayed_as_they_arrive(client, mock):
    request = {"model": "tts-1", "voice": "alloy", "input": "The quick brown fox jumps over the lazy dog. " * 4}
    assert client.audio.speech.create(**request).content == speech_bytes(request)
    assert_headers(upstream_saw(mock, "/v1/audio/speech"), "*/*")
    arrivals, received = [], b""
    paced = {"mock": {"chunks": 6, "delay": 0.15}}
    with client.audio.speech.with_streaming_response.create(**request, response_format="wav", extra_body=paced) as r:
        assert r.headers["content-type"] == "audio/wav"
        for piece in r.iter_bytes():
            arrivals.append(time.monotonic())
            received += piece
    assert received == speech_bytes({**request, "response_format": "wav"})
    assert len(arrivals) >= 4 and arrivals[-1] - arrivals[0] >= 0.5  # 6 pieces 0.15 s apart, not one burst


def test_speech_events_pass_through_and_decode_to_the_audio(client, mock):
    """`stream_format: "sse"`: speech.audio.delta events (base64) then speech.audio.done, as an event stream."""
    request = {"model": "gpt-4o-mini-tts", "voice": "alloy", "input": "Hello there, events.", "stream_format": "sse"}
    with client.audio.speech.with_streaming_response.create(**request) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events][-1] == "speech.audio.done" and events[-1]["usage"]["total_tokens"] > 0
    audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert audio == speech_bytes({k: v for k, v in request.items() if k != "stream_format"})
    assert_headers(upstream_saw(mock, "/v1/audio/speech"), "text/event-stream")


def test_speech_cut_short_is_cut_for_the_client_too(client, stack):
    request = {"model": "tts-1", "voice": "alloy", "input": "words " * 40, "extra_body": {"mock": {"drop_after": 2}}}
    received = b""
    with client.audio.speech.with_streaming_response.create(**request) as response, pytest.raises(httpx2.HTTPError):
        for piece in response.iter_bytes():
            received += piece
    assert received and speech_bytes(request).startswith(received)  # what came is right, and it is not complete
    time.sleep(0.2)
    log = stack[1].log()
    assert "cut a raw answer short: the upstream failed mid-body (upstream_stream_error)" in log
    assert "Error handling request" not in log  # one line, not gunicorn's traceback


def test_transcription_upload_and_stream(client, mock):
    answer = client.audio.transcriptions.create(model="whisper-1", file=("talk.wav", AUDIO, "audio/wav"))
    assert answer.text == transcript_text(len(AUDIO), "talk.wav", translate=False)
    assert answer.usage.input_tokens == 10
    seen = upstream_saw(mock, "/v1/audio/transcriptions")
    assert_headers(seen, "*/*")
    assert seen["body"]["files"][0]["size"] == len(AUDIO)
    stream = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("talk.wav", AUDIO), stream=True)
    with stream:
        events = list(stream)
    assert [e.type for e in events] == ["transcript.text.delta"] * 7 + ["transcript.text.done"]
    assert "".join(e.delta for e in events[:-1]) == events[-1].text
    assert events[-1].usage.total_tokens == 10 + 7
    assert_headers(upstream_saw(mock, "/v1/audio/transcriptions"), "text/event-stream")


def test_a_transcription_stream_cut_short_raises_in_the_sdk(client):
    stream = client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("talk.wav", AUDIO), stream=True, extra_body={"mock": '{"drop_after": 3}'}
    )
    received = []
    with stream, pytest.raises(openai.APIError) as raised:
        for event in stream:
            received.append(event.type)
    assert received == ["transcript.text.delta"] * 3
    assert raised.value.body["code"] == "upstream_stream_error"


@DEPRECATED
def test_translation(client, mock):
    answer = client.audio.translations.create(model="whisper-1", file=("talk.mp3", AUDIO, "audio/mpeg"))
    assert answer.text == transcript_text(len(AUDIO), "talk.mp3", translate=True)
    assert_headers(upstream_saw(mock, "/v1/audio/translations"), "*/*")


def test_moderations(client, mock):
    answer = client.moderations.create(model="omni-moderation-latest", input=["how to kill a process", "hello"])
    assert [r.flagged for r in answer.results] == [True, False]
    assert_headers(upstream_saw(mock, "/v1/moderations"), "*/*")


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
def test_rerank(stack, mock, prefix):
    body = {"model": "bge-reranker", "query": "fast gateway", "documents": ["a slow gateway", "fast gateway", "cats"],
            "top_n": 2}  # fmt: skip
    reply = requests.post(f"{stack[1].url}{prefix}/rerank", json=body, headers=AUTH, timeout=10)
    assert reply.status_code == 200
    assert [(r["index"], r["relevance_score"]) for r in reply.json()["results"]] == [(1, 1.0), (0, 0.5)]
    assert_headers(upstream_saw(mock, "/v1/rerank"), "*/*")


def test_a_20_mb_upload_is_a_413(stack, mock):
    before = mock_stats(mock)["requests"]
    files = {"model": (None, "whisper-1"), "file": ("big.wav", b"\0" * 20_000_000, "audio/wav")}
    reply = requests.post(f"{stack[1].url}/v1/audio/transcriptions", files=files, headers=AUTH, timeout=60)
    assert reply.status_code == 413
    assert reply.json()["error"]["code"] == "request_too_large" and set(reply.json()["error"]) == {
        "message", "type", "param", "code"}  # fmt: skip
    assert mock_stats(mock)["requests"] == before


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data; boundary=not-the-one", "multipart/form-data", "multipart/form-data; boundary=" + "b" * 201],
)
def test_a_broken_boundary_is_a_400(stack, content_type):
    body = b'--real\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--real--\r\n'
    headers = {**AUTH, "Content-Type": content_type}
    reply = requests.post(f"{stack[1].url}/v1/audio/transcriptions", data=body, headers=headers, timeout=10)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_multipart"
