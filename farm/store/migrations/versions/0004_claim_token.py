"""jobs.claim_token: which delivery holds a running job

A claim is one UPDATE; if the connection drops after the server committed it but before the
agent heard back, the agent cannot tell "I claimed it" from "someone else did". Each delivery
now writes a random token with its claim, and a retried claim that finds its own token knows the
job is its own (instead of skipping it and leaving it to be reaped and run a second time).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("claim_token", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("claim_token")
