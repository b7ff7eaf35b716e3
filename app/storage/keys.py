"""Client API keys: created once (shown once), stored as a SHA-256 hash and a display prefix."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import bindparam, insert, or_, select, update

from app.storage import schema
from app.storage.changes import Cache
from app.storage.db import Conflict, Database

KEY_PREFIX = "sk-sluice-"
_DISPLAY_LENGTH = len(KEY_PREFIX) + 4


class KeyNotFound(LookupError):
    pass


class KeyConflict(ValueError):
    pass


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    created_at: float
    expires_at: float | None
    enabled: bool
    revoked_at: float | None
    models: tuple[str, ...]
    rpm: int | None
    tpm: int | None
    max_parallel: int | None
    monthly_tokens: int | None

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if not self.enabled:
            return "disabled"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"

    def public(self, now: float) -> dict[str, Any]:
        """The JSON view (never the key or its hash)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["models"] = list(self.models)
        data["state"] = self.state(now)
        return data


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyRepo:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: Cache[ApiKey] = Cache(db.changes, "keys")  # by hash, per process
        self._by_hash = db.prepare(select(schema.api_keys).where(schema.api_keys.c.key_hash == bindparam("digest")))

    def create(self, name: str, *, now: float, models: tuple[str, ...] = ("*",), **limits: Any) -> tuple[ApiKey, str]:
        """Store a new key; returns it with its plain value, which is never stored nor shown again."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        row = {
            "id": "key_" + secrets.token_hex(8),
            "name": name,
            "prefix": secret[:_DISPLAY_LENGTH],
            "key_hash": hash_key(secret),
            "created_at": now,
            "enabled": True,
            "models": ",".join(models),
            **{k: limits.get(k) for k in ("expires_at", "rpm", "tpm", "max_parallel", "monthly_tokens")},
        }
        try:
            with self.db.write() as conn:
                conn.execute(insert(schema.api_keys).values(**row))
        except Conflict:
            raise KeyConflict(f"a key named {name!r} already exists") from None
        self.db.changes.signal("keys")
        return self.get(row["id"]), secret

    def by_secret(self, secret: str) -> ApiKey | None:
        """The key whose hash matches `secret` (compared in constant time), or None; cached while
        no process has changed a key since (app/storage/changes.py)."""
        digest = hash_key(secret)
        return self._cache.get(digest, lambda: self._read(digest))

    def _read(self, digest: str) -> ApiKey | None:
        with self.db.quick() as q:
            found = q.rows(self._by_hash, {"digest": digest})
        if not found or not hmac.compare_digest(found[0].key_hash, digest):
            return None
        return _key(found[0])

    def get(self, key_id: str) -> ApiKey:
        with self.db.read() as conn:
            row = conn.execute(select(schema.api_keys).where(schema.api_keys.c.id == key_id)).first()
        if row is None:
            raise KeyNotFound(key_id)
        return _key(row)

    def find(self, name_or_prefix: str) -> ApiKey:
        """By id, exact name, or a unique display-prefix match."""
        t = schema.api_keys.c
        query = select(schema.api_keys).where(
            or_(t.id == name_or_prefix, t.name == name_or_prefix, t.prefix == name_or_prefix)
        )
        with self.db.read() as conn:
            rows = conn.execute(query).fetchall()
        if len(rows) != 1:
            raise KeyNotFound(name_or_prefix) if not rows else KeyConflict(f"{name_or_prefix!r} matches several keys")
        return _key(rows[0])

    def list(self) -> list[ApiKey]:
        with self.db.read() as conn:
            rows = conn.execute(select(schema.api_keys).order_by(schema.api_keys.c.created_at)).fetchall()
        return [_key(r) for r in rows]

    def update(self, key_id: str, **values: Any) -> ApiKey:
        if not values:  # nothing to change (an empty PATCH): the key as it is, or KeyNotFound
            return self.get(key_id)
        if "models" in values:
            values["models"] = ",".join(values["models"])
        with self.db.write() as conn:
            result = conn.execute(update(schema.api_keys).where(schema.api_keys.c.id == key_id).values(**values))
        self.db.changes.signal("keys")
        if result.rowcount == 0:
            raise KeyNotFound(key_id)
        return self.get(key_id)


def _key(row: Any) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        created_at=row.created_at,
        expires_at=row.expires_at,
        enabled=bool(row.enabled),
        revoked_at=row.revoked_at,
        models=tuple(m for m in row.models.split(",") if m),
        rpm=row.rpm,
        tpm=row.tpm,
        max_parallel=row.max_parallel,
        monthly_tokens=row.monthly_tokens,
    )
