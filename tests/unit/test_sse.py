"""The pure SSE module: framing and field parsing, per the WHATWG event-stream rules."""

from __future__ import annotations

import pytest

from app.services import sse


@pytest.mark.parametrize(
    ("raw", "name", "data", "event_id", "comments"),
    [
        (b"data: x\n\n", None, "x", None, ()),
        (b"data:x\n\n", None, "x", None, ()),  # the space after the colon is optional
        (b"data:  two spaces\n\n", None, " two spaces", None, ()),  # only one space is removed
        (b"event: response.created\ndata: {}\n\n", "response.created", "{}", None, ()),
        (b"data: a\ndata: b\n\n", None, "a\nb", None, ()),  # data lines join with newlines
        (b"id: 7\ndata: x\n\n", None, "x", "7", ()),
        (b"id: a\0b\ndata: x\n\n", None, "x", None, ()),  # an id with NUL is ignored
        (b": keep-alive\n\n", None, None, None, ("keep-alive",)),
        (b":\n\n", None, None, None, ("",)),
        (b"data: x\r\n\r\n", None, "x", None, ()),
        (b"data: x\r\r", None, "x", None, ()),
        (b"data\n\n", None, "", None, ()),  # a field with no colon has an empty value
        (b"retry: 100\nfoo: bar\n\n", None, None, None, ()),  # unknown fields are ignored
        (b"data: \xff\n\n", None, "\ufffd", None, ()),  # undecodable bytes are replaced
        ('data: {"t": "a\u2028b\u0085c"}\n\n'.encode(), None, '{"t": "a\u2028b\u0085c"}', None, ()),  # not line ends
    ],
)
def test_parse(raw, name, data, event_id, comments):
    assert sse.parse(raw) == sse.Event(name, data, event_id, comments)


@pytest.mark.parametrize(
    ("raw", "is_comment", "has_data"),
    [
        (b": keep-alive\n\n", True, False),
        (b"event: ping\n\n", False, False),
        (b"data: {}\n\n", False, True),
        (b"event: x\ndata: {}\n\n", False, True),
        (b"id: 1\r\ndata: {}\r\n\r\n", False, True),
    ],
)
def test_comment_and_data_detection(raw, is_comment, has_data):
    assert sse.parse(raw).is_comment is is_comment
    assert sse.has_data(raw) is has_data


def test_splitter_yields_each_event_once_across_reads():
    splitter = sse.Splitter()
    got = []
    for chunk in [b"data: o", b"ne\r", b"\n\r\ndata: two\n", b"\n: c\n\ndata: tail"]:
        got += list(splitter.feed(chunk))
    assert got == [b"data: one\r\n\r\n", b"data: two\n\n", b": c\n\n"]
    assert splitter.pending == len(b"data: tail")
    assert splitter.tail() == b"data: tail\n\n"
    assert splitter.tail() is None


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (b"event: response.completed\ndata: {}\n\n", "response.completed"),
        (b"event:error\r\ndata: {}\r\n\r\n", "error"),
        (b"data: {}\n\n", None),
        (b"event: x", "x"),
    ],
)
def test_event_name_reads_a_leading_event_field(raw, name):
    assert sse.event_name(raw) == name


def test_encode_round_trips():
    raw = sse.encode({"type": "response.created", "n": "é"}, "response.created")
    assert raw == 'event: response.created\ndata: {"type":"response.created","n":"é"}\n\n'.encode()
    event = sse.parse(raw)
    assert event.name == "response.created" and event.json() == {"type": "response.created", "n": "é"}
    assert sse.encode("[DONE]") == b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: a\n\n"],
        [b"data: a\n\ndata: b\n\n"],
        [b"data: a\n\n\ndata: b\n\n"],  # a third newline starts the next event
        [b"data: a\n\n\n", b"\ndata: b\n\n"],  # ... and may end the read
        [b"data: a\n\n\n\n", b"data: b"],  # an empty event between two
        [b"data: a\n\ndata: b", b"\n\ndata: c\r\n\r\n"],  # a CR later on
        [b"data: a\r\n\r\n", b"data: b\n\n"],
    ],
)
def test_whole_lf_reads_frame_as_a_buffered_read_does(chunks):
    """Reads of whole LF-framed events skip the buffer; the events and the rest are the same as through it."""
    splitter, events = sse.Splitter(), []
    for chunk in chunks:
        events += splitter.feed(chunk)
    whole, rest = sse.split(b"".join(chunks))
    assert events == whole
    assert splitter.pending == len(rest)


def test_a_read_that_is_one_whole_event_is_passed_on_as_it_came():
    chunk = b'data: {"choices": []}\n\n'
    [event] = sse.Splitter().feed(chunk)
    assert event is chunk


@pytest.mark.parametrize(
    "raw",
    [
        b'data: {"a":1}\n\n', b"data:  two spaces\n\n", b"data: : colon\n\n", b"data: \xff\xfe bad utf-8\n\n",
        b"data: [DONE]\n\n", b"data: \n\n", b"data:no-space\n\n", b'data: {"a":1}\r\n\r\n', b"data: a\ndata: b\n\n",
        b"event: x\ndata: y\n\n", b": comment\n\n", b"data: a\n", b'id: 1\ndata: {"a":1}\n\n',
    ],
)  # fmt: skip
def test_a_single_data_line_is_read_as_the_line_by_line_parser_reads_it(raw):
    assert sse.parse(raw) == sse._parse_fields(raw)  # the shortcut for one `data: ` line changes nothing


def _json_or_error(read, raw):
    try:
        return ("value", read(raw))
    except ValueError as exc:
        return ("error", type(exc))


@pytest.mark.parametrize(
    "raw",
    [
        b'data: {"a":1}\n\n', b'data: {"a": [1, 2.5, null, true], "b": {"c": "\\u00e9"}}\n\n',
        b'event: message_start\ndata: {"type":"message_start"}\n\n', b'data: {"a":1} \n\n', b'data: {"a":1}}\n\n',
        b'data: {"a":1}{"b":2}\n\n', b'data: {"a":\n\n', b"data: {}\n\n", b'data: {"a":1}\r\n\r\n',
        b'data: {"a":NaN}\n\n', b'data: {"t":"\xff"}\n\n', b'data: {"a":1}\ndata: {"b":2}\n\n', b"data: [DONE]\n\n",
        b"data: 7\n\n", b": comment\n\n", b'event: x\r\ndata: {"a":1}\n\n', b'event: x\ndata:{"a":1}\n\n',
        b'id: 1\ndata: {"a":1}\n\n', b'data: {"a":"x\\ny"}\n\n', b'data: {"a":"\x01"}\n\n', b'data:  {"a":1}\n\n',
        b'data: {"a":1,}\n\n', b'data: {"a":01}\n\n', b'event: e\nevent: f\ndata: {"a":1}\n\n',
    ],
)  # fmt: skip
def test_data_json_reads_what_parse_then_json_reads(raw):
    # The shortcut for a one-line `data: {...}` event gives the same value, or fails as json.loads does.
    assert _json_or_error(sse.data_json, raw) == _json_or_error(lambda r: sse.parse(r).json(), raw)


@pytest.mark.parametrize(
    "raw",
    [
        b'event: content_block_delta\ndata: {"type":"content_block_delta"}\n\n', b'event: a:b\ndata: {"a":1}\n\n',
        b'event:  spaced\ndata: {"a":1}\n\n', b'event:x\ndata: {"a":1}\n\n', b'event: x\ndata: {"a":\n\n',
        b'event: x\ndata: {"a":1}\r\n\r\n', b'event: x\ndata: [1]\n\n', b'event: x\nid: 1\ndata: {"a":1}\n\n',
        b'data: {"a":1}\n\n', b'event: \xff\ndata: {"a":1}\n\n', b"event: ping\n\n", b'event: x\ndata: {"a":1} \n\n',
        b'event: x\ndata: {"a":1}\ndata: {"b":2}\n\n', b'event: x\nevent: y\ndata: {"a":1}\n\n', b": c\n\n",
    ],
)  # fmt: skip
def test_named_json_reads_what_parse_reads(raw):
    def general(r):
        event = sse.parse(r)
        return event.name, event.json()

    assert _json_or_error(sse.named_json, raw) == _json_or_error(general, raw)


def test_compact_json_is_json_dumps_with_compact_separators():
    import json

    value = {"a": [1, 2.5, None, True], "é": "中 🚀 \ud800", "n": {"x": float("inf")}}
    assert sse.compact_json(value) == json.dumps(value, separators=(",", ":"))
