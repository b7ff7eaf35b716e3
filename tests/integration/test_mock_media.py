"""The mock upstream's images, audio, moderations and rerank as a process, driven by the openai SDK and requests."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import openai
import pytest
import requests

from app.mock_media import speech_bytes, transcript_text
from tests.integration.conftest import mock_stats

pytestmark = pytest.mark.integration
TOKEN = "good-token-0001"
AUDIO = b"RIFF" + bytes(range(256)) * 40  # 10244 bytes


@pytest.fixture
def client(mock) -> Iterator[openai.OpenAI]:
    # Closed after each test: a client left to the garbage collector raises a ResourceWarning later.
    with openai.OpenAI(base_url=mock.url + "/v1", api_key=TOKEN, max_retries=0, timeout=20) as sdk:
        yield sdk


def test_images_generate(client):
    answer = client.images.generate(model="gpt-image-1", prompt="a lighthouse", n=2)
    assert len(answer.data) == 2 and answer.data[0].b64_json != answer.data[1].b64_json
    assert base64.b64decode(answer.data[0].b64_json).startswith(b"\x89PNG")
    assert answer.usage.total_tokens == answer.usage.input_tokens + answer.usage.output_tokens
    urls = client.images.generate(model="dall-e-3", prompt="a lighthouse", response_format="url")
    assert urls.data[0].url.startswith("https://") and urls.usage is None


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # this SDK deprecates create_variation
def test_images_edit_uploads_the_files(client, mock):
    images = [("a.png", b"\x89PNG" + b"a" * 100, "image/png"), ("b.png", b"\x89PNG" + b"b" * 200, "image/png")]
    answer = client.images.edit(model="gpt-image-1", image=images, prompt="add a hat")
    assert len(answer.data) == 1 and answer.usage is not None
    body = mock_stats(mock)["recent"][-1]["body"]
    assert body["form"] == {"model": "gpt-image-1", "prompt": "add a hat"}
    assert [(f["name"], f["filename"], f["size"]) for f in body["files"]] == [
        ("image[]", "a.png", 104),
        ("image[]", "b.png", 204),
    ]
    variation = client.images.create_variation(image=("a.png", b"\x89PNG", "image/png"), n=2)
    assert len(variation.data) == 2


def test_images_edit_without_an_image_is_a_400(mock):
    reply = requests.post(f"{mock.url}/v1/images/edits", headers={"Authorization": f"Bearer {TOKEN}"},
                          files={"prompt": (None, "x"), "mask": ("m.png", b"x")}, timeout=10)  # fmt: skip
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "image"


def test_speech_bytes_arrive_in_paced_chunks(client):
    request = {"model": "tts-1", "voice": "alloy", "input": "The quick brown fox jumps over the lazy dog. " * 4}
    assert client.audio.speech.create(**request).content == speech_bytes(request)
    arrivals, received = [], b""
    with client.audio.speech.with_streaming_response.create(**request, response_format="wav") as response:
        assert response.headers["content-type"] == "audio/wav"
        assert response.headers["transfer-encoding"] == "chunked"
        for piece in response.iter_bytes():
            arrivals.append(time.monotonic())
            received += piece
    assert received == speech_bytes({**request, "response_format": "wav"})
    assert len(arrivals) >= 4 and arrivals[-1] - arrivals[0] >= 0.1  # 8 pieces, 0.02 s apart


def test_transcription(client):
    answer = client.audio.transcriptions.create(model="whisper-1", file=("talk.wav", AUDIO, "audio/wav"))
    assert answer.text == transcript_text(len(AUDIO), "talk.wav", translate=False)
    assert answer.usage.type == "tokens" and answer.usage.input_tokens == 10
    text = client.audio.transcriptions.create(model="whisper-1", file=("t.wav", AUDIO), response_format="text")
    assert text == transcript_text(len(AUDIO), "t.wav", translate=False)
    verbose = client.audio.transcriptions.create(
        model="whisper-1", file=("t.wav", AUDIO), response_format="verbose_json"
    )
    assert verbose.segments[0].text == verbose.text and verbose.usage.type == "duration"


def test_transcription_stream(client, mock):
    before = mock_stats(mock)
    stream = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("talk.wav", AUDIO), stream=True)
    with stream:
        events = list(stream)
    assert [e.type for e in events] == ["transcript.text.delta"] * 7 + ["transcript.text.done"]
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == transcript_text(len(AUDIO), "talk.wav", False)
    assert events[-1].usage.total_tokens == 10 + 7
    after = mock_stats(mock)
    assert after["streams_completed"] == before["streams_completed"] + 1
    assert after["recent"][-1]["body"]["form"]["stream"] == "true"


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # this SDK deprecates translations
def test_translation(client):
    answer = client.audio.translations.create(model="whisper-1", file=("talk.mp3", AUDIO, "audio/mpeg"))
    assert answer.text == transcript_text(len(AUDIO), "talk.mp3", translate=True)


def test_moderations(client):
    answer = client.moderations.create(model="omni-moderation-latest", input=["how to kill a process", "hello"])
    assert [r.flagged for r in answer.results] == [True, False] and answer.results[0].categories.violence
    assert answer.model == "omni-moderation-latest"


def test_rerank(mock):
    body = {"model": "bge-reranker", "query": "fast gateway", "documents": ["a slow gateway", "fast gateway", "cats"],
            "top_n": 2}  # fmt: skip
    reply = requests.post(f"{mock.url}/v1/rerank", json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert reply.status_code == 200
    assert [(r["index"], r["relevance_score"]) for r in reply.json()["results"]] == [(1, 1.0), (0, 0.5)]
    assert reply.json()["usage"]["total_tokens"] == 2 + 3 + 2 + 1


def test_token_faults_reach_the_sdk(mock):
    with openai.OpenAI(base_url=mock.url + "/v1", api_key="limited-0001", max_retries=0, timeout=20) as client:
        with pytest.raises(openai.RateLimitError):
            client.audio.transcriptions.create(model="whisper-1", file=("a.wav", AUDIO))
        with pytest.raises(openai.RateLimitError):
            client.audio.speech.create(model="tts-1", voice="alloy", input="hi")
