"""Stored Responses API responses: remember who created each, and find it again for its owner only."""

from __future__ import annotations

import logging
import time
from typing import Any

from app.errors import ApiError
from app.storage.db import StorageError
from app.storage.stored_responses import StoredResponse, StoredResponses

log = logging.getLogger("sluice.api")


def remember(store: StoredResponses, response_id: str, upstream: str, token_id: str, key_id: str | None,
             model: str, request_id: str) -> None:  # fmt: skip
    """Record which upstream and token created `response_id`; a storage failure costs only the later lookups."""
    try:
        store.remember(StoredResponse(response_id, upstream, token_id, key_id, model[:200], time.time()))
    except StorageError as exc:
        log.warning("stored response not recorded request_id=%s: %s", request_id, exc)


def find(store: StoredResponses, response_id: str, key_id: str | None) -> Any:
    """The record of a stored response the caller may reach (its key made it, or the master key asks); else 404."""
    found = store.find(response_id) if _plausible(response_id) else None
    if found is None or (key_id is not None and found.key_id != key_id):
        raise not_found(response_id)
    return found


def forget(store: StoredResponses, response_id: str, request_id: str) -> None:
    try:
        store.forget(response_id)
    except StorageError as exc:
        log.warning("deleted response not forgotten request_id=%s: %s", request_id, exc)


def not_found(response_id: str) -> ApiError:
    shown = response_id if _plausible(response_id) else "(invalid id)"
    return ApiError(404, f"No response found with id '{shown}'.", code="not_found", param="response_id")


def _plausible(response_id: str) -> bool:
    return (
        0 < len(response_id) <= 200 and response_id.isascii() and response_id.isprintable() and "/" not in response_id
    )
