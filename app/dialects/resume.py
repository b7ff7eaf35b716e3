"""Mid-stream resume, the dialect side: what a broken stream generated, and how its continuation is stitched in.

A `Transcript` watches one client request's upstream events (every attempt's, in order) below the relay. While the
first attempt streams it only keeps the raw events (parsed lazily, in batches, so the pass-through stays cheap);
when the stream breaks it says what text the client has (`partial`), builds the continuation's request body with
that text as the start of the assistant turn (`request`), and rewrites the continuation's events so the relay sees
one seamless upstream stream (`feed` after `resumed`). Only chat completions and Anthropic Messages upstreams can
be resumed (app/dialects/resume_chat.py, resume_messages.py); a dialect without one returns None from
`Dialect.transcript()`.

This module is pure: the contract, and the helpers both transcripts share (the raw-event batch, the body edit,
usage sums).
"""

from __future__ import annotations

import json
import zlib
from array import array
from dataclasses import dataclass
from typing import Any, Protocol

FOLD_EVENTS = 4096  # a first attempt's raw events are parsed in batches of this many (most answers never are) ...
FOLD_BYTES = 256 * 1024  # ... or of this size, so a long stream's memory stays bounded
PACK_BYTES = 4096  # the batch deflates its events in packs of about this size (Batch)
PACK_WBITS = -12  # raw deflate, a 4 KiB window: a pack is not much larger


@dataclass(frozen=True)
class Partial:
    """The text generated so far (what the client has received), or None and why it cannot be resumed."""

    text: str | None
    why: str = ""  # when text is None: "tool_call", "non_text", "choices", "malformed" ... short, for the log


class Transcript(Protocol):
    """One streamed request's record of its upstream events, for resuming it on another attempt."""

    def is_error(self, raw: bytes) -> bool:
        """Whether this upstream event is the upstream's own error event (mid-stream)."""

    def feed(self, raw: bytes) -> list[bytes]:
        """Every upstream event in order, before the relay: the first attempt's unchanged ([raw], the same
        object); a continuation's rewritten to continue the stream (possibly none). ValueError: unreadable."""

    def partial(self) -> Partial:
        """The stream broke: the text so far, or why it cannot be resumed."""

    def request(self, body: bytes, mode: str) -> bytes:
        """The continuation's request body from the first attempt's leg body; mode "prefill" or "continue"."""

    def resumed(self) -> None:
        """A continuation attempt starts: the next feed() calls are its events."""


class TextTranscript:
    """What both transcripts share: the first attempt's events batched unparsed, the text and whether it can be
    resumed, read when the stream breaks. Subclasses parse an event (`_observe`) and rewrite a continuation's
    (`_continue`), and set `_text`, `_why` (why not resumable, once) and `_finished` (the answer's end was seen)."""

    def __init__(self) -> None:
        self._batch = Batch()
        self._text: list[str] = []
        self._why = ""  # set once: why the stream cannot be resumed
        self._finished = False  # the client has seen the answer's end (a finish_reason / stop_reason)
        self._continuing = False

    def feed(self, raw: bytes) -> list[bytes]:
        if not self._continuing:
            if self._batch.add(raw):  # parsed later, in a batch (or never, when the stream ends well)
                self._fold()
            return [raw]
        return self._continue(raw)

    def partial(self) -> Partial:
        self._fold()
        if self._why:
            return Partial(None, self._why)
        if self._finished:  # the answer is whole; only its end is missing: nothing to continue (no second usage)
            return Partial(None, "finished")
        return Partial("".join(self._text))

    def _fold(self) -> None:
        for raw in self._batch.take():
            self._observe(raw)

    def _observe(self, raw: bytes) -> None:
        raise NotImplementedError

    def _continue(self, raw: bytes) -> list[bytes]:
        raise NotImplementedError


class Batch:
    """Raw events kept unparsed until their transcript folds them, in order, into what it knows (at the latest
    every FOLD_EVENTS events or FOLD_BYTES bytes). Every PACK_BYTES of them are packed together, deflated: a
    held stream's backlog then costs a tenth of its size (chat chunks repeat their id, model and keys), for
    about a microsecond per event, where parsing them would cost several. It holds no reference back to the
    transcript: a stream's objects form no cycle, so they are freed as the stream ends, not at the next full
    garbage collection."""

    def __init__(self) -> None:
        self.events: list[bytes] = []  # the loose events, after the packed ones
        self.loose = 0  # their size
        self.size = 0  # of every event kept, packed or loose
        self.count = 0
        self.packed: list[bytes] = []
        self.lengths = array("I")  # of the packed events, in order

    def add(self, raw: bytes) -> bool:
        """Keep `raw`; True when the batch is full and should be folded now."""
        self.events.append(raw)
        self.loose += len(raw)
        self.size += len(raw)
        self.count += 1
        if self.loose >= PACK_BYTES:
            self._pack()
        return self.count >= FOLD_EVENTS or self.size >= FOLD_BYTES

    def take(self) -> list[bytes]:
        """The events kept so far, in order; the batch is empty after."""
        events = self._unpacked() + self.events
        self.events, self.loose, self.size, self.count, self.packed, self.lengths = [], 0, 0, 0, [], array("I")
        return events

    def _pack(self) -> None:
        packer = zlib.compressobj(1, zlib.DEFLATED, PACK_WBITS, 4)  # a small window and state: cheap to set up
        self.packed.append(packer.compress(b"".join(self.events)) + packer.flush())
        self.lengths.extend(len(raw) for raw in self.events)
        self.events, self.loose = [], 0

    def _unpacked(self) -> list[bytes]:
        if not self.packed:
            return []
        data = b"".join(zlib.decompress(part, PACK_WBITS) for part in self.packed)
        events, at = [], 0
        for length in self.lengths:
            events.append(data[at : at + length])
            at += length
        return events


def load(body: bytes) -> dict[str, Any]:
    """A leg body as a JSON object (ValueError when it is not one)."""
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise ValueError("the request body has no messages list")
    return data


def dump(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def with_prefill(messages: list[Any], text: str, part_type: str) -> list[Any]:
    """`messages` with `text` as the start of the assistant's turn: appended to a final assistant message (the
    client's own prefill: string content concatenated, else its last text part extended or a text part added),
    else as a new final assistant message. `part_type` names a text part ("text" in both chat and Messages)."""
    last = messages[-1] if messages else None
    if not (isinstance(last, dict) and last.get("role") == "assistant"):
        return [*messages, {"role": "assistant", "content": text}]
    content = last.get("content")
    if isinstance(content, str):
        content = content + text
    elif isinstance(content, list) and content:
        content = list(content)
        tail = content[-1]
        if isinstance(tail, dict) and tail.get("type") == part_type and isinstance(tail.get("text"), str):
            content[-1] = {**tail, "text": tail["text"] + text}
        else:
            content.append({"type": part_type, "text": text})
    else:  # no content (None, or an empty list): the text is all of it
        content = text
    return [*messages[:-1], {**last, "content": content}]


def add_counts(total: dict[str, Any], more: Any) -> dict[str, Any]:
    """Usage objects added key by key: integers summed, nested objects (token details) added the same way;
    other values (None, strings) keep the latest non-None one. Neither argument is changed."""
    if not isinstance(more, dict):
        return total
    out = dict(total)
    for key, value in more.items():
        have = out.get(key)
        if _is_int(value) and (_is_int(have) or have is None):
            out[key] = (have or 0) + value
        elif isinstance(value, dict):
            out[key] = add_counts(have if isinstance(have, dict) else {}, value)
        elif value is not None or key not in out:
            out[key] = value
    return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
