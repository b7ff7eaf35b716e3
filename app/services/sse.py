"""Server-Sent Events framing, pure: bytes in, events out; no I/O, no globals.

`Splitter` cuts a byte stream into raw events (each with its blank-line terminator, so a
pass-through relay writes exactly the upstream's bytes); `parse` reads one raw event's
fields (`event:`, `data:`, `id:`, comments) per the WHATWG rules; `encode` writes one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

SEPARATORS = (b"\r\n\r\n", b"\n\n", b"\r\r")
# The C scanner behind json.loads, called without loads' per-call work (type and BOM checks, the decoder's
# whitespace regexes); it reads exactly what json.loads reads from text with no whitespace around it.
_SCAN = json.JSONDecoder().scan_once
# json.dumps(value, separators=(",", ":")), with its encoder built once (dumps builds one per call when given options).
compact_json = json.JSONEncoder(separators=(",", ":")).encode
LF = (b"\n\n",)  # the only separator a buffer without CR can hold


@dataclass(frozen=True, slots=True)
class Event:
    """One parsed event. `data` joins the `data:` lines with newlines (None: the event had none)."""

    name: str | None = None
    data: str | None = None
    id: str | None = None
    comments: tuple[str, ...] = ()

    @property
    def is_comment(self) -> bool:
        """A keep-alive or other comment-only event: it carries nothing for the client's parser."""
        return self.data is None and self.name is None

    def json(self) -> Any:
        """The data as JSON (ValueError when it is not)."""
        if self.data is None:
            raise ValueError("the event has no data")
        return json.loads(self.data)


def parse(raw: bytes) -> Event:
    """The fields of one raw event (undecodable bytes are replaced, as browsers do)."""
    if raw.startswith(b"data: ") and raw.endswith(b"\n\n") and raw.count(b"\n") == 2 and b"\r" not in raw:
        return Event(data=raw[6:-2].decode("utf-8", "replace"))  # one data line: how upstreams send nearly every event
    return _parse_fields(raw)


def data_json(raw: bytes) -> Any:
    """`parse(raw).json()`: the event's data as JSON (ValueError when it has none or it is not JSON), read
    straight from the bytes when the event is one `data: {...}` line, perhaps after an `event:` line: the
    shape of nearly every chat chunk and Messages event."""
    start = raw.find(b"\n") + 1 if raw.startswith(b"event:") else 0
    one_line = raw.endswith(b"}\n\n") and raw.count(b"\n", start) == 2 and b"\r" not in raw
    if one_line and raw.startswith(b"data: {", start):
        value = _object(raw[start + 6 : -2].decode("utf-8", "replace"))
        if value is not _PARTIAL:
            return value
    return parse(raw).json()  # anything else, and text after the object (json.loads says what is wrong)


def named_json(raw: bytes) -> tuple[str | None, Any]:
    """`(parse(raw).name, parse(raw).json())`, read straight from the bytes when the event is `event: NAME` and
    one `data: {...}` line, as Messages servers send every event (ValueError when its data is not JSON)."""
    if raw.startswith(b"event: ") and raw.endswith(b"}\n\n") and raw.count(b"\n") == 3 and b"\r" not in raw:
        end = raw.find(b"\n")
        if raw.startswith(b"data: {", end + 1):
            value = _object(raw[end + 7 : -2].decode("utf-8", "replace"))
            if value is not _PARTIAL:
                return raw[7:end].decode("utf-8", "replace"), value
    event = parse(raw)
    return event.name, event.json()


_PARTIAL = object()  # _object's answer for text that goes on after its object


def _object(text: str) -> Any:
    """json.loads(text) for text that starts with "{" (its errors), or _PARTIAL: the general path says why."""
    try:
        value, end = _SCAN(text, 0)
    except StopIteration as exc:
        raise json.JSONDecodeError("Expecting value", text, exc.value) from None
    return value if end == len(text) else _PARTIAL


def _parse_fields(raw: bytes) -> Event:
    """`parse`, line by line, for any event."""
    name = event_id = None
    data: list[str] = []
    comments: list[str] = []
    for raw_line in raw.splitlines():  # bytes: CR, LF and CRLF only (str would also split U+2028 in JSON text)
        if not raw_line:
            continue
        line = raw_line.decode("utf-8", "replace")
        if line.startswith(":"):
            comments.append(line[1:].removeprefix(" "))
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
        elif field == "id" and "\0" not in value:
            event_id = value
    return Event(name, "\n".join(data) if data else None, event_id, tuple(comments))


def event_name(raw: bytes) -> str | None:
    """The `event:` field when it is the first line, as servers write it (cheaper than `parse`), else None."""
    if not raw.startswith(b"event:"):
        return None
    end = raw.find(b"\n")
    name = raw[6 : end if end != -1 else len(raw)].strip(b" \r")
    return name.decode("utf-8", "replace")


def has_data(raw: bytes) -> bool:
    """Whether a raw event has a `data:` line (cheaper than `parse` on the hot path)."""
    return raw.startswith(b"data:") or b"\ndata:" in raw or b"\rdata:" in raw


def encode(data: Any, name: str | None = None) -> bytes:
    """One event: `event: NAME` (when given) and `data: JSON` on one line (or the string as is)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {text}\n\n".encode()


class Splitter:
    """Incremental framing: `feed` bytes as they arrive, get each complete raw event once.

    Each chunk is scanned once (from just before its start, as a separator may straddle two
    reads), so a large event costs linear time; `pending` is the size of the unfinished event.
    The usual read, whole LF-framed events and nothing left over from the last one, is
    handed back as it came (no copy).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[bytes]:
        if not self._buffer and b"\r" not in chunk:
            events, rest = _split_lf(chunk)
            self._buffer += rest
            return events
        start = max(0, len(self._buffer) - 3)
        self._buffer += chunk
        return _cut(self._buffer, start)

    def tail(self) -> bytes | None:
        """At the end of the stream: a final event that lacked its blank line, completed."""
        rest, self._buffer = bytes(self._buffer), bytearray()
        return rest + b"\n\n" if rest.strip() else None


def split(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete raw events at the front of `data`, and the unfinished rest."""
    buffer = bytearray(data)
    return _cut(buffer, 0), bytes(buffer)


def _split_lf(chunk: bytes) -> tuple[list[bytes], bytes]:
    """The complete events in a chunk without CR, and the rest; a chunk that is one whole event comes back as is."""
    if chunk.endswith(b"\n\n") and chunk.find(b"\n\n") == len(chunk) - 2:
        return [chunk], b""
    # With one separator, cutting at the leftmost "\n\n" again and again is what bytes.split does.
    *parts, rest = chunk.split(b"\n\n")
    return [part + b"\n\n" for part in parts], rest


def _cut(buffer: bytearray, start: int) -> list[bytes]:
    """The complete events at the front of `buffer`, taken out of it (a separator is looked for from `start`)."""
    separators = SEPARATORS if b"\r" in buffer else LF
    events = []
    while True:
        cut, size = -1, 0
        for sep in separators:
            index = buffer.find(sep, start)
            if index != -1 and (cut == -1 or index < cut):
                cut, size = index, len(sep)
        if cut == -1:
            return events
        events.append(bytes(buffer[: cut + size]))
        del buffer[: cut + size]
        start = 0
