"""The SMS outbox: queueing a fan-out, the approval queue, and the crash-safe dispatcher.

Rows are written in the same transaction as the decision that causes them (one row per
recipient per alert version, unique key ``<alert>:<subscriber>:sms``), so a crash either
keeps both or neither. The dispatcher:

1. releases held alerts whose approval timed out (when the level allows it);
2. recovers rows another dispatcher claimed and never finished (its lease ran out): it
   asks the channel whether the message went out (``Channel.find_sent``) and records it
   as sent if so, else puts it back in the queue, so a killed dispatcher neither loses a
   message nor sends it twice;
3. claims a batch of due rows atomically, so two dispatchers (threads or processes)
   never get the same row: on SQLite one ``UPDATE ... WHERE state = 'pending'`` (the
   database lets one writer in at a time); on PostgreSQL ``SELECT ... FOR UPDATE SKIP
   LOCKED`` then ``UPDATE`` in one transaction (each dispatcher takes rows no other holds,
   without waiting on them). It sends them within the rate limit (segments per second),
   recording the provider's id; temporary errors are retried with backoff, permanent
   ones stop and mark the subscriber (opted out or unreachable).

Recovery settles each in-doubt row with a conditional update (``WHERE state = 'claimed'
AND claimed_by = <the dead dispatcher>``), so when two dispatchers recover the same row
only one of them records or requeues it.

Every send, failure, approval and release goes to the audit log (no phone numbers).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, insert, or_, select, update

from alerts.channels import Channel, OutgoingMessage, mask_phone
from alerts.delivery import RateLimiter, RetryPolicy, subscriber_effect
from alerts.errors import DeliveryError
from alerts.messages import sms_segments

from .errors import FloodwarnError
from .storage import AlertRow, ApprovalRow, DeliveryRow, OutboxRow, Store, Subscriber, ZoneStateRow, utcnow
from .subscribers import ALL_ZONES, PhoneVault

log = logging.getLogger(__name__)

OPEN_STATES = ("held", "pending")


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
                                  OutboxRow.state.in_(OPEN_STATES),
                                  OutboxRow.alert_identifier != alert_identifier)
                           .values(state="superseded", error=f"superseded by {alert_identifier}")
                           ).rowcount
    s.execute(update(ApprovalRow).where(ApprovalRow.zone == zone, ApprovalRow.scope == scope,
                                        ApprovalRow.state == "pending",
                                        ApprovalRow.alert_identifier != alert_identifier)
              .values(state="superseded", decided_at=at, decided_by="system",
                      note=f"superseded by {alert_identifier}"))
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
                               a.release_at, n, headline))
        return out


def decide_approval(store: Store, approval_id: int, *, approve: bool, by: str, at: datetime | None = None,
                    text: str | None = None, note: str | None = None,
                    publish: Callable[[AlertRow], None] | None = None) -> ApprovalRow:
    """Approve (optionally with a manager's own SMS text) or reject a held alert.

    Approving publishes the notice (``publish(alert_row)``, e.g. moving the CAP file into
    the public folder) and releases its messages; rejecting cancels them and the notice
    is never published. Both are recorded with who and when.
    """
    at = at or utcnow()
    if not by.strip():
        raise FloodwarnError("say who decides: --by NAME")
    if text is not None and not text.strip():
        raise FloodwarnError("the edited SMS text is empty")
    with store.session.begin() as s:
        # FOR UPDATE (PostgreSQL; SQLite has one writer anyway): two processes releasing or
        # deciding the same request at once take turns, and the second sees it decided
        a = s.get(ApprovalRow, approval_id, with_for_update=True)
        if a is None:
            raise FloodwarnError(f"no approval request {approval_id}; see 'floodwarn alerts pending'")
        if a.state != "pending":
            raise FloodwarnError(f"approval request {approval_id} is already {a.state} "
                                 f"({a.decided_by or 'system'}, {a.decided_at:%Y-%m-%d %H:%M} UTC)")
        a.state = "approved" if approve else "rejected"
        a.decided_by, a.decided_at, a.note = by, at, note
        alert = s.scalar(select(AlertRow).where(AlertRow.identifier == a.alert_identifier))
        values: dict[str, Any] = {"state": "pending" if approve else "cancelled"}
        if approve and text is not None:
            a.edited_text = text
            values.update(body=text, segments=sms_segments(text).segments)
        if not approve:
            values["error"] = f"rejected by {by}"
        n = s.execute(update(OutboxRow).where(OutboxRow.alert_identifier == a.alert_identifier,
                                              OutboxRow.state == "held").values(**values)).rowcount
        alert.state = "published" if approve else "rejected"
        if not approve:  # later notices of the zone must not reference one never published
            zs = s.get(ZoneStateRow, (a.zone, a.scope))
            if zs is not None and zs.chain:
                zs.chain = [c for c in zs.chain if c[1] != a.alert_identifier]
        store.audit(s, "approved" if approve else "rejected",
                    {"alert": a.alert_identifier, "by": by, "messages": n, "edited": text is not None,
                     "note": note}, zone=a.zone, time=at)
        if approve and publish is not None:
            publish(alert)
        return a


def release_due(store: Store, now: datetime, publish: Callable[[AlertRow], None] | None = None) -> int:
    """Auto-release held alerts whose approval time ran out; returns how many."""
    with store.session() as s:
        due = s.scalars(select(ApprovalRow.id).where(ApprovalRow.state == "pending",
                                                     ApprovalRow.release_at.is_not(None),
                                                     ApprovalRow.release_at <= now)).all()
    for aid in due:
        try:
            decide_approval(store, aid, approve=True, by="auto-release", at=now,
                            note="no manager decided before the approval time ran out", publish=publish)
        except FloodwarnError:  # decided meanwhile by someone else
            continue
    return len(due)


# --------------------------------------------------------------------------- dispatcher
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
    slept_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        """Whether the pass did anything (a quiet pass means nothing is due)."""
        return bool(self.sent + self.failed + self.retried + self.cancelled + self.recovered + self.requeued)

    def add(self, other: "DispatchStats") -> None:
        for k in ("sent", "failed", "retried", "cancelled", "recovered", "requeued", "released", "segments"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.slept_s += other.slept_s
        self.errors.extend(other.errors)


class Dispatcher:
    """Sends the outbox through a channel; safe to run several at once and to kill.

    Parameters
    ----------
    store : Store
    channel : Channel
    rate : float, optional
        Segments per second (None: no limit).
    retry : RetryPolicy
    lease : timedelta
        How long a claim is honoured; a row claimed longer ago by a dispatcher that did
        not finish it is in doubt and gets recovered.
    batch : int
        Rows claimed per transaction.
    clock : callable
        Aware UTC "now" (replays and tests inject one).
    """

    def __init__(self, store: Store, channel: Channel, *, rate: float | None = None,
                 retry: RetryPolicy = RetryPolicy(), lease: timedelta = timedelta(minutes=2),
                 batch: int = 50, clock: Callable[[], datetime] = utcnow,
                 publish: Callable[[AlertRow], None] | None = None) -> None:
        self.store = store
        self.channel = channel
        self.retry = retry
        self.lease = lease
        self.batch = batch
        self.clock = clock
        self.publish = publish
        self.limiter = RateLimiter(rate)
        self.id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._vault: PhoneVault | None = None

    @property
    def vault(self) -> PhoneVault:
        if self._vault is None:
            self._vault = PhoneVault.from_env()
        return self._vault

    # -- claiming
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
                ids = s.scalars(due.with_for_update(skip_locked=True)).all()
                if ids:
                    s.execute(claim.where(OutboxRow.id.in_(ids)))
            else:  # SQLite: one writer at a time makes the single statement atomic
                s.execute(claim.where(OutboxRow.id.in_(due.scalar_subquery()), OutboxRow.state == "pending"))
        with self.store.session() as s:
            return list(s.scalars(select(OutboxRow).where(OutboxRow.state == "claimed",
                                                          OutboxRow.claimed_by == self.id)
                                  .order_by(OutboxRow.id)))

    def _message(self, row: OutboxRow, sub: Subscriber) -> OutgoingMessage:
        return OutgoingMessage(to=self.vault.decrypt(sub.phone_enc), body=row.body, key=row.key)

    # -- recovery
    def recover(self, now: datetime | None = None) -> DispatchStats:
        """Settle rows claimed by a dispatcher whose lease ran out (it died mid-send)."""
        now = now or self.clock()
        st = DispatchStats()
        with self.store.session() as s:
            stale = s.execute(select(OutboxRow, Subscriber)
                              .join(Subscriber, Subscriber.id == OutboxRow.subscriber_id, isouter=True)
                              .where(OutboxRow.state == "claimed",
                                     or_(OutboxRow.claimed_by != self.id, OutboxRow.claimed_by.is_(None)),
                                     OutboxRow.claimed_at <= now - self.lease)).all()
        for row, sub in stale:
            if sub is None:
                self._finish(row, now, state="cancelled", error="subscriber deleted",
                             if_claimed_by=row.claimed_by)
                continue
            msg = self._message(row, sub)
            try:
                sid = self.channel.find_sent(msg, row.claimed_at)
            except DeliveryError as exc:
                st.errors.append(str(exc))
                continue  # still in doubt: ask again next time rather than risk a duplicate
            if sid:
                if self._finish(row, now, state="sent", provider_id=sid, sent_at=now,
                                audit=("sent_recovered", {}), if_claimed_by=row.claimed_by):
                    st.recovered += 1
            else:
                with self.store.session.begin() as s:
                    n = s.execute(update(OutboxRow).where(OutboxRow.id == row.id, OutboxRow.state == "claimed",
                                                          OutboxRow.claimed_by == row.claimed_by)
                                  .values(state="pending", claimed_by=None, next_attempt_at=None)).rowcount
                st.requeued += n
        if st.recovered or st.requeued:
            log.info("recovered %d message(s) a stopped dispatcher had claimed: %d had gone out, "
                     "%d requeued", len(stale), st.recovered, st.requeued)
        return st

    # -- sending
    def _finish(self, row: OutboxRow, now: datetime, *, audit: tuple[str, dict] | None = None,
                mark: int | None = None, session=None, if_claimed_by: str | None | bool = False,
                **values: Any) -> bool:
        """Record one row's outcome (in ``session``, or in a transaction of its own).

        ``if_claimed_by``: record it only if the row is still claimed by that dispatcher
        (recovery: another dispatcher may have settled it meanwhile); returns whether the
        outcome was recorded.
        """
        if session is None:
            with self.store.session.begin() as s:
                return self._finish(row, now, audit=audit, mark=mark, session=s, if_claimed_by=if_claimed_by,
                                    **values)
        s = session
        status = values.pop("_status", "accepted")
        where = [OutboxRow.id == row.id]
        if if_claimed_by is not False:
            where += [OutboxRow.state == "claimed", OutboxRow.claimed_by == if_claimed_by]
        if not s.execute(update(OutboxRow).where(*where).values(**values)).rowcount:
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
        s.execute(update(OutboxRow).where(OutboxRow.subscriber_id == sub_id, OutboxRow.state.in_(OPEN_STATES))
                  .values(state="cancelled", error=f"provider error {code}: {meaning}"))

    def _send_one(self, row: OutboxRow, sub: Subscriber | None, st: DispatchStats) -> dict[str, Any]:
        """Send one claimed row; returns the outcome for :meth:`_finish` (recorded per batch:
        a dispatcher killed before recording leaves the row claimed, and recovery asks
        the provider whether it went out)."""
        now = self.clock()
        if sub is None or sub.opted_out_at is not None or sub.unreachable is not None:
            why = "subscriber deleted" if sub is None else (
                "subscriber opted out" if sub.opted_out_at is not None else f"unreachable: {sub.unreachable}")
            st.cancelled += 1
            return dict(now=now, state="cancelled", error=why, audit=("send_cancelled", {"why": why}))
        msg = self._message(row, sub)
        st.slept_s += self.limiter.acquire(row.segments)
        try:
            res = self.channel.send(msg)
        except DeliveryError as exc:
            log.warning("SMS %s to %s: %s", row.key, mask_phone(msg.to), exc)
            delay = None if exc.permanent else self.retry.delay(row.attempts)
            detail = {"code": exc.code, "permanent": exc.permanent, "attempt": row.attempts}
            if delay is None:
                st.failed += 1
                return dict(now=now, state="failed", error=str(exc), audit=("send_failed", detail),
                            mark=exc.code if exc.permanent else None)
            st.retried += 1
            return dict(now=now, state="pending", claimed_by=None, error=str(exc), next_attempt_at=now + delay,
                        audit=("send_retry", {**detail, "retry_in_s": delay.total_seconds()}))
        st.sent += 1
        st.segments += row.segments
        return dict(now=now, state="sent", provider_id=res.provider_id, sent_at=now, error=None,
                    _status=res.status or "accepted",
                    audit=("sent", {"provider_id": res.provider_id, "segments": row.segments}))

    def run_once(self) -> DispatchStats:
        """Release due approvals, recover stale claims, then send one batch (its outcomes
        recorded in one transaction)."""
        now = self.clock()
        st = DispatchStats()
        st.released = release_due(self.store, now, self.publish)
        st.add(self.recover(now))
        rows = self._claim(now)
        if rows:
            with self.store.session() as s:
                subs = {sub.id: sub for sub in s.scalars(
                    select(Subscriber).where(Subscriber.id.in_({r.subscriber_id for r in rows if r.subscriber_id})))}
            outcomes = [(row, self._send_one(row, subs.get(row.subscriber_id), st)) for row in rows]
            with self.store.session.begin() as s:
                for row, out in outcomes:
                    self._finish(row, out.pop("now"), session=s, **out)
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
        """Send until nothing is due (``until_empty``) or until ``stop()`` is true."""
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
        """Rows that will become due later (retries, stale claims) keep the loop going."""
        with self.store.session() as s:
            return s.scalar(select(OutboxRow.id).where(
                or_(OutboxRow.state == "pending",
                    and_(OutboxRow.state == "claimed", OutboxRow.claimed_by != self.id))).limit(1)) is not None


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
