"""results.{prefill,decode}_j_per_tok_bound: the resolution of energy per token

Net energy subtracts the idle baseline; when what is left is within the idle baseline's noise, its
sign and size mean nothing. The bound (farm.power.energy: 2 sd of the idle readings over the phase
plus half the sensor step, × duration ÷ tokens) is stored next to the raw J/token so tables, reports,
dashboards and exports can say "below resolution" and keep the raw value. NULL for older rows.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

COLUMNS = ("prefill_j_per_tok_bound", "decode_j_per_tok_bound")




def _rollup():  # the dashboard rollup's builder (revision 0003); revision files are not an importable package
    path = Path(__file__).with_name("0003_dashboard_indexes.py")
    spec = importlib.util.spec_from_file_location("farm_rev_0003", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def upgrade() -> None:
    rollup = _rollup()
    rollup.drop_rollup()  # its triggers name every column of results they read: rebuilt below with the bounds
    with op.batch_alter_table("results") as batch:
        for col in COLUMNS:
            batch.add_column(sa.Column(col, sa.Float(), nullable=True))
    rollup.create_rollup([*rollup.METRICS, *COLUMNS])  # dashboards show "below resolution" from exact sums


def downgrade() -> None:
    rollup = _rollup()
    rollup.drop_rollup()
    with op.batch_alter_table("results") as batch:
        for col in COLUMNS:
            batch.drop_column(col)
    rollup.create_rollup(rollup.METRICS)
