"""The storage suite runs once on SQLite and once on a real PostgreSQL."""

from __future__ import annotations

import pytest

from app.storage.db import Database
from app.storage.migrate import upgrade
from tests.services import postgres_url, reset_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path}/storage.db")
    else:
        url = postgres_url()
        reset_postgres(url)
        database = Database(url)
    upgrade(database)
    yield database
    database.dispose()
