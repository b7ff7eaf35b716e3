"""Client authentication: `Authorization: Bearer <key>`, the master key or a managed key."""

from __future__ import annotations

import fnmatch
import hmac
from dataclasses import dataclass

from app.errors import ApiError
from app.storage.keys import ApiKey, KeyRepo


@dataclass(frozen=True)
class Identity:
    """Who is calling: a display name (never the key itself) and the managed key, if any."""

    name: str
    key: ApiKey | None = None

    def allows(self, model: str) -> bool:
        return self.key is None or any(fnmatch.fnmatchcase(model, glob) for glob in self.key.models)


MASTER = Identity("master")
_REFUSALS = {
    "revoked": ("Incorrect API key provided.", "invalid_api_key"),
    "disabled": ("This API key is disabled.", "key_disabled"),
    "expired": ("This API key has expired.", "key_expired"),
}


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def authenticate(header: str | None, master_key: str | None, keys: KeyRepo, now: float) -> Identity:
    """Return the caller's identity or raise a 401 ApiError (constant-time comparisons)."""
    presented = bearer_token(header)
    if presented is None:
        raise ApiError(
            401,
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>' (or 'x-api-key: <key>').",
            code="missing_api_key",
        )
    if master_key and hmac.compare_digest(presented.encode(), master_key.encode()):
        return MASTER
    key = keys.by_secret(presented)
    if key is None:
        raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
    state = key.state(now)
    if state in _REFUSALS:
        message, code = _REFUSALS[state]
        raise ApiError(401, message, code=code)
    return Identity(key.name, key)
