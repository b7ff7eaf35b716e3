"""The Responses API: usage records gain cached_tokens and reasoning_tokens (counted within
prompt_tokens and completion_tokens), and stored_responses remembers which upstream and token
created each stored response, so later calls for it reach the same upstream account (and whether
its usage was counted: a background response's is counted when it is first fetched finished).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 08:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("usage", sa.Column("cached_tokens", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("usage", sa.Column("reasoning_tokens", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "stored_responses",
        sa.Column("id", sa.String(length=200), primary_key=True),
        sa.Column("upstream", sa.String(length=64), nullable=False),
        sa.Column("token_id", sa.String(length=100), nullable=False),
        sa.Column("key_id", sa.String(length=40)),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("counted", sa.Boolean(), nullable=False, server_default=sa.true()),
    )
    op.create_index("ix_stored_responses_created_at", "stored_responses", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_stored_responses_created_at", table_name="stored_responses")
    op.drop_table("stored_responses")
    op.drop_column("usage", "reasoning_tokens")
    op.drop_column("usage", "cached_tokens")
