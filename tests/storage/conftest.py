"""The storage suite runs once on SQLite and once on a real PostgreSQL."""

from __future__ import annotations

import pytest

from app.storage.db import Database
from app.storage.migrate import upgrade
from tests.services import postgres_url, reset_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request, tmp_path):
    """A database with no schema yet (PostgreSQL's is dropped first)."""
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path}/storage.db")
    else:
        url = postgres_url()
        reset_postgres(url)
        database = Database(url)
    yield database
    database.dispose()


@pytest.fixture
def db(empty_db):
    """A database at the newest schema."""
    upgrade(empty_db)
    return empty_db
