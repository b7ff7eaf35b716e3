"""Dashboard: admin sessions, failed-login throttle, per-worker live status, usage roll-ups;
token counts and budgets widened to 64 bits (a month of a busy key passes 2**31 tokens);
rate-limit windows kept per key and second (rate_seconds) instead of one row per request and
per release, so an admission reads at most 61 rows. The windows' current contents (at most a
minute of history) are not carried over.

The roll-ups are filled from the usage records already stored.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 13:20:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies (this revision must not change when app code does).
TTFB_BOUNDS_MS = (25, 50, 100, 200, 350, 500, 750, 1000, 1500, 2500, 5000, 10000)
CLIENT_OUTCOMES = ("ok", "client_error", "rate_limited", "quota_exceeded", "client_disconnect")


WIDENED = (("api_keys", "tpm", True), ("api_keys", "monthly_tokens", True), ("monthly_usage", "tokens", False))


def upgrade() -> None:
    op.create_table(
        "rate_seconds",
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("second", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", "second"),
    )
    for table in ("request_events", "token_events"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{table}_key_at")
        op.drop_table(table)
    for table, column, nullable in WIDENED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(column, existing_type=sa.Integer(), type_=sa.BigInteger(), existing_nullable=nullable)
    op.create_table(
        "admin_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("password_mark", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id_hash"),
    )
    with op.batch_alter_table("admin_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_admin_sessions_expires_at"), ["expires_at"], unique=False)
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("address_hash", sa.String(length=64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.create_index("ix_login_failures_address_at", ["address_hash", "at"], unique=False)
    op.create_table(
        "worker_status",
        sa.Column("worker", sa.String(length=100), nullable=False),
        sa.Column("active_streams", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("worker"),
    )
    minutes = op.create_table(
        "usage_minutes",
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        *[sa.Column(f"ttfb_{i}", sa.Integer(), nullable=False) for i in range(len(TTFB_BOUNDS_MS) + 1)],
        sa.PrimaryKeyConstraint("minute"),
    )
    hours = op.create_table(
        "usage_hours",
        sa.Column("hour", sa.BigInteger(), nullable=False),
        sa.Column("key_name", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("upstream", sa.String(length=64), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("total_tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("hour", "key_name", "model", "upstream"),
    )
    _backfill(minutes, hours)


def _backfill(minutes: sa.Table, hours: sa.Table) -> None:
    """Roll up the usage records stored before this revision (one pass per table, in SQL)."""
    bind = op.get_bind()
    usage = sa.table(
        "usage",
        *[
            sa.column(n)
            for n in (
                "at",
                "key_name",
                "model",
                "upstream",
                "outcome",
                "ttfb_ms",
                "prompt_tokens",
                "completion_tokens",
                "total_tokens",
            )
        ],  # fmt: skip
    )
    c = usage.c

    def start(width: int):
        if bind.dialect.name == "sqlite":
            return sa.cast(c.at / width, sa.BigInteger) * width
        return sa.cast(sa.func.floor(c.at / width), sa.BigInteger) * width

    def count_if(condition):
        return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

    minute = start(60)
    bounds = (0, *TTFB_BOUNDS_MS)
    histogram = [
        count_if(sa.and_(c.ttfb_ms.is_not(None), c.ttfb_ms > lo if i else sa.true(), c.ttfb_ms <= hi))
        for i, (lo, hi) in enumerate(zip(bounds, TTFB_BOUNDS_MS, strict=False))
    ] + [count_if(c.ttfb_ms > TTFB_BOUNDS_MS[-1])]
    per_minute = sa.select(
        minute, sa.func.count(), count_if(c.outcome.not_in(CLIENT_OUTCOMES)),
        sa.func.coalesce(sa.func.sum(c.total_tokens), 0), *histogram,
    ).group_by(minute)  # fmt: skip
    bind.execute(sa.insert(minutes).from_select([col.name for col in minutes.c], per_minute))
    hour, upstream = start(3600), sa.func.coalesce(c.upstream, "-")
    per_hour = sa.select(
        hour, c.key_name, c.model, upstream, sa.func.count(), sa.func.coalesce(sa.func.sum(c.prompt_tokens), 0),
        sa.func.coalesce(sa.func.sum(c.completion_tokens), 0), sa.func.coalesce(sa.func.sum(c.total_tokens), 0),
    ).group_by(hour, c.key_name, c.model, upstream)  # fmt: skip
    bind.execute(sa.insert(hours).from_select([col.name for col in hours.c], per_hour))


def downgrade() -> None:
    op.drop_table("rate_seconds")
    for table, extra in (("request_events", []), ("token_events", [sa.Column("tokens", sa.Integer(), nullable=False)])):
        op.create_table(
            table,
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("key_id", sa.String(length=40), nullable=False),
            sa.Column("at", sa.Float(), nullable=False),
            *extra,
            sa.PrimaryKeyConstraint("id"),
        )
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(f"ix_{table}_key_at", ["key_id", "at"], unique=False)
    for table, column, nullable in WIDENED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(column, existing_type=sa.BigInteger(), type_=sa.Integer(), existing_nullable=nullable)
    op.drop_table("usage_hours")
    op.drop_table("usage_minutes")
    op.drop_table("worker_status")
    with op.batch_alter_table("login_failures", schema=None) as batch_op:
        batch_op.drop_index("ix_login_failures_address_at")
    op.drop_table("login_failures")
    with op.batch_alter_table("admin_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_admin_sessions_expires_at"))
    op.drop_table("admin_sessions")
