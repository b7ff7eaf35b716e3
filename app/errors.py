"""The exception type for client-visible errors and the one function that renders them.

Every error Sluice itself produces has OpenAI's shape:
``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

_TYPE_BY_STATUS = {
    401: "invalid_request_error",
    403: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    """An error answered to the client with `status` and an OpenAI-shaped body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or error_type(status)
        self.headers = dict(headers or {})

    def body(self) -> dict:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)


class StreamBroken(Exception):
    """An upstream exchange failed after its status line (mid-stream, or an oversized body); `code` names how."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_type(status: int) -> str:
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(message: str, *, type: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(error: ApiError, render: Callable[[ApiError], dict] | None = None) -> Response:
    """Render an ApiError as a JSON response with its status and extra headers (in the
    request's dialect when `render` is given: its `error_body`, else the OpenAI shape)."""
    body = render(error) if render is not None else error.body()
    response = Response(json.dumps(body), status=error.status, mimetype="application/json")
    for name, value in error.headers.items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    """Make every error, including Flask's own 404/405/413, OpenAI-shaped."""

    def api_error(error: ApiError) -> Response:
        line = g.get("line")
        if line is not None:
            line.outcome = error.code or error.type
        rule = request.url_rule.rule if request.url_rule is not None else None
        find = current_app.extensions.get("sluice.error_dialect")  # app/api/blueprint.py
        dialect = find(rule, request.path) if find is not None else None
        if dialect is None:
            return error_response(error)
        response = error_response(error, dialect.error_body)
        if line is not None:
            response.headers["request-id"] = line.request_id  # as Anthropic's API names it
        return response

    app.register_error_handler(ApiError, api_error)

    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = _HTTP_MESSAGES.get(status, exc.description or exc.name)
        headers = {}
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        code = _HTTP_CODES.get(status)
        return api_error(ApiError(status, message, code=code, headers=headers))

    def unexpected(exc: Exception) -> Response:
        logging.getLogger("sluice.errors").exception("unhandled error: %s", type(exc).__name__)
        return api_error(ApiError(500, "Internal error in the gateway.", code="internal_error"))

    def storage_error(exc: Exception) -> Response:
        logging.getLogger("sluice.errors").error("storage unavailable: %s", exc)
        return api_error(
            ApiError(
                503,
                "The gateway's storage is unavailable; retry shortly.",
                code="storage_unavailable",
                headers={"Retry-After": "5"},
            )
        )

    from app.storage.db import StorageError

    app.register_error_handler(StorageError, storage_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected)


_HTTP_MESSAGES = {
    404: "Unknown path. See /v1/models, /v1/chat/completions, /v1/responses, /v1/embeddings (and README's endpoints).",
    405: "Method not allowed for this path.",
    413: "Request body too large.",
}
_HTTP_CODES = {404: "unknown_url", 405: "method_not_allowed", 413: "request_too_large"}
