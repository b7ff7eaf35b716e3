"""Reading client request bodies: size, time and content type (the dialect decodes and checks them)."""

from __future__ import annotations

from typing import BinaryIO

from app.dialects.base import Dialect
from app.errors import ApiError

_READ_SIZE = 64 * 1024

try:  # gunicorn raises its own parse errors for a malformed chunked body
    from gunicorn.http.errors import ParseException as _ServerParseError
except ImportError:  # pragma: no cover - another WSGI server
    _ServerParseError = OSError  # type: ignore[assignment,misc]
BODY_READ_ERRORS = (OSError, ValueError, _ServerParseError)


def read_body(
    stream: BinaryIO, content_length: int | None, content_type: str | None, limit: int, dialect: Dialect
) -> bytes:
    """Read at most `limit` bytes; 413 past it (chunked bodies too), 415 for a type the dialect does not take."""
    if not dialect.accepts(content_type):
        expected = "multipart/form-data" if dialect.multipart else "application/json"
        raise ApiError(415, f"Unsupported Content-Type: send the body as {expected}.", code="unsupported_media_type")
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
