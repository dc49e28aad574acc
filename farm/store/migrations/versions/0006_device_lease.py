"""One job per device across processes; runs held by the process that runs them in-process

* ``ix_jobs_device_held``: a partial unique index on jobs(device) over running jobs.
  Claiming a job is what takes its device, so two `farm submit` (or an in-process run beside a
  Celery agent) can never run engines on one device at once; the database enforces it, and it
  survives any crash of the claimer (the reaper frees the device by requeueing its job).
* ``runs.holder``: the process executing an in-process run ("local:HOST:PID:START"), so the next
  farm command can tell that process died and mark the run interrupted.

Stores written before this revision may hold several running jobs on one device (the defect this
fixes): all but one go back to the queue first, as a reaper would have done.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

HELD = "status = 'running'"


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("holder", sa.String(128), nullable=True))
    op.execute(f"""
        UPDATE jobs SET status = 'queued', agent = NULL, claim_token = NULL, lease_until = NULL
        WHERE {HELD} AND id NOT IN (SELECT MIN(id) FROM jobs WHERE {HELD} GROUP BY device)""")
    op.create_index("ix_jobs_device_held", "jobs", ["device"], unique=True,
                    sqlite_where=sa.text(HELD), postgresql_where=sa.text(HELD))


def downgrade() -> None:
    op.drop_index("ix_jobs_device_held", table_name="jobs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("holder")
