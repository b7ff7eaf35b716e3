"""docs/openapi.yaml describes exactly the routes the app serves (aliases aside)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

SPEC = yaml.safe_load((Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml").read_text())


def normalise(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", re.sub(r"<(?:[a-z]+:)?[^>]+>", "{}", path))


def test_every_route_is_documented_and_nothing_else(app):
    served = {
        (normalise(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if not rule.rule.startswith(("/api/v1", "/dashboard")) and rule.rule != "/"  # pages: docs/dashboard.md
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    documented = {
        (normalise(path), method) for path, ops in SPEC["paths"].items() for method in ops if method != "parameters"
    }
    assert served == documented


def test_error_schema_is_the_openai_shape():
    error = SPEC["components"]["schemas"]["ErrorResponse"]["properties"]["error"]
    assert error["required"] == ["message", "type", "param", "code"]
