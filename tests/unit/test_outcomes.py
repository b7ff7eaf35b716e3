"""The outcome enum and its policy table: every status and transport failure, row by row."""

from __future__ import annotations

import pytest

from app.services.outcomes import POLICY, Outcome, classify, error_class, status_outcome


@pytest.mark.parametrize(
    ("status", "error", "outcome", "retry", "upstream_fault", "token_fault"),
    [
        (200, None, Outcome.OK, False, False, False),
        (401, None, Outcome.UNAUTHORIZED, True, False, True),
        (403, None, Outcome.FORBIDDEN, True, False, True),
        (429, None, Outcome.RATE_LIMITED, True, False, True),
        (529, None, Outcome.OVERLOADED, True, True, True),
        (500, None, Outcome.SERVER_ERROR, True, True, True),
        (408, None, Outcome.SERVER_ERROR, True, True, True),
        (524, None, Outcome.SERVER_ERROR, True, True, True),
        (501, None, Outcome.SERVER_REFUSED, False, True, True),
        (400, None, Outcome.CLIENT_ERROR, False, False, False),
        (404, None, Outcome.CLIENT_ERROR, False, False, False),
        (302, None, Outcome.CLIENT_ERROR, False, False, False),
        (400, {"code": "context_length_exceeded", "message": "x"}, Outcome.CONTEXT_LENGTH, False, False, False),
        (400, {"type": "invalid_request_error", "code": "invalid_request_error",
               "message": "prompt is too long: 210 tokens > 100 maximum"}, Outcome.CONTEXT_LENGTH, False, False, False),
        (400, {"code": "content_policy_violation", "message": "x"}, Outcome.CONTENT_POLICY, False, False, False),
        (400, {"code": "content_filter", "message": "x"}, Outcome.CONTENT_POLICY, False, False, False),
        (400, {"code": "invalid_request_error", "message": "Output blocked by content filtering policy"},
         Outcome.CONTENT_POLICY, False, False, False),
        (400, {"code": "invalid_value", "message": "bad temperature"}, Outcome.CLIENT_ERROR, False, False, False),
        (422, {"code": "context_length_exceeded"}, Outcome.CLIENT_ERROR, False, False, False),
    ],
)  # fmt: skip
def test_statuses_map_to_one_outcome_and_policy(status, error, outcome, retry, upstream_fault, token_fault):
    decision = classify(status, None, None, 0.0, error)
    assert decision.outcome is outcome
    assert (decision.retry, decision.policy.upstream_fault, decision.policy.token_fault) == (
        retry, upstream_fault, token_fault,
    )  # fmt: skip
    assert decision.reason == ("ok" if outcome is Outcome.OK else f"http_{status}")


def test_only_context_length_moves_to_context_fallbacks():
    assert [o for o, p in POLICY.items() if p.context_fallback] == [Outcome.CONTEXT_LENGTH]


@pytest.mark.parametrize(
    "kind",
    [Outcome.CONNECT_ERROR, Outcome.CONNECT_TIMEOUT, Outcome.READ_TIMEOUT, Outcome.FIRST_BYTE_TIMEOUT,
     Outcome.STREAM_BROKEN, Outcome.EMPTY_STREAM, Outcome.ERROR_EVENT],
)  # fmt: skip
def test_transport_failures_retry_cool_down_and_count_against_the_upstream(kind):
    decision = classify(None, kind, None, 0.0)
    assert decision.outcome is kind and decision.retry and decision.cooldown == 5.0
    assert decision.policy.upstream_fault and decision.reason == kind.value


def test_retry_after_sets_a_429_cooldown_only():
    assert classify(429, None, "17", 0.0).cooldown == 17
    assert classify(503, None, "17", 0.0).cooldown == 5.0


@pytest.mark.parametrize("outcome", [Outcome.CLIENT_DISCONNECT, Outcome.DEADLINE, Outcome.SERVER_SHUTDOWN])
def test_abandoned_attempts_blame_nothing(outcome):
    policy = POLICY[outcome]
    assert not (policy.retry or policy.upstream_fault or policy.token_fault)


def test_every_outcome_has_a_policy():
    assert set(POLICY) == set(Outcome)


def test_error_class_needs_a_known_code_or_message():
    assert error_class({"message": "The model's maximum context length is 8192 tokens."}) is Outcome.CONTEXT_LENGTH
    assert error_class({"message": "rate limited"}) is None
    assert status_outcome(400) is Outcome.CLIENT_ERROR


@pytest.mark.parametrize(
    ("status", "code", "outcome", "error"),
    [
        (200, None, "ok", False),
        (429, "rate_limit_exceeded", "rate_limited", False),
        (429, "insufficient_quota", "quota_exceeded", False),
        (400, "invalid_value", "client_error", False),
        (499, "client_disconnect", "client_disconnect", False),
        (504, "upstream_first_byte_timeout", "timeout_first_byte", True),
        (503, "upstream_overloaded", "upstream_error", True),
        (503, "no_upstream_available", "no_upstream_available", True),
        (500, "internal_error", "error", True),
    ],
)
def test_a_request_outcome_comes_from_the_answer_code_and_says_whether_it_is_an_error(status, code, outcome, error):
    from app.services.outcomes import request_outcome
    from app.storage.rollups import is_error

    found = request_outcome(status, code)
    assert found.value == outcome and found.is_error is error and is_error(outcome) is error
    assert is_error("something-an-older-version-wrote")
