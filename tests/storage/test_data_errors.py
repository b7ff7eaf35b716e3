"""On both backends: a value the database refuses (a NUL character, which PostgreSQL's text
cannot hold; a missing required column) is a data error, not "the database is away": the usage
writer drops that one record and stores the rest of its batch instead of retrying it for ever."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import insert

from app.storage import schema
from app.storage.db import Conflict, StorageDataError, StorageError
from app.storage.usage import UsageRepo, UsageWriter
from tests.storage.test_usage_writer_faults import RECORD, stored

NUL = {"model": "bad\x00model"}  # PostgreSQL refuses it; SQLite stores it
NOT_NULL = {"outcome": None}  # both refuse it (an integrity error)


def refused(db, bad: dict) -> bool:
    return bad is NOT_NULL or not db.is_sqlite


@pytest.mark.parametrize("bad", [NUL, NOT_NULL], ids=["nul", "not-null"])
def test_a_refused_value_is_a_data_error_that_is_still_a_storage_error(db, bad):
    if not refused(db, bad):  # SQLite stores NUL characters: no error to see there
        UsageRepo(db).insert_many([{**RECORD, **bad}])
        return
    with pytest.raises(StorageDataError) as raised:
        UsageRepo(db).insert_many([{**RECORD, **bad}])
    assert isinstance(raised.value, StorageError)  # callers that catch StorageError still do
    with pytest.raises(StorageDataError), db.write() as conn:
        conn.execute(insert(schema.audit).values(at=1.0, actor=None, action="x", target="t"))  # NOT NULL


def test_a_nul_character_is_refused_by_name_on_postgresql_and_stored_by_sqlite(db):
    row = insert(schema.audit).values(at=1.0, actor="a\x00", action="x", target="t")
    if db.is_sqlite:
        with db.write() as conn:
            conn.execute(row)
        return
    with pytest.raises(StorageDataError, match="NUL"), db.write() as conn:
        conn.execute(row)


def test_a_conflict_is_a_data_error():
    assert issubclass(Conflict, StorageDataError)


@pytest.mark.parametrize("bad", [NUL, NOT_NULL], ids=["nul", "not-null"])
def test_a_refused_record_does_not_stop_the_writer(db, bad):
    usage = UsageRepo(db)
    writer = UsageWriter(usage, interval=0.05)
    labels = {"chore": UsageWriter.CHORE}
    before = REGISTRY.get_sample_value("sluice_background_errors_total", labels) or 0.0
    try:
        for request_id, extra in (("good-1", {}), ("bad", bad), ("good-2", {})):
            writer.add({**RECORD, "request_id": request_id, **extra})
        expected = ["good-1", "good-2"] if refused(db, bad) else ["bad", "good-1", "good-2"]
        assert stored(usage, len(expected)) == expected
        writer.add({**RECORD, "request_id": "next"})
        assert stored(usage, len(expected) + 1) == sorted([*expected, "next"])
        assert writer._pending == []  # nothing left to retry for ever
    finally:
        writer.close()
    after = REGISTRY.get_sample_value("sluice_background_errors_total", labels) or 0.0
    assert after == before + (1 if refused(db, bad) else 0)  # the batch's failure, counted once
