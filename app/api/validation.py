"""Reading client request bodies: size, content type, JSON (the dialect checks the fields)."""

from __future__ import annotations

from typing import Any, BinaryIO

from app.dialects.base import Dialect
from app.dialects.fields import invalid
from app.errors import ApiError
from app.jsontext import JsonError, loads_object

_READ_SIZE = 64 * 1024

try:  # gunicorn raises its own parse errors for a malformed chunked body
    from gunicorn.http.errors import ParseException as _ServerParseError
except ImportError:  # pragma: no cover - another WSGI server
    _ServerParseError = OSError  # type: ignore[assignment,misc]
BODY_READ_ERRORS = (OSError, ValueError, _ServerParseError)


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


def parse_payload(body: bytes, dialect: Dialect) -> dict[str, Any]:
    """Decode a JSON request body and let the dialect check its fields; 400 with the offending param."""
    try:
        payload = loads_object(body)
    except JsonError as exc:
        raise invalid(exc.message, exc.param) from None
    dialect.validate(payload)
    return payload
