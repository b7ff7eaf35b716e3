"""Refuse NUL characters in a request's path, query and dashboard form fields, before any view.

PostgreSQL's text type cannot hold U+0000, nor compare with it: an admin lookup such as
`PATCH /admin/api/keys/a%00b` reached the database and came back as a false 503, where SQLite
answered 404. No id, name or form value Sluice takes contains one, so it is a 400 everywhere.
(JSON bodies are checked by app/jsontext.py; headers cannot carry NUL through the HTTP parser.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import request

from app.errors import ApiError

if TYPE_CHECKING:
    from flask import Flask
    from werkzeug.datastructures import MultiDict

_FORMS = ("application/x-www-form-urlencoded", "multipart/form-data")


def _refuse_nul() -> None:
    if "\x00" in request.path:
        raise _nul("path")
    if request.path.startswith("/dashboard"):
        # Pages read their query through fixed choices and render whatever else (no lookup by it).
        if request.mimetype in _FORMS and _has_nul(request.form):  # bounded by app/bodylimit.py
            raise _nul("form")
    elif request.query_string and _has_nul(request.args):
        raise _nul("query")


def _has_nul(fields: MultiDict[str, str]) -> bool:
    return any("\x00" in k or "\x00" in v for k, v in fields.items(multi=True))


def _nul(where: str) -> ApiError:
    return ApiError(400, f"The request's {where} contains a NUL character.", code="invalid_request_error")


def register_text_guard(app: Flask) -> None:
    """After the body limits (so a form is bounded before it is parsed here)."""
    app.before_request(_refuse_nul)
