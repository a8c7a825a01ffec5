"""Drop the scheduler's job table: the service now keeps its jobs in memory.

APScheduler 3 forbids sharing a persistent job store between schedulers, and several
``floodwarn serve`` processes may share one database; the jobs are made anew from the
config at every start, so nothing is lost (see ``Service.start``). Older databases have a
``scheduler_jobs`` table made by APScheduler's SQLAlchemyJobStore.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("scheduler_jobs"):
        op.drop_table("scheduler_jobs")


def downgrade() -> None:
    pass  # nothing uses the job table any more; it is not made again
