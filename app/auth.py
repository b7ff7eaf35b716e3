"""Client authentication: `Authorization: Bearer <key>` against the configured keys."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from app.errors import ApiError


@dataclass(frozen=True)
class Identity:
    """Who is calling: the key's display name (never the key itself)."""

    name: str


MASTER = Identity("master")


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def authenticate(header: str | None, master_key: str | None) -> Identity:
    """Return the caller's identity or raise a 401 ApiError (constant-time comparison)."""
    presented = bearer_token(header)
    if presented is None:
        raise ApiError(
            401,
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            code="missing_api_key",
        )
    if master_key and hmac.compare_digest(presented.encode(), master_key.encode()):
        return MASTER
    raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
