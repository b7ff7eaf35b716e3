"""Routing and credential health: token rows learn who disabled them (operator or auto) and
their recent auth failures, last error and last probe; target_load holds each worker's
requests in flight and recent time-to-first-event per routing target and token; leases give
one deployment-wide holder (the health prober); alert_marks de-duplicate alerts.

Tokens disabled before this revision were disabled by an operator (Sluice did not disable any).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 10:40:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("upstream_tokens") as batch:
        batch.add_column(sa.Column("disabled_by", sa.String(length=16)))
        batch.add_column(sa.Column("disabled_at", sa.Float()))
        batch.add_column(sa.Column("auth_failures", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("last_error", sa.String(length=200)))
        batch.add_column(sa.Column("last_probe_at", sa.Float()))
        batch.add_column(sa.Column("last_probe_ok", sa.Boolean()))
        batch.add_column(sa.Column("last_probe_detail", sa.String(length=64)))
    op.execute("UPDATE upstream_tokens SET disabled_by = 'operator' WHERE enabled = false AND removed = false")
    op.create_table(
        "target_load",
        sa.Column("worker", sa.String(length=100), primary_key=True),
        sa.Column("target", sa.String(length=300), primary_key=True),
        sa.Column("inflight", sa.Integer(), nullable=False),
        sa.Column("ttfe_ms", sa.Float()),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), primary_key=True),
        sa.Column("holder", sa.String(length=100), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
    )
    op.create_table(
        "alert_marks",
        sa.Column("event", sa.String(length=32), primary_key=True),
        sa.Column("subject", sa.String(length=200), primary_key=True),
        sa.Column("sent_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("alert_marks")
    op.drop_table("leases")
    op.drop_table("target_load")
    with op.batch_alter_table("upstream_tokens") as batch:
        for column in (
            "last_probe_detail",
            "last_probe_ok",
            "last_probe_at",
            "last_error",
            "auth_failures",
            "disabled_at",
            "disabled_by",
        ):
            batch.drop_column(column)
