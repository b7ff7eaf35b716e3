"""The fault suite's client: one streamed request in a client dialect (chat, Responses, Messages), its SSE
parsed by hand, and the verdict on what the client received.

complete: the text equals the mock's full reply, the stream ended with its own end (`[DONE]`,
`response.completed`, `message_stop`), no error event, one id, one start (role delta, `response.created`,
`message_start`), one final usage and one end. explicit error: an HTTP error or an error event in the client's dialect
(Responses: `error`, `response.failed`, `response.incomplete`). wrong: anything else (truncated,
duplicated, a connection cut under the client, half an event): what must never happen.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import requests

PROMPT = "Say something short."
TERMINAL = {"chat": "[DONE]", "responses": "response.completed", "messages": "message_stop"}
RESPONSES_ERRORS = ("error", "response.failed", "response.incomplete")


@dataclass
class Answer:
    """What one client request received."""

    status: int = 0
    text: str = ""
    starts: int = 0
    ends: int = 0
    errors: list[str] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)
    usages: int = 0  # final usage reports (chat usage chunk, response.completed's usage, message_delta's usage)
    final_text: str | None = None  # Responses: the text of response.completed's output
    aborted: str | None = None  # the transport error that ended the body, if any
    torn: bool = False  # bytes after the last complete event
    garbled: list[str] = field(default_factory=list)  # undecodable bytes, unparsable JSON
    first_event: float | None = None  # seconds from sending to the first complete data event
    elapsed: float = 0.0


def request_parts(client: str, model: str, key: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The path, headers and body of a streamed request in `client`'s dialect."""
    messages = [{"role": "user", "content": PROMPT}]
    if client == "messages":
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        return "/v1/messages", headers, {"model": model, "max_tokens": 512, "stream": True, "messages": messages}
    headers = {"Authorization": f"Bearer {key}"}
    if client == "responses":
        return "/v1/responses", headers, {"model": model, "stream": True, "input": PROMPT}
    body = {"model": model, "stream": True, "messages": messages, "stream_options": {"include_usage": True}}
    return "/v1/chat/completions", headers, body


def send(base_url: str, key: str, client: str, model: str, timeout: float = 25.0) -> Answer:
    """One streamed request, read to its end (bounded by `timeout` between reads), parsed and summarised."""
    path, headers, body = request_parts(client, model, key)
    headers = {**headers, "Accept": "text/event-stream", "Connection": "close"}
    started = time.monotonic()
    answer = Answer()
    raw = b""
    try:
        with requests.post(base_url + path, json=body, headers=headers, stream=True, timeout=(5, timeout)) as reply:
            answer.status = reply.status_code
            for chunk in reply.iter_content(chunk_size=None):
                raw += chunk
                if answer.first_event is None and has_event(raw):
                    answer.first_event = time.monotonic() - started
    except requests.RequestException as exc:
        answer.aborted = type(exc).__name__
    answer.elapsed = time.monotonic() - started
    if answer.status == 200:
        summarise(client, raw, answer)
    return answer


def has_event(raw: bytes) -> bool:
    """Whether `raw` holds a complete SSE event with data (comments such as keep-alives are not events)."""
    blocks = raw.replace(b"\r\n", b"\n").split(b"\n\n")[:-1]
    return any(line.startswith(b"data:") for block in blocks for line in block.split(b"\n"))


def sse_events(raw: bytes) -> tuple[list[tuple[str | None, bytes]], bool]:
    """The complete events as (event name, data bytes), and whether bytes follow the last complete event."""
    blocks = raw.replace(b"\r\n", b"\n").split(b"\n\n")
    events = []
    for block in blocks[:-1]:
        name, data = None, []
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode("utf-8", "replace")
            elif line.startswith(b"data:"):
                data.append(line[5:].removeprefix(b" "))
        if data:
            events.append((name, b"\n".join(data)))
    return events, bool(blocks[-1].strip())


def summarise(client: str, raw: bytes, answer: Answer) -> None:
    """Fill `answer` from the stream's bytes, per the client's dialect."""
    events, answer.torn = sse_events(raw)
    for name, data in events:
        if client == "chat" and data.strip() == b"[DONE]":
            answer.ends += 1
            continue
        try:
            event = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            answer.garbled.append(type(exc).__name__)
            continue
        if not isinstance(event, dict):
            answer.garbled.append("not an object")
        elif client == "chat":
            _chat(event, answer)
        elif client == "responses":
            _responses(name or event.get("type"), event, answer)
        else:
            _messages(name or event.get("type"), event, answer)


def _chat(chunk: dict, answer: Answer) -> None:
    if "error" in chunk:
        answer.errors.append(f"error event ({_code(chunk['error'])})")
        return
    answer.ids.add(str(chunk.get("id")))
    answer.usages += bool(chunk.get("usage"))
    for choice in chunk.get("choices") or []:
        delta = choice.get("delta") or {}
        answer.starts += "role" in delta
        answer.text += delta.get("content") or ""


def _responses(kind: str | None, event: dict, answer: Answer) -> None:
    if kind in RESPONSES_ERRORS:
        answer.errors.append(f"{kind} ({_code(event.get('error') or event.get('response', {}).get('error') or event)})")
    elif kind == "response.created":
        answer.starts += 1
        answer.ids.add(str(event["response"].get("id")))
    elif kind == "response.output_text.delta":
        answer.text += event.get("delta", "")
    elif kind == "response.completed":
        answer.ends += 1
        answer.ids.add(str(event["response"].get("id")))
        answer.usages += bool(event["response"].get("usage"))
        answer.final_text = "".join(
            part.get("text", "")
            for item in event["response"].get("output") or []
            if item.get("type") == "message"
            for part in item.get("content") or []
            if part.get("type") == "output_text"
        )


def _messages(kind: str | None, event: dict, answer: Answer) -> None:
    if kind == "error":
        answer.errors.append(f"error event ({_code(event.get('error') or {})})")
    elif kind == "message_start":
        answer.starts += 1
        answer.ids.add(str(event["message"].get("id")))
    elif kind == "content_block_delta" and event.get("delta", {}).get("type") == "text_delta":
        answer.text += event["delta"].get("text", "")
    elif kind == "message_delta":
        answer.usages += bool(event.get("usage"))
    elif kind == "message_stop":
        answer.ends += 1


def _code(error: Any) -> str:
    if not isinstance(error, dict):
        return "?"
    return str(error.get("code") or error.get("type") or "?")


def verdict(answer: Answer, expected: str) -> tuple[str, str]:
    """("complete" | "error" | "wrong", why): see the module's docstring."""
    if answer.status != 200:
        return "error", f"HTTP {answer.status}" if answer.status else f"no answer ({answer.aborted})"
    if answer.errors:
        return "error", answer.errors[0]
    problems = [f"connection {answer.aborted}"] if answer.aborted else []
    problems += ["ended mid-event"] if answer.torn else []
    problems += [f"garbled event ({g})" for g in answer.garbled[:1]]
    if answer.text != expected:
        problems.append(_text_problem(answer.text, expected))
    if answer.ends != 1:
        problems.append(f"{answer.ends} ends")
    if answer.starts != 1:
        problems.append(f"{answer.starts} starts")
    if len(answer.ids) != 1:
        problems.append(f"{len(answer.ids)} ids")
    if answer.usages != 1:
        problems.append(f"{answer.usages} usage reports")
    if answer.final_text is not None and answer.final_text != answer.text:
        problems.append("final output differs from the deltas")
    return ("wrong", "; ".join(problems)) if problems else ("complete", "")


def _text_problem(text: str, expected: str) -> str:
    if expected.startswith(text):
        return f"truncated ({len(text)} of {len(expected)} chars)"
    if len(text) > len(expected):
        return f"longer text ({len(text)} of {len(expected)} chars: duplicated?)"
    return "different text"
