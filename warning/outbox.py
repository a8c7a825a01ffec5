"""The SMS outbox: queueing a fan-out, the approval queue, and the crash-safe dispatcher.

Rows are written in the same transaction as the decision that causes them (one row per
recipient per alert version, unique key ``<alert>:<subscriber>:sms``), so a crash either
keeps both or neither. The dispatcher:

1. releases held alerts whose approval timed out (when the level allows it);
2. recovers rows a dispatcher claimed and stopped working on (its lease ran out, never
   renewed): it asks the channel whether the message went out (``Channel.find_sent``)
   and records it as sent if so, else puts it back in the queue, so a killed dispatcher
   neither loses a message nor sends it twice;
3. claims a batch of due rows atomically, so two dispatchers (threads or processes)
   never get the same row: on SQLite one ``UPDATE ... WHERE state = 'pending'`` (the
   database lets one writer in at a time); on PostgreSQL ``SELECT ... FOR UPDATE SKIP
   LOCKED`` then ``UPDATE`` in one transaction (each dispatcher takes rows no other holds,
   without waiting on them). It sends them within one rate limit (segments per second)
   shared through the database by every dispatcher (:mod:`warning.ratelimit`), recording
   each outcome right after its send; temporary errors are retried with backoff,
   permanent ones stop and mark the subscriber (opted out or unreachable).

A batch slower than the lease is never sent twice: while it goes, a thread renews the
claims of its rows not yet sent every third of the lease; just before each send a
conditional update (``WHERE state = 'claimed' AND claimed_by = <me>``) refreshes the
row's claim, and a row that is no longer this dispatcher's is skipped; the outcome is
recorded under the same condition, and a send found afterwards to have lost its claim is
logged as an error and audited (``claim_lost``). Recovery settles each stale row with a
conditional update (``WHERE state = 'claimed' AND claimed_by = <the stopped dispatcher>
AND claimed_at <= now - lease``), so it never takes a row that is being worked on, and
when two dispatchers recover the same row only one of them records or requeues it.

When the provider cannot be asked about a row in doubt, recovery asks again with backoff
for ``in_doubt_give_up`` (``[channels] in_doubt_give_up_s``), then resends it (a
duplicate is possible) or holds it in state ``in_doubt`` for an operator
(``in_doubt_action``), and tells the operators once per episode; ``Dispatcher.run`` ends
when its work is done, rows in doubt included.

Every send, failure, recovery, lost claim, approval and release goes to the audit log (no
phone numbers); logs mask numbers (``alerts.channels.mask_phone``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, insert, or_, select, update

from alerts.channels import Channel, OutgoingMessage, mask_phone
from alerts.delivery import RetryPolicy, subscriber_effect
from alerts.errors import DeliveryError
from alerts.messages import sms_segments

from .errors import FloodwarnError
from .ratelimit import SharedRateLimiter
from .storage import (AlertRow, ApprovalRow, DeliveryRow, Operator, OutboxRow, Store, Subscriber, ZoneStateRow,
                      utcnow)
from .subscribers import ALL_ZONES, PhoneVault

log = logging.getLogger(__name__)

OPEN_STATES = ("held", "pending")
"""Rows that may still go out without a person: waiting for approval or for a dispatcher."""

UNSENT_STATES = (*OPEN_STATES, "in_doubt")
"""Rows not known to be sent: a newer notice for the zone supersedes them (a message held in
doubt must not be resent once it is out of date), and a permanent error cancels them."""


# --------------------------------------------------------------------------- queueing
def roster_for_scope(scope: str) -> str:
    """Who an alert of ``scope`` may text: drills only the drill roster, never the public."""
    return "drill" if scope.startswith("drill:") else "public"


def recipients_for_zone(s, zone: str, roster: str = "public") -> list[tuple[int, str]]:
    """(subscriber id, language) of everyone on ``roster`` subscribed to ``zone`` (a drill
    roster entry with zone ``*`` takes every zone) who can get SMS. Numbers stay
    encrypted: queueing never needs them."""
    rows = s.execute(select(Subscriber.id, Subscriber.language, Subscriber.zones)
                     .where(Subscriber.opted_out_at.is_(None), Subscriber.unreachable.is_(None),
                            Subscriber.roster == roster)
                     .order_by(Subscriber.id)).all()
    return [(sid, lang) for sid, lang, zones in rows if zone in (zones or ()) or ALL_ZONES in (zones or ())]


def queue_fanout(s, store: Store, *, alert_identifier: str, zone: str, scope: str,
                 bodies: Callable[[str], str], held: bool, at: datetime) -> int:
    """Queue one SMS per recipient of ``zone`` for an alert, inside the caller's transaction.

    ``bodies(language)`` gives the text for each language (rendered once per language).
    Older unsent rows of the same zone and scope are superseded first: a newer alert
    version replaces them. Returns the number of rows queued.
    """
    superseded = s.execute(update(OutboxRow)
                           .where(OutboxRow.zone == zone, OutboxRow.scope == scope,
                                  OutboxRow.state.in_(UNSENT_STATES),
                                  OutboxRow.alert_identifier != alert_identifier)
                           .values(state="superseded", error=f"superseded by {alert_identifier}")
                           ).rowcount
    if superseded:
        store.audit(s, "superseded", {"by": alert_identifier, "messages": superseded}, zone=zone, time=at)
    texts: dict[str, tuple[str, int]] = {}
    rows = []
    for sid, lang in recipients_for_zone(s, zone, roster_for_scope(scope)):
        if lang not in texts:
            body = bodies(lang)
            texts[lang] = (body, sms_segments(body).segments)
        body, segments = texts[lang]
        rows.append({"key": f"{alert_identifier}:{sid}:sms", "alert_identifier": alert_identifier,
                     "subscriber_id": sid, "channel": "sms", "zone": zone, "scope": scope,
                     "body": body, "segments": segments, "state": "held" if held else "pending",
                     "attempts": 0})
    for i in range(0, len(rows), 5000):
        s.execute(insert(OutboxRow), rows[i:i + 5000])
    if rows:
        store.audit(s, "queued", {"alert": alert_identifier, "messages": len(rows), "held": held,
                                  "languages": sorted(texts)}, zone=zone, time=at)
    return len(rows)


# --------------------------------------------------------------------------- approvals
@dataclass(frozen=True)
class Pending:
    id: int
    alert: str
    zone: str
    scope: str
    level: str
    requested_at: datetime
    release_at: datetime | None
    messages: int
    headline: str
    #: what the time-out does at ``release_at``: "publish" or "reject"
    on_timeout: str = "publish"


def pending_approvals(store: Store) -> list[Pending]:
    with store.session() as s:
        rows = s.execute(select(ApprovalRow, AlertRow.headline)
                         .join(AlertRow, AlertRow.identifier == ApprovalRow.alert_identifier)
                         .where(ApprovalRow.state == "pending").order_by(ApprovalRow.id)).all()
        out = []
        for a, headline in rows:
            n = len(s.scalars(select(OutboxRow.id).where(OutboxRow.alert_identifier == a.alert_identifier,
                                                         OutboxRow.state == "held")).all())
            out.append(Pending(a.id, a.alert_identifier, a.zone, a.scope, a.level_name, a.requested_at,
                               a.release_at, n, headline, (a.proposed or {}).get("on_timeout", "publish")))
        return out


SYSTEM = "system"
"""``decided_by`` of what the time-out or a later cycle settled (no person)."""


def require_manager(store: Store, name: str) -> str:
    """The role of ``name`` if it may approve or reject; FloodwarnError otherwise."""
    with store.session() as s:
        op = s.get(Operator, name)
    if op is None:
        raise FloodwarnError(f"{name!r} is not an operator; a manager adds them with "
                             "'floodwarn operators add NAME --role manager'")
    if op.role != "manager":
        raise FloodwarnError(f"{name} is an {op.role}: only managers approve or reject warnings")
    return op.role


def decide_approval(store: Store, approval_id: int, *, approve: bool, by: str, at: datetime | None = None,
                    text: str | None = None, note: str | None = None,
                    publish: Callable[[AlertRow], None] | None = None, timed_out: bool = False) -> ApprovalRow:
    """Approve (optionally with a manager's own SMS text) or reject a held notice.

    ``by`` must be a manager (:func:`require_manager`), unless ``timed_out``: then the
    config's ``on_approval_timeout`` settles it and the log says so.

    Approving publishes the notice (``publish(alert_row)`` moves its CAP file into the public
    folder) and makes it the zone's published state: its level is in force from the notice's
    time and the notice joins the zone's warning chain; its SMS are released. Rejecting leaves the
    zone's published state as it was, as if the raise never happened, and cancels the SMS;
    the next cycle decides afresh (a flood that still meets the criteria raises again).
    Both are in the audit log with who (and their role) and when.
    """
    at = at or utcnow()
    if not by.strip():
        raise FloodwarnError("say who decides: --by NAME")
    if text is not None and not text.strip():
        raise FloodwarnError("the edited SMS text is empty")
    role = "time-out" if timed_out else require_manager(store, by)
    with store.session() as s:
        a = s.get(ApprovalRow, approval_id)
        if a is None:
            raise FloodwarnError(f"no approval request {approval_id}; see 'floodwarn alerts pending'")
        key = (a.zone, a.scope)
    with store.session.begin() as s:
        if store.dialect == "sqlite":  # take the write lock before reading, as the cycle does
            s.execute(update(ApprovalRow).where(ApprovalRow.id == approval_id).values(state=ApprovalRow.state))
        # the zone's state first, then the request (the cycle locks in the same order): two
        # processes deciding, releasing or cycling the same zone take turns
        zs = s.get(ZoneStateRow, key, with_for_update=True)
        a = s.get(ApprovalRow, approval_id, with_for_update=True, populate_existing=True)
        if a.state != "pending":
            raise FloodwarnError(f"approval request {approval_id} is already {a.state} "
                                 f"({a.decided_by or SYSTEM}, {a.decided_at:%Y-%m-%d %H:%M} UTC"
                                 f"{': ' + a.note if a.note else ''})")
        alert = s.scalar(select(AlertRow).where(AlertRow.identifier == a.alert_identifier))
        proposed = a.proposed or {}
        if approve and zs is not None and "chain" in proposed and (zs.chain or []) != proposed["chain"]:
            # cannot happen through the cycle (any publication closes the request first), but a
            # notice must never go out with references that no longer match what is public
            raise FloodwarnError(f"approval request {approval_id}: zone {a.zone} published other notices "
                                 "since it was held; wait for the next cycle's request")
        a.decided_by, a.decided_at, a.note = by, at, note
        a.state = ("approved" if approve else "timed_out" if timed_out else "rejected")
        values: dict[str, Any] = {"state": "pending" if approve else "cancelled"}
        if approve and text is not None:
            a.edited_text = text
            values.update(body=text, segments=sms_segments(text).segments)
        if not approve:
            values["error"] = f"{a.state} by {by}"
        n = s.execute(update(OutboxRow).where(OutboxRow.alert_identifier == a.alert_identifier,
                                              OutboxRow.state == "held").values(**values)).rowcount
        alert.state = "published" if approve else "rejected"
        if approve:
            if zs is None:
                zs = ZoneStateRow(zone=a.zone, scope=a.scope, level=0, pending_level=0, pending_count=0,
                                  active=False, chain=[])
                s.add(zs)
            # in force from the held notice's own time, on the cycles' clock (a replay's
            # simulated one too), never from the wall-clock moment of the decision
            zs.level, zs.since, zs.active, zs.issued = alert.level, alert.sent, True, alert.sent
            zs.pending_level = proposed.get("pending_level", 0)
            zs.pending_count = proposed.get("pending_count", 0)
            zs.chain = [*(zs.chain or []), proposed.get("entry") or
                        [None, alert.identifier, alert.sent.isoformat()]]
        store.audit(s, {"approved": "approved", "rejected": "rejected", "timed_out": "rejected"}[a.state],
                    {"alert": a.alert_identifier, "approval": a.id, "by": by, "role": role, "messages": n,
                     "edited": text is not None, "note": note, "level": alert.level_name},
                    zone=a.zone, time=at)
        if approve and publish is not None:
            publish(alert)
        return a


def release_due(store: Store, now: datetime, publish: Callable[[AlertRow], None] | None = None) -> int:
    """Settle held notices whose approval time ran out, as their level's
    ``on_approval_timeout`` said when they were held ("publish" or "reject"); returns how
    many were settled."""
    with store.session() as s:
        due = s.execute(select(ApprovalRow.id, ApprovalRow.proposed)
                        .where(ApprovalRow.state == "pending", ApprovalRow.release_at.is_not(None),
                               ApprovalRow.release_at <= now)).all()
    done = 0
    for aid, proposed in due:
        action = (proposed or {}).get("on_timeout", "publish")
        try:
            decide_approval(store, aid, approve=action == "publish", by="time-out", at=now, timed_out=True,
                            note=f"no manager decided before the approval time ran out: {action}",
                            publish=publish)
            done += 1
        except FloodwarnError:  # decided meanwhile by someone else
            continue
    return done


# --------------------------------------------------------------------------- dispatcher
ASK_FAILURES_PER_PASS = 3
"""A recovery pass stops asking the provider after this many failed asks in a row."""

IN_DOUBT_ACTIONS = ("resend", "hold")
"""What recovery does with messages whose fate the provider could not tell within
``in_doubt_give_up``: ``resend`` (queue them again: for a flood warning a possible
duplicate is better than a lost one) or ``hold`` (state ``in_doubt``, for an operator)."""


@dataclass
class DispatchStats:
    sent: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    recovered: int = 0
    requeued: int = 0
    released: int = 0
    segments: int = 0
    #: messages recovery gave up asking the provider about (then resent or held)
    in_doubt: int = 0
    #: claimed rows found taken over by another dispatcher (skipped, or sent and then found so)
    lost: int = 0
    slept_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        """Whether the pass did anything (a quiet pass means nothing is due)."""
        return bool(self.sent + self.failed + self.retried + self.cancelled + self.recovered + self.requeued
                    + self.in_doubt + self.lost)

    def add(self, other: "DispatchStats") -> None:
        for k in ("sent", "failed", "retried", "cancelled", "recovered", "requeued", "released", "segments",
                  "in_doubt", "lost"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.slept_s += other.slept_s
        self.errors.extend(other.errors)


@dataclass
class _Outcome:
    """What became of one claimed row, to record: ``values`` for its outbox row, the audit
    event, the stats counter to bump once recorded, and a provider error code that marks
    the subscriber."""

    row: OutboxRow
    now: datetime
    counter: str | None
    values: dict[str, Any]
    audit: tuple[str, dict[str, Any]]
    mark: int | None = None
    to_masked: str = ""


class _ClaimKeeper:
    """Keeps a batch's claims fresh while it is sent: a thread pushes ``claimed_at`` of the
    rows not yet taken up to now every ``every`` seconds (a third of the lease), so another
    dispatcher's recovery never takes a batch that is slow (rate limit, slow provider) for
    one whose dispatcher stopped. A row leaves the keeper when its send starts
    (:meth:`take`): its ``claimed_at`` then stays the time just before the send, the time
    recovery asks the provider about if this dispatcher dies before recording it."""

    def __init__(self, dispatcher: "Dispatcher", ids: Iterable[int], every: float) -> None:
        self._d = dispatcher
        self._ids = set(ids)
        self._every = max(every, 0.01)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"claims-{dispatcher.id}", daemon=True)

    def __enter__(self) -> "_ClaimKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def take(self, row_id: int, before: Callable[[Any], None] | None = None) -> bool:
        """Stop renewing ``row_id`` and confirm it is still this dispatcher's (its claim
        refreshed to now); False if another dispatcher has it now. ``before(session)``
        runs first in the same transaction (recording the previous send's outcome)."""
        with self._lock, self._d.store.session.begin() as s:  # a renewal in flight finishes first
            self._ids.discard(row_id)
            if before is not None:
                before(s)
            return self._d.renew([row_id], session=s) == 1

    def drop(self, row_id: int) -> None:
        with self._lock:
            self._ids.discard(row_id)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            with self._lock:
                if not self._ids:
                    continue
                try:
                    self._d.renew(self._ids)
                except Exception:  # the database hiccuped: try again next time, the lease has room
                    log.exception("dispatcher %s could not renew its claims on %d message(s)",
                                  self._d.id, len(self._ids))


class Dispatcher:
    """Sends the outbox through a channel; safe to run several at once and to kill.

    Parameters
    ----------
    store : Store
    channel : Channel
    rate : float, optional
        Segments per second for all the dispatchers on the database together (the
        provider meters per account); None: no limit.
    burst : float, optional
        Segments that may go at once after a quiet spell (default: one second's worth).
    retry : RetryPolicy
    lease : timedelta
        How long a claim is honoured without renewal. A working dispatcher renews its
        batch's claims every third of it, so only the claims of a dispatcher that stopped
        run out; those rows are in doubt and get recovered. One send (one provider request,
        the SDK's time-out included) must take less than the lease.
    batch : int
        Rows claimed per transaction.
    clock : callable
        Aware UTC "now" (replays and tests inject one).
    in_doubt_give_up : timedelta
        How long recovery keeps asking (with backoff) a provider that cannot say whether a
        message went out before it applies ``in_doubt_action``.
    in_doubt_action : {"resend", "hold"}
        See :data:`IN_DOUBT_ACTIONS`.
    on_problem : callable, optional
        ``on_problem(problem, at, detail)`` tells the operators (log, audit, SMS; see
        :func:`warning.operators.tell_operators`) when recovery gives up, once per episode
        (until the provider answers again); without it the dispatcher logs and audits
        ``delivery_in_doubt`` itself.
    rate_name : str, optional
        Name of the shared rate limit (default ``sms:<channel name>``): one per account.
    """

    def __init__(self, store: Store, channel: Channel, *, rate: float | None = None, burst: float | None = None,
                 retry: RetryPolicy = RetryPolicy(), lease: timedelta = timedelta(minutes=2),
                 batch: int = 50, clock: Callable[[], datetime] = utcnow,
                 publish: Callable[[AlertRow], None] | None = None,
                 in_doubt_give_up: timedelta = timedelta(minutes=15), in_doubt_action: str = "resend",
                 on_problem: Callable[[str, datetime, dict[str, Any]], None] | None = None,
                 rate_name: str | None = None) -> None:
        if in_doubt_action not in IN_DOUBT_ACTIONS:
            raise ValueError(f"in_doubt_action must be one of {', '.join(IN_DOUBT_ACTIONS)}, got {in_doubt_action!r}")
        if in_doubt_give_up <= timedelta(0):
            raise ValueError(f"in_doubt_give_up must be positive, got {in_doubt_give_up}")
        self.store = store
        self.channel = channel
        self.retry = retry
        self.lease = lease
        self.batch = batch
        self.clock = clock
        self.publish = publish
        self.in_doubt_give_up = in_doubt_give_up
        self.in_doubt_action = in_doubt_action
        self.on_problem = on_problem
        self.limiter = SharedRateLimiter(store, rate_name or f"sms:{getattr(channel, 'name', 'sms')}", rate, burst)
        self.id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._vault: PhoneVault | None = None
        self._told = False  # operators told of the current in-doubt episode

    @property
    def vault(self) -> PhoneVault:
        if self._vault is None:
            self._vault = PhoneVault.from_env()
        return self._vault

    # -- claiming
    def _mine(self) -> list[Any]:
        """Conditions of a row this dispatcher still holds."""
        return [OutboxRow.state == "claimed", OutboxRow.claimed_by == self.id]

    def _claim(self, now: datetime) -> list[OutboxRow]:
        due = select(OutboxRow.id).where(
            OutboxRow.state == "pending",
            or_(OutboxRow.next_attempt_at.is_(None), OutboxRow.next_attempt_at <= now),
        ).order_by(OutboxRow.id).limit(self.batch)
        claim = (update(OutboxRow).values(state="claimed", claimed_at=now, claimed_by=self.id,
                                          attempts=OutboxRow.attempts + 1)
                 .execution_options(synchronize_session=False))
        with self.store.session.begin() as s:
            if self.store.dialect == "postgresql":
                # lock the batch, skipping rows another dispatcher has locked; the locks
                # hold until this transaction commits the claim
                ids = list(s.scalars(due.with_for_update(skip_locked=True)))
                if ids:
                    s.execute(claim.where(OutboxRow.id.in_(ids)))
            else:  # SQLite: one writer at a time makes the single statement atomic
                ids = list(s.scalars(claim.where(OutboxRow.id.in_(due.scalar_subquery()),
                                                 OutboxRow.state == "pending").returning(OutboxRow.id)))
        if not ids:
            return []
        with self.store.session() as s:  # this claim's rows only, never an older one left claimed
            return list(s.scalars(select(OutboxRow).where(OutboxRow.id.in_(ids)).order_by(OutboxRow.id)))

    def renew(self, ids: Iterable[int], session=None) -> int:
        """Push this dispatcher's claims on ``ids`` to now (in ``session``, or a transaction
        of its own); returns how many it still holds."""
        if session is None:
            with self.store.session.begin() as s:
                return self.renew(ids, session=s)
        return session.execute(update(OutboxRow).where(OutboxRow.id.in_(list(ids)), *self._mine())
                               .values(claimed_at=self.clock())
                               .execution_options(synchronize_session=False)).rowcount

    def _message(self, row: OutboxRow, sub: Subscriber) -> OutgoingMessage:
        return OutgoingMessage(to=self.vault.decrypt(sub.phone_enc), body=row.body, key=row.key)

    # -- recovery
    def recover(self, now: datetime | None = None) -> DispatchStats:
        """Settle rows whose claim ran out (their dispatcher stopped mid-batch): ask the
        channel whether each went out, and record it as sent if so, else put it back in
        the queue. Each is settled only while its claim is still stale (``claimed_by`` and
        ``claimed_at`` as found), so a row its dispatcher is working on, or that another
        recovery settled, is left alone.

        When the provider cannot be asked (``find_sent`` raises), the row stays claimed and
        is asked about again with backoff (``in_doubt_since``, ``next_attempt_at``); after
        ``in_doubt_give_up`` it is resent or held (``in_doubt_action``) and the operators
        are told, once per episode. After :data:`ASK_FAILURES_PER_PASS` failed asks in a row
        the pass asks no more (a provider that times out would otherwise hold it for
        minutes per message): the rest wait for the next ask like the failed ones.
        """
        now = now or self.clock()
        st = DispatchStats()
        cutoff = now - self.lease
        with self.store.session() as s:
            stale = s.execute(select(OutboxRow, Subscriber)
                              .join(Subscriber, Subscriber.id == OutboxRow.subscriber_id, isouter=True)
                              .where(OutboxRow.state == "claimed", OutboxRow.claimed_at <= cutoff,
                                     or_(OutboxRow.next_attempt_at.is_(None), OutboxRow.next_attempt_at <= now))
                              .order_by(OutboxRow.id)).all()
        doubtful: list[tuple[OutboxRow, str]] = []
        failures, error = 0, ""
        for row, sub in stale:
            still = [OutboxRow.state == "claimed", OutboxRow.claimed_by == row.claimed_by,
                     OutboxRow.claimed_at <= cutoff]
            if sub is None:
                if self._finish(row, now, where=still, state="cancelled", error="subscriber deleted",
                                in_doubt_since=None, audit=("send_cancelled", {"why": "subscriber deleted"})):
                    st.cancelled += 1
                continue
            if failures >= ASK_FAILURES_PER_PASS:
                doubtful.append((row, error))
                continue
            msg = self._message(row, sub)
            try:
                sid = self.channel.find_sent(msg, row.claimed_at)
            except DeliveryError as exc:
                failures, error = failures + 1, str(exc)
                st.errors.append(error)
                doubtful.append((row, error))
                continue
            failures = 0
            if sid:
                if self._finish(row, now, where=still, state="sent", provider_id=sid, sent_at=now,
                                next_attempt_at=None, in_doubt_since=None,
                                audit=("sent_recovered", {"claimed_by": row.claimed_by,
                                                          "in_doubt_since": _iso(row.in_doubt_since)})):
                    st.recovered += 1
            elif self._finish(row, now, where=still, state="pending", claimed_by=None, next_attempt_at=None,
                              in_doubt_since=None,
                              audit=("requeued", {"claimed_by": row.claimed_by,
                                                  "why": "its dispatcher stopped; the provider has not got it"})):
                st.requeued += 1
        if stale and not doubtful:
            self._told = False  # the provider answers again: a later failure is a new episode
        if doubtful:
            self._in_doubt(doubtful, now, cutoff, st)
        if st.recovered or st.requeued:
            log.info("recovered %d message(s) a stopped dispatcher had claimed: %d had gone out, "
                     "%d requeued", st.recovered + st.requeued, st.recovered, st.requeued)
        return st

    def _in_doubt(self, doubtful: list[tuple[OutboxRow, str]], now: datetime, cutoff: datetime,
                  st: DispatchStats) -> None:
        """Rows the provider could not be asked about: ask again later (backoff from a
        fraction of the give-up time, doubling, capped), or give up on them."""
        give_up = self.in_doubt_give_up
        base, cap = min(timedelta(seconds=5), give_up / 20), min(timedelta(minutes=2), give_up / 4)
        error = doubtful[0][1]
        first = min(row.in_doubt_since or now for row, _ in doubtful)
        log.warning("could not ask %s whether %d message(s) a stopped dispatcher had claimed went out: %s; "
                    "asking again with backoff, in doubt since %s, giving up at %s (%s)",
                    self.channel.name, len(doubtful), error, f"{first:%H:%M:%S}Z",
                    f"{first + give_up:%H:%M:%S}Z", self.in_doubt_action)
        with self.store.session.begin() as s:
            self.store.audit(s, "delivery_check_failed",
                             {"messages": len(doubtful), "error": error, "dispatcher": self.id,
                              "in_doubt_since": first.isoformat(), "give_up_s": give_up.total_seconds(),
                              "action": self.in_doubt_action}, time=now)
        given_up: list[OutboxRow] = []
        for row, err in doubtful:
            still = [OutboxRow.state == "claimed", OutboxRow.claimed_by == row.claimed_by,
                     OutboxRow.claimed_at <= cutoff]
            since = row.in_doubt_since or now
            if now - since < give_up:
                wait = min(max(now - since, base), cap, since + give_up - now)
                self._finish(row, now, where=still, in_doubt_since=since, next_attempt_at=now + wait)
                continue
            why = (f"in doubt since {since:%Y-%m-%d %H:%M:%S}Z: a dispatcher stopped while sending it and "
                   f"the provider could not say whether it went out ({err})")
            detail = {"claimed_by": row.claimed_by, "in_doubt_since": since.isoformat(), "error": err}
            if self.in_doubt_action == "resend":
                done = self._finish(row, now, where=still, state="pending", claimed_by=None, next_attempt_at=None,
                                    in_doubt_since=None, error=f"{why}; sent again, a duplicate is possible",
                                    audit=("in_doubt_resent", detail))
            else:
                done = self._finish(row, now, where=still, state="in_doubt", next_attempt_at=None,
                                    error=f"{why}; held for an operator: 'floodwarn outbox resend' or "
                                          "'floodwarn outbox mark-sent'", audit=("in_doubt_held", detail))
            if done:
                given_up.append(row)
        if not given_up:
            return
        st.in_doubt += len(given_up)
        by_alert = Counter(r.alert_identifier for r in given_up)
        # short enough for an SMS (the first 300 characters go out): the error is in the detail
        alerts = [f"{a}: {n}" for a, n in sorted(by_alert.items())]
        more = f" and {len(alerts) - 3} more" if len(alerts) > 3 else ""
        which = f"{len(given_up)} SMS ({', '.join(alerts[:3])}{more})"
        why = (f"a dispatcher stopped while sending them and {self.channel.name} could not say for "
               f"{_duration(give_up)} whether they had gone out")
        problem = (f"{which} were sent again, some residents may get them twice: {why}."
                   if self.in_doubt_action == "resend" else
                   f"{which} are held: {why}. See 'floodwarn outbox in-doubt', then 'floodwarn outbox resend' "
                   "or 'mark-sent'.")
        detail = {"messages": len(given_up), "alerts": dict(by_alert), "action": self.in_doubt_action,
                  "error": error, "dispatcher": self.id, "give_up_s": give_up.total_seconds()}
        if self._told:  # the operators know of this episode: the log and the rows' audit say the rest
            log.error("delivery in doubt: %s Last error: %s", problem, error)
            return
        self._told = True
        if self.on_problem is not None:
            try:
                self.on_problem(problem, now, detail)
                return
            except Exception:
                log.exception("could not tell the operators that messages are in doubt")
        log.error("delivery in doubt: %s Last error: %s", problem, error)
        with self.store.session.begin() as s:
            self.store.audit(s, "delivery_in_doubt", {"problem": problem, **detail}, time=now)

    # -- sending
    def _finish(self, row: OutboxRow, now: datetime, *, where: Iterable[Any] = (),
                audit: tuple[str, dict] | None = None, mark: int | None = None, session=None,
                **values: Any) -> bool:
        """Record one row's outcome (in ``session``, or in a transaction of its own) if the
        row still meets ``where`` (e.g. still claimed by this dispatcher); returns whether
        the outcome was recorded."""
        if session is None:
            with self.store.session.begin() as s:
                return self._finish(row, now, where=where, audit=audit, mark=mark, session=s, **values)
        s = session
        status = values.pop("_status", "accepted")
        if not s.execute(update(OutboxRow).where(OutboxRow.id == row.id, *where).values(**values)
                         .execution_options(synchronize_session=False)).rowcount:
            return False
        if values.get("state") == "sent" and values.get("provider_id"):
            if s.get(DeliveryRow, values["provider_id"]) is None:  # a callback may be first
                s.add(DeliveryRow(provider_id=values["provider_id"], outbox_id=row.id,
                                  status=status, updated=now))
        if audit:
            name, extra = audit
            self.store.audit(s, name, {"outbox_id": row.id, "alert": row.alert_identifier,
                                       "subscriber_id": row.subscriber_id, **extra},
                             zone=row.zone, time=now)
        if mark is not None and row.subscriber_id is not None:
            self._mark_subscriber(s, row.subscriber_id, mark, now)
        return True

    def _mark_subscriber(self, s, sub_id: int, code: int, now: datetime) -> None:
        effect = subscriber_effect(code)
        if effect is None or effect[1] == "operator":
            return
        meaning, kind = effect
        sub = s.get(Subscriber, sub_id)
        if sub is None:
            return
        if kind == "opted_out":
            sub.opted_out_at = sub.opted_out_at or now
            event = "opt_out"
        else:
            sub.unreachable = f"{code} {meaning}"
            event = "unreachable"
        self.store.audit(s, event, {"subscriber_id": sub_id, "source": f"provider error {code}"}, time=now)
        # nothing else queued for this number can go out either
        s.execute(update(OutboxRow).where(OutboxRow.subscriber_id == sub_id, OutboxRow.state.in_(UNSENT_STATES))
                  .values(state="cancelled", error=f"provider error {code}: {meaning}"))

    def _claim_lost(self, s, row: OutboxRow, st: DispatchStats, *, to_masked: str = "",
                    provider_id: str | None = None, status: str | None = None) -> None:
        """Another dispatcher has ``row`` now (this one's claim ran out and was recovered).
        Before a send: skip it. After a send (``provider_id``): the message went out, so
        record it as sent if nobody has sent it yet (the other dispatcher then skips it),
        and say so loudly: it may have gone out twice. In the caller's session ``s``."""
        st.lost += 1
        now = self.clock()
        state, owner = s.execute(select(OutboxRow.state, OutboxRow.claimed_by).where(OutboxRow.id == row.id)).one()
        detail: dict[str, Any] = {"stage": "before_send" if provider_id is None else "after_send",
                                  "state_now": state, "claimed_by_now": owner, "dispatcher": self.id}
        if provider_id is None:
            log.warning("message %s: another dispatcher (%s) took it over before it was sent; skipped",
                        row.key, owner)
        else:
            recorded = self._finish(row, now, session=s, where=[OutboxRow.state.in_(("pending", "claimed"))],
                                    state="sent", provider_id=provider_id, sent_at=now, error=None,
                                    next_attempt_at=None, in_doubt_since=None, _status=status or "accepted")
            detail.update(provider_id=provider_id, recorded_as_sent=recorded)
            log.error("message %s to %s went out (provider id %s) after its claim had run out and the row had "
                      "been taken over (now %s by %s): it may have been sent twice; %s", row.key, to_masked,
                      provider_id, state, owner, "recorded as sent" if recorded else "its outcome was already recorded")
        self.store.audit(s, "claim_lost", {"outbox_id": row.id, "alert": row.alert_identifier,
                                           "subscriber_id": row.subscriber_id, **detail},
                         zone=row.zone, time=now)

    def _record(self, s, out: _Outcome, st: DispatchStats) -> None:
        """Record an outcome in session ``s`` if the row is still this dispatcher's claim;
        else the claim was lost (:meth:`_claim_lost`)."""
        if self._finish(out.row, out.now, session=s, where=self._mine(), audit=out.audit, mark=out.mark,
                        **out.values):
            if out.counter:
                setattr(st, out.counter, getattr(st, out.counter) + 1)
        else:
            self._claim_lost(s, out.row, st, to_masked=out.to_masked, provider_id=out.values.get("provider_id"),
                             status=out.values.get("_status"))

    def _send_one(self, row: OutboxRow, sub: Subscriber | None, st: DispatchStats, keeper: _ClaimKeeper,
                  last: _Outcome | None) -> _Outcome | None:
        """Send one claimed row within the shared rate limit, only if it is still this
        dispatcher's claim (checked, and refreshed, just before the send). Returns its
        outcome, which the caller records right away: in the transaction of the next row's
        claim check, or on its own (``last``, the previous row's outcome, is recorded here
        first). A dispatcher killed between a send and its record leaves the row claimed,
        and recovery asks the provider whether it went out."""
        if sub is None or sub.opted_out_at is not None or sub.unreachable is not None:
            keeper.drop(row.id)
            why = "subscriber deleted" if sub is None else (
                "subscriber opted out" if sub.opted_out_at is not None else f"unreachable: {sub.unreachable}")
            with self.store.session.begin() as s:
                if last is not None:
                    self._record(s, last, st)
                self._record(s, _Outcome(row, self.clock(), "cancelled", {"state": "cancelled", "error": why},
                                         ("send_cancelled", {"why": why})), st)
            return None
        msg = self._message(row, sub)
        wait = self.limiter.reserve(row.segments)
        if wait > 0:  # record the last outcome first, not after the wait
            if last is not None:
                with self.store.session.begin() as s:
                    self._record(s, last, st)
                last = None
            time.sleep(wait)  # the keeper renews the claims meanwhile
            st.slept_s += wait
        if not keeper.take(row.id, None if last is None else (lambda s: self._record(s, last, st))):
            with self.store.session.begin() as s:
                self._claim_lost(s, row, st)
            return None
        try:
            res = self.channel.send(msg)
        except DeliveryError as exc:
            now = self.clock()
            log.warning("SMS %s to %s: %s", row.key, mask_phone(msg.to), exc)
            delay = None if exc.permanent else self.retry.delay(row.attempts)
            detail = {"code": exc.code, "permanent": exc.permanent, "attempt": row.attempts}
            if delay is None:
                return _Outcome(row, now, "failed", {"state": "failed", "error": str(exc)}, ("send_failed", detail),
                                mark=exc.code if exc.permanent else None)
            return _Outcome(row, now, "retried", {"state": "pending", "claimed_by": None, "error": str(exc),
                                                  "next_attempt_at": now + delay},
                            ("send_retry", {**detail, "retry_in_s": delay.total_seconds()}))
        now = self.clock()
        st.sent += 1
        st.segments += row.segments
        return _Outcome(row, now, None, {"state": "sent", "provider_id": res.provider_id, "sent_at": now,
                                         "error": None, "_status": res.status or "accepted"},
                        ("sent", {"provider_id": res.provider_id, "segments": row.segments}),
                        to_masked=mask_phone(msg.to))

    def run_once(self) -> DispatchStats:
        """Release due approvals, recover stale claims, then claim one batch and send it,
        renewing the batch's claims while it goes and recording each outcome right after
        its send."""
        now = self.clock()
        st = DispatchStats()
        st.released = release_due(self.store, now, self.publish)
        st.add(self.recover(now))
        rows = self._claim(now)
        if rows:
            with self.store.session() as s:
                subs = {sub.id: sub for sub in s.scalars(
                    select(Subscriber).where(Subscriber.id.in_({r.subscriber_id for r in rows if r.subscriber_id})))}
            last = None
            with _ClaimKeeper(self, [r.id for r in rows], self.lease.total_seconds() / 3) as keeper:
                for row in rows:
                    last = self._send_one(row, subs.get(row.subscriber_id), st, keeper, last)
                if last is not None:
                    with self.store.session.begin() as s:
                        self._record(s, last, st)
        return st

    def drain(self) -> DispatchStats:
        """Send what is due now, batch after batch; retries due later wait for a later call."""
        total = DispatchStats()
        while True:
            st = self.run_once()
            total.add(st)
            if not st.busy:
                return total

    def run(self, *, until_empty: bool = True, poll_s: float = 2.0,
            stop: Callable[[], bool] = lambda: False) -> DispatchStats:
        """Send until nothing is due or will be (``until_empty``), or until ``stop()`` is true.

        Rows another dispatcher holds, retries due later and rows in doubt keep it going;
        rows in doubt only until ``in_doubt_give_up`` (then they are resent or held), so it
        always ends."""
        total = DispatchStats()
        while not stop():
            st = self.run_once()
            total.add(st)
            if not st.busy:
                if until_empty and not self._waiting():
                    break
                time.sleep(poll_s)
        return total

    def _waiting(self) -> bool:
        """Rows that will become due later (retries, claims, rows in doubt) keep the loop going."""
        with self.store.session() as s:
            return s.scalar(select(OutboxRow.id).where(OutboxRow.state.in_(("pending", "claimed"))).limit(1)) \
                is not None


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _duration(d: timedelta) -> str:
    s = d.total_seconds()
    return f"{s / 60:g} min" if s >= 120 else f"{s:g} s"


def outbox_counts(store: Store, alert_identifiers: Iterable[str] | None = None) -> dict[str, int]:
    """Rows per state (optionally for some alerts only)."""
    with store.session() as s:
        q = select(OutboxRow.state)
        if alert_identifiers is not None:
            q = q.where(OutboxRow.alert_identifier.in_(list(alert_identifiers)))
        out: dict[str, int] = {}
        for (state,) in s.execute(q):
            out[state] = out.get(state, 0) + 1
        return out


# --------------------------------------------------------------------------- messages in doubt
@dataclass(frozen=True)
class InDoubt:
    """A message whose fate is unknown: ``held`` (state ``in_doubt``, waiting for an
    operator) or ``asking`` (still claimed; recovery keeps asking the provider)."""

    id: int
    alert: str
    zone: str
    subscriber_id: int | None
    to_masked: str
    status: str
    since: datetime | None
    error: str | None


def messages_in_doubt(store: Store, alert: str | None = None, vault: PhoneVault | None = None) -> list[InDoubt]:
    """Messages in doubt (of ``alert``, or all), numbers masked, by alert then id."""
    q = (select(OutboxRow, Subscriber.phone_enc)
         .join(Subscriber, Subscriber.id == OutboxRow.subscriber_id, isouter=True)
         .where(or_(OutboxRow.state == "in_doubt",
                    and_(OutboxRow.state == "claimed", OutboxRow.in_doubt_since.is_not(None))))
         .order_by(OutboxRow.alert_identifier, OutboxRow.id))
    if alert is not None:
        q = q.where(OutboxRow.alert_identifier == alert)
    with store.session() as s:
        rows = s.execute(q).all()
    if rows and vault is None:
        vault = PhoneVault.from_env()
    return [InDoubt(r.id, r.alert_identifier, r.zone, r.subscriber_id,
                    mask_phone(vault.decrypt(enc)) if enc else "(deleted)",
                    "held" if r.state == "in_doubt" else "asking", r.in_doubt_since, r.error)
            for r, enc in rows]


def settle_in_doubt(store: Store, *, action: str, by: str, alert: str | None = None,
                    at: datetime | None = None) -> dict[str, int]:
    """An operator's decision on held messages (state ``in_doubt``) of ``alert`` (None:
    every alert): ``resend`` queues them again (a resident may get it twice), ``sent``
    records them as sent (e.g. the provider's console shows they went out). Audited per
    alert with who decided. Returns messages settled per alert."""
    at = at or utcnow()
    if not by.strip():
        raise FloodwarnError("say who decides: --by NAME")
    if action == "resend":
        values: dict[str, Any] = {"state": "pending", "claimed_by": None, "next_attempt_at": None,
                                  "in_doubt_since": None,
                                  "error": f"was in doubt; sent again on {by}'s decision, a duplicate is possible"}
        event = "in_doubt_resend"
    elif action == "sent":
        values = {"state": "sent", "sent_at": at, "next_attempt_at": None, "in_doubt_since": None,
                  "error": f"was in doubt; marked sent by {by} (not confirmed by the provider)"}
        event = "in_doubt_marked_sent"
    else:
        raise ValueError(f"action must be 'resend' or 'sent', got {action!r}")
    held = select(OutboxRow.alert_identifier, OutboxRow.zone).where(OutboxRow.state == "in_doubt").distinct()
    if alert is not None:
        held = held.where(OutboxRow.alert_identifier == alert)
    out: dict[str, int] = {}
    with store.session.begin() as s:
        for ident, zone in s.execute(held).all():
            n = s.execute(update(OutboxRow).where(OutboxRow.alert_identifier == ident, OutboxRow.zone == zone,
                                                  OutboxRow.state == "in_doubt").values(**values)
                          .execution_options(synchronize_session=False)).rowcount
            if n:
                out[ident] = out.get(ident, 0) + n
                store.audit(s, event, {"alert": ident, "messages": n, "by": by}, zone=zone, time=at)
    if alert is not None and not out:
        raise FloodwarnError(f"no message of alert {alert} is held in doubt; see 'floodwarn outbox in-doubt'")
    return out
