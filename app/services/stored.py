"""Stored Responses API responses: remember who created each, find it again for its owner only, and
count a background response's usage once, when it is first fetched finished."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from app.dialects.openai_responses import RESPONSE_ID
from app.errors import ApiError
from app.storage.db import StorageError
from app.storage.stored_responses import StoredResponse, StoredResponses

log = logging.getLogger("sluice.api")
FINISHED = ("completed", "incomplete", "failed", "cancelled")


def remember(store: StoredResponses, response_id: str, upstream: str, token_id: str, key_id: str | None,
             model: str, request_id: str, *, counted: bool) -> None:  # fmt: skip
    """Record which upstream and token created `response_id`; a storage failure costs only the later lookups."""
    try:
        store.remember(StoredResponse(response_id, upstream, token_id, key_id, model[:200], time.time(), counted))
    except StorageError as exc:
        log.warning("stored response not recorded request_id=%s: %s", request_id, exc)


def find(store: StoredResponses, response_id: str, key_id: str | None) -> StoredResponse:
    """The record of a stored response the caller may reach (its key made it, or the master key asks); else 404."""
    found = store.find(response_id) if RESPONSE_ID.fullmatch(response_id) else None
    if found is None or (key_id is not None and found.key_id != key_id):
        raise not_found(response_id)
    return found


def forget(store: StoredResponses, response_id: str, request_id: str) -> None:
    try:
        store.forget(response_id)
    except StorageError as exc:
        log.warning("deleted response not forgotten request_id=%s: %s", request_id, exc)


class FirstFinish:
    """Whether a fetch of a stored response counts its usage: only a background response's (its creation
    counted nothing), and only the first fetch that sees it finished; every other fetch counts none."""

    def __init__(self, store: StoredResponses, found: StoredResponse, request_id: str) -> None:
        self.store, self.found, self.request_id = store, found, request_id
        self.count = False

    def __call__(self, accepted: Any) -> None:
        if self.found.counted or accepted.body is None:
            return
        try:
            finished = json.loads(accepted.body).get("status") in FINISHED
        except (ValueError, AttributeError):
            return
        if finished:
            try:
                self.count = self.store.mark_counted(self.found.id)
            except StorageError as exc:
                log.warning("background usage not counted request_id=%s: %s", self.request_id, exc)


def not_found(response_id: str, why: str = "No response found with id") -> ApiError:
    shown = response_id if RESPONSE_ID.fullmatch(response_id) else "(invalid id)"
    return ApiError(404, f"{why} '{shown}'.", code="not_found", param="response_id")
