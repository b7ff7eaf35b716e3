"""Logging set-up: one format, and a filter that masks any known secret that slips in."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

from app.services.tokens import mask

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_PLAIN = logging.Formatter()


class SecretRedactor(logging.Filter):
    """Replace every registered secret in a record's final message with its masked form.

    The code never logs secrets on purpose; this is the safety net for the day a
    library message or an exception text carries one.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: set[str] = set()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        self.secrets.update(s for s in secrets if s)

    def redact(self, text: str) -> str:
        if any(secret in text for secret in self.secrets):
            for secret in self.secrets:
                text = text.replace(secret, mask(secret))
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        # The final message replaces the template: the formatter need not format it again.
        record.msg, record.args = self.redact(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redact(_PLAIN.formatException(record.exc_info))
        return True


def setup_logging(level: str, secrets: Iterable[str]) -> SecretRedactor:
    """Configure the `sluice` logger tree once per process; returns the redactor to extend."""
    logger = logging.getLogger("sluice")
    logger.setLevel(level)
    handler = next((h for h in logger.handlers if getattr(h, "sluice", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.sluice = True  # type: ignore[attr-defined]
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(SecretRedactor())
        logger.addHandler(handler)
        logger.propagate = False
    redactor = next(f for f in handler.filters if isinstance(f, SecretRedactor))
    redactor.add(secrets)
    return redactor
