"""The bundled mock upstream in-process (werkzeug's test Client), for its unit tests."""

from __future__ import annotations

import pytest
from werkzeug.test import Client

from app.mock_upstream import MockUpstream, Options


@pytest.fixture
def mock() -> MockUpstream:
    return MockUpstream(Options(delay=0))


@pytest.fixture
def client(mock) -> Client:
    return Client(mock)
