"""The chat-completions stream's own markers: the `data: [DONE]` that ends it, and its error event."""

from __future__ import annotations

import json

from app.errors import error_body

DONE = b"data: [DONE]\n\n"


def error_event(code: str, message: str) -> bytes:
    body = error_body(message, type="server_error", code=code)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def is_done(raw: bytes) -> bool:
    return any(line.startswith(b"data:") and line[5:].strip() == b"[DONE]" for line in raw.splitlines())
