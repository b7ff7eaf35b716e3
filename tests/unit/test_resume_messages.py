"""Resuming an Anthropic Messages stream (app/dialects/resume_messages.py): a stream cut after k events and its
continuation (the mock's own) reach a native Messages client, a chat client and a Responses client as one stream."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent

from app.dialects.anthropic_wire import ANTHROPIC, AnthropicRelay, message_usage
from app.dialects.base import ChainRelay
from app.dialects.chat_anthropic_stream import MessagesToChatStream
from app.dialects.chat_events import DONE
from app.dialects.chat_on_anthropic import ChatFromMessagesRelay
from app.dialects.openai_chat import chat_usage
from app.dialects.openai_responses import TranslatedRelay
from app.dialects.responses_chat_stream import ChatStreamTranslator
from app.dialects.resume import Partial, add_counts
from app.mock_chat import reply_words
from app.mock_messages import events, plan, usage_of
from app.mock_resume import continuation, prefill_text
from app.services import sse

USER = {"role": "user", "content": "hi"}
EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)


def leg_body(*messages: dict, **extra: Any) -> dict:
    return {"model": "claude-up", "max_tokens": 100, "messages": [USER, *messages], "stream": True, **extra}


def upstream(body: dict, multibyte: bool = False) -> list[bytes]:
    """The mock's whole Messages stream for this body (a final assistant message is continued)."""
    reply = plan(body, continuation(reply_words(8, multibyte), prefill_text(body["messages"])))
    usage = usage_of(body, reply)
    return [sse.encode(event, event["type"]) for event, _ in events(body, reply, usage)]


def reported(raws: list[bytes]) -> dict:
    """One attempt's usage as the API reports it: message_start's, updated by message_delta's."""
    usage: dict = {}
    for raw in raws:
        data = sse.parse(raw).json()
        found = data["message"]["usage"] if data["type"] == "message_start" else data.get("usage")
        usage.update(found or {})
    return usage


def resume(body: dict, cuts: list[int], mode: str = "prefill", multibyte: bool = False) -> tuple[list[bytes], dict]:
    """What the relay is fed (each attempt cut after cuts[i] events, then resumed), and every attempt's usage
    added up. Later resumes hand request() the body just sent."""
    transcript = ANTHROPIC.transcript()
    sent, out, spent = json.dumps(body).encode(), [], {}
    for cut in [*cuts, None]:
        raws = upstream(json.loads(sent), multibyte)[:cut]
        out += [piece for raw in raws for piece in transcript.feed(raw)]
        spent = add_counts(spent, reported(raws))
        if cut is None:
            return out, spent
        assert transcript.partial().text is not None
        sent = transcript.request(sent, mode)
        final = json.loads(sent)["messages"][-1]
        assert final["role"] == "user" or prefill_text([final]) == prefill_text([final]).rstrip()  # the API's rule
        transcript.resumed()
    raise AssertionError("unreachable")


def full_text(body: dict, multibyte: bool) -> str:
    return "".join(_texts([sse.parse(raw).json() for raw in upstream(body, multibyte)]))


def _texts(datas: list[dict]) -> list[str]:
    return [
        d["delta"]["text"] for d in datas if d["type"] == "content_block_delta" and d["delta"]["type"] == "text_delta"
    ]


CASES = [
    pytest.param(leg_body(), [0], "prefill", False, id="cut-at-0"),
    pytest.param(leg_body(), [1], "prefill", False, id="after-message-start"),
    pytest.param(leg_body(), [3], "continue", False, id="after-ping"),
    pytest.param(leg_body(), [4], "prefill", False, id="one-delta-trailing-space"),
    pytest.param(leg_body(), [6], "prefill", False, id="three-deltas"),
    pytest.param(leg_body(), [11], "prefill", False, id="every-delta-block-open"),
    pytest.param(leg_body(), [12], "prefill", False, id="block-closed"),
    pytest.param(leg_body(), [5], "prefill", True, id="multibyte"),
    pytest.param(leg_body(), [5, 3], "prefill", False, id="second-resume"),
    pytest.param(leg_body(), [4, 1, 3], "continue", True, id="three-resumes"),
    pytest.param(leg_body(), [6, 7], "prefill", False, id="second-resume-after-its-block-closed"),
    pytest.param(leg_body({"role": "assistant", "content": "Hello from"}), [4], "prefill", False, id="client-prefill"),
    pytest.param(
        leg_body({"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}),
        [5],
        "prefill",
        False,
        id="client-prefill-blocks",
    ),  # fmt: skip
]


@pytest.mark.parametrize(("body", "cuts", "mode", "multibyte"), CASES)
def test_a_resumed_stream_reaches_a_messages_client_as_one_message(body, cuts, mode, multibyte):
    out, spent = resume(body, cuts, mode, multibyte)
    relay = AnthropicRelay()
    client = [piece for raw in out for piece in relay.feed(raw)]
    assert relay.end() == () and not relay.failed
    datas = [sse.parse(e).json() for e in client]
    kinds = [d["type"] for d in datas]
    assert kinds.count("message_start") == 1 and kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds.count("message_stop") == 1 and kinds[-2] == "message_delta"
    assert "".join(_texts(datas)) == full_text(body, multibyte)
    assert _blocks_well_formed(datas) == ["text"]
    assert relay.usage == message_usage(spent)
    snapshot = None  # the anthropic SDK's own accumulator sees one ordinary message
    for data in (d for d in datas if d["type"] != "ping"):  # the SDK's stream skips pings before this
        snapshot = accumulate_event(event=EVENT.validate_python(data), current_snapshot=snapshot, json_bufs={})
    assert [block.type for block in snapshot.content] == ["text"]
    assert snapshot.content[0].text == full_text(body, multibyte) and snapshot.stop_reason == "end_turn"
    assert snapshot.usage.input_tokens == spent["input_tokens"]
    assert snapshot.usage.output_tokens == spent["output_tokens"]


def _blocks_well_formed(datas: list[dict]) -> list[str]:
    """The blocks' types, checking each is started, given deltas and stopped in turn at indexes 0, 1, ..."""
    kinds, open_index = [], None
    for data in datas:
        if data["type"] == "content_block_start":
            assert open_index is None and data["index"] == len(kinds)
            kinds.append(data["content_block"]["type"])
            open_index = data["index"]
        elif data["type"] in ("content_block_delta", "content_block_stop"):
            assert data["index"] == open_index
            open_index = None if data["type"] == "content_block_stop" else open_index
    assert open_index is None
    return kinds


@pytest.mark.parametrize(("body", "cuts", "mode", "multibyte"), CASES)
def test_a_resumed_stream_reaches_a_chat_client_as_one_stream(body, cuts, mode, multibyte):
    out, spent = resume(body, cuts, mode, multibyte)
    request = {"model": "alias", "messages": [USER], "stream": True, "stream_options": {"include_usage": True}}
    relay = ChatFromMessagesRelay(MessagesToChatStream(request, completion_id="chatcmpl-r", created=1), chat_usage)
    client = [piece for raw in out for piece in relay.feed(raw)]
    assert relay.end() == () and client.count(DONE) == 1 and client[-1] == DONE
    chunks = [json.loads(sse.parse(e).data) for e in client[:-1]]
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    assert "".join(c["delta"].get("content") or "" for c in choices) == full_text(body, multibyte)
    assert sum("role" in c["delta"] for c in choices) == 1
    assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["stop"]
    assert relay.usage == chat_usage({"usage": chat_usage_of(spent)})


def chat_usage_of(spent: dict) -> dict:
    prompt = spent["input_tokens"] + spent["cache_read_input_tokens"] + spent["cache_creation_input_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": spent["output_tokens"],
            "total_tokens": prompt + spent["output_tokens"],
            "prompt_tokens_details": {"cached_tokens": spent["cache_read_input_tokens"]}}  # fmt: skip


@pytest.mark.parametrize(("body", "cuts", "mode", "multibyte"), CASES[3:10])
def test_a_resumed_stream_reaches_a_responses_client_as_one_response(body, cuts, mode, multibyte):
    out, _ = resume(body, cuts, mode, multibyte)
    chat = {"model": "alias", "messages": [USER], "stream": True, "stream_options": {"include_usage": True}}
    translator = ChatStreamTranslator({"model": "alias", "input": "hi"}, response_id="resp_" + "b" * 48, created_at=1)
    relay = ChainRelay(ChatFromMessagesRelay(MessagesToChatStream(chat, completion_id="c", created=1), chat_usage),
                       TranslatedRelay(translator))  # fmt: skip
    datas = [sse.parse(e).json() for raw in out for e in relay.feed(raw) if sse.has_data(e)]
    kinds = [d["type"] for d in datas]
    assert kinds.count("response.created") == 1 and kinds[-1] == "response.completed" and relay.done
    assert datas[-1]["response"]["output"][0]["content"][0]["text"] == full_text(body, multibyte)


def test_the_first_attempt_passes_the_identical_bytes_unparsed():
    transcript = ANTHROPIC.transcript()
    seen: list[bytes] = []
    transcript._batch.parse = seen.append
    for raw in upstream(leg_body())[:6]:
        [out] = transcript.feed(raw)
        assert out is raw
    assert seen == []


def ev(kind: str, **fields: Any) -> bytes:
    return sse.encode({"type": kind, **fields}, kind)


START = ev("message_start", message={"id": "msg_1", "usage": {"input_tokens": 5, "output_tokens": 1}})


def block(index: int, kind: str, **content: Any) -> bytes:
    return ev("content_block_start", index=index, content_block={"type": kind, **content})


def text(index: int, value: str) -> bytes:
    return ev("content_block_delta", index=index, delta={"type": "text_delta", "text": value})


@pytest.mark.parametrize(
    ("raws", "partial"),
    [
        ([], Partial("")),
        ([START, block(0, "text", text=""), ev("ping"), text(0, "Hé"), text(0, "llo ")], Partial("Héllo ")),
        ([START, block(0, "text", text="A"), text(0, "b"), ev("content_block_stop", index=0), block(1, "text", text=""),
          text(1, "c")], Partial("Abc")),
        ([START, block(0, "text", text=""), text(0, "a"), block(1, "tool_use", id="t", name="f", input={})],
         Partial(None, "tool_call")),
        ([START, block(0, "server_tool_use", id="s", name="web_search", input={})], Partial(None, "tool_call")),
        ([START, block(0, "thinking", thinking=""), ev("content_block_delta", index=0,
          delta={"type": "thinking_delta", "thinking": "hmm"})], Partial(None, "non_text")),
        ([START, block(0, "redacted_thinking", data="x")], Partial(None, "non_text")),
        ([START, b"event: content_block_delta\ndata: {nope\n\n"], Partial(None, "malformed")),
        ([START, block(0, "text", text=""), text(0, "a"), ev("error", error={"type": "overloaded_error"})],
         Partial("a")),
        ([START, block(0, "text", text=""), text(0, "a"), ev("content_block_stop", index=0),
          ev("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 1})],
         Partial(None, "finished")),
    ],
)  # fmt: skip
def test_partial(raws, partial):
    transcript = ANTHROPIC.transcript()
    for raw in raws:
        transcript.feed(raw)
    assert transcript.partial() == partial


@pytest.mark.parametrize(
    ("raw", "error"),
    [(ev("error", error={"type": "overloaded_error", "message": "Overloaded"}), True),
     (b'data: {"type": "error", "error": {"type": "api_error"}}\n\n', True),
     (b'data: {"type": "ping", "note": "error"}\n\n', False), (ev("ping"), False), (START, False),
     (b": error\n\n", False), (b'data: {"error" nope\n\n', False)],
)  # fmt: skip
def test_is_error(raw, error):
    assert ANTHROPIC.transcript().is_error(raw) is error


def _transcript(*texts: str) -> Any:
    transcript = ANTHROPIC.transcript()
    for raw in [START, block(0, "text", text=""), *(text(0, t) for t in texts)]:
        transcript.feed(raw)
    return transcript


CACHED = {"cache_control": {"type": "ephemeral"}}
IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}


@pytest.mark.parametrize(
    ("messages", "texts", "expected"),
    [
        ([USER], ["Hello ", "wor"], [USER, {"role": "assistant", "content": "Hello wor"}]),
        ([USER], ["Hello ", "world \n"], [USER, {"role": "assistant", "content": "Hello world"}]),
        ([USER, {"role": "assistant", "content": "Mine:"}], [" yes "],
         [USER, {"role": "assistant", "content": "Mine: yes"}]),
        ([USER, {"role": "assistant", "content": [{"type": "text", "text": "A", **CACHED}]}], ["b "],
         [USER, {"role": "assistant", "content": [{"type": "text", "text": "Ab", **CACHED}]}]),
        ([USER, {"role": "assistant", "content": [IMAGE]}], ["b"],
         [USER, {"role": "assistant", "content": [IMAGE, {"type": "text", "text": "b"}]}]),
        ([USER], [" ", "\n"], None),  # only whitespace: the body as it was
    ],
)  # fmt: skip
@pytest.mark.parametrize("mode", ["prefill", "continue"])
def test_request_puts_the_partial_text_without_trailing_whitespace_at_the_start_of_the_assistant_turn(
    messages, texts, expected, mode
):
    body = json.dumps({"model": "m", "max_tokens": 9, "messages": messages, "stream": True}).encode()
    sent = _transcript(*texts).request(body, mode)
    if expected is None:
        assert sent is body
        return
    data = json.loads(sent)
    assert data == {"model": "m", "max_tokens": 9, "messages": expected, "stream": True}


def test_the_stripped_whitespace_is_removed_from_the_continuation_across_deltas():
    transcript = _transcript("Hello", " \n ")
    json.loads(transcript.request(json.dumps(leg_body()).encode(), "prefill"))
    transcript.resumed()
    outs = [
        transcript.feed(raw)
        for raw in [START, block(0, "text", text=" "), text(0, "\n"), text(0, " world"), text(0, " ")]
    ]
    assert outs[:3] == [[], [], []]
    assert [sse.parse(o).json()["delta"]["text"] for out in outs[3:] for o in out] == ["world", " "]


def test_a_continuation_that_does_not_repeat_the_whitespace_is_kept_whole():
    transcript = _transcript("Hello ")
    transcript.request(json.dumps(leg_body()).encode(), "prefill")
    transcript.resumed()
    transcript.feed(START)
    transcript.feed(block(0, "text", text=""))
    [out] = transcript.feed(text(0, "\tthere"))
    assert sse.parse(out).json() == {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": "\tthere"}}  # fmt: skip


def test_a_continuations_other_blocks_take_the_next_indexes_after_closing_the_open_one():
    transcript = _transcript("Hi")
    transcript.request(json.dumps(leg_body()).encode(), "prefill")
    transcript.resumed()
    raws = [START, block(0, "text", text=""), text(0, " there"), ev("content_block_stop", index=0),
            block(1, "tool_use", id="t", name="f", input={}), ev("content_block_stop", index=1)]  # fmt: skip
    datas = [sse.parse(o).json() for raw in raws for o in transcript.feed(raw)]
    assert [(d["type"], d.get("index")) for d in datas] == [
        ("content_block_delta", 0), ("content_block_stop", 0), ("content_block_start", 1), ("content_block_stop", 1),
    ]  # fmt: skip
    assert transcript.partial() == Partial(None, "tool_call")


def test_a_continuation_that_starts_with_another_block_closes_the_open_text_block_first():
    transcript = _transcript("Hi")
    transcript.request(json.dumps(leg_body()).encode(), "prefill")
    transcript.resumed()
    raws = [START, block(0, "thinking", thinking=""), ev("content_block_stop", index=0)]
    datas = [sse.parse(o).json() for raw in raws for o in transcript.feed(raw)]
    assert [(d["type"], d.get("index")) for d in datas] == [
        ("content_block_stop", 0), ("content_block_start", 1), ("content_block_stop", 1),
    ]  # fmt: skip


def test_message_delta_carries_every_attempts_usage_added_up():
    transcript = ANTHROPIC.transcript()
    first = {"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 0}
    for raw in [ev("message_start", message={"id": "m1", "usage": first}), block(0, "text", text=""), text(0, "a")]:
        transcript.feed(raw)
    transcript.resumed()
    second = {"input_tokens": 12, "output_tokens": 1, "cache_read_input_tokens": 4}
    assert transcript.feed(ev("message_start", message={"id": "m2", "usage": second})) == []
    done = ev("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 7})
    [stop, delta] = transcript.feed(done)  # the text block the break left open is closed first
    assert sse.parse(stop).json() == {"type": "content_block_stop", "index": 0}
    assert sse.parse(delta).json()["usage"] == {
        "input_tokens": 22, "output_tokens": 8, "cache_read_input_tokens": 8, "cache_creation_input_tokens": 0,
    }  # fmt: skip
    assert transcript.feed(ev("message_stop")) == [ev("message_stop")]  # passed as it came


def test_a_continuations_error_ping_and_garbage():
    transcript = _transcript("a")
    transcript.resumed()
    error = ev("error", error={"type": "overloaded_error", "message": "Overloaded"})
    assert transcript.feed(error) == [error] and transcript.feed(ev("ping")) == [ev("ping")]
    for garbage in (b"event: content_block_delta\ndata: {nope\n\n", b"data: [1]\n\n", text(5, "x"),
                    ev("content_block_delta", delta={"type": "text_delta", "text": "x"})):  # fmt: skip
        with pytest.raises(ValueError):
            transcript.feed(garbage)


def test_request_refuses_a_stream_that_cannot_be_resumed():
    transcript = ANTHROPIC.transcript()
    transcript.feed(START)
    transcript.feed(block(0, "tool_use", id="t", name="f", input={}))
    with pytest.raises(ValueError, match="tool_call"):
        transcript.request(json.dumps(leg_body()).encode(), "prefill")
