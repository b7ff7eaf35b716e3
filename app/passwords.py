"""The dashboard password settings: SLUICE_ADMIN_PASSWORD or SLUICE_ADMIN_PASSWORD_HASH, checked at start-up.

A bad setting raises ValueError naming the variable; app/config.py reports it as a ConfigError.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from werkzeug.security import generate_password_hash


def password_mark(env: Mapping[str, str]) -> str | None:
    """Identifies the configured password, the same in every worker (a plain password's werkzeug
    hash is salted afresh in each); kept only in the database, and slow to invert (scrypt)."""
    given = env.get("SLUICE_ADMIN_PASSWORD_HASH") or env.get("SLUICE_ADMIN_PASSWORD")
    secret = env.get("SLUICE_SECRET_KEY")
    if not given or not secret:
        return None
    salt = hmac.new(secret.encode(), b"sluice dashboard password mark", hashlib.sha256).digest()
    return hashlib.scrypt(given.encode(), salt=salt, n=2**14, r=8, p=1, dklen=24).hex()


def password_hash(env: Mapping[str, str]) -> str | None:
    """SLUICE_ADMIN_PASSWORD_HASH as given, or a hash of SLUICE_ADMIN_PASSWORD (kept only hashed)."""
    given = env.get("SLUICE_ADMIN_PASSWORD_HASH") or None
    password = env.get("SLUICE_ADMIN_PASSWORD") or None
    if given is None and password is None:
        return None
    if not env.get("SLUICE_SECRET_KEY"):
        raise ValueError("SLUICE_ADMIN_PASSWORD: the dashboard also needs SLUICE_SECRET_KEY (signs its sessions)")
    if given is not None:
        if not given.startswith(("scrypt:", "pbkdf2:")) or given.count("$") != 2:
            raise ValueError(
                "SLUICE_ADMIN_PASSWORD_HASH: not a werkzeug password hash (make one with "
                "`flask --app wsgi admin hash-password`)"
            )
        return given
    assert password is not None
    if len(password) < 12:
        raise ValueError("SLUICE_ADMIN_PASSWORD: must be at least 12 characters")
    return generate_password_hash(password)
