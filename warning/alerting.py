"""The alert stage of a cycle: zone metrics -> decisions -> CAP notices and SMS outbox.

``alerts`` decides and writes messages; this module keeps the state between cycles in the
database, writes the CAP files, fills the outbox (one row per recipient per notice,
unique, so a re-run never queues twice) and dispatches it through a channel, claiming
each row atomically so an overlapping dispatcher never sends twice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from alerts.cap import CapAlert, parse_cap, to_xml
from alerts.errors import CapError
from alerts.feeds import FeedEntry, atom_feed, current_notices, index_html, notice_html
from alerts.channels import Channel
from alerts.delivery import RetryPolicy
from alerts.levels import ZoneState, decide, held_state, needs_approval
from alerts.messages import render_sms, sms_context
from alerts.notices import NoticeContext, ZoneInfo, build_notice, notice_html_url, notice_url

from .config import Config
from .logs import log_context
from .site import Site
from .operators import tell_operators
from .outbox import Dispatcher, queue_fanout
from .storage import AlertRow, ApprovalRow, OutboxRow, Run, Store, ZoneStateRow, utcnow

log = logging.getLogger(__name__)


def _state_from_row(row: ZoneStateRow | None) -> ZoneState:
    if row is None:
        return ZoneState()
    return ZoneState(level=row.level, since=row.since, pending_level=row.pending_level,
                     pending_count=row.pending_count, active=row.active, issued=row.issued)


@dataclass
class AlertStage:
    """What the alert stage of one cycle did."""

    #: one record per zone: action, levels, reasons; ``identifier`` when a notice was made;
    #: ``held`` when it waits for a manager; action ``failed`` with ``error`` for a zone
    #: whose stage failed (its state is unchanged)
    decisions: list[dict[str, Any]]
    #: CAP files published this cycle
    notices: list[str]
    #: SMS rows queued (held ones included)
    queued: int
    #: zones whose stage failed: {"zone", "error"}
    failed: list[dict[str, str]]


def decide_and_notify(site: Site, cfg: Config, store: Store, at: datetime,
                      metrics: dict[str, dict[str, float]], details: dict[str, dict[str, Any]],
                      *, run_id: str, scope: str, drill: str | None, run_info: dict[str, str],
                      problems: list[str]) -> AlertStage:
    """Decide every zone's level from its *published* state, write notices and queue SMS.

    A raise to a level with ``approval`` is held: its notice and SMS wait for a manager and
    the zone's published state does not change (``alerts.levels.held_state``); approving
    publishes it (:func:`warning.outbox.decide_approval`), rejecting leaves the zone as if
    the raise never happened. While a raise is held, each cycle decides afresh: the same
    raise refreshes the held notice (same approval request, fresh times and figures), a
    higher one replaces the request, anything else withdraws it.

    Each zone runs in a savepoint of its own: a zone whose decision or notice fails is rolled
    back to its state before the cycle, recorded (``zone_failed`` in the audit log, action
    ``failed`` in the decisions) and the other zones go on.
    """
    zcfg = {z.code: z for z in cfg.zones}
    cap_dir = cfg.output_dir / "cap"
    cap_dir.mkdir(parents=True, exist_ok=True)
    ctx = NoticeContext(sender=cfg.notices.sender, sender_name=cfg.notices.sender_name,
                        web_base=cfg.notices.web_base,
                        status="Exercise" if drill else cfg.notices.status,
                        exercise_note=drill or None,
                        languages=tuple(cfg.notices.languages or [cfg.notices.language]), run=run_info)
    stage = AlertStage([], [], 0, [])
    with store.session.begin() as s:
        # a write first: on SQLite the transaction then holds the write lock from the start,
        # so an approval committed meanwhile by another process cannot invalidate what it read
        s.execute(update(Run).where(Run.id == run_id).values(status="running"))
        for problem in problems:
            store.audit(s, "data_problem", {"problem": problem}, run_id=run_id, time=at)
        for zone in site.zones:
            with log_context(run_id=run_id, zone=zone.code):  # on every line this zone's work logs
                try:
                    with s.begin_nested():
                        record, paths, queued = _zone_stage(s, store, cfg, ctx, zone, zcfg[zone.code], at,
                                                            metrics[zone.code], details[zone.code],
                                                            run_id=run_id, scope=scope, drill=drill,
                                                            run_info=run_info, cap_dir=cap_dir)
                except Exception as exc:  # one zone never stops the cycle: record it, go on
                    error = f"{type(exc).__name__}: {exc}"
                    log.error("zone %s failed in the cycle at %s, its state is unchanged: %s", zone.code,
                              at, error, exc_info=log.isEnabledFor(logging.DEBUG))
                    store.audit(s, "zone_failed", {"zone": zone.code, "error": error}, run_id=run_id,
                                zone=zone.code, time=at)
                    stage.failed.append({"zone": zone.code, "error": error})
                    stage.decisions.append({"zone": zone.code, "action": "failed", "error": error,
                                            "at": at.isoformat()})
                    continue
                if record["action"] not in ("none", "hold"):  # a change (or a renewal) is worth a line
                    log.info("zone %s: %s, level %s%s, %d SMS queued", zone.code, record["action"],
                             record["level_name"], " (held for approval)" if record.get("held") else "",
                             queued)
            stage.decisions.append(record)
            stage.notices.extend(paths)
            stage.queued += queued
    if stage.notices:
        refresh_public_feed(cfg, at)
    return stage


def _pending_approval(s: Session, zone: str, scope: str) -> ApprovalRow | None:
    return s.scalars(select(ApprovalRow).where(ApprovalRow.zone == zone, ApprovalRow.scope == scope,
                                               ApprovalRow.state == "pending")
                     .order_by(ApprovalRow.id.desc()).with_for_update()).first()


def _close_request(s: Session, store: Store, a: ApprovalRow, state: str, note: str, at: datetime,
                   run_id: str) -> None:
    """End a pending approval request without publishing: its notice and SMS never go out."""
    a.state, a.decided_by, a.decided_at, a.note = state, "system", at, note
    s.execute(update(AlertRow).where(AlertRow.identifier == a.alert_identifier).values(state=state))
    n = s.execute(update(OutboxRow).where(OutboxRow.alert_identifier == a.alert_identifier,
                                          OutboxRow.state == "held")
                  .values(state="cancelled", error=f"approval request {state}: {note}")).rowcount
    store.audit(s, f"approval_{state}", {"alert": a.alert_identifier, "approval": a.id, "note": note,
                                         "messages": n}, run_id=run_id, zone=a.zone, time=at)


def _zone_stage(s: Session, store: Store, cfg: Config, ctx: NoticeContext, zone: Any, zc: Any,
                at: datetime, metrics: dict[str, float], det: dict[str, Any], *, run_id: str, scope: str,
                drill: str | None, run_info: dict[str, str], cap_dir: Path
                ) -> tuple[dict[str, Any], list[str], int]:
    """One zone's decision, notice and SMS, inside the caller's savepoint."""
    levels = cfg.level_specs(zc)
    policy = cfg.zone_policy(zc)
    by_rank = {lv.rank: lv for lv in levels}
    row = s.get(ZoneStateRow, (zone.code, scope), with_for_update=True)
    if row is None:
        row = ZoneStateRow(zone=zone.code, scope=scope, level=0, pending_level=0, pending_count=0,
                           active=False, chain=[])
        s.add(row)
    prev = _state_from_row(row)
    chain = [(a, b, datetime.fromisoformat(c)) for a, b, c in (row.chain or [])]
    if (prev.active or prev.level) and not chain:
        # a level in force with no published notice behind it (a database written by an older
        # floodwarn, where a rejection emptied the chain): nothing public is in force, so the
        # zone starts again from no level rather than being unable to lower or clear
        store.audit(s, "state_repaired", {"zone": zone.code, "was_level": prev.level,
                                          "why": "level in force without a published notice"},
                    run_id=run_id, zone=zone.code, time=at)
        log.warning("zone %s: level %d had no published notice behind it; reset to no level",
                    zone.code, prev.level)
        prev = ZoneState()
    d = decide(prev, metrics, at, levels, policy, zone=zone.code)
    held = needs_approval(d, levels)
    record = {"zone": zone.code, "action": d.action, "previous": d.previous,
              "level": d.level, "level_name": by_rank[d.level].name if d.level else "none",
              "reasons": list(d.reasons), "at": at.isoformat()}
    store.audit(s, "decision", {**record, "held": held, "metrics": _clean(metrics), "forecast": run_info,
                                "thresholds": [
                                    {"level": lv.name, "combine": lv.combine,
                                     "criteria": [f"{c.metric} {c.op} {c.value:g}" for c in lv.criteria]}
                                    for lv in levels]},
                run_id=run_id, zone=zone.code, time=at)
    pending = _pending_approval(s, zone.code, scope)
    refresh = pending is not None and held and (pending.proposed or {}).get("level") == d.level
    carried: datetime | None = None  # a higher raise keeps the earlier time-out
    if pending is not None and not refresh:
        if held:
            carried = pending.release_at
        if held or d.publish:
            _close_request(s, store, pending, "superseded", f"{d.action} to level {d.level} at "
                           f"{at:%Y-%m-%d %H:%M} UTC", at, run_id)
        else:
            _close_request(s, store, pending, "withdrawn", "the criteria no longer hold "
                           f"({d.action} at {at:%Y-%m-%d %H:%M} UTC)", at, run_id)
    paths: list[str] = []
    queued = 0
    files: list[tuple[Path, bytes]] = []
    if d.publish:
        level = by_rank.get(d.level)
        shown = level or by_rank[d.previous]
        # unique per sender: one decision per zone and cycle, drills apart
        identifier = f"{zone.code}.{at:%Y%m%dT%H%M}{'.drill' if drill else ''}"
        expiry = policy.expiry or timedelta(hours=12)
        alert = build_notice(
            d, ZoneInfo(zone.code, zone.name, zone.polygons), level, chain, ctx,
            identifier=identifier, expires=at + expiry,
            details={"peak_depth_m": _finite(metrics.get("forecast_peak_depth_m")),
                     "peak_time": det.get("peak_time") or "",
                     "onset": det.get("onset") or ""},
            levels=levels)
        path = cap_dir / f"{identifier}.xml"
        xml = to_xml(alert)
        s.add(AlertRow(identifier=identifier, zone=zone.code, scope=scope, run_id=run_id,
                       level=d.level, level_name=level.name if level else "all_clear",
                       msg_type=alert.msg_type, status=alert.status, sent=at,
                       expires=at + expiry, cap_path=str(path),
                       headline=alert.infos[0].headline, state="held" if held else "published"))
        s.flush()
        entry = [cfg.notices.sender, identifier, alert.sent.isoformat()]
        if held:  # not public until a manager approves (or the time-out lets it out)
            lc = cfg.level_config(level.name)
            proposed = {"level": d.level, "pending_level": d.state.pending_level,
                        "pending_count": d.state.pending_count, "chain": row.chain or [], "entry": entry,
                        "on_timeout": lc.on_approval_timeout}
            if refresh:
                old = pending.alert_identifier
                s.execute(update(AlertRow).where(AlertRow.identifier == old).values(state="superseded"))
                s.execute(update(OutboxRow).where(OutboxRow.alert_identifier == old, OutboxRow.state == "held")
                          .values(state="superseded", error=f"superseded by {identifier}"))
                pending.alert_identifier, pending.proposed = identifier, proposed
                store.audit(s, "approval_refreshed", {"approval": pending.id, "alert": identifier,
                                                      "replaces": old}, run_id=run_id, zone=zone.code, time=at)
            else:
                timeout = lc.approval_timeout_minutes
                release_at = at + timedelta(minutes=timeout) if timeout else None
                if carried is not None:
                    release_at = min(release_at, carried) if release_at else carried
                s.add(ApprovalRow(alert_identifier=identifier, zone=zone.code, scope=scope,
                                  level_name=level.name, requested_at=at, release_at=release_at,
                                  proposed=proposed))
                store.audit(s, "approval_requested", {"alert": identifier, "level": level.name,
                                                      "timeout_minutes": timeout,
                                                      "on_timeout": lc.on_approval_timeout},
                            run_id=run_id, zone=zone.code, time=at)
            files.append((held_dir(cfg) / path.name, xml))
        else:
            files.append((path, xml))
            paths.append(str(path))
            row.chain = [] if d.action == "all_clear" else [*(row.chain or []), entry]
        if d.changed and (level.sms if level else shown.sms):  # renewals: notice only
            def body_for(language: str) -> str:
                ctx_sms = sms_context(
                    d, levels, zone_name=zone.name, language=language,
                    link=notice_html_url(cfg.notices.web_base, identifier),
                    peak_time=det.get("peak_time"), peak_depth_m=metrics.get("forecast_peak_depth_m"))
                return render_sms(d.action, language, ctx_sms, max_segments=cfg.channels.max_segments,
                                  exercise_marker=cfg.drill.exercise_marker if drill else None,
                                  level=(level or shown).name,
                                  template_dirs=[str(cfg.path(cfg.channels.sms_templates))]
                                  if cfg.channels.sms_templates else ())
            queued = queue_fanout(s, store, alert_identifier=identifier, zone=zone.code, scope=scope,
                                  bodies=body_for, held=held, at=at)
        record["identifier"] = identifier
        record["msg_type"] = alert.msg_type
        record["held"] = held
    new = held_state(prev, d, policy) if held else d.state
    row.level, row.since = new.level, new.since
    row.pending_level, row.pending_count = new.pending_level, new.pending_count
    row.active, row.issued = new.active, new.issued
    s.flush()
    for target, data in files:  # last: a zone that failed above wrote nothing
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if target.parent == cap_dir:
            write_notice_page(cfg, parse_cap(data), {"Reasons": list(d.reasons), "Metrics": _clean(metrics)})
    return record, paths, queued


def _finite(v: float | None, digits: int = 2) -> float | str:
    """A metric for a notice's details, or "" when there is none (a gauge site has no
    forecast depth)."""
    return round(float(v), digits) if v is not None and math.isfinite(float(v)) else ""


def _clean(m: dict[str, float]) -> dict[str, float | None]:
    return {k: (round(v, 4) if v == v else None) for k, v in m.items()}


def held_dir(cfg: Config) -> Path:
    """Where notices waiting for approval are kept (not published)."""
    return cfg.output_dir / "held"


def write_notice_page(cfg: Config, alert: CapAlert, explanation: dict[str, Any] | None = None) -> Path:
    """The plain HTML page of a published notice, beside its CAP file."""
    base = cfg.notices.web_base
    path = cfg.output_dir / "cap" / f"{alert.identifier}.html"
    path.write_text(notice_html(alert, cap_url=notice_url(base, alert.identifier),
                                feed_url=f"{base.rstrip('/')}/feed.atom", index_url=f"{base.rstrip('/')}/",
                                explanation=explanation), encoding="utf-8")
    return path


def refresh_public_feed(cfg: Config, at: datetime) -> None:
    """Rewrite the Atom feeds and the index page from the published CAP files: the public
    feed (``feed.atom``, ``index.html``: notices with status Actual) and the drills' feed
    (``feed-exercise.atom``), each listing the notices current at ``at``."""
    base = cfg.notices.web_base.rstrip("/")
    published = []
    for p in sorted((cfg.output_dir / "cap").glob("*.xml")):
        try:
            published.append(parse_cap(p.read_bytes()))
        except (CapError, OSError) as exc:
            log.warning("notice %s left out of the feed: %s", p.name, exc)
    for statuses, name in ((("Actual",), "feed.atom"), (("Exercise",), "feed-exercise.atom")):
        entries = [FeedEntry.from_alert(a, cap_url=notice_url(base, a.identifier),
                                        html_url=notice_html_url(base, a.identifier))
                   for a in current_notices(published, at, statuses=statuses)]
        title = cfg.notices.sender_name + (" - drills" if "Exercise" in statuses else "")
        (cfg.output_dir / name).write_bytes(atom_feed(
            entries, feed_id=f"{base}/{name}", title=title, self_url=f"{base}/{name}", updated=at,
            author=cfg.notices.sender_name, html_url=f"{base}/", language=cfg.notices.language))
        if name == "feed.atom":
            (cfg.output_dir / "index.html").write_text(index_html(
                entries, feed_url=f"{base}/feed.atom", updated=at, language=cfg.notices.language,
                sender_name=cfg.notices.sender_name), encoding="utf-8")


def publisher(cfg: Config, clock: Callable[[], datetime] = utcnow) -> Callable[[AlertRow], None]:
    """Publish a held notice once approved: move its CAP file into the public folder,
    write its page and refresh the feeds as of ``clock()`` (the service's clock: a
    replay's simulated one too)."""
    def publish(alert: AlertRow) -> None:
        src = held_dir(cfg) / Path(alert.cap_path).name
        if src.exists():
            Path(alert.cap_path).parent.mkdir(parents=True, exist_ok=True)
            src.replace(alert.cap_path)
            write_notice_page(cfg, parse_cap(Path(alert.cap_path).read_bytes()))
            refresh_public_feed(cfg, clock())
    return publish


def make_dispatcher(cfg: Config, store: Store, channel: Channel, *,
                    clock: Callable[[], datetime] = utcnow) -> Dispatcher:
    """The config's dispatcher: the shared rate limit, retries, lease, what to do with
    messages in doubt, and the operators told (log, audit, SMS through ``channel``) when
    recovery gives up on them."""
    ch = cfg.channels

    def tell(problem: str, at: datetime, detail: dict[str, Any]) -> None:
        tell_operators(cfg, store, problem, at=at, event="delivery_in_doubt", channel=channel, detail=detail)

    return Dispatcher(store, channel, rate=ch.rate_segments_per_s,
                      retry=RetryPolicy(base=timedelta(seconds=ch.retry_base_s),
                                        cap=max(timedelta(minutes=10), timedelta(seconds=ch.retry_base_s)),
                                        max_attempts=ch.max_attempts),
                      lease=timedelta(seconds=ch.claim_lease_s), clock=clock, publish=publisher(cfg, clock),
                      in_doubt_give_up=timedelta(seconds=ch.in_doubt_give_up_s),
                      in_doubt_action=ch.in_doubt_action, on_problem=tell)


def dispatch(cfg: Config, store: Store, channel: Channel, *,
             clock: Callable[[], datetime] = utcnow) -> int:
    """Send what is due by ``clock()`` (retries wait for a later pass); returns how many
    were sent. A cycle passes its own time, so approval time-outs are judged on the same
    clock as the cycle that held the notice."""
    return make_dispatcher(cfg, store, channel, clock=clock).drain().sent


def alerts_for(store: Store, scope: str) -> list[AlertRow]:
    with store.session() as s:
        return list(s.scalars(select(AlertRow).where(AlertRow.scope == scope).order_by(AlertRow.id)))
