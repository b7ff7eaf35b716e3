"""Resuming a chat-completions stream (app/dialects/resume_chat.py, resume.py): a stream cut after k events and
its continuation (the mock's own) reach every client dialect as one seamless stream with the full reply."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from app.dialects.anthropic_chat_stream import ChatToMessagesStream
from app.dialects.anthropic_messages import MESSAGES, MessagesFromChatRelay
from app.dialects.anthropic_wire import ANTHROPIC
from app.dialects.base import Dialect
from app.dialects.chat_events import DONE, is_done
from app.dialects.openai_chat import CHAT, COMPLETIONS, EMBEDDINGS, ChatRelay, chat_usage
from app.dialects.openai_responses import RESPONSES, TranslatedRelay
from app.dialects.responses_chat_stream import ChatStreamTranslator
from app.dialects.resume import FOLD_EVENTS, PACK_BYTES, Batch, Partial, add_counts, with_prefill
from app.dialects.resume_chat import ChatTranscript
from app.dialects.resume_messages import MessagesTranscript
from app.mock_chat import chunks
from app.mock_resume import continuation, continue_conflict, prefill_text
from app.mock_upstream import Options
from app.services import sse

USER = {"role": "user", "content": "hi"}


def leg_body(*messages: dict, usage: bool = True) -> dict:
    body: dict[str, Any] = {"model": "up-model", "messages": [USER, *messages], "stream": True}
    if usage:
        body["stream_options"] = {"include_usage": True}
    return body


def frame(chunk: dict) -> bytes:
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"


def upstream(body: dict, multibyte: bool = False) -> list[bytes]:
    """The mock's whole stream for this body (a final assistant message is continued)."""
    return [frame(chunk) for chunk in chunks(body, True, Options(multibyte=multibyte))] + [DONE]


def usage_in(events: list[bytes]) -> dict | None:
    found = [json.loads(e[6:])["usage"] for e in events if not is_done(e) and json.loads(e[6:]).get("usage")]
    return found[-1] if found else None


def resume(body: dict, cuts: list[int], mode: str = "prefill", multibyte: bool = False) -> tuple[list[bytes], dict]:
    """What the client's relay is fed: each attempt cut after `cuts[i]` events, then resumed; the last runs to
    its end. Also the usage every attempt reported, added up. Later resumes hand request() the body just sent."""
    transcript = CHAT.transcript()
    sent, out, spent = json.dumps(body).encode(), [], {}
    for cut in [*cuts, None]:
        events = upstream(json.loads(sent), multibyte)[:cut]
        out += [piece for raw in events for piece in transcript.feed(raw)]
        spent = add_counts(spent, usage_in(events))
        if cut is None:
            return out, spent
        assert transcript.partial().text is not None
        sent = transcript.request(sent, mode)
        assert continue_conflict(json.loads(sent)) is None
        transcript.resumed()
    raise AssertionError("unreachable")


def chat_client(out: list[bytes], hide_usage: bool) -> tuple[list[dict], dict | None]:
    relay = ChatRelay(hide_usage=hide_usage)
    client = [piece for raw in out for piece in relay.feed(raw)]
    assert relay.end() == () and client.count(DONE) == 1 and client[-1] == DONE
    return [json.loads(sse.parse(e).data) for e in client[:-1]], relay.usage


def responses_client(out: list[bytes]) -> tuple[list[dict], dict | None]:
    request = {"model": "alias", "input": "hi", "stream": True}
    relay = TranslatedRelay(ChatStreamTranslator(request, response_id="resp_" + "a" * 48, created_at=1))
    events = [json.loads(sse.parse(e).data) for raw in out for e in relay.feed(raw) if sse.has_data(e)]
    assert relay.end() == ()
    return events, relay.usage


def messages_client(out: list[bytes]) -> tuple[list[dict], dict | None]:
    relay = MessagesFromChatRelay(ChatToMessagesStream({"model": "alias", "max_tokens": 99}, message_id="msg_r"))
    events = [json.loads(sse.parse(e).data) for raw in out for e in relay.feed(raw)]
    assert relay.end() == ()
    return events, relay.usage


CASES = [
    pytest.param(leg_body(), [0], "prefill", False, id="cut-at-0"),
    pytest.param(leg_body(), [1], "prefill", False, id="cut-at-1"),
    pytest.param(leg_body(), [3], "continue", False, id="cut-at-3-continue"),
    pytest.param(leg_body(), [7], "prefill", False, id="cut-before-last"),
    pytest.param(leg_body(), [3], "prefill", True, id="multibyte"),
    pytest.param(leg_body(), [3, 2], "prefill", False, id="second-resume"),
    pytest.param(leg_body(), [2, 0, 4], "continue", True, id="three-resumes"),
    pytest.param(leg_body({"role": "assistant", "content": "Hello from"}), [2], "prefill", False, id="client-prefill"),
    pytest.param(
        leg_body({"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}),
        [4],
        "continue",
        False,
        id="client-prefill-parts",
    ),  # fmt: skip
    pytest.param(leg_body(usage=False), [3], "prefill", False, id="no-usage"),
]


@pytest.mark.parametrize(("body", "cuts", "mode", "multibyte"), CASES)
@pytest.mark.parametrize("hide_usage", [False, True])
def test_a_resumed_stream_reaches_a_chat_client_as_one_stream(body, cuts, mode, multibyte, hide_usage):
    full = upstream(body, multibyte)
    out, spent = resume(body, cuts, mode, multibyte)
    client, usage = chat_client(out, hide_usage)
    choices = [c["choices"][0] for c in client if c["choices"]]
    assert "".join(c["delta"].get("content") or "" for c in choices) == _text(full)
    assert sum("role" in c["delta"] for c in choices) == 1 and choices[0]["delta"]["role"] == "assistant"
    assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["stop"]
    assert {c["id"] for c in client} == {"chatcmpl-mock"} and len({c["created"] for c in client}) == 1
    assert usage == (chat_usage({"usage": spent}) if "stream_options" in body else None)
    assert any("usage" in c for c in client) is ("stream_options" in body and not hide_usage)
    state = ChatCompletionStreamState()  # the OpenAI SDK's own accumulator sees one ordinary completion
    for chunk in client:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    final = state.get_final_completion()
    assert final.choices[0].message.content == _text(full) and final.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(("body", "cuts", "mode", "multibyte"), CASES)
def test_a_resumed_stream_reaches_a_responses_client_as_one_response(body, cuts, mode, multibyte):
    full = upstream(body, multibyte)
    events, usage = responses_client(resume(body, cuts, mode, multibyte)[0])
    kinds = [e["type"] for e in events]
    assert kinds.count("response.created") == 1 and kinds[-1] == "response.completed"
    assert kinds.count("response.output_item.added") == 1
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == _text(full)
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == _text(full)
    spent = resume(body, cuts, mode, multibyte)[1]
    assert usage == (_responses_counts(spent) if "stream_options" in body else None)


@pytest.mark.parametrize(("body", "cuts", "mode", "multibyte"), CASES)
def test_a_resumed_stream_reaches_a_messages_client_as_one_message(body, cuts, mode, multibyte):
    full = upstream(body, multibyte)
    out, spent = resume(body, cuts, mode, multibyte)
    events, usage = messages_client(out)
    kinds = [e["type"] for e in events]
    assert kinds.count("message_start") == 1 and kinds.count("content_block_start") == 1
    assert kinds[-2:] == ["message_delta", "message_stop"] and kinds.count("message_delta") == 1
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == _text(full)
    if "stream_options" in body:
        assert usage == chat_usage({"usage": spent})


def _text(events: list[bytes]) -> str:
    parsed = [json.loads(e[6:]) for e in events if not is_done(e)]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in parsed if c["choices"])


def _responses_counts(usage: dict) -> dict:
    return {k: v for k, v in chat_usage({"usage": usage}).items() if k != "cached_tokens" or v}


def test_the_full_text_is_the_mocks_reply_after_a_client_prefill():
    body = leg_body({"role": "assistant", "content": "Hello from"})
    words = continuation(_words(), "Hello from")
    assert _text(upstream(body)) == "".join(words) and prefill_text(body["messages"]) == "Hello from"


def _words() -> list[str]:
    return [c["choices"][0]["delta"]["content"] for c in chunks(leg_body(), True, Options()) if c["choices"]]


def test_the_first_attempt_passes_the_identical_bytes_unparsed():
    transcript = CHAT.transcript()
    seen: list[bytes] = []
    transcript._observe = seen.append  # the hot path parses nothing
    for raw in upstream(leg_body())[:5]:
        [out] = transcript.feed(raw)
        assert out is raw
    assert seen == []


def test_the_batch_is_folded_every_few_hundred_events_and_at_the_end():
    batch = Batch()
    full = [batch.add(b"data: %d\n\n" % i) for i in range(FOLD_EVENTS)]
    assert full == [False] * (FOLD_EVENTS - 1) + [True]
    assert len(batch.take()) == FOLD_EVENTS and batch.count == 0 and batch.size == 0
    assert batch.add(b"data: 1\n\n") is False
    assert batch.add(b"x" * (300 * 1024)) is True  # FOLD_BYTES
    assert batch.take() == [b"data: 1\n\n", b"x" * (300 * 1024)] and batch.take() == []
    transcript = CHAT.transcript()
    seen: list[bytes] = []
    transcript._observe = seen.append
    for i in range(FOLD_EVENTS + 3):
        transcript.feed(b"data: %d\n\n" % i)
    assert len(seen) == FOLD_EVENTS and transcript._batch.count == 3


def test_the_batch_keeps_its_events_deflated_in_packs_and_gives_them_back_exactly():
    batch = Batch()
    events = [chunk({"content": f"piece {i} " * (i % 7)}) for i in range(300)] + [b"x" * 70_000, b"data: [DONE]\n\n"]
    for raw in events:
        assert batch.add(raw) is False
    assert batch.loose < PACK_BYTES and len(batch.lengths) == len(events) - len(batch.events)
    assert sum(map(len, batch.packed)) < (batch.size - batch.loose) / 5  # what a held stream's backlog costs
    assert batch.take() == events and batch.take() == []


def test_a_long_first_attempt_keeps_its_text_across_folds():
    transcript = CHAT.transcript()
    pieces = [f"w{i} " for i in range(FOLD_EVENTS * 2 + 5)]
    for piece in pieces:
        transcript.feed(frame({"id": "c", "choices": [{"index": 0, "delta": {"content": piece}}]}))
    assert transcript._batch.count < FOLD_EVENTS
    assert transcript.partial() == Partial("".join(pieces))


def chunk(delta: dict | None = None, finish: str | None = None, index: int = 0, **extra: Any) -> bytes:
    return frame({"id": "c1", "choices": [{"index": index, "delta": delta or {}, "finish_reason": finish}], **extra})


@pytest.mark.parametrize(
    ("events", "partial"),
    [
        ([], Partial("")),
        ([b": keep-alive\n\n", chunk({"role": "assistant", "content": ""})], Partial("")),
        ([chunk({"content": "Hé"}), chunk({"content": "llo"})], Partial("Héllo")),
        ([chunk({"content": "Hé"}), chunk({"content": "llo"}), chunk({}, "stop")], Partial(None, "finished")),
        ([chunk({"content": "a"}), chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]})],
         Partial(None, "tool_call")),
        ([chunk({"function_call": {"name": "f"}})], Partial(None, "tool_call")),
        ([chunk({"content": "a"}), chunk({"content": "b"}, index=1)], Partial(None, "choices")),
        ([chunk({"reasoning_content": "hmm"}), chunk({"content": "a"})], Partial(None, "non_text")),
        ([chunk({"refusal": "no"})], Partial(None, "non_text")),
        ([chunk({"content": "a"}), b"data: {nope\n\n"], Partial(None, "malformed")),
        ([chunk({"content": "a"}), b'data: {"error": {"message": "boom"}}\n\n'], Partial("a")),
        ([chunk({"content": "a"}), chunk({"content": None}, logprobs=None)], Partial("a")),
    ],
)  # fmt: skip
def test_partial(events, partial):
    transcript = CHAT.transcript()
    for raw in events:
        transcript.feed(raw)
    assert transcript.partial() == partial


def test_request_refuses_a_stream_that_cannot_be_resumed_and_an_unknown_mode():
    transcript = CHAT.transcript()
    transcript.feed(chunk({"tool_calls": [{"index": 0, "id": "x", "function": {"name": "f"}}]}))
    with pytest.raises(ValueError, match="tool_call"):
        transcript.request(json.dumps(leg_body()).encode(), "prefill")
    with pytest.raises(ValueError, match="mode"):
        CHAT.transcript().request(json.dumps(leg_body()).encode(), "rewind")


def _request(messages: list, partial: str, mode: str, **extra: Any) -> dict:
    transcript = CHAT.transcript()
    transcript.feed(chunk({"content": partial}))
    return json.loads(transcript.request(json.dumps({"model": "m", "messages": messages, **extra}).encode(), mode))


IMAGE = {"type": "image_url", "image_url": {"url": "data:x"}}


@pytest.mark.parametrize(
    ("messages", "mode", "expected"),
    [
        ([USER], "prefill", [USER, {"role": "assistant", "content": "Part "}]),
        ([USER, {"role": "assistant", "content": "Mine: "}], "prefill",
         [USER, {"role": "assistant", "content": "Mine: Part "}]),
        ([USER, {"role": "assistant", "content": [{"type": "text", "text": "A"}], "name": "x"}], "continue",
         [USER, {"role": "assistant", "content": [{"type": "text", "text": "APart "}], "name": "x"}]),
        ([USER, {"role": "assistant", "content": [IMAGE]}], "prefill",
         [USER, {"role": "assistant", "content": [IMAGE, {"type": "text", "text": "Part "}]}]),
        ([USER, {"role": "assistant", "content": None}], "prefill", [USER, {"role": "assistant", "content": "Part "}]),
    ],
)  # fmt: skip
def test_request_puts_the_partial_text_at_the_start_of_the_assistant_turn(messages, mode, expected):
    body = _request(messages, "Part ", mode, stream=True, add_generation_prompt=True)
    assert body["messages"] == expected and body["stream"] is True
    if mode == "continue":
        assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    else:
        assert "continue_final_message" not in body and body["add_generation_prompt"] is True


def test_request_with_no_text_yet_is_the_original_body():
    transcript = CHAT.transcript()
    transcript.feed(chunk({"role": "assistant", "content": ""}))
    body = json.dumps(leg_body()).encode()
    assert transcript.request(body, "continue") is body


def test_a_second_resume_extends_the_first_body_with_all_the_text():
    transcript = CHAT.transcript()
    original = json.dumps(leg_body()).encode()
    transcript.feed(chunk({"content": "One "}))
    first = transcript.request(original, "prefill")
    transcript.resumed()
    transcript.feed(chunk({"content": "two "}))
    for body in (first, original):  # the continuation's body, or the leg's: the same result
        again = json.loads(transcript.request(body, "prefill"))
        assert again["messages"] == [USER, {"role": "assistant", "content": "One two "}]


def test_a_continuation_takes_the_first_streams_head_and_loses_its_role_and_empty_chunks():
    transcript = CHAT.transcript()
    head = {
        "id": "first",
        "created": 5,
        "model": "up-model",
        "system_fingerprint": "fp1",
        "object": "chat.completion.chunk",
    }
    transcript.feed(frame({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "A"}}]}))
    first_usage = {"prompt_tokens": 3, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 2}}
    transcript.feed(frame({**head, "choices": [], "usage": first_usage}))
    transcript.resumed()
    other = {
        "id": "second",
        "created": 9,
        "model": "other",
        "system_fingerprint": "fp2",
        "object": "chat.completion.chunk",
    }
    role = frame({**other, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}]})
    assert transcript.feed(role) == []
    [text] = transcript.feed(
        frame({**other, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "B"}}]})
    )
    assert json.loads(text[6:]) == {**head, "choices": [{"index": 0, "delta": {"content": "B"}}]}
    details = {"prompt_tokens_details": {"cached_tokens": 1}, "completion_tokens_details": {"reasoning_tokens": 0}}
    usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6, **details}
    [summed] = transcript.feed(frame({**other, "choices": [], "usage": usage}))
    assert json.loads(summed[6:])["usage"] == {
        "prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 6, "prompt_tokens_details": {"cached_tokens": 3},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }  # fmt: skip
    assert transcript.feed(DONE) == [DONE] and transcript.partial() == Partial("AB")


def test_a_continuations_error_event_and_comments_pass_and_garbage_raises():
    transcript = CHAT.transcript()
    transcript.feed(chunk({"content": "A"}))
    transcript.resumed()
    error = b'data: {"error": {"message": "overloaded"}}\n\n'
    assert transcript.is_error(error) and not transcript.is_error(chunk({"content": "x"}))
    assert transcript.feed(error) == [error] and transcript.feed(b": ping\n\n") == [b": ping\n\n"]
    for garbage in (b"data: {nope\n\n", b"data: [1, 2]\n\n"):
        with pytest.raises(ValueError):
            transcript.feed(garbage)


@pytest.mark.parametrize(
    ("total", "more", "expected"),
    [
        ({}, None, {}),
        ({}, {"a": 1, "d": {"x": 2}}, {"a": 1, "d": {"x": 2}}),
        ({"a": 1, "d": {"x": 2}}, {"a": 2, "d": {"x": 1, "y": 1}, "s": "k"}, {"a": 3, "d": {"x": 3, "y": 1}, "s": "k"}),
        ({"a": 1, "d": {"x": 2}}, {"a": None, "d": None}, {"a": 1, "d": {"x": 2}}),
        ({"flag": True}, {"flag": False, "n": 0}, {"flag": False, "n": 0}),
    ],
)  # fmt: skip
def test_add_counts(total, more, expected):
    assert add_counts(total, more) == expected


def test_with_prefill_leaves_its_arguments_alone():
    messages = [USER, {"role": "assistant", "content": [{"type": "text", "text": "A"}]}]
    copy = json.loads(json.dumps(messages))
    with_prefill(messages, "B", "text")
    assert messages == copy


@pytest.mark.parametrize(
    ("dialect", "kind"),
    [(CHAT, ChatTranscript), (COMPLETIONS, type(None)), (EMBEDDINGS, type(None)), (RESPONSES, type(None)),
     (ANTHROPIC, MessagesTranscript), (MESSAGES, MessagesTranscript), (Dialect(), type(None))],
)  # fmt: skip
def test_which_upstream_dialects_can_be_resumed(dialect, kind):
    first, second = dialect.transcript(), dialect.transcript()
    assert isinstance(first, kind) and (first is None or first is not second)
