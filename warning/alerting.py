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
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from alerts.cap import CapAlert, parse_cap, to_xml
from alerts.errors import CapError
from alerts.feeds import FeedEntry, atom_feed, current_notices, index_html, notice_html
from alerts.channels import Channel, get_channel
from alerts.delivery import RetryPolicy
from alerts.levels import ZoneState, decide
from alerts.messages import render_sms, sms_context
from alerts.notices import NoticeContext, ZoneInfo, build_notice, notice_html_url, notice_url

from .config import Config
from .site import Site
from .operators import make_channel
from .outbox import Dispatcher, queue_fanout
from .storage import AlertRow, ApprovalRow, Store, ZoneStateRow, utcnow

log = logging.getLogger(__name__)


def _state_from_row(row: ZoneStateRow | None) -> ZoneState:
    if row is None:
        return ZoneState()
    return ZoneState(level=row.level, since=row.since, pending_level=row.pending_level,
                     pending_count=row.pending_count, active=row.active, issued=row.issued)


def decide_and_notify(site: Site, cfg: Config, store: Store, at: datetime,
                      metrics: dict[str, dict[str, float]], details: dict[str, dict[str, Any]],
                      *, run_id: str, scope: str, drill: str | None, run_info: dict[str, str],
                      problems: list[str]) -> tuple[list[dict[str, Any]], list[str], int]:
    """Decide every zone's level, write notices and queue SMS. Returns (decisions, CAP paths,
    messages queued)."""
    zcfg = {z.code: z for z in cfg.zones}
    cap_dir = cfg.output_dir / "cap"
    cap_dir.mkdir(parents=True, exist_ok=True)
    ctx = NoticeContext(sender=cfg.notices.sender, sender_name=cfg.notices.sender_name,
                        web_base=cfg.notices.web_base,
                        status="Exercise" if drill else cfg.notices.status,
                        exercise_note=drill or None,
                        languages=tuple(cfg.notices.languages or [cfg.notices.language]), run=run_info)
    out_decisions: list[dict[str, Any]] = []
    notices: list[str] = []
    queued = 0
    with store.session.begin() as s:
        for problem in problems:
            store.audit(s, "data_problem", {"problem": problem}, run_id=run_id, time=at)
        for zone in site.zones:
            zc = zcfg[zone.code]
            levels = cfg.level_specs(zc)
            policy = cfg.zone_policy(zc)
            row = s.get(ZoneStateRow, (zone.code, scope))
            prev = _state_from_row(row)
            d = decide(prev, metrics[zone.code], at, levels, policy, zone=zone.code)
            by_rank = {lv.rank: lv for lv in levels}
            det = details[zone.code]
            record = {"zone": zone.code, "action": d.action, "previous": d.previous,
                      "level": d.level, "level_name": by_rank[d.level].name if d.level else "none",
                      "reasons": list(d.reasons), "at": at.isoformat()}
            store.audit(s, "decision", {**record, "metrics": _clean(metrics[zone.code]),
                                        "forecast": run_info, "thresholds": [
                                            {"level": lv.name, "combine": lv.combine,
                                             "criteria": [f"{c.metric} {c.op} {c.value:g}"
                                                          for c in lv.criteria]} for lv in levels]},
                        run_id=run_id, zone=zone.code, time=at)
            if row is None:
                row = ZoneStateRow(zone=zone.code, scope=scope, chain=[])
                s.add(row)
            chain = [(a, b, datetime.fromisoformat(c)) for a, b, c in (row.chain or [])]
            if d.publish:
                level = by_rank.get(d.level)
                shown = level or by_rank[d.previous]
                # unique per sender: one decision per zone and cycle, drills apart
                identifier = f"{zone.code}.{at:%Y%m%dT%H%M}{'.drill' if drill else ''}"
                expiry = policy.expiry or timedelta(hours=12)
                alert = build_notice(
                    d, ZoneInfo(zone.code, zone.name, zone.polygons), level, chain, ctx,
                    identifier=identifier, expires=at + expiry,
                    details={"peak_depth_m": _finite(metrics[zone.code].get("forecast_peak_depth_m")),
                             "peak_time": det.get("peak_time") or "",
                             "onset": det.get("onset") or ""},
                    levels=levels)
                path = cap_dir / f"{identifier}.xml"
                needs_approval = bool(level is not None and level.approval)
                if needs_approval:  # not public until a manager approves (or the time runs out)
                    held_dir(cfg).mkdir(parents=True, exist_ok=True)
                    (held_dir(cfg) / path.name).write_bytes(to_xml(alert))
                else:
                    path.write_bytes(to_xml(alert))
                    write_notice_page(cfg, alert, {"Reasons": list(d.reasons),
                                                   "Metrics": _clean(metrics[zone.code])})
                    notices.append(str(path))
                s.add(AlertRow(identifier=identifier, zone=zone.code, scope=scope, run_id=run_id,
                               level=d.level, level_name=level.name if level else "all_clear",
                               msg_type=alert.msg_type, status=alert.status, sent=at,
                               expires=at + expiry, cap_path=str(path),
                               headline=alert.infos[0].headline,
                               state="held" if needs_approval else "published"))
                s.flush()
                if needs_approval:
                    timeout = cfg.level_config(level.name).approval_timeout_minutes
                    s.add(ApprovalRow(alert_identifier=identifier, zone=zone.code, scope=scope,
                                      level_name=level.name, requested_at=at,
                                      release_at=at + timedelta(minutes=timeout) if timeout else None))
                    store.audit(s, "approval_requested", {"alert": identifier, "level": level.name,
                                                          "auto_release_minutes": timeout},
                                run_id=run_id, zone=zone.code, time=at)
                row.chain = [] if d.action == "all_clear" else [
                    [a, b, c.isoformat()] for a, b, c in chain] + [[cfg.notices.sender, identifier,
                                                                  at.isoformat()]]
                if d.changed and (level.sms if level else shown.sms):  # renewals: notice only
                    def body_for(language: str, _d=d, _levels=levels, _zone=zone, _id=identifier,
                                 _det=det) -> str:
                        ctx_sms = sms_context(
                            _d, _levels, zone_name=_zone.name, language=language,
                            link=notice_html_url(cfg.notices.web_base, _id),
                            peak_time=_det.get("peak_time"),
                            peak_depth_m=metrics[_zone.code].get("forecast_peak_depth_m"))
                        return render_sms(_d.action, language, ctx_sms,
                                          max_segments=cfg.channels.max_segments,
                                          exercise_marker=cfg.drill.exercise_marker if drill else None,
                                          level=(level or shown).name,
                                          template_dirs=[str(cfg.path(cfg.channels.sms_templates))]
                                          if cfg.channels.sms_templates else ())
                    queued += queue_fanout(s, store, alert_identifier=identifier, zone=zone.code,
                                           scope=scope, bodies=body_for, held=needs_approval, at=at)
                record["identifier"] = identifier
                record["msg_type"] = alert.msg_type
            row.level, row.since = d.state.level, d.state.since
            row.pending_level, row.pending_count = d.state.pending_level, d.state.pending_count
            row.active, row.issued = d.state.active, d.state.issued
            out_decisions.append(record)
    if notices:
        refresh_public_feed(cfg, at)
    return out_decisions, notices, queued


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


def publisher(cfg: Config) -> Callable[[AlertRow], None]:
    """Publish a held notice once approved: move its CAP file into the public folder,
    write its page and refresh the feeds."""
    def publish(alert: AlertRow) -> None:
        src = held_dir(cfg) / Path(alert.cap_path).name
        if src.exists():
            Path(alert.cap_path).parent.mkdir(parents=True, exist_ok=True)
            src.replace(alert.cap_path)
            write_notice_page(cfg, parse_cap(Path(alert.cap_path).read_bytes()))
            refresh_public_feed(cfg, utcnow())
    return publish


def make_dispatcher(cfg: Config, store: Store, channel: Channel, *,
                    clock: Callable[[], datetime] = utcnow) -> Dispatcher:
    ch = cfg.channels
    return Dispatcher(store, channel, rate=ch.rate_segments_per_s,
                      retry=RetryPolicy(base=timedelta(seconds=ch.retry_base_s),
                                        cap=max(timedelta(minutes=10), timedelta(seconds=ch.retry_base_s)),
                                        max_attempts=ch.max_attempts),
                      lease=timedelta(seconds=ch.claim_lease_s), clock=clock, publish=publisher(cfg))


def dispatch(cfg: Config, store: Store, channel: Channel) -> int:
    """Send what is due now (retries wait for a later pass); returns how many were sent."""
    return make_dispatcher(cfg, store, channel).drain().sent


def alerts_for(store: Store, scope: str) -> list[AlertRow]:
    with store.session() as s:
        return list(s.scalars(select(AlertRow).where(AlertRow.scope == scope).order_by(AlertRow.id)))
