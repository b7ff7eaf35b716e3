"""Reading and checking client request bodies: size, content type, JSON, field types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO

from app.errors import ApiError
from app.jsontext import JsonError, loads_object, storable

_READ_SIZE = 64 * 1024

try:  # gunicorn raises its own parse errors for a malformed chunked body
    from gunicorn.http.errors import ParseException as _ServerParseError
except ImportError:  # pragma: no cover - another WSGI server
    _ServerParseError = OSError  # type: ignore[assignment,misc]
BODY_READ_ERRORS = (OSError, ValueError, _ServerParseError)


@dataclass(frozen=True)
class Endpoint:
    """One OpenAI endpoint: its upstream path and the fields it requires."""

    path: str
    required: dict[str, tuple[type, ...]]
    can_stream: bool


ENDPOINTS = {
    "chat": Endpoint("/chat/completions", {"messages": (list,)}, can_stream=True),
    "completions": Endpoint("/completions", {}, can_stream=True),
    "embeddings": Endpoint("/embeddings", {"input": (str, list)}, can_stream=False),
}

# Optional fields checked when present: name -> accepted types.
OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {
    "stream": (bool,),
    "stream_options": (dict,),
    "prompt": (str, list),
    "max_tokens": (int,),
    "max_completion_tokens": (int,),
    "n": (int,),
    "temperature": (int, float),
    "top_p": (int, float),
    "user": (str,),
}
_TYPE_NAMES = {
    str: "a string",
    list: "an array",
    dict: "an object",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
}


def read_body(stream: BinaryIO, content_length: int | None, content_type: str | None, limit: int) -> bytes:
    """Read at most `limit` bytes; 413 past it (chunked bodies too), 415 for a non-JSON type."""
    if content_type:
        mimetype = content_type.split(";", 1)[0].strip().lower()
        if mimetype != "application/json" and not mimetype.endswith("+json"):
            raise ApiError(
                415, "Unsupported Content-Type: send the body as application/json.", code="unsupported_media_type"
            )
    if content_length is not None and content_length > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    while True:
        try:
            chunk = stream.read(min(_READ_SIZE, limit + 1 - size))
        except BODY_READ_ERRORS:
            raise ApiError(
                400,
                "The request body could not be read (malformed chunked encoding or cut short).",
                code="invalid_body",
            ) from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body too large: the limit is {limit} bytes.", code="request_too_large")


def parse_payload(body: bytes, kind: str) -> dict[str, Any]:
    """Decode and check a request body for endpoint `kind`; 400 with the offending param."""
    try:
        payload = loads_object(body)
    except JsonError as exc:
        raise _invalid(exc.message, exc.param) from None
    _check_fields(payload, ENDPOINTS[kind])
    return payload


def _check_fields(payload: dict[str, Any], endpoint: Endpoint) -> None:
    model = payload.get("model")
    if model is None:
        raise _invalid("You must provide a model parameter.", "model")
    _check_type(payload, "model", (str,))
    if not model:
        raise _invalid("'model' must not be empty.", "model")
    if not storable(model):  # it is logged, recorded and may become a metric label
        raise _invalid("'model' must not contain a NUL character.", "model")
    for name, types in endpoint.required.items():
        if name not in payload:
            raise _invalid(f"Missing required parameter: '{name}'.", name)
        _check_type(payload, name, types)
        if not payload[name]:
            raise _invalid(f"'{name}' must not be empty.", name)
    for name, types in OPTIONAL_FIELDS.items():
        if payload.get(name) is not None:
            _check_type(payload, name, types)
    if payload.get("stream") and not endpoint.can_stream:
        raise _invalid("This endpoint does not support streaming.", "stream")


def _check_type(payload: dict[str, Any], name: str, types: tuple[type, ...]) -> None:
    value = payload[name]
    if isinstance(value, bool) and bool not in types:
        ok = False  # bool is an int in Python, not in JSON
    else:
        ok = isinstance(value, types)
    if not ok:
        expected = " or ".join(_TYPE_NAMES[t] for t in types if t in _TYPE_NAMES)
        raise _invalid(f"Invalid type for '{name}': expected {expected}.", name)


def _invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, code="invalid_request_error" if param is None else "invalid_value", param=param)
