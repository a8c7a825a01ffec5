"""The database: SQLAlchemy 2, SQLite (WAL) by default, PostgreSQL by URL.

Tables: ``runs`` (one row per forecast cycle), ``zone_state`` (each zone's level state
machine, per scope: live or a drill), ``alerts`` (every CAP notice issued or held for
approval), ``approvals`` (the approval queue), ``subscribers`` (encrypted phone numbers),
``outbox`` (one row per recipient per alert, unique), ``deliveries`` (the provider's
delivery status per message, never moving backwards), ``reports`` (flood reports texted
in by residents), ``audit`` (append-only: every decision, approval, send, delivery and
opt-out with what caused it).

Outbox states: ``held`` (waiting for approval), ``pending`` (to send; ``next_attempt_at``
delays a retry), ``claimed`` (a dispatcher has it), ``sent``, ``failed`` (permanent error
or attempts used up), ``cancelled`` (subscriber gone or opted out, or alert rejected),
``superseded`` (a newer alert for the zone came before it was sent).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text,
                        UniqueConstraint, create_engine, event)
from sqlalchemy.engine import Engine
from sqlalchemy.types import TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use timezone-aware UTC")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime()}


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[datetime]
    scope: Mapped[str] = mapped_column(String(80))
    forecast_issued: Mapped[datetime | None]
    forecast_file: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="running")
    started: Mapped[datetime] = mapped_column(default=utcnow)
    finished: Mapped[datetime | None]
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ZoneStateRow(Base):
    __tablename__ = "zone_state"
    zone: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope: Mapped[str] = mapped_column(String(80), primary_key=True)
    level: Mapped[int] = mapped_column(Integer, default=0)
    since: Mapped[datetime | None]
    pending_level: Mapped[int] = mapped_column(Integer, default=0)
    pending_count: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    issued: Mapped[datetime | None]
    #: earlier messages of the open warning chain: [[sender, identifier, sent iso], ...]
    chain: Mapped[list[list[str]]] = mapped_column(JSON, default=list)


class AlertRow(Base):
    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    identifier: Mapped[str] = mapped_column(String(200), unique=True)
    zone: Mapped[str] = mapped_column(String(64), index=True)
    scope: Mapped[str] = mapped_column(String(80))
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    level: Mapped[int]
    level_name: Mapped[str] = mapped_column(String(40))
    msg_type: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(10))
    sent: Mapped[datetime]
    expires: Mapped[datetime]
    cap_path: Mapped[str] = mapped_column(Text)
    headline: Mapped[str] = mapped_column(Text)
    #: "published", or "held" until approved ("rejected" if a manager says no)
    state: Mapped[str] = mapped_column(String(12), default="published")


class ApprovalRow(Base):
    __tablename__ = "approvals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_identifier: Mapped[str] = mapped_column(ForeignKey("alerts.identifier"), unique=True)
    zone: Mapped[str] = mapped_column(String(64), index=True)
    scope: Mapped[str] = mapped_column(String(80))
    level_name: Mapped[str] = mapped_column(String(40))
    requested_at: Mapped[datetime]
    #: auto-release time; None = waits for a manager however long it takes
    release_at: Mapped[datetime | None]
    state: Mapped[str] = mapped_column(String(12), default="pending", index=True)
    decided_by: Mapped[str | None] = mapped_column(String(120))
    decided_at: Mapped[datetime | None]
    #: SMS text written by the manager, replacing the template's for every recipient
    edited_text: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)


class Subscriber(Base):
    __tablename__ = "subscribers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    phone_hash: Mapped[str] = mapped_column(String(64), unique=True)
    phone_enc: Mapped[str] = mapped_column(Text)
    zones: Mapped[list[str]] = mapped_column(JSON)
    language: Mapped[str] = mapped_column(String(8), default="en")
    consent_source: Mapped[str] = mapped_column(Text)
    consent_time: Mapped[datetime]
    opted_out_at: Mapped[datetime | None]
    #: why the number cannot take SMS (provider error, e.g. "21211 invalid number"); None = fine
    unreachable: Mapped[str | None] = mapped_column(Text)
    #: "public" (residents who subscribed) or "drill" (the drill roster: drills text only these)
    roster: Mapped[str] = mapped_column(String(10), default="public", server_default="public", index=True)


class OutboxRow(Base):
    __tablename__ = "outbox"
    __table_args__ = (UniqueConstraint("alert_identifier", "subscriber_id", "channel"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    alert_identifier: Mapped[str] = mapped_column(ForeignKey("alerts.identifier"))
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="SET NULL"))
    channel: Mapped[str] = mapped_column(String(20))
    zone: Mapped[str] = mapped_column(String(64), default="", index=True)
    scope: Mapped[str] = mapped_column(String(80), default="live")
    body: Mapped[str] = mapped_column(Text)
    segments: Mapped[int] = mapped_column(Integer, default=1)
    state: Mapped[str] = mapped_column(String(12), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    claimed_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(40))
    sent_at: Mapped[datetime | None]
    provider_id: Mapped[str | None] = mapped_column(String(64), index=True)
    error: Mapped[str | None] = mapped_column(Text)


class DeliveryRow(Base):
    """The provider's view of one sent message (status callbacks), by provider id."""

    __tablename__ = "deliveries"
    provider_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(24))
    error_code: Mapped[int | None] = mapped_column(Integer)
    updated: Mapped[datetime] = mapped_column(default=utcnow)


class ReportRow(Base):
    """A flood report texted in by a resident (REPORT <text>)."""

    __tablename__ = "reports"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime]
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="SET NULL"))
    zones: Mapped[list[str]] = mapped_column(JSON, default=list)
    text: Mapped[str] = mapped_column(Text)


class Operator(Base):
    """Someone who may log in to the console (emergency managers, operators)."""

    __tablename__ = "operators"
    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(20), default="manager")


class AuditRow(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(default=utcnow)
    run_id: Mapped[str | None] = mapped_column(String(64), index=True)
    zone: Mapped[str | None] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(40))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    value: Mapped[float | None] = mapped_column(Float)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # pragma: no cover - trivial
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL: a committed transaction survives the process being killed (only an
    # OS crash or power cut can lose the last ones), without an fsync per commit
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


#: columns added after a table first shipped: (table, column, DDL type and default); a
#: database made by an older floodwarn gets them on start-up (create_all adds only tables)
_ADDED_COLUMNS = (("subscribers", "roster", "VARCHAR(10) NOT NULL DEFAULT 'public'"),)


def _add_missing_columns(engine: Engine) -> None:
    from sqlalchemy import inspect, text

    insp = inspect(engine)
    for table, column, ddl in _ADDED_COLUMNS:
        if column not in {c["name"] for c in insp.get_columns(table)}:
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"))


class Store:
    """A database handle: engine, session factory and the few atomic operations."""

    def __init__(self, url: str):
        self.url = url
        if url.startswith("sqlite:///") and ":memory:" not in url:
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(url)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        _add_missing_columns(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    def audit(self, s: Session, event_name: str, detail: dict[str, Any], *, run_id: str | None = None,
              zone: str | None = None, value: float | None = None, time: datetime | None = None) -> None:
        s.add(AuditRow(time=time or utcnow(), run_id=run_id, zone=zone, event=event_name,
                       detail=detail, value=value))

    def dispose(self) -> None:
        self.engine.dispose()
