"""What one upstream attempt came to: one enum, and the policy table every consumer reads; and what a
whole client request came to (`RequestOutcome`, for usage records and roll-ups).

The retry loop, the token pool (cooldowns, auto-disable), the circuit breakers, the client's
error and the metrics all read `POLICY[outcome]`; accounting and the roll-ups read
`RequestOutcome`; none keeps its own list of failure names.
`classify` is the one pure function that turns an HTTP status (and the upstream's error, when
it says which kind of 4xx it is) or a transport error into an outcome and a cooldown.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import Enum, StrEnum
from typing import Any

MAX_RETRY_AFTER = 3600.0


class Outcome(Enum):
    OK = "ok"
    UNAUTHORIZED = "unauthorized"  # 401
    FORBIDDEN = "forbidden"  # 403
    RATE_LIMITED = "rate_limited"  # 429
    OVERLOADED = "overloaded"  # 529 (Anthropic)
    SERVER_ERROR = "server_error"  # 500, 502-504, 408, Cloudflare's 52x: retried
    SERVER_REFUSED = "server_refused"  # any other 5xx (501, 505, ...): a fault of the upstream, not retried
    CONTEXT_LENGTH = "context_length_exceeded"  # a 400 saying the prompt is too long for the model
    CONTENT_POLICY = "content_policy"  # a 400 refusing the content: returned as is, never retried
    CLIENT_ERROR = "client_error"  # any other answer the client caused (4xx), or an unexpected status
    CONNECT_ERROR = "connect_error"
    CONNECT_TIMEOUT = "connect_timeout"
    READ_TIMEOUT = "read_timeout"
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"
    STREAM_BROKEN = "stream_broken"
    EMPTY_STREAM = "empty_stream"
    ERROR_EVENT = "error_event"
    # An attempt stopped without a verdict: nothing is blamed.
    CLIENT_DISCONNECT = "client_disconnect"
    DEADLINE = "deadline"
    SERVER_SHUTDOWN = "server_shutdown"
    ABORTED = "error"
    HEDGE_LOST = "hedge_lost"  # closed because another attempt of the same request decided it (hedging)


@dataclass(frozen=True)
class Policy:
    """What an outcome means for the request, the token and the upstream."""

    retry: bool  # try another token (or target)
    cooldown: float  # seconds the token sits out (429: Retry-After when sent)
    upstream_fault: bool  # counts towards the upstream's circuit breaker
    token_fault: bool  # a failure of this token (its failure count; cooldowns; auto-disable for auth)
    context_fallback: bool = False  # go to the alias's context_fallbacks instead of another token


_TRANSPORT = Policy(True, 5.0, upstream_fault=True, token_fault=True)
_NO_VERDICT = Policy(False, 0.0, upstream_fault=False, token_fault=False)
POLICY: Mapping[Outcome, Policy] = {
    Outcome.OK: Policy(False, 0.0, upstream_fault=False, token_fault=False),
    Outcome.UNAUTHORIZED: Policy(True, 600.0, upstream_fault=False, token_fault=True),
    Outcome.FORBIDDEN: Policy(True, 60.0, upstream_fault=False, token_fault=True),
    Outcome.RATE_LIMITED: Policy(True, 30.0, upstream_fault=False, token_fault=True),
    Outcome.OVERLOADED: Policy(True, 5.0, upstream_fault=True, token_fault=True),
    Outcome.SERVER_ERROR: Policy(True, 5.0, upstream_fault=True, token_fault=True),
    Outcome.SERVER_REFUSED: Policy(False, 0.0, upstream_fault=True, token_fault=True),
    Outcome.CONTEXT_LENGTH: Policy(False, 0.0, upstream_fault=False, token_fault=False, context_fallback=True),
    Outcome.CONTENT_POLICY: Policy(False, 0.0, upstream_fault=False, token_fault=False),
    Outcome.CLIENT_ERROR: Policy(False, 0.0, upstream_fault=False, token_fault=False),
    **{o: _TRANSPORT for o in (Outcome.CONNECT_ERROR, Outcome.CONNECT_TIMEOUT, Outcome.READ_TIMEOUT,
                               Outcome.FIRST_BYTE_TIMEOUT, Outcome.STREAM_BROKEN, Outcome.EMPTY_STREAM,
                               Outcome.ERROR_EVENT)},
    **{o: _NO_VERDICT for o in (Outcome.CLIENT_DISCONNECT, Outcome.DEADLINE, Outcome.SERVER_SHUTDOWN,
                                Outcome.ABORTED, Outcome.HEDGE_LOST)},
}  # fmt: skip
AUTH_OUTCOMES = frozenset({Outcome.UNAUTHORIZED, Outcome.FORBIDDEN})

# Statuses with their own outcome; every other 5xx is SERVER_ERROR, every other status CLIENT_ERROR.
_BY_STATUS = {401: Outcome.UNAUTHORIZED, 403: Outcome.FORBIDDEN, 429: Outcome.RATE_LIMITED, 529: Outcome.OVERLOADED,
              408: Outcome.SERVER_ERROR}  # fmt: skip
RETRIED_STATUSES = frozenset({401, 403, 408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})
_CONTEXT_CODES = {"context_length_exceeded", "string_above_max_length"}
_CONTEXT_MESSAGE = re.compile(r"prompt is too long|maximum context length|context window", re.I)
_POLICY_CODES = {"content_policy_violation", "content_filter", "responsible_ai_policy_violation"}
_POLICY_MESSAGE = re.compile(r"content (filtering|management) policy|safety system", re.I)


@dataclass(frozen=True)
class Decision:
    """One attempt's outcome and what the policy table makes of it."""

    outcome: Outcome
    status: int | None
    cooldown: float

    @property
    def retry(self) -> bool:
        return POLICY[self.outcome].retry

    @property
    def policy(self) -> Policy:
        return POLICY[self.outcome]

    @property
    def reason(self) -> str:
        """The label in logs and metrics: "http_<status>" for an answer, else the outcome's name."""
        if self.outcome is Outcome.OK or self.status is None:
            return self.outcome.value
        return f"http_{self.status}"


def classify(
    status: int | None,
    error_kind: Outcome | None,
    retry_after: str | None,
    now: float,
    error: Mapping[str, Any] | None = None,
) -> Decision:
    """An attempt's outcome: from its status (and the upstream's parsed `error`, for a 4xx that says
    what it is), or from `error_kind` when there was no answer."""
    if status is None:
        kind = error_kind or Outcome.CONNECT_ERROR
        return Decision(kind, None, POLICY[kind].cooldown)
    if 200 <= status < 300:
        return Decision(Outcome.OK, status, 0.0)
    outcome = status_outcome(status, error)
    cooldown = POLICY[outcome].cooldown
    if outcome is Outcome.RATE_LIMITED:
        parsed = parse_retry_after(retry_after, now)
        cooldown = cooldown if parsed is None else parsed
    return Decision(outcome, status, cooldown)


def status_outcome(status: int, error: Mapping[str, Any] | None = None) -> Outcome:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status in RETRIED_STATUSES:
        return Outcome.SERVER_ERROR
    if status >= 500:
        return Outcome.SERVER_REFUSED
    if status == 400 and error is not None:
        return error_class(error) or Outcome.CLIENT_ERROR
    return Outcome.CLIENT_ERROR


def error_class(error: Mapping[str, Any]) -> Outcome | None:
    """CONTEXT_LENGTH or CONTENT_POLICY for an upstream error object (OpenAI's `error` or Anthropic's),
    by its code, else by its message; None for any other error."""
    code = str(error.get("code") or "").lower()
    message = str(error.get("message") or "")
    if code in _CONTEXT_CODES or _CONTEXT_MESSAGE.search(message):
        return Outcome.CONTEXT_LENGTH
    if code in _POLICY_CODES or _POLICY_MESSAGE.search(message):
        return Outcome.CONTENT_POLICY
    return None


def is_retryable(status_or_error: int | Outcome) -> bool:
    """True for the retried statuses and for every transport failure."""
    if isinstance(status_or_error, Outcome):
        return POLICY[status_or_error].retry
    return status_or_error in RETRIED_STATUSES


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date), capped at 1 h."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"[0-9]{1,10}", value):
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(when - now, 0.0), MAX_RETRY_AFTER)


@dataclass(frozen=True)
class Failure:
    """A failed attempt: its decision, and the upstream's answer when there was one (for the client's error)."""

    decision: Decision
    retry_after: str | None = None
    body: bytes = b""
    content_type: str = ""

    @property
    def status(self) -> int | None:
        return self.decision.status

    @property
    def outcome(self) -> Outcome:
        return self.decision.outcome


class RequestOutcome(StrEnum):
    """What a whole client request came to, as its usage record, the roll-ups and the dashboard name it
    (stored as the value): derived from the error code of the client's answer (`request_outcome`)."""

    OK = "ok"
    CLIENT_ERROR = "client_error"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXCEEDED = "quota_exceeded"
    CLIENT_DISCONNECT = "client_disconnect"
    TIMEOUT_UPSTREAM = "timeout_upstream"
    TIMEOUT_CONNECT = "timeout_connect"
    TIMEOUT_FIRST_BYTE = "timeout_first_byte"
    TIMEOUT_IDLE = "timeout_idle"
    TIMEOUT_DEADLINE = "timeout_deadline"
    SERVER_SHUTDOWN = "server_shutdown"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_AUTH_FAILED = "upstream_auth_failed"
    NO_UPSTREAM_AVAILABLE = "no_upstream_available"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    ERROR = "error"

    @property
    def is_error(self) -> bool:
        """A failure on the gateway's or an upstream's side (refusals and client faults are not errors)."""
        return self not in _NOT_ERRORS


_NOT_ERRORS = frozenset({RequestOutcome.OK, RequestOutcome.CLIENT_ERROR, RequestOutcome.RATE_LIMITED,
                         RequestOutcome.QUOTA_EXCEEDED, RequestOutcome.CLIENT_DISCONNECT})  # fmt: skip
# The client answer's error code -> the request's outcome (any other: by status, in request_outcome).
CODE_OUTCOMES: Mapping[str, RequestOutcome] = {
    "rate_limit_exceeded": RequestOutcome.RATE_LIMITED,
    "too_many_parallel_requests": RequestOutcome.RATE_LIMITED,
    "insufficient_quota": RequestOutcome.QUOTA_EXCEEDED,
    "upstream_timeout": RequestOutcome.TIMEOUT_UPSTREAM,
    "upstream_connect_timeout": RequestOutcome.TIMEOUT_CONNECT,
    "upstream_first_byte_timeout": RequestOutcome.TIMEOUT_FIRST_BYTE,
    "upstream_idle_timeout": RequestOutcome.TIMEOUT_IDLE,
    "deadline_exceeded": RequestOutcome.TIMEOUT_DEADLINE,
    "server_shutdown": RequestOutcome.SERVER_SHUTDOWN,
    "upstream_error": RequestOutcome.UPSTREAM_ERROR,
    "upstream_overloaded": RequestOutcome.UPSTREAM_ERROR,
    "upstream_stream_error": RequestOutcome.UPSTREAM_ERROR,
    "upstream_auth_failed": RequestOutcome.UPSTREAM_AUTH_FAILED,
    "no_upstream_available": RequestOutcome.NO_UPSTREAM_AVAILABLE,
    "client_disconnect": RequestOutcome.CLIENT_DISCONNECT,
    "storage_unavailable": RequestOutcome.STORAGE_UNAVAILABLE,
}


def request_outcome(status: int, code: str | None) -> RequestOutcome:
    if code in CODE_OUTCOMES:
        return CODE_OUTCOMES[code]
    if status < 400 and code in (None, "ok"):
        return RequestOutcome.OK
    return RequestOutcome.CLIENT_ERROR if 400 <= status < 500 else RequestOutcome.ERROR
