"""Typed access to TOML values for the config modules, raising ConfigError('<file>: <key>: <problem>')."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the file (or variable) and key."""


class Reader:
    """Typed access to TOML values, raising ConfigError('<file>: <key>: <problem>')."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {problem}")

    def no_unknown(self, raw: Mapping[str, Any], where: str, known: set[str]) -> None:
        for key in raw:
            if key not in known:
                path = f"{where}.{key}" if where else key
                raise self.error(path, f"unknown key (known: {', '.join(sorted(known))})")

    def string(self, raw: dict, where: str, key: str, *, required: bool = False) -> str:
        value = raw.get(key)
        if value is None:
            if required:
                raise self.error(f"{where}.{key}", "is required")
            return ""
        if not isinstance(value, str) or (required and not value):
            raise self.error(f"{where}.{key}", "must be a non-empty string")
        return value

    def string_list(self, raw: dict, where: str, key: str, default: list[str], *, non_empty: bool = False) -> list[str]:
        value = raw.get(key, default)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise self.error(f"{where}.{key}", "must be a list of non-empty strings")
        if non_empty and not value:
            raise self.error(f"{where}.{key}", "must list at least one model id or glob")
        return value

    def url(self, raw: dict, where: str, key: str, *, required: bool, schemes: tuple[str, ...]) -> str | None:
        value = self.string(raw, where, key, required=required)
        if not value:
            return None
        scheme, sep, rest = value.partition("://")
        if not sep or scheme.lower() not in schemes or not rest or any(c.isspace() for c in value):
            raise self.error(f"{where}.{key}", f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return value

    def header_value(self, key: str, value: str) -> None:
        if any(c in value for c in "\r\n\0"):
            raise self.error(key, "may not contain CR, LF or NUL")
        if any(not " " <= c <= "~" for c in value):
            raise self.error(key, "must be printable ASCII (HTTP header values)")

    def integer(
        self, raw: dict, where: str, key: str, default: int, *, minimum: int, maximum: int | None = None
    ) -> int:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{where}.{key}", "must be a whole number")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise self.error(f"{where}.{key}", f"must be {bound}")
        return value

    def number(self, raw: dict, where: str, key: str, default: float, *, allow_zero: bool = False) -> float:
        value = raw.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or value < 0
            or (value == 0 and not allow_zero)
        ):
            raise self.error(f"{where}.{key}", "must be a positive number of seconds" + (" or 0" if allow_zero else ""))
        return float(value)

    def choice(self, raw: dict, where: str, key: str, default: str, options: tuple[str, ...]) -> str:
        value = raw.get(key, default)
        if value not in options:
            raise self.error(f"{where}.{key}", f"must be one of {', '.join(repr(o) for o in options)}")
        return value

    def boolean(self, raw: dict, where: str, key: str, default: bool) -> bool:
        value = raw.get(key, default)
        if not isinstance(value, bool):
            raise self.error(f"{where}.{key}", "must be true or false")
        return value
