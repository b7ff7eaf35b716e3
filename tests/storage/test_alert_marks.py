"""Alert de-duplication marks (issue 13, section 3; revision 0006): one send per event and subject
per repeat_after, whoever claims first, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.storage import schema
from app.storage.alerts import AlertMarks, audit_to
from app.storage.usage import audit_entries
from tests.services import race


@pytest.fixture
def marks(db) -> AlertMarks:
    return AlertMarks(db)


# (claims before: (at, repeat_after) each, the claim tried, whether it wins)
CASES = [
    ([], (100.0, 900.0), True),
    ([(100.0, 900.0)], (100.0, 900.0), False),
    ([(100.0, 900.0)], (999.0, 900.0), False),
    ([(100.0, 900.0)], (1000.0, 900.0), True),  # exactly repeat_after later
    ([(100.0, 900.0)], (5000.0, 900.0), True),
    ([(100.0, 900.0), (1000.0, 900.0)], (1500.0, 900.0), False),  # the second claim moved the mark
    ([(100.0, 900.0)], (160.0, 60.0), True),  # each claim brings its own repeat_after
]


@pytest.mark.parametrize(("before", "attempt", "wins"), CASES)
def test_a_claim_wins_once_per_repeat_after(marks, before, attempt, wins):
    for at, repeat_after in before:
        assert marks.claim("breaker_open", "openai", at, repeat_after)
    assert marks.claim("breaker_open", "openai", *attempt) is wins


def test_event_and_subject_are_claimed_apart(marks):
    assert marks.claim("breaker_open", "openai", 100.0, 900.0)
    assert marks.claim("breaker_open", "anthropic", 100.0, 900.0)
    assert marks.claim("breaker_closed", "openai", 100.0, 900.0)
    assert not marks.claim("breaker_open", "openai", 200.0, 900.0)


def test_a_lost_claim_leaves_the_mark_alone(marks, db):
    marks.claim("budget_80", "key-1", 100.0, 900.0)
    marks.claim("budget_80", "key-1", 500.0, 900.0)
    with db.read() as conn:
        assert conn.execute(select(schema.alert_marks.c.sent_at)).scalar_one() == 100.0


def test_of_racing_claims_exactly_one_wins(marks):
    assert sorted(race(8, lambda: marks.claim("pool_exhausted", "openai", 100.0, 900.0))) == [False] * 7 + [True]
    won = race(8, lambda: marks.claim("pool_exhausted", "openai", 2000.0, 900.0))
    assert won.count(True) == 1


def stamp(db, subject: str = "openai") -> float | None:
    query = select(schema.alert_marks.c.sent_at).where(schema.alert_marks.c.subject == subject)
    with db.read() as conn:
        return conn.execute(query).scalar_one_or_none()


def test_release_gives_a_first_claim_back(marks, db):
    assert marks.claim("breaker_open", "openai", 100.0, 900.0)
    assert marks.release("breaker_open", "openai", 100.0)
    assert stamp(db) is None  # there was no mark before: none now
    assert marks.claim("breaker_open", "openai", 160.0, 900.0)


def test_release_restores_the_previous_stamp(marks, db):
    assert marks.claim("breaker_open", "openai", 100.0, 900.0)
    assert marks.claim("breaker_open", "openai", 1000.0, 900.0)
    assert marks.release("breaker_open", "openai", 1000.0)
    assert stamp(db) == 100.0
    assert not marks.release("breaker_open", "openai", 1000.0)  # once
    assert marks.claim("breaker_open", "openai", 1060.0, 900.0)


def test_release_only_undoes_its_own_claim(marks, db):
    other = AlertMarks(db)  # another worker
    assert marks.claim("breaker_open", "openai", 100.0, 900.0)
    assert not other.release("breaker_open", "openai", 100.0)  # not its claim
    assert not marks.release("breaker_open", "openai", 99.0)  # no claim of its own stamped then
    assert not marks.release("breaker_closed", "openai", 100.0)
    assert stamp(db) == 100.0
    assert other.claim("breaker_open", "openai", 1000.0, 900.0)  # another claim moved the mark since
    assert not marks.release("breaker_open", "openai", 100.0)
    assert stamp(db) == 1000.0


def test_prune_drops_the_marks_stamped_before(marks, db):
    marks.claim("breaker_open", "old", 100.0, 900.0)
    marks.claim("breaker_open", "new", 5000.0, 900.0)
    assert marks.prune(before=1000.0) == 1
    with db.read() as conn:
        assert conn.execute(select(schema.alert_marks.c.subject)).scalars().all() == ["new"]
    assert marks.claim("breaker_open", "old", 1001.0, 900.0)  # pruned: claimable again


def test_audit_to_writes_one_row_by_the_alerts_actor(db):
    audit_to(db, clock=lambda: 42.0)("alert.breaker_open", "openai -> hooks.example sent after 1 tries (200)")
    [row] = audit_entries(db)
    assert (row["at"], row["actor"], row["action"]) == (42.0, "alerts", "alert.breaker_open")
    assert row["target"] == "openai -> hooks.example sent after 1 tries (200)"
