"""The chat-stream translators' shortcut for a chunk that only adds text (`chat_events.more_text`): every event
they write with it is byte for byte what their general path writes, whatever the chunks around it; a long
answer's text is kept whole; and the translation from Messages writes its text chunks from a template that gives
the general writer's bytes."""

from __future__ import annotations

import json

import pytest

from app.dialects import anthropic_chat_stream, responses_chat_stream
from app.dialects.anthropic_chat_stream import ChatToMessagesStream
from app.dialects.chat_anthropic_stream import MessagesToChatStream
from app.dialects.chat_events import more_text
from app.dialects.responses_chat_stream import ChatStreamTranslator


def chunk(delta: dict | None = None, **fields) -> dict:
    choice = {"index": 0, "delta": {} if delta is None else delta, "finish_reason": None}
    return {"id": "c1", "object": "chat.completion.chunk", "choices": [choice], **fields}


TEXT = [chunk({"content": t}) for t in ("Hel", "lo", ' "quo\\ted"', " é 中文 🚀", "\n\t\x01", "\ud800 lone")]
CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    *TEXT,
    chunk({"content": "late model"}, model="m-late"),  # a model name not yet known: the general path keeps it
    *TEXT,
    chunk({"content": "x", "reasoning_content": None, "tool_calls": None, "refusal": None}),  # null members: text
    chunk({"content": "y", "tool_calls": []}),
    chunk({"reasoning_content": "thinking"}),  # reasoning closes the message
    chunk({"content": "after reasoning", "reasoning": "more"}),
    *TEXT,
    chunk({"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f", "arguments": '{"a"'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
    *TEXT,
    {"choices": [{"index": 1, "delta": {"content": "second choice"}}]},
    {"choices": [{"index": 0, "delta": {"content": "a"}}, {"index": 1, "delta": {"content": "b"}}]},
    {"choices": ["not a choice"]},
    {"choices": [{"delta": {"content": "no index"}}]},
    {"choices": [{"index": 0, "delta": "not a delta"}]},
    chunk({"content": 7}),
    chunk({"content": "with usage"}, usage={"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}),
    chunk({"content": "usage null"}, usage=None),
    {"choices": [{"index": 0, "delta": {"content": "the end"}, "finish_reason": "stop"}]},
    chunk(usage={"prompt_tokens": 3, "completion_tokens": 10, "total_tokens": 13}),
]  # fmt: skip


def responses() -> ChatStreamTranslator:
    return ChatStreamTranslator({"model": "m", "input": "hi", "stream": True}, response_id="resp_1", created_at=1)


def messages() -> ChatToMessagesStream:
    request = {"model": "m", "max_tokens": 9, "messages": [], "thinking": {"type": "enabled", "budget_tokens": 9}}
    return ChatToMessagesStream(request, message_id="msg_1")


CASES = [(responses_chat_stream, responses), (anthropic_chat_stream, messages)]


def run(make, chunks: list[dict], end: str = "finish") -> list[bytes]:
    translator = make()
    out = [event for c in chunks for event in translator.feed(json.loads(json.dumps(c)))]
    return out + (translator.finish() if end == "finish" else translator.fail("server_error", "broke"))


@pytest.mark.parametrize(("module", "make"), CASES)
@pytest.mark.parametrize("end", ["finish", "fail"])
@pytest.mark.parametrize("start", range(0, len(CHUNKS), 3))
def test_the_shortcut_writes_what_the_general_path_writes(monkeypatch, module, make, end, start):
    chunks = CHUNKS[start:] + CHUNKS[:start]  # every kind of chunk before and after the plain text ones
    with_shortcut = run(make, chunks, end)
    monkeypatch.setattr(module, "more_text", lambda chunk, model_known: "")
    assert with_shortcut == run(make, chunks, end)


@pytest.mark.parametrize(
    ("chunk_", "model_known", "text"),
    [
        (chunk({"content": "hi"}), True, "hi"),
        (chunk({"content": "hi"}, model="m"), True, "hi"),
        (chunk({"content": "hi"}, model="m"), False, ""),
        (chunk({"content": "hi"}), False, "hi"),
        (chunk({"content": "hi"}, usage={"total_tokens": 1}), True, ""),
        (chunk({"content": "hi"}, error={"message": "x"}), True, ""),
        (chunk({"content": "hi", "reasoning_content": "r"}), True, ""),
        (chunk({"content": "hi", "tool_calls": [{"index": 0}]}), True, ""),
        (chunk({"content": "hi", "role": "assistant"}), True, "hi"),
        (chunk({"content": ""}), True, ""),
        ({"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}, True, ""),
        ({"choices": []}, True, ""),
        ({"choices": "x"}, True, ""),
    ],
)
def test_more_text_reads_only_a_chunk_that_adds_text(chunk_, model_known, text):
    assert more_text(chunk_, model_known) == text


def test_a_long_answer_keeps_its_whole_text():
    pieces = [f"t{i} " for i in range(50_000)]  # kept as pieces: appending to one string would copy it each time
    translator = responses()
    for text in pieces:
        translator.feed({"model": "m", "choices": [{"index": 0, "delta": {"content": text}}]})
    done = [json.loads(e.split(b"data: ", 1)[1]) for e in translator.finish()]
    [text_done] = [e for e in done if e["type"] == "response.output_text.done"]
    assert text_done["text"] == "".join(pieces)
    completed = done[-1]["response"]["output"][0]["content"][0]["text"]
    assert completed == "".join(pieces)


class GeneralChunks(MessagesToChatStream):
    """Every text chunk through `_chunk`, as every other chunk is written."""

    def _text_chunk(self, text: str) -> bytes:
        return self._chunk({"content": text})


def messages_events(model: str) -> list[tuple[str, dict]]:
    def text(t: str, index: int = 0) -> tuple[str, dict]:
        return ("content_block_delta", {"type": "content_block_delta", "index": index,
                                        "delta": {"type": "text_delta", "text": t}})  # fmt: skip

    return [
        ("message_start", {"type": "message_start", "message": {"model": model, "usage": {"input_tokens": 3}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": "a"}}),
        *[text(t) for t in ("Hel", "lo", ' "quo\\ted"', " é 中文 🚀", "\n\t\x01", "\ud800 lone", "")],
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
        ("content_block_start", {"type": "content_block_start", "index": 2,
                                 "content_block": {"type": "tool_use", "id": "tu_1", "name": "f", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 2,
                                 "delta": {"type": "input_json_delta", "partial_json": '{"a": 1}'}}),
        text("after the call", 3),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 9}}),
        ("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip


@pytest.mark.parametrize("model", ["m", "claude-upstream-name", "é-model"])
def test_the_text_chunk_template_writes_the_general_chunk(model):
    request = {"model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": True}}
    mine = MessagesToChatStream(request, completion_id="chatcmpl-1", created=7)
    general = GeneralChunks(request, completion_id="chatcmpl-1", created=7)
    for name, data in messages_events(model):
        assert mine.feed(name, data) == general.feed(name, data)


def test_the_relay_reads_usage_when_it_changes_and_only_then():
    from app.dialects.chat_on_anthropic import ChatFromMessagesRelay
    from app.dialects.openai_chat import chat_usage

    reads = []

    def counted(data):
        reads.append(data)
        return chat_usage(data)

    relay = ChatFromMessagesRelay(MessagesToChatStream({"model": "m"}, completion_id="c", created=1), counted)
    for name, data in messages_events("m"):
        relay.feed(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
    assert relay.usage == {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}
    assert len(reads) == 2  # message_start's usage, then message_delta's: not once per event between them
