"""Admission tables with fewer pages to write: on SQLite, rate_seconds and inflight become
WITHOUT ROWID tables (the primary key is the table: one B-tree per write instead of two or
three), and inflight is keyed by (key_id, request_id), so its count per key reads the key's
own rows and needs no second index. Their rows are carried over. PostgreSQL keeps its tables
and only moves inflight's primary key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 16:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rate_seconds(name: str, rowid: bool) -> None:
    op.create_table(
        name,
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("second", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", "second"),
        sqlite_with_rowid=rowid,
    )


def _inflight(name: str, rowid: bool) -> None:
    if rowid:  # as revision 0001 made it
        op.create_table(
            name,
            sa.Column("request_id", sa.String(length=160), nullable=False),
            sa.Column("key_id", sa.String(length=40), nullable=False),
            sa.Column("started_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("request_id"),
        )
    else:
        op.create_table(
            name,
            sa.Column("key_id", sa.String(length=40), nullable=False),
            sa.Column("request_id", sa.String(length=160), nullable=False),
            sa.Column("started_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("key_id", "request_id"),
            sqlite_with_rowid=False,
        )


def _rebuild_sqlite(rowid: bool) -> None:
    """SQLite cannot alter a table's rowid or key: build the new table, copy, swap."""
    for table, create, columns in (
        ("rate_seconds", _rate_seconds, "key_id, second, requests, tokens"),
        ("inflight", _inflight, "key_id, request_id, started_at"),
    ):
        create(f"{table}_next", rowid)
        op.execute(f"INSERT INTO {table}_next ({columns}) SELECT {columns} FROM {table}")  # noqa: S608 - constants
        op.drop_table(table)
        op.rename_table(f"{table}_next", table)
    if rowid:
        op.create_index("ix_inflight_key_id", "inflight", ["key_id"], unique=False)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(rowid=False)
        return
    op.drop_index("ix_inflight_key_id", table_name="inflight")
    op.drop_constraint("inflight_pkey", "inflight", type_="primary")
    op.create_primary_key("inflight_pkey", "inflight", ["key_id", "request_id"])


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(rowid=True)
        return
    op.drop_constraint("inflight_pkey", "inflight", type_="primary")
    op.create_primary_key("inflight_pkey", "inflight", ["request_id"])
    op.create_index("ix_inflight_key_id", "inflight", ["key_id"], unique=False)
