"""Read the text fields of a multipart/form-data body that is already in memory; pure, no flask globals.

The gateway routes an upload by its `model` field (and reads `stream`) without keeping the files:
werkzeug's sans-IO decoder is fed the body in slices of a memoryview, so its buffer, and the time
it spends moving that buffer, stay small whatever the body's size; file contents are only counted.
Every failure, whatever the bytes, is an ApiError: 415 for another Content-Type, else a 400.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import NEED_DATA, Data, Epilogue, Field, File, MultipartDecoder, State

from app.errors import ApiError

SLICE = 64 * 1024  # bytes handed to the decoder at a time
MAX_HEAD = 16 * 1024  # a preamble or a part's headers longer than this is refused, not buffered
MAX_PARTS = 1000  # as werkzeug's own form parser: ~17 us of decoding each, so a body of tiny parts stays cheap
# RFC 2046's characters, the last one not a space; up to 200 of them, not its 70: werkzeug's own test
# client makes boundaries of 70-75, and a longer one costs the decoder nothing.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,199}[0-9A-Za-z'()+_,\-./:=?]")
# What werkzeug's decoder raises on bytes it cannot parse (a missing Content-Disposition, undecodable
# headers, input that ends early); RequestEntityTooLarge is not among them (no limits are set).
_DECODER_ERRORS = (ValueError, AttributeError, IndexError, TypeError)


@dataclass(frozen=True)
class Part:
    """One part of a form: its field name, filename (None for a text field), size and, if kept, its bytes."""

    name: str
    filename: str | None
    content_type: str | None
    size: int
    value: bytes | None


def form_fields(body: bytes, content_type: str, *, wanted: frozenset[str]) -> dict[str, str]:
    """The text fields named in `wanted` (e.g. model, stream) of a multipart/form-data body already read in full.

    Raises ApiError(400, ..., code="invalid_multipart") for a missing/invalid boundary, a truncated or malformed
    body, a field that is not UTF-8 (or holds a NUL), or a duplicated wanted field; ApiError(415) if content_type
    is not multipart/form-data. A file part is never a text field, even under a wanted name.
    """
    return form(body, content_type, wanted=wanted)[0]


def form(body: bytes, content_type: str, *, wanted: frozenset[str]) -> tuple[dict[str, str], set[str]]:
    """`form_fields`, and the names of the file parts, from one decoding of the body."""
    fields: dict[str, str] = {}
    files: set[str] = set()
    for part in parts(body, content_type, keep=wanted):
        if part.filename is not None:
            files.add(part.name)
        elif part.name in wanted:
            if part.name in fields:
                raise _invalid(f"The form field '{part.name}' is given more than once.", part.name)
            fields[part.name] = _text(part)
    return fields, files


def parts(body: bytes, content_type: str, *, keep: frozenset[str] | None = None) -> list[Part]:
    """Every part of the body in order; the bytes of text fields named in `keep` (all text fields if None) are kept."""
    boundary = boundary_of(content_type)
    found: list[Part] = []
    current: File | Field | None = None
    chunks: list[bytes] | None = None
    size = 0
    for event in _events(body, boundary):
        if isinstance(event, File | Field):
            if not event.name:
                raise _invalid("A form part has no name.", None)
            current, size = event, 0
            text = isinstance(event, Field)
            chunks = [] if text and (keep is None or event.name in keep) else None
        elif isinstance(event, Data) and current is not None:
            size += len(event.data)
            if chunks is not None:
                chunks.append(event.data)
            if not event.more_data:
                found.append(_part(current, size, chunks))
                current, chunks = None, None
    return found


def boundary_of(content_type: str) -> bytes:
    """The boundary of a multipart/form-data Content-Type; 415 for another type, 400 for a bad boundary."""
    mimetype, options = parse_options_header(content_type)
    if mimetype.lower() != "multipart/form-data":
        raise ApiError(415, "Unsupported Content-Type: send the body as multipart/form-data.",
                       code="unsupported_media_type")  # fmt: skip
    boundary = options.get("boundary", "")
    if not _BOUNDARY.fullmatch(boundary):
        raise _invalid("The Content-Type has no valid multipart boundary (1-200 characters, RFC 2046).", None)
    return boundary.encode("ascii")


def _events(body: bytes, boundary: bytes) -> Iterator[File | Field | Data]:
    """The decoder's part and data events; a body that is not a complete form raises ApiError(400)."""
    decoder = MultipartDecoder(boundary)
    view = memoryview(body)
    offset = count = 0
    try:
        while True:
            event = decoder.next_event()
            if event is NEED_DATA:
                # Waiting for the end of a preamble or of a part's headers, the buffer holds nothing else.
                if decoder.state in (State.PREAMBLE, State.PART) and len(decoder.buffer) > MAX_HEAD:
                    raise _invalid("A form part's headers (or the preamble) are too long.", None)
                # A slice of the memoryview is not a copy; the decoder's buffer is the only one.
                decoder.receive_data(view[offset : offset + SLICE] if offset < len(body) else None)
                offset += SLICE
            elif isinstance(event, File | Field | Data):
                count += not isinstance(event, Data)
                if count > MAX_PARTS:
                    raise _invalid(f"The form has more than {MAX_PARTS} parts.", None)
                yield event
            elif isinstance(event, Epilogue):
                return
    except _DECODER_ERRORS as exc:
        raise _invalid("The multipart body is malformed or truncated.", None) from exc
    finally:
        view.release()


def _part(event: File | Field, size: int, chunks: list[bytes] | None) -> Part:
    content_type = event.headers.get("content-type")
    filename = event.filename if isinstance(event, File) else None
    return Part(event.name, filename, content_type, size, b"".join(chunks) if chunks is not None else None)


def _text(part: Part) -> str:
    try:
        value = (part.value or b"").decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid(f"The form field '{part.name}' is not UTF-8 text.", part.name) from None
    if "\x00" in value:  # it would reach logs and usage records (PostgreSQL text cannot hold NUL)
        raise _invalid(f"The form field '{part.name}' contains a NUL character.", part.name)
    return value


def _invalid(message: str, param: str | None) -> ApiError:
    return ApiError(400, message, code="invalid_multipart", param=param)
