"""The database schema (SQLAlchemy Core). Changes go through a new Alembic revision.

Times are UNIX seconds as floats: portable across SQLite and PostgreSQL, cheap to compare.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("prefix", String(24), nullable=False),  # display only: "sk-sluice-AbCd"
    Column("key_hash", String(64), nullable=False, unique=True),  # SHA-256 hex of the key
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("revoked_at", Float),
    Column("models", Text, nullable=False, default="*"),  # comma-separated globs
    Column("rpm", Integer),
    Column("tpm", BigInteger),
    Column("max_parallel", Integer),
    Column("monthly_tokens", BigInteger),
)

# Rate-limit windows: per key and per second, the requests admitted and the tokens recorded.
# An admission reads at most the 61 rows of its window, whatever the request rate.
rate_seconds = Table(
    "rate_seconds",
    metadata,
    Column("key_id", String(40), primary_key=True),
    Column("second", BigInteger, primary_key=True),  # UNIX second the events fell in
    Column("requests", Integer, nullable=False),
    Column("tokens", BigInteger, nullable=False),
    sqlite_with_rowid=False,  # the key is the table: one B-tree to write per admission (revision 0003)
)
# A key's requests in flight (max_parallel): each row frees itself at expires_at (its request's
# deadline and a margin) and names the worker holding it (limits.worker_name), so the slots of
# a worker that died are freed when gunicorn's master sees it go (revision 0004). No index on
# worker: the table holds only the requests running now, and an index would cost every admission.
inflight = Table(
    "inflight",
    metadata,
    Column("key_id", String(40), primary_key=True),
    Column("request_id", String(160), primary_key=True),
    Column("started_at", Float, nullable=False),
    Column("worker", String(100), nullable=False),
    Column("expires_at", Float, nullable=False),
    sqlite_with_rowid=False,
)
monthly_usage = Table(
    "monthly_usage",
    metadata,
    Column("key_id", String(40), primary_key=True),
    Column("month", String(7), primary_key=True),  # "2026-11"
    Column("tokens", BigInteger, nullable=False, default=0),
)

upstream_tokens = Table(
    "upstream_tokens",
    metadata,
    Column("id", String(100), primary_key=True),  # "<upstream>:<sha256[:12]>", stable
    Column("upstream", String(64), nullable=False, index=True),
    Column("source", String(8), nullable=False),  # "config" | "runtime"
    Column("secret", Text),  # runtime tokens only: Fernet ciphertext, never the plain value
    Column("masked", String(16), nullable=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("removed", Boolean, nullable=False, default=False),
    Column("cooldown_until", Float, nullable=False, default=0.0),
    Column("last_status", Integer),
    Column("last_at", Float),
    Column("successes", Integer, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    # Credential health (revision 0006). Who disabled a token: "operator" (stays off until an operator
    # enables it) or "auto" (Sluice, after `auto_disable_after` 401/403 in a row; a passing probe re-enables it).
    Column("disabled_by", String(16)),
    Column("disabled_at", Float),
    Column("auth_failures", Integer, nullable=False, default=0),  # 401/403 answers in a row
    Column("last_error", String(200)),  # short and secret-free: "HTTP 401", "connect error"
    Column("last_probe_at", Float),
    Column("last_probe_ok", Boolean),
    Column("last_probe_detail", String(64)),
)
upstream_overrides = Table(
    "upstream_overrides",
    metadata,
    Column("upstream", String(64), primary_key=True),
    Column("user_agent", Text),
    Column("headers", Text),  # JSON object
    Column("updated_at", Float, nullable=False),
)

usage = Table(
    "usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False, index=True),
    Column("request_id", String(160), nullable=False),
    Column("key_id", String(40)),
    Column("key_name", String(64), nullable=False),
    Column("model", String(200), nullable=False),
    Column("endpoint", String(40), nullable=False),
    Column("upstream", String(64)),  # the upstream that gave the final answer
    Column("upstreams", Text, nullable=False),  # comma-separated names tried, in order
    Column("token_ids", Text, nullable=False),  # comma-separated token ids tried (never values)
    Column("status", Integer, nullable=False),
    Column("outcome", String(40), nullable=False),
    Column("streamed", Boolean, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("total_tokens", Integer, nullable=False, default=0),
    Column("cached_tokens", Integer, nullable=False, default=0),  # of prompt_tokens, from a cache (revision 0005)
    Column("reasoning_tokens", Integer, nullable=False, default=0),  # of completion_tokens (revision 0005)
    Column("ttfb_ms", Float),
    Column("duration_ms", Float, nullable=False),
    Column("bytes_sent", Integer, nullable=False, default=0),
    Index("ix_usage_key_at", "key_id", "at"),
)

# Which upstream and token created a stored Responses API response, so that GET, DELETE, cancel
# and input_items reach the same upstream account; pruned with the usage records (revision 0005).
stored_responses = Table(
    "stored_responses",
    metadata,
    Column("id", String(200), primary_key=True),  # the upstream's response id
    Column("upstream", String(64), nullable=False),
    Column("token_id", String(100), nullable=False),
    Column("key_id", String(40)),  # the client key that created it (None: the master key)
    Column("model", String(200), nullable=False),
    Column("created_at", Float, nullable=False, index=True),
    Column("counted", Boolean, nullable=False, default=True),  # False: a background response, usage not yet counted
)

audit = Table(
    "audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False, index=True),
    Column("actor", String(64), nullable=False),  # "cli", "admin-api", "dashboard:<user>"
    Column("action", String(64), nullable=False),
    Column("target", String(200), nullable=False),
)

# Dashboard sign-ins: the cookie carries a random id; only its SHA-256 is stored, and
# logging out deletes the row, so a copied cookie stops working.
admin_sessions = Table(
    "admin_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("password_mark", String(64), nullable=False),  # sessions of an old password end
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False, index=True),
)
# Failed dashboard logins per client address (hashed), for the 5-per-minute throttle.
login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("address_hash", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Index("ix_login_failures_address_at", "address_hash", "at"),
)
# What each gunicorn worker is doing now, written every few seconds, so the dashboard
# can add up the streams of every worker on every machine.
worker_status = Table(
    "worker_status",
    metadata,
    Column("worker", String(100), primary_key=True),  # "<host>:<pid>"
    Column("active_streams", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Each gunicorn worker's heartbeat, on the database's clock (revision 0007): the slots of a worker
# silent for a few seconds (its instance crashed) are freed by the others (app/storage/liveness.py).
worker_liveness = Table(
    "worker_liveness",
    metadata,
    Column("worker", String(100), primary_key=True),  # "<instance id>:<pid>", as in inflight.worker
    Column("seen_at", Float, nullable=False),
)

# Load per worker and routing target ("<upstream>/<model>") or token id, written every second or two,
# so `least_busy` counts the requests in flight on every worker and the dashboard shows recent
# time-to-first-event (revision 0006). Rows of a worker that stopped reporting are ignored, then pruned.
target_load = Table(
    "target_load",
    metadata,
    Column("worker", String(100), primary_key=True),
    Column("target", String(300), primary_key=True),
    Column("inflight", Integer, nullable=False),
    Column("ttfe_ms", Float),  # recent time to first event (an exponential moving average), None: no sample
    Column("updated_at", Float, nullable=False),
)
# Deployment-wide leases: one holder at a time (e.g. the health prober), taken over when it expires.
leases = Table(
    "leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(100), nullable=False),
    Column("expires_at", Float, nullable=False),
)
# Alert de-duplication: the last time an (event, subject) alert was sent by any worker (revision 0006).
alert_marks = Table(
    "alert_marks",
    metadata,
    Column("event", String(32), primary_key=True),
    Column("subject", String(200), primary_key=True),
    Column("sent_at", Float, nullable=False),
)

# Roll-ups of the usage records, written in the same transaction as each batch of them, so
# the dashboard reads a few rows per minute or hour instead of scanning every request.
# Time-to-first-byte is kept as a histogram: upper bounds in ms, the last one open.
TTFB_BOUNDS_MS = (25, 50, 100, 200, 350, 500, 750, 1000, 1500, 2500, 5000, 10000)
usage_minutes = Table(
    "usage_minutes",
    metadata,
    Column("minute", BigInteger, primary_key=True),  # UNIX seconds at the start of the minute
    Column("requests", Integer, nullable=False),
    Column("errors", Integer, nullable=False),
    Column("tokens", BigInteger, nullable=False),
    *[Column(f"ttfb_{i}", Integer, nullable=False) for i in range(len(TTFB_BOUNDS_MS) + 1)],
)
usage_hours = Table(
    "usage_hours",
    metadata,
    Column("hour", BigInteger, primary_key=True),  # UNIX seconds at the start of the hour
    Column("key_name", String(64), primary_key=True),
    Column("model", String(200), primary_key=True),
    Column("upstream", String(64), primary_key=True),  # "-" when no upstream answered
    Column("requests", Integer, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("total_tokens", BigInteger, nullable=False),
)
