"""results.cpus, results.cpu_mask, results.power_mode: the cores that ran the engine (selector and the
affinity read back from its threads) and the power mode set for the job

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("cpus", sa.String(64), nullable=False, server_default="all"))
        batch.add_column(sa.Column("cpu_mask", sa.String(64), nullable=True))
        batch.add_column(sa.Column("power_mode", sa.String(64), nullable=False, server_default="default"))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("power_mode")
        batch.drop_column("cpu_mask")
        batch.drop_column("cpus")
