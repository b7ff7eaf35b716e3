"""Resuming a chat-completions stream (/chat/completions upstreams): the transcript of app/dialects/resume.py.

The partial text is choice 0's `delta.content`, concatenated; a tool call (or legacy function call), non-text
output (reasoning, refusal, audio) or a second choice makes the stream unresumable. A continuation's chunks are
rewritten to continue the first stream: its `id` (and `created`, `model`, `system_fingerprint` when the first
stream had them), no `role`, no chunk left empty, and a usage object that adds up every attempt's. When the first
part had already finished (a finish_reason before the break), the answer was complete: the continuation adds only
its usage and `[DONE]`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.dialects.chat_events import is_done
from app.dialects.resume import TextTranscript, add_counts, dump, load, with_prefill
from app.services import sse

HEAD = ("id", "created", "model", "system_fingerprint")  # what a continuation's chunks take from the first stream
NON_TEXT = ("reasoning_content", "reasoning", "refusal", "audio")  # delta members a prefill cannot carry on
MODES = ("prefill", "continue")


class ChatTranscript(TextTranscript):
    """One chat stream's transcript; `is_error` tells the upstream's own error event (openai_chat.is_error_event,
    handed in so the import goes one way)."""

    def __init__(self, is_error: Callable[[bytes], bool]) -> None:
        self._is_error = is_error
        super().__init__()
        self._head: dict[str, Any] = {}
        self._roled = False  # the client has had its role delta
        self._usage: Any = None  # the current attempt's reported usage object
        self._spent: dict[str, Any] = {}  # every earlier attempt's usage, added up
        self._origin: bytes | None = None  # the first attempt's body, and the last body request() built
        self._built: bytes | None = None

    def is_error(self, raw: bytes) -> bool:
        return self._is_error(raw)

    def request(self, body: bytes, mode: str) -> bytes:
        """The body with the partial text as the assistant's turn; "continue" also asks vLLM-style servers to
        continue that message instead of starting a new one. ValueError when the stream cannot be resumed."""
        if mode not in MODES:
            raise ValueError(f"unknown resume mode {mode!r}")
        partial = self.partial()
        if partial.text is None:
            raise ValueError(f"the stream cannot be resumed: {partial.why}")
        body = self._first_body(body)
        if not partial.text:
            return body
        data = load(body)
        data["messages"] = with_prefill(data["messages"], partial.text, "text")
        if mode == "continue":
            data["continue_final_message"], data["add_generation_prompt"] = True, False
        self._built = dump(data)
        return self._built

    def resumed(self) -> None:
        self._fold()
        self._spent = add_counts(self._spent, self._usage)
        self._usage = None
        self._continuing = True

    def _first_body(self, body: bytes) -> bytes:
        """A body this transcript built (a second resume handed the continuation's) stands for the first one."""
        if self._origin is None or (body is not self._built and body != self._built):
            self._origin = body
        return self._origin

    def _observe(self, raw: bytes) -> None:
        """One first-attempt event, parsed late: what the client got from it."""
        if not sse.has_data(raw) or is_done(raw):
            return
        try:
            chunk = sse.data_json(raw)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            self._why = self._why or "malformed"  # passed through as it was: what the client made of it is unknown
            return
        if "error" in chunk and not chunk.get("choices"):
            return
        self._note_head(chunk)
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        self._apply(chunk.get("choices"))

    def _apply(self, choices: Any) -> None:
        """Choices the client received: their text, and what would make the stream unresumable."""
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            if choice.get("index", 0) != 0:
                self._why = self._why or "choices"
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            self._roled = self._roled or "role" in delta
            if delta.get("tool_calls") or delta.get("function_call"):
                self._why = self._why or "tool_call"
            elif any(delta.get(key) for key in NON_TEXT):
                self._why = self._why or "non_text"
            if isinstance(delta.get("content"), str):
                self._text.append(delta["content"])
            self._finished = self._finished or bool(choice.get("finish_reason"))

    def _continue(self, raw: bytes) -> list[bytes]:
        """A continuation's event as the first stream's next one (none when nothing is left of it)."""
        if not sse.has_data(raw) or is_done(raw) or self._is_error(raw):
            return [raw]
        chunk = sse.data_json(raw)  # ValueError: unreadable, the stream breaks
        if not isinstance(chunk, dict):
            raise ValueError("a chat chunk is not a JSON object")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = usage
            chunk["usage"] = add_counts(self._spent, usage)
        self._note_head(chunk)  # the first stream's, unless it had none (the break came before its first chunk)
        given = chunk.get("choices") if isinstance(chunk.get("choices"), list) else []
        choices = [] if self._finished else [kept for c in given if (kept := _kept(c, self._roled)) is not None]
        if not choices and not isinstance(chunk.get("usage"), dict):
            return []
        self._apply(choices)
        return [b"data: " + dump({**chunk, **self._head, "choices": choices}) + b"\n\n"]

    def _note_head(self, chunk: dict[str, Any]) -> None:
        self._head.update({key: chunk[key] for key in HEAD if key in chunk and key not in self._head})


def _kept(choice: Any, roled: bool) -> dict[str, Any] | None:
    """A continuation's choice without its role when the client has had one, or None when nothing is left."""
    if not isinstance(choice, dict):
        return None
    delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
    if roled:
        delta = {key: value for key, value in delta.items() if key != "role"}
    if not any(value not in (None, "", [], {}) for value in delta.values()):
        if choice.get("finish_reason") is None and choice.get("logprobs") is None:
            return None
    return {**choice, "delta": delta}
