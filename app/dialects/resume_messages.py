"""Resuming an Anthropic Messages stream: the transcript of app/dialects/resume.py for `api = "anthropic"` upstreams.

The partial text is the text blocks' `text_delta`s; any other block (tool_use, thinking, ...) makes the stream
unresumable. The prefill loses its trailing whitespace (the API refuses a final assistant turn ending in it), so
the continuation starts with that whitespace, which the client already has: it is removed from the continuation's
first text. A continuation's `message_start` is dropped (its usage kept); its first text block joins the first
part's text block when that one is still open, and later blocks take the next free indexes; `message_delta`
carries every attempt's usage added up. When the first part had already finished (a stop_reason before the
break), the answer was complete: the continuation adds only its usage and the end.
"""

from __future__ import annotations

from typing import Any

from app.dialects.resume import TextTranscript, add_counts, dump, load, with_prefill
from app.services import sse

BLOCK_EVENTS = ("content_block_start", "content_block_delta", "content_block_stop")
TOOL_BLOCKS = ("tool_use", "server_tool_use")


class MessagesTranscript(TextTranscript):
    """One Messages stream's transcript."""

    def __init__(self) -> None:
        super().__init__()
        self._started = False  # the client has had its message_start
        self._kinds: dict[int, str] = {}  # the client's blocks: index -> type
        self._open: set[int] = set()
        self._usage: dict[str, Any] = {}  # the current attempt's usage (message_start's, updated by message_delta's)
        self._spent: dict[str, Any] = {}  # every earlier attempt's usage, added up
        self._map: dict[int, int] = {}  # the continuation's block index -> the client's
        self._held: dict[int, dict[str, Any]] = {}  # a continuation's text block start, until it has text
        self._join: int | None = None  # the client's open text block the continuation's first text block continues
        self._skip = ""  # the whitespace the prefill lost, still to be removed from the continuation's text
        self._origin: bytes | None = None  # the first attempt's body, and the last body request() built
        self._built: bytes | None = None

    def is_error(self, raw: bytes) -> bool:
        name = sse.event_name(raw)
        if name is not None:
            return name == "error"
        if not sse.has_data(raw) or b'"error"' not in raw:
            return False
        try:
            data = sse.data_json(raw)
        except ValueError:
            return False
        return isinstance(data, dict) and data.get("type") == "error"

    def request(self, body: bytes, mode: str) -> bytes:
        """The body with the partial text, trailing whitespace stripped, as the assistant's turn ("continue" is
        the same as "prefill" on a Messages upstream). ValueError when the stream cannot be resumed."""
        if mode not in ("prefill", "continue"):
            raise ValueError(f"unknown resume mode {mode!r}")
        partial = self.partial()
        if partial.text is None:
            raise ValueError(f"the stream cannot be resumed: {partial.why}")
        body = self._first_body(body)
        text = partial.text.rstrip()
        self._skip = partial.text[len(text) :]
        if not text:
            return body
        data = load(body)
        data["messages"] = with_prefill(data["messages"], text, "text")
        self._built = dump(data)
        return self._built

    def resumed(self) -> None:
        self._fold()
        self._spent = add_counts(self._spent, self._usage)
        self._usage, self._map, self._held, self._continuing = {}, {}, {}, True
        last = max(self._kinds, default=-1)
        self._join = last if last in self._open and self._kinds[last] == "text" else None

    def _first_body(self, body: bytes) -> bytes:
        """A body this transcript built (a second resume handed the continuation's) stands for the first one."""
        if self._origin is None or (body is not self._built and body != self._built):
            self._origin = body
        return self._origin

    def _observe(self, raw: bytes) -> None:
        """One first-attempt event, parsed late: what the client got from it."""
        if not sse.has_data(raw):
            return
        try:
            name, data = _parsed(raw)
        except ValueError:
            self._why = self._why or "malformed"  # passed through as it was: what the client made of it is unknown
            return
        self._take_usage(name, data)
        self._apply(name, data)

    def _take_usage(self, name: str, data: dict[str, Any]) -> None:
        message = data.get("message") if isinstance(data.get("message"), dict) else {}
        found = message.get("usage") if name == "message_start" else data.get("usage")
        if isinstance(found, dict):
            self._usage = {**self._usage, **found}  # message_delta's counts are cumulative: the latest wins

    def _apply(self, name: str, data: dict[str, Any]) -> None:
        """An event as the client received it: its text, its blocks, and what makes the stream unresumable."""
        index = data.get("index") if isinstance(data.get("index"), int) else None
        if name == "content_block_start" and index is not None:
            block = data.get("content_block") if isinstance(data.get("content_block"), dict) else {}
            kind = str(block.get("type") or "")
            self._kinds[index] = kind
            self._open.add(index)
            if kind != "text":
                self._why = self._why or ("tool_call" if kind in TOOL_BLOCKS else "non_text")
            elif isinstance(block.get("text"), str):
                self._text.append(block["text"])
        elif name == "content_block_delta" and index is not None and self._kinds.get(index) == "text":
            delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                self._text.append(delta["text"])
        elif name == "content_block_stop":
            self._open.discard(index)
        elif name == "message_start":
            self._started = True
        elif name == "message_delta":
            delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
            self._finished = self._finished or bool(delta.get("stop_reason"))

    def _continue(self, raw: bytes) -> list[bytes]:
        """A continuation's event as the first stream's next ones (none when nothing is left of it)."""
        if not sse.has_data(raw) or self.is_error(raw):
            return [raw]
        name, data = _parsed(raw)  # ValueError: unreadable, the stream breaks
        if name == "message_start":
            self._take_usage(name, data)
            return [] if self._started else [self._emit(name, data)]  # kept when the break came before any event
        if name in BLOCK_EVENTS:
            return [] if self._finished else self._block(name, data)
        if name == "message_delta":
            self._take_usage(name, data)
            return [*self._close_join(), self._emit(name, {**data, "usage": add_counts(self._spent, self._usage)})]
        if name == "message_stop":
            return [*self._close_join(), raw]
        return [raw]  # ping, and events this version does not know

    def _block(self, name: str, data: dict[str, Any]) -> list[bytes]:
        index = data.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            raise ValueError(f"{name} without an index")
        if name == "content_block_start":
            return self._block_start(index, data)
        if index not in self._map and index not in self._held:
            raise ValueError(f"{name} for a block that was not started")
        if name == "content_block_stop" and index in self._held:
            del self._held[index]  # a text block left empty by the removed whitespace: the client never sees it
            return []
        delta = data.get("delta") if isinstance(data.get("delta"), dict) else {}
        if name == "content_block_delta" and delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
            text = self._skipped(delta["text"])
            if not text:
                return []
            data = {**data, "delta": {**delta, "text": text}}
        out = self._release(index) if index in self._held else []
        return [*out, self._emit(name, {**data, "index": self._map[index]})]

    def _block_start(self, index: int, data: dict[str, Any]) -> list[bytes]:
        """A text block continues the one the break left open, else it waits for its first text (so one that
        only repeats whitespace the client has is never shown); another block opens at the next free index."""
        block = data.get("content_block") if isinstance(data.get("content_block"), dict) else {}
        if block.get("type") != "text":
            self._held[index] = data
            return self._release(index)
        text = self._skipped(block["text"]) if isinstance(block.get("text"), str) else ""
        if self._join is not None:
            self._map[index], self._join = self._join, None
            event = {
                "type": "content_block_delta",
                "index": self._map[index],
                "delta": {"type": "text_delta", "text": text},
            }
            return [self._emit("content_block_delta", event)] if text else []
        self._held[index] = {**data, "content_block": {**block, "text": text}}
        return self._release(index) if text else []

    def _release(self, index: int) -> list[bytes]:
        """A held block's start, at the next free index (after closing the block the break left open)."""
        out = self._close_join()
        self._map[index] = max(self._kinds, default=-1) + 1
        return [*out, self._emit("content_block_start", {**self._held.pop(index), "index": self._map[index]})]

    def _close_join(self) -> list[bytes]:
        """The block the break left open, closed: the continuation did not continue it."""
        if self._join is None:
            return []
        index, self._join = self._join, None
        return [self._emit("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _skipped(self, text: str) -> str:
        """`text` without what is left of the whitespace the client already has (as far as it matches)."""
        if not self._skip:
            return text
        same = 0
        while same < len(text) and same < len(self._skip) and text[same] == self._skip[same]:
            same += 1
        self._skip = self._skip[same:] if same == len(text) else ""
        return text[same:]

    def _emit(self, name: str, data: dict[str, Any]) -> bytes:
        self._apply(name, data)
        return sse.encode(data, name)


def _parsed(raw: bytes) -> tuple[str, dict[str, Any]]:
    """An event's name (its `event:` field, else its data's type) and data object; ValueError when unreadable."""
    event = sse.parse(raw)
    data = event.json()
    if not isinstance(data, dict):
        raise ValueError("a Messages event is not a JSON object")
    return event.name or str(data.get("type") or ""), data
