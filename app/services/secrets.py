"""Encryption at rest for run-time upstream tokens and secret-looking header overrides (Fernet,
keys derived from SLUICE_SECRET_KEY).

`SLUICE_SECRET_KEY_PREVIOUS` keeps old ciphertexts readable during a rotation;
`flask --app wsgi secrets rotate` re-encrypts them all under the current key.
"""

from __future__ import annotations

import base64
import re
from typing import Any


class SecretsUnavailable(Exception):
    """No usable SLUICE_SECRET_KEY, or a ciphertext that none of the keys opens."""


def _fernet(secret: str) -> Any:
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"sluice", info=b"upstream-tokens").derive(secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))


class SecretBox:
    """Fernet under the keys given. Built on first use: a gateway whose upstream tokens all come from its config
    never loads cryptography (about 6 MiB of mapped library in every process)."""

    def __init__(self, current: str | None, previous: str | None = None) -> None:
        self._secrets = [s for s in (current, previous) if s]
        self._built: Any = None
        self.has_current = current is not None

    @property
    def _box(self) -> Any:
        if self._built is None and self._secrets:
            from cryptography.fernet import MultiFernet

            self._built = MultiFernet([_fernet(s) for s in self._secrets])
        return self._built

    def encrypt(self, plain: str) -> str:
        if self._box is None or not self.has_current:
            raise SecretsUnavailable(
                "set SLUICE_SECRET_KEY (at least 32 characters) to store upstream tokens at run time"
            )
        return self._box.encrypt(plain.encode()).decode()

    def decrypt(self, cipher: str) -> str:
        if self._box is None:
            raise SecretsUnavailable("SLUICE_SECRET_KEY is not set: stored upstream tokens cannot be read")
        from cryptography.fernet import InvalidToken

        try:
            return self._box.decrypt(cipher.encode()).decode()
        except InvalidToken:
            raise SecretsUnavailable("a stored upstream token does not open with SLUICE_SECRET_KEY") from None

    def rotate(self, cipher: str) -> str:
        """Re-encrypt under the current key (readable with the current or previous key)."""
        if self._box is None or not self.has_current:
            raise SecretsUnavailable("set SLUICE_SECRET_KEY (and SLUICE_SECRET_KEY_PREVIOUS) to rotate")
        from cryptography.fernet import InvalidToken

        try:
            return self._box.rotate(cipher.encode()).decode()
        except InvalidToken:
            raise SecretsUnavailable("a stored upstream token opens with neither key") from None


# Header names that carry credentials: their values are masked when shown, sealed at rest
# when set at run time, and given to the log redactor.
SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|passw|signature|credential", re.IGNORECASE)
_SEALED = "sealed"  # stored form of a secret header value: {"sealed": "<Fernet ciphertext>"}


def is_secret_header(name: str) -> bool:
    return SECRET_HEADER.search(name) is not None


def seal_headers(box: SecretBox, headers: dict[str, str]) -> dict[str, Any]:
    """Headers as stored: secret-looking values encrypted (SecretsUnavailable without a key)."""
    return {k: {_SEALED: box.encrypt(v)} if is_secret_header(k) else v for k, v in headers.items()}


def open_headers(box: SecretBox, stored: dict[str, Any]) -> dict[str, str]:
    """Stored headers as sent (values stored in plain text by earlier versions are read as they are)."""
    return {k: box.decrypt(v[_SEALED]) if isinstance(v, dict) else v for k, v in stored.items()}


def reseal_headers(box: SecretBox, stored: dict[str, Any]) -> dict[str, Any]:
    """Stored headers under the current key; plain secret-looking values get sealed too."""
    return {
        k: {_SEALED: box.rotate(v[_SEALED])} if isinstance(v, dict) else seal_headers(box, {k: v})[k]
        for k, v in stored.items()
    }
