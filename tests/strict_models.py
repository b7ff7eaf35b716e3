"""Strict checks of what the translators produce against the SDKs' own (pydantic) types."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pydantic

Allowed = Callable[[str, str], bool]  # (path of the model, field name) -> a wire field the SDK does not declare


def no_extras(model: object, allowed: Allowed = lambda where, name: False, where: str = "") -> None:
    """Fail on any field the SDK's model does not declare (its models allow extras), at any depth."""
    if isinstance(model, pydantic.BaseModel):
        extra = {name for name in model.model_extra or {} if not allowed(where, name)}
        assert not extra, f"unknown fields at {where or 'top'}: {sorted(extra)}"
        for name in type(model).model_fields:
            no_extras(getattr(model, name), allowed, f"{where}.{name}")
    elif isinstance(model, list):
        for i, value in enumerate(model):
            no_extras(value, allowed, f"{where}[{i}]")


def validated(model_type: Any, obj: dict, allowed: Allowed = lambda where, name: False) -> Any:
    """`obj` (as JSON would carry it) as `model_type`, strictly, and with no undeclared field."""
    model = model_type.model_validate(json.loads(json.dumps(obj)), strict=True)
    no_extras(model, allowed)
    return model
