"""The mock upstream's knobs for routing tests: per-model options (/_mock/models, --model-options), context-window
and content-policy errors in each dialect's shape, requests counted per model, the model echoed exactly."""

from __future__ import annotations

import io
import json
import time

import pytest
from werkzeug.test import Client

from app import mock_upstream
from app.mock_chat import prompt_tokens as chat_tokens
from app.mock_messages import input_tokens as messages_tokens
from app.mock_responses import prompt_tokens as responses_tokens
from app.mock_upstream import MockUpstream, Options

OPENAI_HEADERS = {"Authorization": "Bearer good-token-0001"}
ANTHROPIC_HEADERS = {"x-api-key": "good-key-0001", "anthropic-version": "2023-06-01"}
DIALECTS = ("chat", "completions", "responses", "messages")
SAFETY = "Your request was rejected as a result of our safety system."
REFUSED_OPENAI = {
    "error": {"message": SAFETY, "type": "invalid_request_error", "param": None, "code": "content_policy_violation"}
}
REFUSED_ANTHROPIC = {
    "type": "error",
    "error": {"type": "invalid_request_error", "message": "Output blocked by content filtering policy"},
}


def body_of(dialect: str, model: str, **extra) -> dict:
    if dialect == "chat":
        return {"model": model, "messages": [{"role": "user", "content": "Hi there"}], **extra}
    if dialect == "completions":
        return {"model": model, "prompt": "Hi there", **extra}
    if dialect == "responses":
        return {"model": model, "input": "Hi there", **extra}
    return {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "Hi there"}], **extra}


def send(client: Client, dialect: str, model: str = "mock-gpt", buffered: bool = True, **extra):
    path = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "responses": "/v1/responses",
            "messages": "/v1/messages"}[dialect]  # fmt: skip
    headers = ANTHROPIC_HEADERS if dialect == "messages" else OPENAI_HEADERS
    return client.post(path, json=body_of(dialect, model, **extra), headers=headers, buffered=buffered)


def events(raw: bytes) -> list[dict]:
    """The JSON data of every SSE event ([DONE] left out)."""
    found = []
    for block in raw.decode().split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                found.append(json.loads(line[6:]))
    return found


def reply_text(dialect: str, answer: dict) -> str:
    if dialect == "chat":
        return answer["choices"][0]["message"]["content"]
    if dialect == "completions":
        return answer["choices"][0]["text"]
    if dialect == "responses":
        return answer["output"][0]["content"][0]["text"]
    return answer["content"][0]["text"]


def prompt_of(dialect: str, model: str) -> int:
    """The prompt tokens the mock counts for `body_of(dialect, model)`."""
    count = {"chat": chat_tokens, "completions": chat_tokens, "responses": responses_tokens}
    return count.get(dialect, messages_tokens)(body_of(dialect, model))


def set_models(client: Client, overrides: object):
    return client.post("/_mock/models", data=json.dumps(overrides), content_type="application/json")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_model_options_apply_to_that_model_only(client, dialect):
    assert set_models(client, {"mock-short": {"chunks": 3}}).status_code == 200
    short, plain = send(client, dialect, "mock-short").get_json(), send(client, dialect, "mock-plain").get_json()
    assert len(reply_text(dialect, short).split()) == 3 and short["model"] == "mock-short"
    assert len(reply_text(dialect, plain).split()) == 8 and plain["model"] == "mock-plain"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_body_mock_key_wins_over_model_options(client, dialect):
    set_models(client, {"mock-short": {"chunks": 3}})
    answer = send(client, dialect, "mock-short", mock={"chunks": 5}).get_json()
    assert len(reply_text(dialect, answer).split()) == 5


@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_first_delay_per_model_delays_the_first_event(client, dialect, streaming):
    set_models(client, {"mock-slow": {"first_delay": 0.2}})
    started = time.monotonic()
    reply = send(client, dialect, "mock-slow", buffered=False, stream=streaming)
    first = None
    for piece in reply.response:  # the first data (or the JSON body) comes after the delay
        if first is None and (b"data: " in piece or not streaming):
            first = time.monotonic() - started
    reply.close()
    assert reply.status_code == 200 and first is not None and first >= 0.2


@pytest.mark.parametrize("source", ["body", "model"])
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_prompt_over_the_context_window_is_a_400_in_the_dialects_shape(client, mock, dialect, streaming, source):
    tokens = prompt_of(dialect, "mock-small")
    if source == "model":
        set_models(client, {"mock-small": {"context_window": tokens - 1}})
        reply = send(client, dialect, "mock-small", stream=streaming)
    else:
        reply = send(client, dialect, "mock-small", stream=streaming, mock={"context_window": tokens - 1})
    assert reply.status_code == 400 and reply.headers["Content-Type"] == "application/json"
    if dialect == "messages":
        message = f"prompt is too long: {tokens} tokens > {tokens - 1} maximum"
        assert reply.get_json() == {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    else:
        message = (
            f"This model's maximum context length is {tokens - 1} tokens. However, your messages resulted in "
            f"{tokens} tokens. Please reduce the length of the messages."
        )
        assert reply.get_json() == {"error": {"message": message, "type": "invalid_request_error",
                                              "param": "messages", "code": "context_length_exceeded"}}  # fmt: skip
    assert mock.stats.streams_started == 0 and mock.stats.models == {"mock-small": 1}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_prompt_that_fits_the_context_window_is_answered(client, dialect):
    set_models(client, {"mock-small": {"context_window": prompt_of(dialect, "mock-small")}})
    assert send(client, dialect, "mock-small").status_code == 200
    assert send(client, dialect, "mock-small", stream=True).status_code == 200


@pytest.mark.parametrize("source", ["body", "model"])
@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_refuse_is_a_content_policy_400_in_the_dialects_shape(client, mock, dialect, streaming, source):
    if source == "model":
        set_models(client, {"mock-prude": {"refuse": True}})
        reply = send(client, dialect, "mock-prude", stream=streaming)
    else:
        reply = send(client, dialect, "mock-prude", stream=streaming, mock={"refuse": True})
    assert reply.status_code == 400 and reply.headers["Content-Type"] == "application/json"
    assert reply.get_json() == (REFUSED_ANTHROPIC if dialect == "messages" else REFUSED_OPENAI)
    assert mock.stats.streams_started == 0


@pytest.mark.parametrize("dialect", ["chat", "messages"])
def test_auth_and_the_status_option_come_before_the_policy_errors(client, dialect):
    set_models(client, {"mock-prude": {"refuse": True}})
    assert send(client, dialect, "mock-prude", mock={"status": 503}).status_code == 503
    headers = {"x-api-key": "revoked-1", "anthropic-version": "2023-06-01"}
    if dialect == "chat":
        headers = {"Authorization": "Bearer revoked-1"}
    body = body_of(dialect, "mock-prude")
    path = "/v1/chat/completions" if dialect == "chat" else "/v1/messages"
    assert client.post(path, json=body, headers=headers).status_code == 403


@pytest.mark.parametrize("dialect", ["chat", "completions"])
def test_every_chunk_echoes_the_model_exactly(client, dialect):
    model = "Vendor/Odd-Model:v1.2@eu"
    chunks = events(send(client, dialect, model, stream=True, stream_options={"include_usage": True}).get_data())
    assert len(chunks) == 9 and {chunk["model"] for chunk in chunks} == {model}


def test_responses_objects_and_events_echo_the_model_exactly(client):
    model = "Vendor/Odd-Model:v1.2@eu"
    assert send(client, "responses", model).get_json()["model"] == model
    shown = [e["response"]["model"] for e in events(send(client, "responses", model, stream=True).get_data())
             if "response" in e]  # fmt: skip
    assert shown == [model] * 3  # created, in_progress, completed


def test_messages_echo_the_model_exactly(client):
    model = "Vendor/Odd-Model:v1.2@eu"
    assert send(client, "messages", model).get_json()["model"] == model
    first = events(send(client, "messages", model, stream=True).get_data())[0]
    assert first["type"] == "message_start" and first["message"]["model"] == model


def test_stats_count_requests_per_model_in_every_dialect_and_reset_clears_them(client):
    set_models(client, {"mock-prude": {"refuse": True}})
    for dialect in DIALECTS:
        send(client, dialect, "mock-a")
        send(client, dialect, "mock-prude", stream=True)  # refused, still counted
    client.post("/v1/embeddings", json={"model": "mock-embed", "input": "x"}, headers=OPENAI_HEADERS)
    form = {"model": "mock-whisper", "file": (io.BytesIO(b"RIFF"), "a.wav")}
    client.post("/v1/audio/transcriptions", data=form, headers=OPENAI_HEADERS)
    stats = client.get("/_mock/stats").get_json()
    assert stats["models"] == {"mock-a": 4, "mock-prude": 4, "mock-embed": 1, "mock-whisper": 1}
    assert client.post("/_mock/reset").status_code == 200
    assert client.get("/_mock/stats").get_json()["models"] == {}
    assert client.get("/_mock/models").get_json() == {"mock-prude": {"refuse": True}}  # overrides stay


def test_models_are_set_read_and_cleared(client):
    overrides = {"mock-slow": {"first_delay": 0.4, "chunks": 2}, "mock-small": {"context_window": 10}}
    reply = set_models(client, overrides)
    assert reply.status_code == 200 and reply.get_json() == overrides
    assert client.get("/_mock/models").get_json() == overrides
    assert set_models(client, {"mock-prude": {"refuse": True}}).get_json() == {"mock-prude": {"refuse": True}}
    assert set_models(client, {}).get_json() == {} and client.get("/_mock/models").get_json() == {}


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"mock-a": {"speed": 2}}, "Unknown mock option 'speed'"),
        ({"mock-a": {"context_window": "10"}}, "'context_window' of model 'mock-a' must be int | None"),
        ({"mock-a": {"refuse": 1}}, "'refuse' of model 'mock-a' must be bool"),
        ({"mock-a": {"chunks": True}}, "'chunks' of model 'mock-a' must be int"),
        ({"mock-a": ["refuse"]}, "options of model 'mock-a' must be a JSON object"),
        (["mock-a"], "Expected a JSON object"),
    ],
)
def test_bad_model_options_are_a_400_and_change_nothing(client, overrides, words):
    set_models(client, {"mock-b": {"chunks": 2}})
    reply = set_models(client, overrides)
    assert reply.status_code == 400
    error = reply.get_json()["error"]
    assert words in error["message"] and error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_mock_options" and "param" in error
    assert client.get("/_mock/models").get_json() == {"mock-b": {"chunks": 2}}


def test_models_route_answers_get_and_post_only(client):
    assert client.delete("/_mock/models").status_code == 405
    assert client.post("/_mock/models", data=b"{not json", content_type="application/json").status_code == 400


def test_model_options_from_the_constructor_and_the_cli():
    client = Client(MockUpstream(Options(delay=0), {"mock-short": {"chunks": 2}}))
    assert len(reply_text("chat", send(client, "chat", "mock-short").get_json()).split()) == 2
    assert mock_upstream._model_options('{"m": {"refuse": true}}') == {"m": {"refuse": True}}
    with pytest.raises(ValueError, match="Unknown mock option"):
        MockUpstream(Options(), {"m": {"nope": 1}})


@pytest.mark.parametrize("text", ["{not json", '{"m": {"nope": 1}}', "[]"])
def test_bad_model_options_on_the_command_line_exit_before_listening(text, capsys):
    with pytest.raises(SystemExit) as exited:
        mock_upstream.main(["--port", "0", "--model-options", text])
    assert exited.value.code == 2 and "--model-options" in capsys.readouterr().err
