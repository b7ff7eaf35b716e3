"""Token counts from upstream answers: the `usage` object of a reply or of a stream's usage chunk."""

from __future__ import annotations

import json
from typing import Any

USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


def usage_from(data: Any) -> dict[str, int] | None:
    """The token counts of an OpenAI `usage` object, when `data` carries one."""
    usage = data.get("usage") if isinstance(data, dict) else None
    if not isinstance(usage, dict):
        return None
    counts = {f: int(usage[f]) for f in USAGE_FIELDS if isinstance(usage.get(f), int)}
    if "total_tokens" not in counts:
        counts["total_tokens"] = counts.get("prompt_tokens", 0) + counts.get("completion_tokens", 0)
    return counts


def usage_from_body(content: bytes) -> dict[str, int] | None:
    try:
        return usage_from(json.loads(content))
    except ValueError:
        return None
