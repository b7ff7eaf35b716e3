"""Encryption at rest for run-time upstream tokens (Fernet, keys derived from SLUICE_SECRET_KEY).

`SLUICE_SECRET_KEY_PREVIOUS` keeps old ciphertexts readable during a rotation;
`flask --app wsgi secrets rotate` re-encrypts them all under the current key.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class SecretsUnavailable(Exception):
    """No usable SLUICE_SECRET_KEY, or a ciphertext that none of the keys opens."""


def _fernet(secret: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"sluice", info=b"upstream-tokens").derive(secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))


class SecretBox:
    def __init__(self, current: str | None, previous: str | None = None) -> None:
        keys = [_fernet(s) for s in (current, previous) if s]
        self._box = MultiFernet(keys) if keys else None
        self.has_current = current is not None

    def encrypt(self, plain: str) -> str:
        if self._box is None or not self.has_current:
            raise SecretsUnavailable(
                "set SLUICE_SECRET_KEY (at least 32 characters) to store upstream tokens at run time"
            )
        return self._box.encrypt(plain.encode()).decode()

    def decrypt(self, cipher: str) -> str:
        if self._box is None:
            raise SecretsUnavailable("SLUICE_SECRET_KEY is not set: stored upstream tokens cannot be read")
        try:
            return self._box.decrypt(cipher.encode()).decode()
        except InvalidToken:
            raise SecretsUnavailable("a stored upstream token does not open with SLUICE_SECRET_KEY") from None

    def rotate(self, cipher: str) -> str:
        """Re-encrypt under the current key (readable with the current or previous key)."""
        if self._box is None or not self.has_current:
            raise SecretsUnavailable("set SLUICE_SECRET_KEY (and SLUICE_SECRET_KEY_PREVIOUS) to rotate")
        try:
            return self._box.rotate(cipher.encode()).decode()
        except InvalidToken:
            raise SecretsUnavailable("a stored upstream token opens with neither key") from None
