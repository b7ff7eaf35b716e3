"""Continuable answers and byte-level stream faults of the bundled mock upstream (issue 14's groundwork).

Continuation: a request whose last message is the assistant's (chat "prefill" or "continue" mode, Anthropic
prefill) gets only the rest of the mock's deterministic reply when that message's text is a prefix of the
reply: exactly, else once its trailing whitespace is stripped (the rest then starts with that whitespace, as a
real model would continue). A prefill that is not a prefix gets the whole reply.

Faults count a stream's events from 0 the same way on every dialect (chat chunks; Responses and Messages typed
events; comments, noise and `[DONE]` are not events): `cut_mid_event: N` sends the first half of event N's bytes
and closes the connection; `cut_mid_char: N` closes it inside event N's first multi-byte UTF-8 character (with
`multibyte` on every reply word has one; an event without one is cut in its middle instead).

Token prefixes switch a fault on for every request made with that token (a resume or a hedge goes to another
token, which stays healthy): `slowfirst<MS>-` delays the first event by MS milliseconds; `cut<N>-` is
`drop_after: N` (N whole events, then the connection is shut down without the stream's end: no `[DONE]`,
`message_stop` or `response.completed`, and no terminating zero-length chunk either, so an HTTP client sees an
aborted body, not a clean end); `cutevent<N>-` is `cut_mid_event: N`, `cutchar<N>-` `cut_mid_char: N`,
`stall<N>-` `stall_after: N` for 30 s, `errorafter<N>-` `error_after: N`.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Generator
from typing import Any

# Every word has a multi-byte UTF-8 character (2, 3 and 4 bytes), so a cut can fall inside one in any delta.
MULTIBYTE_REPLY = "Héllo from café naïve 日本 señor Größe 🚀 über."
SLOWFIRST = re.compile(r"slowfirst(\d{1,6})-")
STALL_SECONDS = 30.0
# `<name><N>-` token prefixes and the options each switches on ("cut" needs the digit next: not "cutevent").
NUMBERED: tuple[tuple[re.Pattern[str], Callable[[int], dict]], ...] = (
    (SLOWFIRST, lambda ms: {"first_delay": ms / 1000}),
    (re.compile(r"cut(\d{1,4})-"), lambda n: {"drop_after": n}),
    (re.compile(r"cutevent(\d{1,4})-"), lambda n: {"cut_mid_event": n}),
    (re.compile(r"cutchar(\d{1,4})-"), lambda n: {"cut_mid_char": n}),
    (re.compile(r"stall(\d{1,4})-"), lambda n: {"stall_after": n, "stall": STALL_SECONDS}),
    (re.compile(r"errorafter(\d{1,4})-"), lambda n: {"error_after": n}),
)


def multibyte_words(count: int) -> list[str]:
    """The multibyte reply as `count` words (at least one), each with its trailing space."""
    words = MULTIBYTE_REPLY.split(" ")
    return [(words[i % len(words)] + " ") for i in range(max(1, count))]


def prefill_text(messages: Any) -> str | None:
    """The text of a final assistant message (a string, or its text parts/blocks joined), else None."""
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return None
    last = messages[-1]
    if last.get("role") != "assistant":
        return None
    content = last.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "".join(p for p in parts if isinstance(p, str))
    return None


def continue_conflict(body: dict) -> str | None:
    """vLLM's 400 message when a chat request asks for both continue_final_message and add_generation_prompt."""
    if body.get("continue_final_message") is True and body.get("add_generation_prompt") is True:
        return "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
    return None


def continuation(words: list[str], prefill: str | None) -> list[str]:
    """The deltas left of `words` after `prefill` (a prefix of their text), else all of `words`.

    A prefill ending inside a word leaves that word's rest as the first delta (a lone space joins the next word);
    nothing left is one empty delta."""
    text = "".join(words)
    for head in (prefill or "", (prefill or "").rstrip()):
        if head and text.startswith(head):
            return _rest(words, len(head)) or [""]
    return words


def _rest(words: list[str], offset: int) -> list[str]:
    start = 0
    for i, word in enumerate(words):
        if start + len(word) > offset:
            rest = [word[offset - start :], *words[i + 1 :]]
            if not rest[0].strip() and len(rest) > 1:  # only the stripped space left: it leads the next word
                rest[:2] = [rest[0] + rest[1]]
            return rest
        start += len(word)
    return []


def generated(words: list[str]) -> int:
    """The completion tokens of a reply: its non-empty deltas."""
    return sum(1 for word in words if word)


def token_faults(token: str, table: dict[str, dict]) -> dict:
    """The options a token's prefix switches on: the fixed `table`, or a numbered prefix (`NUMBERED`)."""
    faults: dict = {}
    for prefix, options in table.items():
        if token.startswith(prefix):
            faults.update(options)
    for pattern, options_of in NUMBERED:
        found = pattern.match(token)
        if found is not None:
            faults.update(options_of(int(found.group(1))))
    return faults


def cut_at(data: bytes, seq: int, opts: Any) -> int | None:
    """The byte offset at which event `seq` (its bytes `data`) is cut, or None when it is sent whole."""
    if opts.cut_mid_char is not None and seq == opts.cut_mid_char:
        lead = next((i for i, byte in enumerate(data) if byte >= 0xC0), None)  # a multi-byte sequence starts
        return lead + 1 if lead is not None else len(data) // 2
    if opts.cut_mid_event is not None and seq == opts.cut_mid_event:
        return len(data) // 2
    return None


def emit(send: Callable, data: bytes, seq: int, opts: Any, environ: dict) -> Generator[bytes, None, bool]:
    """Send event `seq`, or its bytes up to the cut and then close the connection; returns whether it cut."""
    at = cut_at(data, seq, opts)
    if at is None:
        yield from send(data, opts.trickle)
        return False
    yield data[:at]
    environ["mock.socket"].shutdown(socket.SHUT_RDWR)  # no rest of the event, no end of the stream
    return True
