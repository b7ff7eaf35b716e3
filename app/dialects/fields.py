"""Checks of request body fields, shared by the dialects: a 400 in the OpenAI shape naming the field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.errors import ApiError
from app.jsontext import storable

TYPE_NAMES = {
    str: "a string",
    list: "an array",
    dict: "an object",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
}


def invalid(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(
        400, message, code=code or ("invalid_request_error" if param is None else "invalid_value"), param=param
    )


def check_model(payload: Mapping[str, Any]) -> None:
    """`model` is present, a non-empty string, and safe to log, record and label metrics with."""
    model = payload.get("model")
    if model is None:
        raise invalid("You must provide a model parameter.", "model")
    check_type(payload, "model", (str,))
    if not model:
        raise invalid("'model' must not be empty.", "model")
    if not storable(model):
        raise invalid("'model' must not contain a NUL character.", "model")


def check_required(payload: Mapping[str, Any], required: Mapping[str, tuple[type, ...]]) -> None:
    for name, types in required.items():
        if name not in payload:
            raise invalid(f"Missing required parameter: '{name}'.", name)
        check_type(payload, name, types)
        if not payload[name]:
            raise invalid(f"'{name}' must not be empty.", name)


def check_optional(payload: Mapping[str, Any], optional: Mapping[str, tuple[type, ...]]) -> None:
    for name, types in optional.items():
        if payload.get(name) is not None:
            check_type(payload, name, types)


def check_type(payload: Mapping[str, Any], name: str, types: tuple[type, ...], param: str | None = None) -> None:
    value = payload[name]
    if isinstance(value, bool) and bool not in types:
        ok = False  # bool is an int in Python, not in JSON
    else:
        ok = isinstance(value, types)
    if not ok:
        expected = " or ".join(TYPE_NAMES[t] for t in types if t in TYPE_NAMES)
        where = param or name
        raise invalid(f"Invalid type for '{where}': expected {expected}.", where)


def check_stream(payload: Mapping[str, Any], can_stream: bool) -> None:
    if payload.get("stream") and not can_stream:
        raise invalid("This endpoint does not support streaming.", "stream")
