"""Stored Responses API responses (revision 0005), on SQLite and PostgreSQL."""

from __future__ import annotations

from app.storage.stored_responses import StoredResponse, StoredResponses


def test_a_stored_response_is_remembered_once_found_counted_once_and_forgotten(db):
    store = StoredResponses(db)
    first = StoredResponse("resp_a", "native", "native:abc", "key_1", "m", 100.0, counted=False)
    store.remember(first)
    store.remember(StoredResponse("resp_a", "other", "other:xyz", None, "m", 200.0))  # a retry: the first stays
    assert store.find("resp_a") == first
    assert store.mark_counted("resp_a") is True and store.mark_counted("resp_a") is False  # once only
    assert store.find("resp_a").counted is True
    store.forget("resp_a")
    assert store.find("resp_a") is None


def test_old_records_are_pruned(db):
    store = StoredResponses(db)
    store.remember(StoredResponse("resp_old", "u", "u:1", None, "m", 10.0))
    store.remember(StoredResponse("resp_new", "u", "u:1", None, "m", 1000.0))
    assert store.prune(500.0) == 1
    assert store.find("resp_old") is None and store.find("resp_new") is not None
