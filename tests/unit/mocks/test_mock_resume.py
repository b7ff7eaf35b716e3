"""The mock upstream's groundwork for stream resilience (issue 14): continuable replies (prefill and continue
modes), cuts mid-event and mid-character, multi-byte replies, error_after on every dialect, slowfirst tokens."""

from __future__ import annotations

import json
import time

import pytest
from werkzeug.test import Client

from app.mock_chat import reply_words
from app.mock_resume import continuation, cut_at, prefill_text, token_faults
from app.mock_upstream import TOKEN_FAULTS, MockUpstream, Options
from tests.unit.mocks.fakes import FakeSocket

PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages"}
OPENAI = {"Authorization": "Bearer good-token-0001"}
ANTHROPIC = {"x-api-key": "good-key-0001", "anthropic-version": "2023-06-01"}
WORDS = reply_words(8)
FULL = "".join(WORDS)
# The index of an event that carries reply text: the third delta of each dialect's stream.
TEXT_EVENT = {"chat": 2, "responses": 6, "messages": 5}
EVENT_COUNT = {"chat": 9, "responses": 16, "messages": 14}  # chat: 8 deltas + the usage chunk


def body_of(dialect: str, prefill: str | list | None = None, mode: str = "prefill", **extra) -> dict:
    messages: list[dict] = [{"role": "user", "content": "Hi there"}]
    if prefill is not None:
        messages.append({"role": "assistant", "content": prefill})
    if dialect == "responses":
        return {"model": "mock-gpt", "input": "Hi there", **extra}
    if dialect == "messages":
        return {"model": "mock-claude", "max_tokens": 100, "messages": messages, **extra}
    body = {"model": "mock-gpt", "messages": messages, "stream_options": {"include_usage": True}, **extra}
    if mode == "continue":
        body.update(continue_final_message=True, add_generation_prompt=False)
    return body


def post(client: Client, dialect: str, body: dict, sock: FakeSocket | None = None, token: str | None = None,
         buffered: bool = True):  # fmt: skip
    headers = dict(ANTHROPIC if dialect == "messages" else OPENAI)
    if token is not None:
        headers["x-api-key" if dialect == "messages" else "Authorization"] = (
            token if dialect == "messages" else f"Bearer {token}"
        )
    environ = {"mock.socket": sock or FakeSocket()}
    return client.post(PATHS[dialect], json=body, headers=headers, environ_overrides=environ, buffered=buffered)


def complete_events(raw: bytes) -> list[dict]:
    """The JSON data of every complete SSE event (ended by a blank line), `[DONE]` left out."""
    found = []
    for block in raw.split(b"\n\n")[:-1]:
        for line in block.decode().splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                found.append(json.loads(line[6:]))
    return found


def answer(client: Client, dialect: str, stream: bool, prefill=None, mode: str = "prefill", **mock) -> tuple:
    """The text and the completion tokens of one answer, streamed or plain."""
    reply = post(client, dialect, body_of(dialect, prefill, mode, stream=stream, mock=mock))
    assert reply.status_code == 200
    if not stream:
        data = reply.get_json()
        if dialect == "messages":
            return "".join(b["text"] for b in data["content"]), data["usage"]["output_tokens"]
        return data["choices"][0]["message"]["content"], data["usage"]["completion_tokens"]
    events = complete_events(reply.get_data())
    if dialect == "messages":
        text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
        return text, next(e for e in events if e["type"] == "message_delta")["usage"]["output_tokens"]
    text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    return text, events[-1]["usage"]["completion_tokens"]


@pytest.mark.parametrize(
    ("prefill", "rest"),
    [
        (None, WORDS),
        ("", WORDS),
        ("".join(WORDS[:1]), WORDS[1:]),
        ("".join(WORDS[:3]), WORDS[3:]),
        ("".join(WORDS[:3]).rstrip(), [" " + WORDS[3], *WORDS[4:]]),
        ("Hello fr", ["om ", *WORDS[2:]]),
        (FULL, [""]),
        (FULL.rstrip(), [" "]),
        ("Goodbye from", WORDS),
        ("from the", WORDS),
    ],
)
def test_continuation_is_the_rest_after_a_prefix(prefill, rest):
    got = continuation(WORDS, prefill)
    assert got == rest
    if prefill and FULL.startswith(prefill):
        assert prefill + "".join(got) == FULL


@pytest.mark.parametrize(
    ("messages", "text"),
    [
        ([{"role": "user", "content": "Hi"}], None),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello "}], "Hello "),
        ([{"role": "assistant", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]}],
         "Hello"),
        ([{"role": "assistant", "content": None, "tool_calls": []}], None),
        ([], None),
        ("not a list", None),
    ],
)  # fmt: skip
def test_prefill_text_is_the_final_assistant_text(messages, text):
    assert prefill_text(messages) == text


@pytest.mark.parametrize(
    ("token", "faults"),
    [
        ("slowfirst800-abc", {"first_delay": 0.8}),
        ("slowfirst0-abc", {"first_delay": 0.0}),
        ("slowfirst-abc", {}),
        ("slow-abc", {"first_delay": 30.0}),
        ("good-abc", {}),
        ("cut3-abc", {"drop_after": 3}),
        ("cut0-abc", {"drop_after": 0}),
        ("cutevent3-abc", {"cut_mid_event": 3}),
        ("cutchar12-abc", {"cut_mid_char": 12}),
        ("stall3-abc", {"stall_after": 3, "stall": 30.0}),
        ("stallhead-abc", {"header_delay": 30.0}),
        ("errorafter3-abc", {"error_after": 3}),
        ("errorfirst-abc", {"error_first": True}),
        ("cut-abc", {}),
        ("cutevent-abc", {}),
        ("good-cut3-abc", {}),  # a prefix, not anywhere in the token
    ],
)
def test_token_faults(token, faults):
    assert token_faults(token, TOKEN_FAULTS) == faults


@pytest.mark.parametrize(
    ("data", "seq", "options", "at"),
    [
        (b"data: abcd\n\n", 1, {"cut_mid_event": 1}, 6),
        (b"data: abcd\n\n", 0, {"cut_mid_event": 1}, None),
        ("data: café\n\n".encode(), 2, {"cut_mid_char": 2}, 10),
        ("data: 🚀\n\n".encode(), 2, {"cut_mid_char": 2}, 7),
        (b"data: plain\n\n", 2, {"cut_mid_char": 2}, 6),  # no multi-byte character: cut in the middle
        (b"data: abcd\n\n", 2, {}, None),
    ],
)
def test_cut_at(data, seq, options, at):
    assert cut_at(data, seq, Options(**options)) == at


@pytest.mark.parametrize("multibyte", [False, True])
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("dialect", "mode"), [("chat", "prefill"), ("chat", "continue"), ("messages", "prefill")])
@pytest.mark.parametrize("k", [0, 1, 3, 7, 8])
def test_prefix_plus_continuation_is_the_full_reply(client, dialect, mode, stream, multibyte, k):
    full, tokens = answer(client, dialect, stream, multibyte=multibyte)
    words = reply_words(8, multibyte)
    assert full == "".join(words) and tokens == 8
    head = "".join(words[:k])
    rest, generated = answer(client, dialect, stream, head, mode, multibyte=multibyte)
    assert head + rest == full and generated == 8 - k
    if k:  # the prefill sent without its trailing whitespace (as Anthropic requires): the rest starts with it
        rest, generated = answer(client, dialect, stream, head.rstrip(), mode, multibyte=multibyte)
        assert head.rstrip() + rest == full and generated == max(1, 8 - k)


@pytest.mark.parametrize(("generation_prompt", "status"), [(True, 400), (False, 200), (None, 200)])
def test_continue_with_a_generation_prompt_is_refused_as_vllm_does(client, generation_prompt, status):
    body = {**body_of("chat", "Hello ", "continue"), "add_generation_prompt": generation_prompt}
    reply = post(client, "chat", body)
    assert reply.status_code == status
    if status == 400:
        assert "continue_final_message" in reply.get_json()["error"]["message"]


def test_a_prefill_in_text_blocks_is_continued(client):
    blocks = [{"type": "text", "text": "".join(WORDS[:2])}]
    rest, generated = answer(client, "messages", False, blocks)
    assert rest == "".join(WORDS[2:]) and generated == 6


@pytest.mark.parametrize("dialect", ["chat", "messages"])
def test_a_prefill_that_is_not_a_prefix_gets_the_whole_reply(client, dialect):
    assert answer(client, dialect, True, "Something else entirely") == (FULL, 8)


@pytest.mark.parametrize("dialect", list(PATHS))
@pytest.mark.parametrize("n", [0, 1, "text"])
def test_cut_mid_event_sends_half_of_event_n_then_closes(client, mock, dialect, n):
    n = TEXT_EVENT[dialect] if n == "text" else n
    sock = FakeSocket()
    raw = post(client, dialect, body_of(dialect, stream=True, mock={"cut_mid_event": n}), sock).get_data()
    assert sock.shut and not raw.endswith(b"\n\n") and b"[DONE]" not in raw
    assert len(complete_events(raw)) == n
    tail = raw.split(b"\n\n")[-1]
    assert tail.startswith(b"data: " if dialect == "chat" else b"event: ")
    assert mock.stats.streams_dropped == 1 and mock.stats.streams_completed == 0


@pytest.mark.parametrize("dialect", list(PATHS))
def test_cut_mid_char_ends_inside_a_multibyte_character(client, mock, dialect):
    sock = FakeSocket()
    options = {"multibyte": True, "cut_mid_char": TEXT_EVENT[dialect]}
    raw = post(client, dialect, body_of(dialect, stream=True, mock=options), sock).get_data()
    assert sock.shut and not raw.endswith(b"\n\n")
    assert raw[-1] >= 0xC0  # the lead byte of a multi-byte character, without its continuation bytes
    with pytest.raises(UnicodeDecodeError, match="unexpected end of data"):
        raw.decode()
    assert raw[:-1].decode() and len(complete_events(raw)) == TEXT_EVENT[dialect]
    assert mock.stats.streams_dropped == 1


@pytest.mark.parametrize("dialect", list(PATHS))
def test_multibyte_replies_are_sent_as_raw_utf8(client, dialect):
    raw = post(client, dialect, body_of(dialect, stream=True, mock={"multibyte": True})).get_data()
    assert "café".encode() in raw and "🚀".encode() in raw and b"\\u" not in raw
    assert len(complete_events(raw)) == EVENT_COUNT[dialect]


@pytest.mark.parametrize("dialect", list(PATHS))
@pytest.mark.parametrize("n", [0, 3])
def test_drop_after_counts_events_alike(client, dialect, n):
    sock = FakeSocket()
    raw = post(client, dialect, body_of(dialect, stream=True, mock={"drop_after": n}), sock).get_data()
    assert sock.shut and raw.endswith(b"\n\n" if n else b"") and len(complete_events(raw)) == n


@pytest.mark.parametrize("dialect", list(PATHS))
def test_stall_after_pauses_before_event_n_alike(client, dialect):
    raw = post(client, dialect, body_of(dialect, stream=True, mock={"stall_after": 3, "stall": 0.1})).get_data()
    stamps = [e["mock_ts"] for e in complete_events(raw)]
    assert stamps[3] - stamps[2] >= 0.1 and stamps[2] - stamps[0] < 0.1


@pytest.mark.parametrize("n", [0, 3])
def test_error_after_on_chat_is_an_error_chunk_then_the_end(client, mock, n):
    raw = post(client, "chat", body_of("chat", stream=True, mock={"error_after": n})).get_data()
    events = complete_events(raw)
    assert len(events) == n + 1 and b"[DONE]" not in raw and raw.endswith(b"\n\n")
    assert set(events[-1]) == {"error"} and events[-1]["error"]["code"] == "server_overloaded"
    assert all("choices" in e for e in events[:-1]) and mock.stats.streams_completed == 1


@pytest.mark.parametrize("n", [0, 5])
def test_error_after_on_responses_is_an_error_event_then_the_end(client, n):
    raw = post(client, "responses", body_of("responses", stream=True, mock={"error_after": n})).get_data()
    events = complete_events(raw)
    assert len(events) == n + 1 and raw.endswith(b"\n\n")
    assert raw.split(b"\n\n")[-2].startswith(b"event: error\n")
    assert events[-1]["type"] == "error" and events[-1]["code"] == "server_overloaded"
    assert events[-1]["sequence_number"] == n
    assert not any(e["type"].startswith("response.completed") for e in events)


def test_error_after_on_messages_is_an_overloaded_error_event(client):
    events = complete_events(post(client, "messages", body_of("messages", stream=True, mock={"error_after": 4})).data)
    overloaded = {"type": "overloaded_error", "message": "Overloaded"}
    assert len(events) == 5 and events[-1]["type"] == "error" and events[-1]["error"] == overloaded


@pytest.mark.parametrize("dialect", list(PATHS))
def test_the_new_faults_apply_per_model(dialect):
    model = "mock-claude" if dialect == "messages" else "mock-gpt"
    mock = MockUpstream(Options(delay=0), {model: {"cut_mid_char": TEXT_EVENT[dialect], "multibyte": True}})
    sock = FakeSocket()
    raw = Client(mock).post(PATHS[dialect], json=body_of(dialect, stream=True),
                            headers=ANTHROPIC if dialect == "messages" else OPENAI,
                            environ_overrides={"mock.socket": sock}).get_data()  # fmt: skip
    assert sock.shut and raw[-1] >= 0xC0


def test_new_options_are_checked_per_model(client):
    reply = client.post("/_mock/models", json={"mock-gpt": {"cut_mid_event": "two"}})
    assert reply.status_code == 400 and "cut_mid_event" in reply.get_json()["error"]["message"]
    ok = {"mock-gpt": {"cut_mid_event": 2, "cut_mid_char": 3, "multibyte": True, "error_after": 4}}
    assert client.post("/_mock/models", json=ok).get_json() == ok


@pytest.mark.parametrize("dialect", list(PATHS))
@pytest.mark.parametrize("stream", [True, False])
def test_a_slowfirst_token_delays_the_first_event(client, dialect, stream):
    started = time.monotonic()
    reply = post(client, dialect, body_of(dialect, stream=stream), token="slowfirst150-abc", buffered=False)
    assert reply.status_code == 200
    chunks = iter(reply.response)
    if stream:  # the headers and a comment at once, then the first event
        assert next(chunks).startswith(b":")
    assert next(chunks) and time.monotonic() - started >= 0.15
    reply.close()


def terminal(dialect: str, raw: bytes) -> bool:
    """Whether the stream's own end arrived: `[DONE]`, `response.completed` or `message_stop`."""
    marker = {"chat": b"data: [DONE]", "responses": b"event: response.completed", "messages": b"event: message_stop"}
    return marker[dialect] in raw


@pytest.mark.parametrize("dialect", list(PATHS))
@pytest.mark.parametrize("n", [0, 3])
def test_a_cut_token_drops_after_n_events(client, mock, dialect, n):
    sock = FakeSocket()
    raw = post(client, dialect, body_of(dialect, stream=True), sock, token=f"cut{n}-abc").get_data()
    assert sock.shut and len(complete_events(raw)) == n and not terminal(dialect, raw)
    assert mock.stats.streams_dropped == 1


@pytest.mark.parametrize("dialect", list(PATHS))
def test_a_cutevent_token_cuts_inside_event_n(client, dialect):
    sock = FakeSocket()
    raw = post(client, dialect, body_of(dialect, stream=True), sock, token="cutevent3-abc").get_data()
    assert sock.shut and not raw.endswith(b"\n\n") and len(complete_events(raw)) == 3


@pytest.mark.parametrize("dialect", list(PATHS))
def test_a_cutchar_token_cuts_inside_a_character(client, dialect):
    sock = FakeSocket()
    body = body_of(dialect, stream=True, mock={"multibyte": True})
    raw = post(client, dialect, body, sock, token=f"cutchar{TEXT_EVENT[dialect]}-abc").get_data()
    assert sock.shut and raw[-1] >= 0xC0 and len(complete_events(raw)) == TEXT_EVENT[dialect]


@pytest.mark.parametrize("dialect", list(PATHS))
def test_a_stall_token_pauses_before_event_n(client, monkeypatch, dialect):
    monkeypatch.setattr("app.mock_resume.STALL_SECONDS", 0.1)  # the real stall is 30 s
    raw = post(client, dialect, body_of(dialect, stream=True), token="stall3-abc").get_data()
    stamps = [e["mock_ts"] for e in complete_events(raw)]
    assert stamps[3] - stamps[2] >= 0.1 and stamps[2] - stamps[0] < 0.1 and terminal(dialect, raw)


@pytest.mark.parametrize("dialect", list(PATHS))
def test_an_errorafter_token_sends_an_error_event_after_n(client, dialect):
    raw = post(client, dialect, body_of(dialect, stream=True), token="errorafter3-abc").get_data()
    events = complete_events(raw)
    assert len(events) == 4 and not terminal(dialect, raw)
    failed = ["error" in e or e.get("type") == "error" for e in events]  # chat: {"error": ...}; else type "error"
    assert failed == [False, False, False, True]
