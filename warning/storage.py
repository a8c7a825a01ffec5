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
``superseded`` (a newer alert for the zone came before it was sent), ``in_doubt`` (a
dispatcher died mid-send, the provider could not be asked whether the message went out
for ``[channels] in_doubt_give_up_s``, and ``in_doubt_action = "hold"`` parks it for an
operator: ``floodwarn outbox in-doubt`` lists them, ``floodwarn outbox resend`` or
``mark-sent`` settles them). While recovery is still asking, the row stays ``claimed``
with ``in_doubt_since`` set.

``rate_limits`` holds one sending rate shared by every dispatcher on the database (the
provider meters per account, not per process; see :mod:`warning.ratelimit`).

``leases`` holds named, expiring locks shared by every process on the database (two
schedulers never run the same forecast cycle; see :func:`acquire_lease`).

PostgreSQL (``postgresql+psycopg://user:password@host/db``) holds the same tables as
SQLite: datetimes are ``timestamptz``, JSON columns ``json``; the few SQLite-only parts
(WAL pragmas, the data folder) are applied by dialect.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint, create_engine, delete, event, update)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from .migrations import ensure_schema


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive, PostgreSQL
    as ``timestamptz`` and returns them in the session's time zone: both come back UTC)."""

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
    #: "published"; or "held" until a manager decides: then "published", or "rejected"; a
    #: held notice refreshed by a later cycle is "superseded" (the approval request moves to
    #: the fresh one), and one whose criteria no longer hold is "withdrawn"
    state: Mapped[str] = mapped_column(String(12), default="published")


class ApprovalRow(Base):
    __tablename__ = "approvals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_identifier: Mapped[str] = mapped_column(ForeignKey("alerts.identifier"), unique=True)
    zone: Mapped[str] = mapped_column(String(64), index=True)
    scope: Mapped[str] = mapped_column(String(80))
    level_name: Mapped[str] = mapped_column(String(40))
    requested_at: Mapped[datetime]
    #: when the time-out settles it (``on_approval_timeout``); None = waits for a manager
    release_at: Mapped[datetime | None]
    #: "pending", then "approved", "rejected", "timed_out" (rejected by the time-out),
    #: "withdrawn" (the criteria no longer held before anyone decided) or "superseded"
    #: (a higher level was raised meanwhile)
    state: Mapped[str] = mapped_column(String(12), default="pending", index=True)
    #: what approving publishes into the zone's state: {"level", "chain": the published chain
    #: the notice references, "entry": [sender, identifier, sent] appended to it}
    proposed: Mapped[dict[str, Any] | None] = mapped_column(JSON)
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
    #: when recovery first failed to ask the provider whether this message went out;
    #: None when not in doubt
    in_doubt_since: Mapped[datetime | None]


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


class InboundRow(Base):
    """A resident's text, by the provider's message id, once acted on: a request replayed
    with the same ``MessageSid`` (a provider retry, or a captured signed request sent
    again) gets the stored reply and changes nothing. No phone number is kept."""

    __tablename__ = "inbound_messages"
    sid: Mapped[str] = mapped_column(String(64), primary_key=True)
    received: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(16))
    #: the reply sent (None while the command is being carried out)
    reply: Mapped[str | None] = mapped_column(Text)


ROLES = ("manager", "operator")
"""Console and CLI roles: managers approve or reject held notices; operators watch, run
and replay, but do not decide what the public is told."""


class Operator(Base):
    """Someone who may log in to the console (emergency managers, operators); ``role`` is
    one of :data:`ROLES`."""

    __tablename__ = "operators"
    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(20), default="manager")


class SessionRow(Base):
    """A console sign-in, kept on the server: the cookie holds a random token, this row its
    SHA-256. Signing out, a new password or removing the operator deletes the rows, which
    ends those sessions at once."""

    __tablename__ = "console_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    operator: Mapped[str] = mapped_column(String(120), index=True)
    created: Mapped[datetime]
    expires: Mapped[datetime]


class LeaseRow(Base):
    """A named lock with an expiry, shared by every process on the database."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    holder: Mapped[str] = mapped_column(String(80))
    expires: Mapped[datetime]
    acquired: Mapped[datetime]


class RateLimitRow(Base):
    """A sending rate shared by every process on the database, kept as GCRA's theoretical
    arrival time (see :class:`warning.ratelimit.SharedRateLimiter`)."""

    __tablename__ = "rate_limits"
    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    #: theoretical arrival time: when the limit is next free, epoch seconds (wall clock)
    tat: Mapped[float] = mapped_column(Float, default=0.0)


class AuditRow(Base):
    __tablename__ = "audit"
    #: the console's problem list and the sign-in throttle look events up by name and time
    __table_args__ = (Index("ix_audit_event_time", "event", "time"),)
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


def engine_for(url: str) -> Engine:
    """An engine for ``url`` with the backend's settings: SQLite in WAL mode (its folder
    made if need be), server databases with connections checked before use."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:" and not u.database.startswith("file:"):
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # a server restart or an idle timeout must not fail the next cycle or dispatch
    return create_engine(url, pool_pre_ping=True, pool_recycle=1800)


class Store:
    """A database handle: engine, session factory and the few atomic operations."""

    def __init__(self, url: str):
        self.url = url
        self.engine: Engine = engine_for(url)
        ensure_schema(self.engine)  # one query when the schema is up to date
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def audit(self, s: Session, event_name: str, detail: dict[str, Any], *, run_id: str | None = None,
              zone: str | None = None, value: float | None = None, time: datetime | None = None) -> None:
        s.add(AuditRow(time=time or utcnow(), run_id=run_id, zone=zone, event=event_name,
                       detail=detail, value=value))

    def dispose(self) -> None:
        self.engine.dispose()


# --------------------------------------------------------------------------- runs
@contextmanager
def recorded_run(store: Store, run_id: str, *, at: datetime, scope: str, forecast_issued: datetime | None,
                 forecast_file: str | None) -> Iterator[None]:
    """Record a forecast cycle in ``runs`` while it runs: ``running`` on entry (a re-run of
    the same id starts the old row afresh, in place, so alerts it issued keep pointing at
    it); the body sets ``done`` with its summary (:func:`finish_run`); if the body raises,
    the run is marked ``failed`` with the error, so no run is ever left ``running``."""
    with store.session.begin() as s:
        run = s.get(Run, run_id)
        if run is None:
            run = Run(id=run_id)
            s.add(run)
        run.at, run.scope, run.forecast_issued, run.forecast_file = at, scope, forecast_issued, forecast_file
        run.status, run.started, run.finished, run.summary = "running", utcnow(), None, {}
    try:
        yield
    except BaseException as exc:
        try:
            finish_run(store, run_id, "failed", {"error": f"{type(exc).__name__}: {exc}"})
        except Exception:  # the database itself is what failed: the error above is the news
            pass
        raise


def finish_run(store: Store, run_id: str, status: str, summary: dict[str, Any]) -> None:
    """End a run: ``done`` or ``failed``, with its summary."""
    with store.session.begin() as s:
        run = s.get(Run, run_id)
        run.status, run.finished, run.summary = status, utcnow(), summary


# --------------------------------------------------------------------------- leases
def acquire_lease(store: Store, name: str, holder: str, ttl: timedelta) -> bool:
    """Take (or extend) the lease ``name`` for ``holder`` until ``ttl`` from now; False if
    another holder has it and it has not expired.

    Atomic on both backends without dialect-specific SQL: an ``INSERT`` of a new lease
    (the primary key refuses a second one) or a conditional ``UPDATE ... WHERE expires <
    now OR holder = me``; the database serialises the two writers (SQLite's write lock,
    PostgreSQL's row lock, after which it re-checks the WHERE), so exactly one wins.
    Times are the wall clock (UTC), never a simulated one.
    """
    now = utcnow()
    with store.session.begin() as s:
        took = s.execute(update(LeaseRow).where(LeaseRow.name == name,
                                                (LeaseRow.expires < now) | (LeaseRow.holder == holder))
                         .values(holder=holder, expires=now + ttl, acquired=now)).rowcount
    if took:
        return True
    try:
        with store.session.begin() as s:
            s.add(LeaseRow(name=name, holder=holder, expires=now + ttl, acquired=now))
        return True
    except IntegrityError:  # it exists and someone else holds it
        return False


def renew_lease(store: Store, name: str, holder: str, ttl: timedelta) -> bool:
    """Push the lease's expiry to ``ttl`` from now; False if ``holder`` no longer has it."""
    with store.session.begin() as s:
        return bool(s.execute(update(LeaseRow).where(LeaseRow.name == name, LeaseRow.holder == holder)
                              .values(expires=utcnow() + ttl)).rowcount)


def release_lease(store: Store, name: str, holder: str) -> None:
    """Give the lease up (only if ``holder`` still has it)."""
    with store.session.begin() as s:
        s.execute(delete(LeaseRow).where(LeaseRow.name == name, LeaseRow.holder == holder))
