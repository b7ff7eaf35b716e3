"""Strict JSON for every body a client or an operator sends: one parser, pure (no I/O).

It refuses what another parser could read differently or what Sluice could not store:
duplicate top-level keys (checked on the last value, forwarded with the first), numbers
that are not finite (`1e999` would reach the upstream as `Infinity`), `NaN`/`Infinity`,
nesting past `MAX_DEPTH`, and strings that cannot be encoded as UTF-8 (a lone surrogate
escape such as `"\\ud800"`, which later fails in the database, the logs and metrics); and,
where every string may be stored (admin input), NUL (`"\\u0000"`: PostgreSQL refuses it).
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64


class JsonError(ValueError):
    """The body is not acceptable JSON; `message` says why, `param` names the field when known."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


class _Pairs:
    """object_pairs_hook that notes duplicate keys; the last object completed is the top level."""

    def __init__(self) -> None:
        self.duplicate: str | None = None

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        self.duplicate = None
        if len(obj) != len(pairs):
            seen: set[str] = set()
            self.duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        return obj


def loads_object(body: bytes, *, allow_nul: bool = True) -> dict[str, Any]:
    """Decode a request body that must be one JSON object; JsonError says what is wrong.
    `allow_nul=False` where every string may be stored (admin input)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonError("The request body is not valid UTF-8.") from None
    if not text.strip():
        raise JsonError("The request body is empty: send a JSON object.")
    pairs = _Pairs()
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite, object_pairs_hook=pairs)
    except RecursionError:
        raise JsonError(f"The request body is nested deeper than {MAX_DEPTH} levels.") from None
    except json.JSONDecodeError as exc:
        raise JsonError(f"The request body is not valid JSON: {exc.msg} at position {exc.pos}.") from None
    except ValueError as exc:  # NaN/Infinity, 1e999, or an integer too long to convert
        raise JsonError(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(value, dict):
        raise JsonError("The request body must be a JSON object.")
    if pairs.duplicate is not None:
        raise JsonError(f"The key '{pairs.duplicate}' appears more than once in the request body.", pairs.duplicate)
    check_value(value, escapes="\\u" in text, allow_nul=allow_nul)  # NUL and surrogates only come escaped
    return value


def check_value(value: Any, escapes: bool = True, allow_nul: bool = True) -> None:
    """Depth at most MAX_DEPTH and (when `escapes`: the text had \\u escapes) only encodable strings."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            if depth > MAX_DEPTH:
                raise JsonError(f"The request body is nested deeper than {MAX_DEPTH} levels.")
            if escapes:
                for key in item:
                    _check_text(key, allow_nul)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            if depth > MAX_DEPTH:
                raise JsonError(f"The request body is nested deeper than {MAX_DEPTH} levels.")
            stack.extend((child, depth + 1) for child in item)
        elif escapes and isinstance(item, str):
            _check_text(item, allow_nul)


def storable(text: str) -> bool:
    """True when `text` can be stored anywhere Sluice writes it: valid UTF-8 and no NUL
    (PostgreSQL's text type refuses U+0000, where SQLite takes it)."""
    return "\x00" not in text and encodable(text)


def encodable(text: str) -> bool:
    """True when `text` can be written as UTF-8 (no lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(text: str, allow_nul: bool) -> None:
    if not encodable(text):
        raise JsonError("The request body contains a string that is not valid Unicode (a lone surrogate escape).")
    if not allow_nul and "\x00" in text:
        raise JsonError("The request body contains a NUL character (\\u0000), which cannot be stored.")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _finite(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise ValueError(f"the number {literal[:40]} is too large")
    return number
