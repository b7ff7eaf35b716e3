"""Credential health in the store (issue 13, section 2; revision 0006), on SQLite and PostgreSQL:
auto-disable after 401/403s in a row, probe re-enabling, the prober lease, the load table."""

from __future__ import annotations

import pytest

from app.storage.leases import Leases
from app.storage.load import LoadRepo
from app.storage.tokens import TokenRepo
from tests.services import race


@pytest.fixture
def repo(db) -> TokenRepo:
    tokens = TokenRepo(db)
    tokens.seed([("up:aaa", "up", "...aaaa"), ("up:bbb", "up", "...bbbb")], now=1.0)
    return tokens


def fail(repo: TokenRepo, status: int | None, now: float = 10.0, after: int = 3) -> bool:
    return repo.report("up:aaa", status=status, ok=False, cooldown=60.0, now=now, disable_after=after)


# (statuses answered in turn, disable_after, state after, auth_failures after)
CASES = [
    ([401, 401], 3, "cooling", 2),
    ([401, 403, 401], 3, "auto_disabled", 3),
    ([401, 401, 429, 401], 3, "cooling", 1),  # an answer other than 401/403 ends the run
    ([401, 401, None, 401], 3, "auto_disabled", 3),  # no answer at all says nothing about the token
    ([401] * 5, 0, "cooling", 5),  # 0: never
    ([403], 1, "auto_disabled", 1),
]


@pytest.mark.parametrize(("statuses", "after", "state", "count"), CASES)
def test_auth_failures_in_a_row_auto_disable(repo, statuses, after, state, count):
    results = [fail(repo, status, after=after) for status in statuses]
    row = repo.get("up:aaa")
    assert (row.state(10.0), row.auth_failures) == (state, count)
    assert results.count(True) == (state == "auto_disabled")  # said once, by the call that did it
    if state == "auto_disabled":
        assert (row.disabled_by, row.disabled_at, row.last_error) == ("auto", 10.0, f"HTTP {statuses[-1]}")


def test_a_success_resets_the_run(repo):
    fail(repo, 401)
    fail(repo, 401)
    repo.add_successes("up:aaa", 1, 200, at=11.0)
    assert repo.get("up:aaa").auth_failures == 0
    assert not fail(repo, 401, now=12.0)


def test_an_operator_disabled_token_is_never_auto_disabled(repo):
    repo.set_flags("up:aaa", enabled=False, disabled_by="operator", disabled_at=5.0)
    assert not any(fail(repo, 401) for _ in range(4))
    row = repo.get("up:aaa")
    assert (row.state(10.0), row.disabled_by, row.disabled_at) == ("disabled", "operator", 5.0)


def test_of_racing_workers_one_auto_disables(repo):
    fail(repo, 401)
    fail(repo, 401)
    assert sorted(race(6, lambda: fail(repo, 401))) == [False] * 5 + [True]


def out(repo: TokenRepo, how: str) -> None:
    """Take up:aaa out as `how` says."""
    if how == "auto":
        for _ in range(3):
            fail(repo, 401)
    elif how == "cooling":
        fail(repo, 429)
    elif how == "operator":
        repo.set_flags("up:aaa", enabled=False, disabled_by="operator", disabled_at=5.0)
    elif how == "removed":
        repo.set_flags("up:aaa", enabled=False, removed=True, disabled_by="operator", disabled_at=5.0)


# (how the token was taken out, whether a passing probe brings it back, its state after)
PROBE_CASES = [
    ("auto", True, "healthy"),
    ("cooling", True, "healthy"),
    ("operator", False, "disabled"),
    ("removed", False, "removed"),
    ("healthy", False, "healthy"),  # nothing to bring back
]


@pytest.mark.parametrize(("how", "back", "state"), PROBE_CASES)
def test_a_passing_probe_brings_back_only_what_sluice_took_out(repo, how, back, state):
    out(repo, how)
    assert repo.record_probe("up:aaa", status=200, ok=True, detail="200 OK", now=20.0) == (back, False)
    row = repo.get("up:aaa")
    assert row.state(20.0) == state
    assert (row.last_probe_at, row.last_probe_ok, row.last_probe_detail) == (20.0, True, "200 OK")
    if back:
        assert (row.enabled, row.disabled_by, row.auth_failures, row.cooldown_until) == (True, None, 0, 0.0)


def test_a_probe_never_counts_as_usage(repo):
    before = repo.get("up:aaa")
    repo.record_probe("up:aaa", status=200, ok=True, detail="200 OK", now=20.0)
    repo.record_probe("up:aaa", status=500, ok=False, detail="500 Internal Server Error", now=21.0)
    after = repo.get("up:aaa")
    assert (after.successes, after.failures, after.last_status, after.last_at) == (
        before.successes, before.failures, before.last_status, before.last_at)  # fmt: skip
    assert (after.last_probe_ok, after.cooldown_until, after.state(21.0)) == (False, 0.0, "healthy")


def test_probe_auth_failures_count_towards_auto_disable(repo):
    fail(repo, 401)
    fail(repo, 401)
    assert repo.record_probe("up:aaa", status=401, ok=False, detail="401", now=30.0, disable_after=3) == (False, True)
    row = repo.get("up:aaa")
    assert (row.state(30.0), row.last_error, row.disabled_at) == ("auto_disabled", "HTTP 401", 30.0)


def test_the_public_view_shows_the_health_fields(repo):
    out(repo, "auto")
    view = repo.get("up:aaa").public(10.0)
    assert view["state"] == "auto_disabled" and view["disabled_by"] == "auto" and view["disabled_at"] == 10.0
    assert view["last_error"] == "HTTP 401" and view["auth_failures"] == 3 and view["last_probe"] is None
    assert "secret" not in view


# leases


def test_a_lease_has_one_holder_until_it_expires(db):
    leases = Leases(db)
    assert leases.take("prober", "a", now=100.0, ttl=10.0)
    assert not leases.take("prober", "b", now=105.0, ttl=10.0)
    assert leases.take("prober", "a", now=105.0, ttl=10.0)  # renewed: until 115
    assert not leases.take("prober", "b", now=112.0, ttl=10.0)
    assert leases.holder("prober", 112.0) == "a"
    assert leases.take("prober", "b", now=116.0, ttl=10.0)  # expired: taken over
    assert not leases.take("prober", "a", now=117.0, ttl=10.0)
    assert leases.holder("prober", 117.0) == "b" and leases.holder("prober", 200.0) is None
    assert not leases.release("prober", "a") and leases.release("prober", "b")
    assert leases.take("prober", "a", now=118.0, ttl=10.0)


def test_of_racing_takers_one_holds(db):
    leases = Leases(db)
    holders = [f"w{i}" for i in range(6)]
    won = race(6, lambda: leases.take("prober", holders.pop(), now=100.0, ttl=10.0))
    assert won.count(True) == 1
    late = iter([f"late-{i}" for i in range(6)])  # six names: id(object()) could give two threads the same one
    won = race(6, lambda: leases.take("prober", next(late), now=200.0, ttl=10.0))
    assert won.count(True) == 1


# the load table


def test_workers_see_each_others_load(db):
    load = LoadRepo(db)
    load.report("w1", {"token:up:aaa": (2, 0.5), "target:up/m": (1, None)}, now=100.0)
    load.report("w2", {"token:up:aaa": (3, 1.5)}, now=101.0)
    load.report("w3", {"token:up:aaa": (7, 9.0)}, now=50.0)  # stale: not counted
    assert load.others("w1", since=96.0) == {"token:up:aaa": (3, 1.5)}
    assert load.others("w9", since=96.0) == {"token:up:aaa": (5, 1.0), "target:up/m": (1, None)}
    load.report("w1", {"token:up:aaa": (0, 0.5)}, now=102.0)  # a report replaces the worker's rows
    assert load.others("w2", since=96.0) == {"token:up:aaa": (0, 0.5)}


def test_dead_workers_rows_are_pruned(db):
    load = LoadRepo(db)
    load.report("old", {"token:x": (1, None)}, now=10.0)
    load.report("new", {"token:x": (1, None)}, now=100.0)
    assert load.prune(before=50.0) == 1
    assert load.others("me", since=0.0) == {"token:x": (1, None)}
    load.clear("new")
    assert load.others("me", since=0.0) == {}
