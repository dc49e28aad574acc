"""results.decode_step_tps: decode speed at the 10th-percentile step time

The reference engine times every decode step. Interference (a neighbour, an SMT sibling, the
hypervisor) only ever adds time, so the fast steps show the engine's own speed; ``farm regress``
judges it next to the total-time decode t/s. NULL for engines that only report totals (llama-bench).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("decode_step_tps", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("decode_step_tps")
