"""In-flight slots name their worker and expire with their request: inflight gains `worker`
(host, pid namespace and pid, so gunicorn's master frees the slots of a worker that died) and
`expires_at` (the request's deadline plus a margin, instead of a fixed hour after the start).
Rows already there keep the old rule: they expire an hour after they started, and name no worker.

The server defaults stay: a gateway still running the previous revision (a rolling upgrade on
several machines) inserts rows without the new columns; its slots then count as expired.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 05:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STALE_SECONDS = 3600  # frozen: how long 0003's rows counted


def upgrade() -> None:
    op.add_column("inflight", sa.Column("worker", sa.String(length=100), nullable=False, server_default=""))
    op.add_column("inflight", sa.Column("expires_at", sa.Float(), nullable=False, server_default="0"))
    op.execute(f"UPDATE inflight SET expires_at = started_at + {OLD_STALE_SECONDS}")  # noqa: S608 - a constant


def downgrade() -> None:
    op.drop_column("inflight", "expires_at")
    op.drop_column("inflight", "worker")
