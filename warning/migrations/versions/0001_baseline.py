"""Baseline: the schema floodwarn shipped on 2026-12-05 (commit 7bc92d5), and the adoption
of any database an earlier floodwarn made.

Before this revision floodwarn kept no version table: ``Store`` ran ``create_all`` and
added a few columns by hand. So this revision is idempotent. On an empty database it
creates every table. On a database from any earlier floodwarn it creates the tables that
are missing, adds the columns a table lacks (a NOT NULL column gets the model's default in
the rows already there: ``alerts.state`` "published", ``outbox.zone`` "", ``outbox.scope``
"live", ``outbox.segments`` 1, ``subscribers.roster`` "public"), and creates the indexes
that are missing. Every row is kept.

On SQLite a table that lacks columns is rebuilt (made anew, rows copied, old table
dropped, new one renamed), so that its columns, their order and their constraints are
exactly those of a table made fresh; this needs ``PRAGMA foreign_keys=OFF``, which
:mod:`warning.migrations` ensures. On PostgreSQL columns are added in place.

The tables are frozen here, as they were at this revision: later changes to the models go
in later revisions, never here.

Revision ID: 0001
Revises:
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateTable

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def baseline_metadata() -> sa.MetaData:
    """The tables of this revision. ``default=`` gives the value an added NOT NULL column
    takes in rows that were there before it (it does not change the DDL)."""
    m = sa.MetaData()
    sa.Table("runs", m,
             sa.Column("id", sa.String(64), primary_key=True),
             sa.Column("at", TS, nullable=False),
             sa.Column("scope", sa.String(80), nullable=False),
             sa.Column("forecast_issued", TS),
             sa.Column("forecast_file", sa.Text),
             sa.Column("status", sa.String(16), nullable=False, default="running"),
             sa.Column("started", TS, nullable=False),
             sa.Column("finished", TS),
             sa.Column("summary", sa.JSON, nullable=False))
    sa.Table("zone_state", m,
             sa.Column("zone", sa.String(64), primary_key=True),
             sa.Column("scope", sa.String(80), primary_key=True),
             sa.Column("level", sa.Integer, nullable=False, default=0),
             sa.Column("since", TS),
             sa.Column("pending_level", sa.Integer, nullable=False, default=0),
             sa.Column("pending_count", sa.Integer, nullable=False, default=0),
             sa.Column("active", sa.Boolean, nullable=False, default=False),
             sa.Column("issued", TS),
             sa.Column("chain", sa.JSON, nullable=False))
    sa.Table("alerts", m,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("identifier", sa.String(200), nullable=False, unique=True),
             sa.Column("zone", sa.String(64), nullable=False, index=True),
             sa.Column("scope", sa.String(80), nullable=False),
             sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), nullable=False),
             sa.Column("level", sa.Integer, nullable=False),
             sa.Column("level_name", sa.String(40), nullable=False),
             sa.Column("msg_type", sa.String(10), nullable=False),
             sa.Column("status", sa.String(10), nullable=False),
             sa.Column("sent", TS, nullable=False),
             sa.Column("expires", TS, nullable=False),
             sa.Column("cap_path", sa.Text, nullable=False),
             sa.Column("headline", sa.Text, nullable=False),
             sa.Column("state", sa.String(12), nullable=False, default="published"))
    sa.Table("approvals", m,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("alert_identifier", sa.String(200), sa.ForeignKey("alerts.identifier"),
                       nullable=False, unique=True),
             sa.Column("zone", sa.String(64), nullable=False, index=True),
             sa.Column("scope", sa.String(80), nullable=False),
             sa.Column("level_name", sa.String(40), nullable=False),
             sa.Column("requested_at", TS, nullable=False),
             sa.Column("release_at", TS),
             sa.Column("state", sa.String(12), nullable=False, index=True, default="pending"),
             sa.Column("proposed", sa.JSON),
             sa.Column("decided_by", sa.String(120)),
             sa.Column("decided_at", TS),
             sa.Column("edited_text", sa.Text),
             sa.Column("note", sa.Text))
    sa.Table("subscribers", m,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("phone_hash", sa.String(64), nullable=False, unique=True),
             sa.Column("phone_enc", sa.Text, nullable=False),
             sa.Column("zones", sa.JSON, nullable=False),
             sa.Column("language", sa.String(8), nullable=False, default="en"),
             sa.Column("consent_source", sa.Text, nullable=False),
             sa.Column("consent_time", TS, nullable=False),
             sa.Column("opted_out_at", TS),
             sa.Column("unreachable", sa.Text),
             sa.Column("roster", sa.String(10), nullable=False, index=True, default="public",
                       server_default="public"))
    sa.Table("outbox", m,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("key", sa.String(200), nullable=False, unique=True),
             sa.Column("alert_identifier", sa.String(200), sa.ForeignKey("alerts.identifier"),
                       nullable=False),
             sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id", ondelete="SET NULL")),
             sa.Column("channel", sa.String(20), nullable=False),
             sa.Column("zone", sa.String(64), nullable=False, index=True, default=""),
             sa.Column("scope", sa.String(80), nullable=False, default="live"),
             sa.Column("body", sa.Text, nullable=False),
             sa.Column("segments", sa.Integer, nullable=False, default=1),
             sa.Column("state", sa.String(12), nullable=False, index=True, default="pending"),
             sa.Column("attempts", sa.Integer, nullable=False, default=0),
             sa.Column("next_attempt_at", TS),
             sa.Column("claimed_at", TS),
             sa.Column("claimed_by", sa.String(40)),
             sa.Column("sent_at", TS),
             sa.Column("provider_id", sa.String(64), index=True),
             sa.Column("error", sa.Text),
             sa.Column("in_doubt_since", TS),
             sa.UniqueConstraint("alert_identifier", "subscriber_id", "channel"))
    sa.Table("deliveries", m,
             sa.Column("provider_id", sa.String(64), primary_key=True),
             sa.Column("outbox_id", sa.Integer, sa.ForeignKey("outbox.id", ondelete="SET NULL")),
             sa.Column("status", sa.String(24), nullable=False),
             sa.Column("error_code", sa.Integer),
             sa.Column("updated", TS, nullable=False))
    sa.Table("reports", m,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("time", TS, nullable=False),
             sa.Column("subscriber_id", sa.Integer, sa.ForeignKey("subscribers.id", ondelete="SET NULL")),
             sa.Column("zones", sa.JSON, nullable=False),
             sa.Column("text", sa.Text, nullable=False))
    sa.Table("inbound_messages", m,
             sa.Column("sid", sa.String(64), primary_key=True),
             sa.Column("received", TS, nullable=False),
             sa.Column("kind", sa.String(16), nullable=False),
             sa.Column("reply", sa.Text))
    sa.Table("operators", m,
             sa.Column("name", sa.String(120), primary_key=True),
             sa.Column("password_hash", sa.Text, nullable=False),
             sa.Column("role", sa.String(20), nullable=False, default="manager"))
    sa.Table("console_sessions", m,
             sa.Column("token_hash", sa.String(64), primary_key=True),
             sa.Column("operator", sa.String(120), nullable=False, index=True),
             sa.Column("created", TS, nullable=False),
             sa.Column("expires", TS, nullable=False))
    sa.Table("leases", m,
             sa.Column("name", sa.String(120), primary_key=True),
             sa.Column("holder", sa.String(80), nullable=False),
             sa.Column("expires", TS, nullable=False),
             sa.Column("acquired", TS, nullable=False))
    sa.Table("rate_limits", m,
             sa.Column("name", sa.String(120), primary_key=True),
             sa.Column("tat", sa.Float, nullable=False, default=0.0))
    sa.Table("audit", m,
             sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
             sa.Column("time", TS, nullable=False),
             sa.Column("run_id", sa.String(64), index=True),
             sa.Column("zone", sa.String(64)),
             sa.Column("event", sa.String(40), nullable=False),
             sa.Column("detail", sa.JSON, nullable=False),
             sa.Column("value", sa.Float))
    return m


def _fill(table: sa.Table, col: sa.Column) -> object:
    """The value an added column takes in the rows already there."""
    if col.default is not None and col.default.is_scalar:
        return col.default.arg
    if col.nullable:
        return None
    raise RuntimeError(f"cannot add {table.name}.{col.name} to a table with rows: it has no default")


def _rebuild_sqlite(bind: sa.Connection, table: sa.Table, have: list[str]) -> None:
    """Make ``table`` anew with every column, copy the rows (added columns filled), drop the
    old table and give the new one its name. Indexes are made afterwards by the caller."""
    if bind.exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError("rebuilding a SQLite table needs PRAGMA foreign_keys=OFF (dropping the "
                           "old table would otherwise touch the rows that refer to it)")
    tmp = table.to_metadata(table.metadata, name=f"_floodwarn_new_{table.name}")
    try:
        bind.execute(CreateTable(tmp))
        names = [c.name for c in table.columns]
        old = sa.table(table.name, *(sa.column(n) for n in have))
        values = [old.c[n] if n in have else sa.literal(_fill(table, table.c[n]), table.c[n].type)
                  for n in names]
        bind.execute(sa.insert(tmp).from_select(names, sa.select(*values)))
        bind.execute(sa.text(f'DROP TABLE "{table.name}"'))
        bind.execute(sa.text(f'ALTER TABLE "{tmp.name}" RENAME TO "{table.name}"'))
    finally:
        table.metadata.remove(tmp)


def _add_columns(table: sa.Table, missing: list[sa.Column]) -> None:
    """PostgreSQL: add each column in place; a NOT NULL one through a temporary server
    default (its fill), dropped again unless the model keeps one."""
    for col in missing:
        new = sa.Column(col.name, col.type, nullable=col.nullable, server_default=col.server_default.arg
                        if col.server_default is not None else None)
        fill = None if col.nullable else _fill(table, col)
        if fill is not None and col.server_default is None:
            new.server_default = sa.DefaultClause(sa.text(str(fill)) if isinstance(fill, (int, float))
                                                  else str(fill))
        op.add_column(table.name, new)
        if fill is not None and col.server_default is None:
            op.alter_column(table.name, col.name, server_default=None, existing_type=col.type,
                            existing_nullable=col.nullable)


def upgrade() -> None:
    bind = op.get_bind()
    meta = baseline_metadata()
    existing = set(sa.inspect(bind).get_table_names())
    for table in meta.sorted_tables:
        if table.name not in existing:
            table.create(bind)  # with its indexes
            continue
        insp = sa.inspect(bind)
        have = [c["name"] for c in insp.get_columns(table.name)]
        unknown = sorted(set(have) - set(table.columns.keys()))
        if unknown:
            raise RuntimeError(f"table {table.name} has columns floodwarn never made ({', '.join(unknown)}); "
                               "is this a floodwarn database?")
        missing = [c for c in table.columns if c.name not in have]
        if missing:
            if bind.dialect.name == "sqlite":
                _rebuild_sqlite(bind, table, have)
            else:
                _add_columns(table, missing)
        indexes = {ix["name"] for ix in sa.inspect(bind).get_indexes(table.name)}
        for ix in table.indexes:
            if ix.name not in indexes:
                ix.create(bind)


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(baseline_metadata().sorted_tables):
        table.drop(bind, checkfirst=True)
