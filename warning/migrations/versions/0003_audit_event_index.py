"""Index the audit table by event and time: the console's problem list and the sign-in
throttle (``warning.logins``) look rows up by event name over a recent window, and the
table grows with every cycle.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a database adopted by 0001 may have it already (made by a floodwarn that had it)
    if "ix_audit_event_time" not in {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("audit")}:
        op.create_index("ix_audit_event_time", "audit", ["event", "time"])


def downgrade() -> None:
    op.drop_index("ix_audit_event_time", table_name="audit")
