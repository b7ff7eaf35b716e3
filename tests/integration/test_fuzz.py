"""Fuzz the running gateway against docs/openapi.yaml (schemathesis strategies, hypothesis).

Bounded: a fixed number of generated requests per operation, valid and invalid ones. Checks:
the app never answers 5xx except the documented upstream-failure statuses (502/503/504),
and every error it answers is OpenAI-shaped.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.integration.conftest import MASTER_KEY, ROOT, start_gateway, upstream_toml

pytestmark = pytest.mark.integration
SPEC = ROOT / "docs" / "openapi.yaml"
UPSTREAM_STATUSES = {502, 503, 504}  # documented answers about the upstream, not crashes
EXAMPLES = 15


@pytest.fixture(scope="module")
def fuzzed_gateway(tmp_path_factory, mock):
    """A gateway of its own: fuzzing the admin API changes keys, tokens and upstream overrides."""
    server = start_gateway(tmp_path_factory.mktemp("fuzz"), upstream_toml("main", mock.url, ["good-token-0001"], ["*"]))
    yield server
    server.stop()


def check(case) -> None:
    for key in (MASTER_KEY, "sk-wrong-fuzz-key-000000000"):
        response = case.call(headers={"Authorization": f"Bearer {key}", "Connection": "close"}, timeout=30)
        where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
        assert response.status_code < 500 or response.status_code in UPSTREAM_STATUSES, where
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, where
            assert isinstance(error["message"], str) and error["message"], where


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_5xx_and_every_error_is_openai_shaped(fuzzed_gateway, mode):
    schema = schemathesis.openapi.from_path(str(SPEC))
    schema.config.update(base_url=fuzzed_gateway.url)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    fuzzed = 0
    for operation in operations:

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case) -> None:
            check(case)

        try:
            fuzz()
            fuzzed += 1
        except Unsatisfiable:  # an operation with no inputs has no invalid variant to generate
            assert mode is GenerationMode.NEGATIVE
    assert fuzzed >= (len(operations) if mode is GenerationMode.POSITIVE else 8)
