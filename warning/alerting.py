"""The alert stage of a cycle: zone metrics -> decisions -> CAP notices and SMS outbox.

``alerts`` decides and writes messages; this module keeps the state between cycles in the
database, writes the CAP files, fills the outbox (one row per recipient per notice,
unique, so a re-run never queues twice) and dispatches it through a channel, claiming
each row atomically so an overlapping dispatcher never sends twice.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from alerts.cap import to_xml
from alerts.channels import Channel, OutgoingMessage, get_channel, mask_phone
from alerts.errors import DeliveryError
from alerts.levels import ZoneState, decide
from alerts.messages import render_sms, sms_context
from alerts.notices import NoticeContext, ZoneInfo, build_notice

from .config import Config
from .secrets import env_secret
from .site import Site
from .storage import AlertRow, OutboxRow, Store, Subscriber, ZoneStateRow, utcnow
from .subscribers import PhoneVault, SubscriberRegistry

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 5


def make_channel(cfg: Config) -> Channel:
    """The SMS channel the config asks for: Twilio when credentials are set ("auto")."""
    sid = env_secret("TWILIO_ACCOUNT_SID")
    token = env_secret("TWILIO_AUTH_TOKEN")
    choice = cfg.channels.sms
    if choice == "auto":
        choice = "twilio" if sid and token else "file"
    if choice == "twilio":
        if not (sid and token):
            from .errors import ConfigError
            raise ConfigError("channels.sms: 'twilio' needs TWILIO_ACCOUNT_SID and "
                              "TWILIO_AUTH_TOKEN in the environment")
        tw = cfg.channels.twilio
        return get_channel("twilio", account_sid=sid, auth_token=token,
                           from_number=tw.from_number,
                           messaging_service_sid=tw.messaging_service_sid,
                           base_url=os.environ.get("FLOODWARN_TWILIO_BASE_URL") or None,
                           status_callback=tw.status_callback,
                           validity_period=tw.validity_period_s)
    return get_channel("file", path=cfg.output_dir / cfg.channels.sms_log)


def _state_from_row(row: ZoneStateRow | None) -> ZoneState:
    if row is None:
        return ZoneState()
    return ZoneState(level=row.level, since=row.since, pending_level=row.pending_level,
                     pending_count=row.pending_count, active=row.active)


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
                        status="Exercise" if drill else "Actual",
                        exercise_note=drill or None,
                        language=cfg.notices.language, run=run_info)
    vault = None
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
            if d.changed:
                level = by_rank.get(d.level)
                shown = level or by_rank[d.previous]
                # unique per sender: one decision per zone and cycle, drills apart
                identifier = f"{zone.code}.{at:%Y%m%dT%H%M}{'.drill' if drill else ''}"
                expiry = policy.expiry or timedelta(hours=12)
                alert = build_notice(
                    d, ZoneInfo(zone.code, zone.name, zone.polygons), level, chain, ctx,
                    identifier=identifier, expires=at + expiry,
                    details={"peak_depth_m": round(metrics[zone.code]["forecast_peak_depth_m"], 2),
                             "peak_time": det.get("peak_time") or "",
                             "onset": det.get("onset") or ""})
                path = cap_dir / f"{identifier}.xml"
                path.write_bytes(to_xml(alert))
                notices.append(str(path))
                s.add(AlertRow(identifier=identifier, zone=zone.code, scope=scope, run_id=run_id,
                               level=d.level, level_name=level.name if level else "all_clear",
                               msg_type=alert.msg_type, status=alert.status, sent=at,
                               expires=at + expiry, cap_path=str(path),
                               headline=alert.infos[0].headline))
                s.flush()
                row.chain = [] if d.action == "all_clear" else [
                    [a, b, c.isoformat()] for a, b, c in chain] + [[cfg.notices.sender, identifier,
                                                                  at.isoformat()]]
                if (level.sms if level else shown.sms):
                    vault = vault or PhoneVault.from_env()
                    registry = SubscriberRegistry(store, vault, cfg.subscribers.default_region)
                    for r in registry.for_zone(zone.code):
                        sms_ctx = sms_context(
                            d, levels, zone_name=zone.name, language=r.language,
                            link=f"{cfg.notices.web_base}/notices/{identifier}.xml",
                            peak_time=det.get("peak_time"),
                            peak_depth_m=metrics[zone.code]["forecast_peak_depth_m"])
                        body = render_sms(d.action, r.language, sms_ctx,
                                          max_segments=cfg.channels.max_segments,
                                          exercise_marker=cfg.drill.exercise_marker if drill else None)
                        s.add(OutboxRow(key=f"{identifier}:{r.id}:sms", alert_identifier=identifier,
                                        subscriber_id=r.id, channel="sms", body=body))
                        queued += 1
                record["identifier"] = identifier
                record["msg_type"] = alert.msg_type
            row.level, row.since = d.state.level, d.state.since
            row.pending_level, row.pending_count = d.state.pending_level, d.state.pending_count
            row.active = d.state.active
            out_decisions.append(record)
    return out_decisions, notices, queued


def _clean(m: dict[str, float]) -> dict[str, float | None]:
    return {k: (round(v, 4) if v == v else None) for k, v in m.items()}


def dispatch(cfg: Config, store: Store, channel: Channel) -> int:
    """Send every pending outbox row once; returns how many were sent."""
    sent = 0
    vault = None
    for item in store.pending_outbox():
        now = utcnow()
        if not store.claim(item.id, now):
            continue  # another dispatcher has it
        with store.session() as s:
            sub = s.get(Subscriber, item.subscriber_id) if item.subscriber_id else None
        if sub is None or sub.opted_out_at is not None:
            _finish(store, item.id, state="cancelled", error="subscriber gone or opted out")
            continue
        vault = vault or PhoneVault.from_env()
        phone = vault.decrypt(sub.phone_enc)
        try:
            res = channel.send(OutgoingMessage(to=phone, body=item.body, key=item.key))
        except DeliveryError as exc:
            permanent = exc.permanent or item.attempts + 1 >= MAX_ATTEMPTS
            log.warning("SMS to %s failed (%s%s): %s", mask_phone(phone),
                        "permanent" if exc.permanent else "transient",
                        f", code {exc.code}" if exc.code else "", exc)
            _finish(store, item.id, state="failed" if permanent else "pending", error=str(exc))
            if exc.code == 21610:
                with store.session.begin() as s:
                    s.get(Subscriber, sub.id).opted_out_at = now
            continue
        _finish(store, item.id, state="sent", provider_id=res.provider_id, sent_at=utcnow())
        sent += 1
    return sent


def _finish(store: Store, outbox_id: int, **values: Any) -> None:
    with store.session.begin() as s:
        row = s.get(OutboxRow, outbox_id)
        for k, v in values.items():
            setattr(row, k, v)


def alerts_for(store: Store, scope: str) -> list[AlertRow]:
    with store.session() as s:
        return list(s.scalars(select(AlertRow).where(AlertRow.scope == scope).order_by(AlertRow.id)))
