"""A managed key's limits at the request's start: its slot while the body arrives, then admission.

The limiter's own exceptions stop here: a refusal becomes the client's 429 (with
Retry-After and the x-ratelimit window), so the views never see storage types.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from app.auth import Identity
from app.errors import ApiError
from app.requestlog import RequestLine
from app.services import events
from app.services.slots import read_holding_slot
from app.storage.db import StorageError
from app.storage.limits import SLOT_MARGIN, Limiter, LimitExceeded

__all__ = ["SLOT_MARGIN", "admit", "read_body", "window"]
log = logging.getLogger("sluice.api")


def window(limiter: Limiter, identity: Identity | None, line: RequestLine) -> None:
    """Give a managed key's response its x-ratelimit-* window, if admission did not already."""
    if identity is None or identity.key is None or line.window is not None:
        return
    try:
        line.window = limiter.peek(identity.key, time.time())
    except StorageError as exc:
        log.warning("no rate-limit headers for request_id=%s: %s", line.request_id, exc)


def read_body(
    limiter: Limiter, line: RequestLine, identity: Identity, expires_at: float, read: Callable[[], bytes]
) -> bytes:
    """`read()` the body; a key with max_parallel takes its slot if the body is slow to arrive."""
    key = identity.key
    if key is None or key.max_parallel is None:
        return read()

    def hold() -> None:  # in a helper greenlet: no flask globals here
        try:
            line.admission = limiter.hold(key, time.time(), expires_at)
        except LimitExceeded as exc:
            raise _refused(line, exc) from None

    return read_holding_slot(read, hold)


def admit(limiter: Limiter, line: RequestLine, identity: Identity, expires_at: float) -> None:
    """Count the request against the key's limits (managed keys only; the master key has none).
    A slot held while the body arrived is kept in `line.admission` (released at the end) either way."""
    if identity.key is None:
        return
    try:
        line.admission = limiter.admit(identity.key, time.time(), expires_at, held=line.admission)
    except LimitExceeded as exc:
        if exc.code == "insufficient_quota":
            budget_alert(identity.key.name, identity.key.monthly_tokens, None)
        raise _refused(line, exc) from None
    line.window = line.admission.window


def _refused(line: RequestLine, exc: Any) -> ApiError:
    line.window = exc.window
    retry_after = str(max(1, math.ceil(exc.retry_after)))
    return ApiError(429, exc.message, code=exc.code, headers={"Retry-After": retry_after})


def budget_alert(key_name: str, budget: int | None, used: int | None) -> None:
    """`budget_80` / `budget_100` when a key's monthly tokens (as admitted, plus this request's) reach 80 % or
    all of its `budget` (`used` None: a request was refused, the budget is spent); the alerter sends one per key
    and month each `repeat_after` at most."""
    if budget is None or budget <= 0:
        return
    spent = used is None or used >= budget
    if not spent and used < 0.8 * budget:  # type: ignore[operator]
        return
    month = time.strftime("%Y-%m", time.gmtime())
    share = 100 if used is None else min(100, used * 100 // budget)
    fields = {"key": key_name, "month": month, "budget_tokens": budget, "used_tokens": used}
    text = f"Key {key_name} has used {share}% of its monthly budget of {budget} tokens."
    events.emit("budget_100" if spent else "budget_80", f"key {key_name} {month}", text, fields)
