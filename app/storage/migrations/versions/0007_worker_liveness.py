"""Worker liveness: each gunicorn worker's last heartbeat (on the database's clock), so the
max_parallel slots of the workers of a crashed instance are freed by the others within seconds.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 13:50:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "worker_liveness",
        sa.Column("worker", sa.String(length=100), primary_key=True),
        sa.Column("seen_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("worker_liveness")
