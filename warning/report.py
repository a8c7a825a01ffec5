"""The replay report: what a replay of a past storm did, as one HTML file and as JSON.

``build_report`` reads what the forecast cycles of one scope (``live`` or
``drill:<name>``) left in a database and an output folder (runs, decisions in the audit
log, alerts, the SMS outbox, the peak-depth GeoTIFFs) and writes two files:

- ``report-<event>.html``: self-contained (figures embedded as base64 PNG, CSS inline, no
  script, no external resource), readable on a phone; every figure has alt text and its
  numbers in a table beside it;
- ``report-<event>.json``: the same figures' data, machine-readable (ISO 8601 times, UTC;
  undefined scores are ``null``).

Sections: the header (event, site, scope, model runs, forecast files per cycle); the
timeline of levels raised and lowered per zone with the observed flood onsets; the
hydrograph at each gauge (observed stage, every issue's forecast as it was then, the
flood stages); maps of the forecast peak depth at key cycles; the messages sent (CAP
notices, SMS texts by language and recipients by outbox state, never a phone number);
and the verification against the event's observed onsets (``warning.verification``).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import struct
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from sqlalchemy import select

from .config import Config
from .errors import FloodwarnError
from .events import Event, EventTrace
from .storage import AlertRow, AuditRow, OutboxRow, Run, Store, Subscriber, utcnow
from .verification import BASELINES, Contingency, periods_from_levels, scores, skill_against

__all__ = ["ReportFiles", "build_report"]

log = logging.getLogger(__name__)

#: figure resolution, dots per inch: small files, still sharp on a phone
DPI = 90
#: maps shown at most (the key cycles)
MAX_MAPS = 4
FORMAT = "floodwarn-replay-report/1"
#: names shown beside the language codes of SMS texts (others show the code alone)
LANGUAGE_NAMES = {"en": "English", "es": "Spanish", "fr": "French", "de": "German", "nl": "Dutch",
                  "pt": "Portuguese", "cy": "Welsh", "unknown": "unknown (subscriber deleted)"}
STAGE_COLOURS = {"action": "gold", "minor": "orange", "moderate": "red", "major": "purple"}
_TEMPLATES = Path(__file__).parent / "templates" / "report"


@dataclass(frozen=True)
class ReportFiles:
    """The two files of a report."""

    html: Path
    json: Path


# --------------------------------------------------------------------------- entry point
def build_report(cfg: Config, store: Store, event: Event, *, scope: str,
                 trace: EventTrace | None = None, out_dir: Path, site: Any = None,
                 config_file: str | Path | None = None) -> ReportFiles:
    """Write the report of ``event`` as replayed in ``scope`` into ``out_dir``.

    Parameters
    ----------
    cfg : Config
        The configuration the cycles ran with (for a replay: ``event_config(...)``, whose
        gauge source is the event's archived readings and whose output folder holds the
        depth GeoTIFFs).
    store : Store
        The database the cycles wrote to.
    event : Event
        The event: its period, and the observed flood onsets used for verification.
    scope : str
        ``"live"`` or ``"drill:<name>"``: the runs, decisions and alerts to report.
    trace : EventTrace, optional
        The replay's trace; when given, exactly its cycles are reported (else every
        finished run of ``scope`` between the event's start and end).
    out_dir : Path
        Folder for ``report-<event slug>.html`` and ``.json`` (created if missing).
    site : Site, optional
        The loaded site (for the maps); loaded from ``cfg`` when needed and not given. A
        gauge site (no DEM) has no maps.
    config_file : str or Path, optional
        The configuration file, named in the header (``Config`` does not keep its path).

    Returns
    -------
    ReportFiles
        Paths of the HTML and JSON files.
    """
    if scope != "live" and not (scope.startswith("drill:") and len(scope) > len("drill:")):
        raise ValueError(f"scope must be 'live' or 'drill:<name>', got {scope!r}")
    from .console import _zone_names

    runs = _runs(store, event, scope, trace)
    levels = [{"rank": r, "name": lv.name, "title": lv.title, "colour": lv.colour}
              for r, lv in enumerate(cfg.levels, start=1)]
    zone_names = _zone_names(cfg)
    notes: list[str] = []
    if trace is not None:
        missing = [c.run_id for c in trace.cycles if c.run_id not in {r.id for r in runs}]
        if missing:
            notes.append(f"{len(missing)} cycle(s) of the replay have no finished run in the "
                         f"database: {', '.join(missing)}")

    timeline = _timeline(cfg, store, runs, event, zone_names)
    cycles = _cycles(runs)
    gauges, gauge_problem = _gauges(cfg, runs, event)
    if gauge_problem:
        notes.append(gauge_problem)
    maps = _map_stats(cfg, runs, timeline, levels)
    if site is None and any(c["shown"] for c in maps["cycles"]):
        from .site import Site

        site = Site.load(cfg)
    messages = _messages(cfg, store, runs, levels)
    verification = _verification(cfg, event, timeline, levels, runs)

    generated = utcnow().replace(microsecond=0)
    data: dict[str, Any] = {
        "format": FORMAT,
        "generated": generated,
        "floodwarn_version": _version(),
        "event": {"name": event.name, "start": event.start, "end": event.end,
                  "description": event.description, "file": str(event.file) if event.file else None,
                  "tolerance_minutes": event.tolerance_minutes,
                  "observed": {z: list(t) for z, t in event.observed.items()}},
        "site": {"name": cfg.site.name, "code": cfg.site.code},
        "scope": scope,
        "drill": scope.startswith("drill:"),
        "drill_name": scope.removeprefix("drill:") if scope.startswith("drill:") else None,
        "config_file": str(config_file) if config_file is not None else None,
        "config_folder": str(cfg.base_dir),
        "cap_statuses": sorted({a["cap_status"] for a in messages["alerts"]}),
        "sources": _sources(cfg),
        "database": _safe_url(store.url),
        "model_runs": len(runs),
        "cycles": cycles,
        "levels": levels,
        "timeline": timeline,
        "gauges": gauges,
        "maps": maps,
        "messages": messages,
        "verification": verification,
        "notes": notes,
    }
    figures = _figures(cfg, site, event, data)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"report-{event.slug}"
    json_path, html_path = out_dir / f"{stem}.json", out_dir / f"{stem}.html"
    text = json.dumps(_jsonable(data), indent=1, ensure_ascii=False, allow_nan=False)
    json.loads(text)  # what we write must read back
    json_path.write_text(text + "\n", encoding="utf-8")
    html_path.write_text(_render(data, figures), encoding="utf-8")
    log.info("report of %s (%s, %d runs) written to %s", event.name, scope, len(runs), html_path)
    return ReportFiles(html=html_path, json=json_path)


# --------------------------------------------------------------------------- reading
def _runs(store: Store, event: Event, scope: str, trace: EventTrace | None) -> list[Run]:
    q = select(Run).where(Run.scope == scope, Run.status == "done").order_by(Run.at)
    if trace is not None:
        q = q.where(Run.id.in_([c.run_id for c in trace.cycles]))
    else:
        q = q.where(Run.at >= event.start, Run.at <= event.end)
    with store.session() as s:
        runs = list(s.scalars(q))
        if not runs:
            scopes = sorted(set(s.scalars(select(Run.scope).distinct())))
    if not runs:
        raise FloodwarnError(
            f"no finished model run of scope {scope!r} between {event.start:%Y-%m-%d %H:%M}Z and "
            f"{event.end:%Y-%m-%d %H:%M}Z in {_safe_url(store.url)}; scopes in that database: "
            f"{', '.join(scopes) or 'none'}. Replay the event first, or give the scope it ran in.")
    return runs


def _sources(cfg: Config) -> dict[str, str | None]:
    """Where the cycles' inputs came from (for a replay: the event's archive)."""
    fc, gs = cfg.sources.forecast, cfg.sources.gauges
    forecast = gauges = None
    if fc is not None:  # a gauge site has no rainfall forecast
        folder = cfg.path(fc.path)
        forecast = f"{fc.kind}: {folder / fc.pattern if folder.is_dir() else folder}"
    if gs is not None:
        gauges = f"{gs.kind}: {cfg.path(gs.path) if gs.path else gs.settings.get('url')}"
    return {"forecast": forecast, "gauges": gauges}


def _cycles(runs: list[Run]) -> list[dict[str, Any]]:
    out = []
    for r in runs:
        age = (r.at - r.forecast_issued).total_seconds() / 3600.0 if r.forecast_issued else None
        out.append({"at": r.at, "run_id": r.id, "forecast_file": r.forecast_file,
                    "forecast_issued": r.forecast_issued, "forecast_age_h": age,
                    "problems": list((r.summary or {}).get("problems") or [])})
    return out


def _timeline(cfg: Config, store: Store, runs: list[Run], event: Event,
              zone_names: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Level changes per zone, from the audit log's decisions (a run's summary if its
    decisions are not in the audit log)."""
    ids = [r.id for r in runs]
    scope = runs[0].scope if runs else "live"
    with store.session() as s:
        rows = list(s.scalars(select(AuditRow)
                              .where(AuditRow.event == "decision", AuditRow.run_id.in_(ids))
                              .order_by(AuditRow.time, AuditRow.id)))
        # raises held for approval become public when approved (or let out by the time-out)
        approvals = [(a, alert) for a, alert in s.execute(
            select(AuditRow, AlertRow).join(AlertRow, AlertRow.identifier == AuditRow.detail["alert"].as_string())
            .where(AuditRow.event == "approved", AlertRow.scope == scope, AlertRow.run_id.in_(ids))
            .order_by(AuditRow.time, AuditRow.id)).all()]
    by_run: dict[str, list[dict[str, Any]]] = {}
    for a in rows:
        detail = a.detail or {}
        by_run.setdefault(a.run_id, []).append(
            {**detail, "zone": a.zone or detail.get("zone"), "_time": a.time})
    decisions: list[dict[str, Any]] = []
    for r in runs:
        found = by_run.get(r.id)
        if found is None:
            found = [{**d, "_time": r.at} for d in (r.summary or {}).get("decisions") or []]
        for d in found:
            decisions.append({**d, "run_id": r.id})
    out: dict[str, dict[str, Any]] = {}
    for z in cfg.zones:
        mine = [d for d in decisions if d.get("zone") == z.code]
        changes = []
        if mine and int(mine[0].get("previous") or 0) > 0:  # in force before the first cycle
            first = mine[0]
            changes.append({"time": first["_time"], "action": "in force", "previous": 0,
                            "level": int(first["previous"]), "run_id": first["run_id"],
                            "reasons": []})
        published = [{"_time": a.time, "action": "raise (approved)", "previous": None, "level": alert.level,
                      "run_id": alert.run_id, "identifier": alert.identifier,
                      "reasons": [f"approved by {(a.detail or {}).get('by')}"]}
                     for a, alert in approvals if alert.zone == z.code]
        steps = sorted([d for d in mine if not d.get("held")] + published, key=lambda d: d["_time"])
        level_now = int(mine[0].get("previous") or 0) if mine else 0
        for d in steps:
            prev, lv = int(d.get("previous") if d.get("previous") is not None else level_now), int(d.get("level") or 0)
            level_now = lv
            if lv != prev:
                changes.append({"time": d["_time"], "action": d.get("action"), "previous": prev,
                                "level": lv, "run_id": d["run_id"],
                                "identifier": d.get("identifier"),
                                "reasons": list(d.get("reasons") or [])})
        for c in changes:
            c["level_name"] = _level_name(cfg, c["level"])
            c["previous_name"] = _level_name(cfg, c["previous"])
        top = max((c["level"] for c in changes), default=0)
        out[z.code] = {"name": zone_names.get(z.code, z.code), "gauge": z.gauge,
                       "changes": changes, "top_level": top,
                       "top_level_name": _level_name(cfg, top),
                       "observed_onsets": list(event.observed.get(z.code, [])),
                       "observed": z.code in event.observed}
    return out


def _level_name(cfg: Config, rank: int) -> str:
    return cfg.levels[rank - 1].name if 1 <= rank <= len(cfg.levels) else "none"


def _gauges(cfg: Config, runs: list[Run], event: Event
            ) -> tuple[list[dict[str, Any]], str | None]:
    """Per gauge: observed readings over the event, and every cycle's forecast as issued."""
    from .pipeline import Inputs

    problem = None
    ds = None
    try:
        ds = Inputs(cfg).read_gauges()
    except FloodwarnError as exc:
        problem = f"observed gauge readings unavailable: {exc}"
    lo = np.datetime64(event.start.replace(tzinfo=None), "ns")
    hi = np.datetime64(event.end.replace(tzinfo=None), "ns")
    out = []
    for g in cfg.gauges:
        zones = [z.code for z in cfg.zones if z.gauge == g.id]
        q = gauge_quantity(cfg, g, ds)
        key = q["key"]
        obs: dict[str, list[Any]] = {"times": [], key: [], "qc": []}
        if ds is not None and g.id in ds["station"].values:
            st = ds.sel(station=g.id)
            t = st["time"].values
            keep = (t >= lo) & (t <= hi)
            obs = {"times": [_dt64(x) for x in t[keep]],
                   key: [round(float(v), 3) if np.isfinite(v) else None
                         for v in st[q["variable"]].values[keep]],
                   "qc": [int(x) for x in st[q["qc"]].values[keep]]}
        forecasts = []
        for r in runs:
            details = (r.summary or {}).get("details") or {}
            det = next((details[z] for z in zones
                        if z in details and details[z].get("gauge_forecast_times")
                        and details[z].get(q["forecast"])), None)
            if det is None:
                continue
            forecasts.append({"issued_at": r.at, "run_id": r.id, "forecast_file": r.forecast_file,
                              "times": [datetime.fromisoformat(x)
                                        for x in det["gauge_forecast_times"]],
                              key: det[q["forecast"]],
                              "low": det.get(q["forecast_low"]),
                              "high": det.get(q["forecast_high"])})
        good = [(t, v) for t, v, qc in zip(obs["times"], obs[key], obs["qc"])
                if qc == 0 and v is not None]
        peak = max(good, key=lambda tv: tv[1]) if good else None
        out.append({"id": g.id, "name": g.name, "zones": zones, "quantity": q,
                    "thresholds": q["thresholds"],
                    "observed": obs,
                    "observed_peak": {"time": peak[0], key: peak[1], "value": peak[1]} if peak else None,
                    "forecast_peak": max((max(v for v in f[key] if v is not None)
                                          for f in forecasts if any(v is not None for v in f[key])),
                                         default=None),
                    "forecasts": forecasts})
    return out, problem


def gauge_quantity(cfg: Config, g: Any, ds: Any) -> dict[str, Any]:
    """What a gauge's hydrograph shows: stage with its flood stages, or, at a gauge that
    measures only flow (a gauge site with a lumped discharge forecast), discharge with the
    zones' discharge thresholds."""
    has_stage = ds is not None and g.id in ds["station"].values and bool(
        np.isfinite(ds["stage"].sel(station=g.id).values).any())
    if has_stage or ds is None or "discharge" not in ds:
        stages = g.flood_stages.model_dump(exclude_none=True) if g.flood_stages is not None else {}
        return {"key": "stage_m", "variable": "stage", "qc": "qc", "name": "stage", "unit": "m",
                "axis": "stage (m above gauge zero)", "forecast": "gauge_forecast_stage_m",
                "forecast_low": "gauge_forecast_low_m", "forecast_high": "gauge_forecast_high_m",
                "thresholds": stages, "threshold_kind": "flood stages"}
    lines: dict[str, float] = {}
    for z in cfg.zones:
        if z.gauge != g.id:
            continue
        for spec in cfg.level_specs(z):
            for c in spec.criteria:
                if c.metric.endswith("discharge_m3s"):
                    lines.setdefault(spec.name, c.value)
    return {"key": "discharge_m3s", "variable": "discharge", "qc": "discharge_qc", "name": "flow",
            "unit": "m³/s", "axis": "discharge (m³/s)", "forecast": "gauge_forecast_discharge_m3s",
            "forecast_low": None, "forecast_high": None, "thresholds": lines,
            "threshold_kind": "discharge thresholds of the levels"}


def _depth_file(cfg: Config, at: datetime) -> Path:
    return cfg.output_dir / "depth" / f"peak_depth_{at:%Y%m%dT%H%MZ}.tif"


def _map_stats(cfg: Config, runs: list[Run], timeline: dict[str, dict[str, Any]],
               levels: list[dict[str, Any]]) -> dict[str, Any]:
    """Forecast peak-depth statistics of every cycle, and the key cycles to map."""
    import rasterio

    flooded = cfg.model.flooded_depth_m
    grid = cfg.site.dem is not None  # a gauge site writes no depth grids
    cells = []
    cell_area = None
    for r in runs:
        path = _depth_file(cfg, r.at)
        entry: dict[str, Any] = {"at": r.at, "run_id": r.id, "file": path.name,
                                 "found": grid and path.exists(), "max_depth_m": None,
                                 "flooded_cells": None, "flooded_area_km2": None}
        if entry["found"]:
            with rasterio.open(path) as src:
                depth = src.read(1).astype("float32")
                cell_area = abs(src.transform.a * src.transform.e)
            finite = depth[np.isfinite(depth)]
            n = int((finite >= flooded).sum())
            entry.update(max_depth_m=round(float(finite.max()), 3) if finite.size else 0.0,
                         flooded_cells=n, flooded_area_km2=round(n * cell_area / 1e6, 4))
        cells.append(entry)
    # key cycles, most telling first: the first warning, the largest depth, the last
    # cycle, then the first raise to each higher level (highest first)
    why: dict[str, list[str]] = {}
    order: list[str] = []

    def want(run_id: str | None, reason: str) -> None:
        if run_id is None:
            return
        why.setdefault(run_id, []).append(reason)
        if run_id not in order:
            order.append(run_id)

    raises = []
    for lv in levels:
        firsts = [(c["time"], c["run_id"], code) for code, z in timeline.items()
                  for c in z["changes"] if c["level"] >= lv["rank"] > c["previous"]]
        if firsts:
            _, run_id, code = min(firsts)
            raises.append((lv, run_id, code))
    if raises:
        lv, run_id, code = raises[0]
        want(run_id, f"{lv['title']} first raised ({code})")
    found = [c for c in cells if c["found"]]
    if found:
        want(max(found, key=lambda c: c["max_depth_m"])["run_id"], "largest forecast peak depth")
        want(found[-1]["run_id"], "last cycle")
    for lv, run_id, code in reversed(raises[1:]):
        want(run_id, f"{lv['title']} first raised ({code})")
    mappable = {c["run_id"] for c in found}
    shown = [rid for rid in order if rid in mappable][:MAX_MAPS]
    for c in cells:
        c["shown"] = c["run_id"] in shown
        c["why"] = why.get(c["run_id"], []) if c["shown"] else []
    return {"grid_site": grid, "flooded_depth_m": flooded, "cell_area_m2": cell_area,
            "cycles": cells}


def _messages(cfg: Config, store: Store, runs: list[Run], levels: list[dict[str, Any]]
              ) -> dict[str, Any]:
    """Each alert with its SMS texts by language and its recipients by outbox state.
    Only texts and counts: the numbers are never read."""
    from alerts.notices import notice_html_url

    titles = {lv["name"]: lv["title"] for lv in levels}
    with store.session() as s:
        alerts = list(s.scalars(select(AlertRow).where(AlertRow.run_id.in_([r.id for r in runs]))
                                .order_by(AlertRow.sent, AlertRow.id)))
        ids = [a.identifier for a in alerts]
        rows = s.execute(select(OutboxRow.alert_identifier, OutboxRow.state, OutboxRow.body,
                                OutboxRow.segments, Subscriber.language)
                         .outerjoin(Subscriber, Subscriber.id == OutboxRow.subscriber_id)
                         .where(OutboxRow.alert_identifier.in_(ids)).order_by(OutboxRow.id)).all()
    per: dict[str, dict[str, Any]] = {i: {"states": Counter(), "texts": {}} for i in ids}
    for ident, state, body, segments, language in rows:
        p = per[ident]
        p["states"][state] += 1
        key = (language or "unknown", body)
        t = p["texts"].setdefault(key, {"language": key[0], "text": body, "segments": segments,
                                        "recipients": 0})
        t["recipients"] += 1
    out, totals = [], Counter()
    for a in alerts:
        p = per[a.identifier]
        totals.update(p["states"])
        published = a.state == "published"  # held or rejected notices have no public page
        out.append({"identifier": a.identifier, "zone": a.zone, "level": a.level,
                    "level_name": a.level_name,
                    "level_title": titles.get(a.level_name, "All clear"
                                              if a.level_name == "all_clear" else a.level_name),
                    "msg_type": a.msg_type, "cap_status": a.status, "sent": a.sent,
                    "expires": a.expires, "state": a.state, "headline": a.headline,
                    "run_id": a.run_id,
                    "url": (notice_html_url(cfg.notices.web_base, a.identifier)
                            if published else None),
                    "sms": sorted(p["texts"].values(),
                                  key=lambda t: (t["language"], -t["recipients"])),
                    "recipients": sum(p["states"].values()),
                    "recipients_by_state": dict(sorted(p["states"].items()))})
    return {"alerts": out, "recipients_by_state": dict(sorted(totals.items())),
            "recipients": sum(totals.values())}


def _verification(cfg: Config, event: Event, timeline: dict[str, dict[str, Any]],
                  levels: list[dict[str, Any]], runs: list[Run]) -> dict[str, Any]:
    """Per verified zone and level: each onset warned in time (by a forecast, or only
    detected by an observation), late or missed, the false alarms, the hours in time, the
    baselines (never, always, persistence) on the same event and the skill against them;
    and totals."""
    from .tuning import EventSeries, triggered

    zones: dict[str, dict[str, Any]] = {}
    totals: dict[str, Contingency] = {lv["name"]: Contingency() for lv in levels}
    base_totals: dict[str, dict[str, Contingency]] = {lv["name"]: {n: Contingency() for n in BASELINES}
                                                      for lv in levels}
    used: set[str] = set()
    zcfg = {z.code: z for z in cfg.zones}
    metrics = {r.id: (r.summary or {}).get("metrics", {}) for r in runs}
    cycles = sorted(r.at for r in runs)
    detect_only: dict[str, list[str]] = {}
    for code in event.verified_zones(cfg):
        specs = cfg.level_specs(zcfg[code])
        series = EventSeries.of(event, code, cfg, cycles)
        # each level change with the zone's metrics of the run that made it
        changes = [(ch["time"], ch["level"], int(ch["previous"] or 0),
                    {k: (math.nan if v is None else float(v))
                     for k, v in (metrics.get(ch["run_id"], {}).get(code) or {}).items()})
                   for ch in timeline[code]["changes"]]
        zones[code] = {}
        detect_only[code] = [f"{spec.title}: {c.metric} {c.op} {c.value:g}" for spec in specs
                             for c in spec.criteria if c.observed]
        for spec in specs:
            periods = periods_from_levels(triggered(changes, specs, spec.rank), spec.rank)
            c = series.verify(periods)
            base = {n: series.baseline(n) for n in BASELINES}
            totals[spec.name] = totals[spec.name] + c
            for n in BASELINES:
                base_totals[spec.name][n] = base_totals[spec.name][n] + base[n]
            used.add(spec.name)
            # the reasons of the decision that opened each period: the criteria that held
            why = {p.start: next((list(ch.get("reasons") or []) for ch in timeline[code]["changes"]
                                  if ch["time"] == p.start and ch["level"] >= spec.rank), []) for p in periods}
            zones[code][spec.name] = {**_counts(c), "title": spec.title,
                                      "periods": [{"start": p.start, "end": p.end, "raised_by": p.trigger,
                                                   "reasons": why[p.start]} for p in periods],
                                      "outcomes": [{"onset": o.onset, "outcome": o.kind, "raised_by": o.trigger,
                                                    "lead_min": None if o.lead is None else o.lead.total_seconds() / 60,
                                                    "reasons": why.get(o.onset - o.lead, []) if o.lead is not None
                                                    else []}
                                                   for o in c.outcomes],
                                      "baselines": {n: _counts(b) for n, b in base.items()},
                                      "skill": skill_against(c, base),
                                      "summary": _in_words(c, base)}
    return {"tolerance_minutes": event.tolerance_minutes,
            "lead_window_hours": event.lead_window_hours,
            "zones_verified": list(zones),
            "onsets": {z: list(event.observed[z]) for z in zones},
            "floods": {z: [{"onset": t0, "end": t1} for t0, t1 in event.floods(z)] for z in zones},
            "detect_only": {z: v for z, v in detect_only.items() if v},
            "zones": zones,
            "totals": {lv["name"]: {**_counts(totals[lv["name"]]), "title": lv["title"],
                                    "baselines": {n: _counts(b) for n, b in base_totals[lv["name"]].items()},
                                    "skill": skill_against(totals[lv["name"]], base_totals[lv["name"]])}
                       for lv in levels if lv["name"] in used}}


def _counts(c: Contingency) -> dict[str, Any]:
    sc = scores(c)
    return {"hits": c.hits, "forecast_hits": c.forecast_hits, "detections": c.detections, "late": c.late,
            "misses": c.misses, "false_alarms": c.false_alarms,
            "lead_times_min": [t.total_seconds() / 60.0 for t in c.lead_times],
            "detection_leads_min": [t.total_seconds() / 60.0 for t in c.detection_leads],
            "late_min": [t.total_seconds() / 60.0 for t in c.late_by],
            "hours": {"warned_flooded": c.hours.a, "warned_dry": c.hours.b, "flooded_unwarned": c.hours.c,
                      "quiet": c.hours.d},
            **sc}


def _in_words(c: Contingency, base: dict[str, Contingency]) -> str:
    """One zone and level, as a manager would say it."""
    n = c.hits + c.late + c.misses
    parts = []
    if n == 0:
        parts.append("no flood was observed")
    else:
        parts.append(f"{c.forecast_hits} of {n} flood(s) warned in time by a forecast"
                     + (f" (median lead {_duration(scores(c)['median_lead_min'])})" if c.lead_times else ""))
        if c.detections:
            parts.append(f"{c.detections} only detected by an observation as the water came (no forecast lead)")
        if c.late:
            parts.append(f"{c.late} warned late (by {', '.join(_duration(t.total_seconds() / 60) for t in c.late_by)})")
        if c.misses:
            parts.append(f"{c.misses} missed")
    parts.append(f"{c.false_alarms} false alarm(s)")
    if c.hours.total > 0:
        pss = scores(c)["pss_time"]
        bp = {k: scores(v)["pss_time"] for k, v in base.items()}
        parts.append(f"{c.hours.b:.1f} h warned without flooding; Peirce skill in time "
                     f"{_num(pss)} (never warn {_num(bp['never'])}, always warn {_num(bp['always'])}, "
                     f"persistence {_num(bp['persistence'])})")
    return "; ".join(parts)


# --------------------------------------------------------------------------- figures
def _figures(cfg: Config, site: Any, event: Event, data: dict[str, Any]) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    return {"timeline": _timeline_png(event, data),
            "gauges": {g["id"]: _hydrograph_png(event, g, data) for g in data["gauges"]},
            "maps": {c["run_id"]: _map_png(cfg, site, c, data)
                     for c in data["maps"]["cycles"] if c["shown"]}}


def _image(png: bytes, alt: str) -> dict[str, Any]:
    width, height = struct.unpack(">II", png[16:24])
    return {"src": "data:image/png;base64," + base64.b64encode(png).decode("ascii"), "alt": alt,
            "width": width, "height": height, "bytes": len(png)}


def _when(t: datetime) -> str:
    return f"{t:%d %b %H:%M}"


def _timeline_png(event: Event, data: dict[str, Any]) -> dict[str, Any]:
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from .console import _png

    levels = data["levels"]
    colour = {lv["rank"]: lv["colour"] for lv in levels}
    title = {lv["rank"]: lv["title"] for lv in levels}
    zones = data["timeline"]
    fig, axes = plt.subplots(len(zones), 1, figsize=(7, 0.85 * len(zones) + 1.3), dpi=DPI,
                             sharex=True, squeeze=False)
    alt = []
    for ax, (code, z) in zip(axes[:, 0], zones.items()):
        steps = [(event.start, 0), *((c["time"], c["level"]) for c in z["changes"]),
                 (event.end, None)]
        for (t0, lv), (t1, _) in pairwise(steps):
            if lv:
                ax.fill_between([t0, t1], 0, lv, color=colour.get(lv, "grey"), step="post", lw=0)
        xs = [t for t, _ in steps]
        ys = [lv for _, lv in steps[:-1]] + [steps[-2][1]]
        ax.step(xs, ys, where="post", color="black", lw=0.7)
        for onset in z["observed_onsets"]:
            ax.axvline(onset, color="black", ls="--", lw=1.1)
            ax.plot([onset], [len(levels) + 0.15], "v", color="black", ms=6, clip_on=False)
        ax.set_ylim(0, len(levels) + 0.3)
        ax.set_yticks(range(len(levels) + 1))
        ax.set_yticklabels(["none"] + [str(r) for r in range(1, len(levels) + 1)], fontsize=7)
        label = code + ("\n(dry)" if z["observed"] and not z["observed_onsets"] else "")
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        ax.grid(axis="x", lw=0.3)
        said = ", ".join(f"{title.get(c['level'], 'no warning')} at {_when(c['time'])}"
                         for c in z["changes"]) or "no warning"
        onsets = ", ".join(_when(t) for t in z["observed_onsets"])
        obs = (f"; observed flood onset {onsets}" if onsets else
               "; observed not to flood" if z["observed"] else "")
        alt.append(f"{code}: {said}{obs}")
    ax = axes[-1, 0]
    ax.set_xlim(event.start, event.end)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%d %b %H:%M", tz=UTC))
    ax.set_xlabel("time (UTC)")
    handles = [Patch(color=lv["colour"], label=f"{lv['rank']} {lv['title']}") for lv in levels]
    handles.append(Line2D([], [], color="black", ls="--", marker="v", label="observed flood onset"))
    axes[0, 0].legend(handles=handles, loc="lower left", bbox_to_anchor=(0.0, 1.08),
                      ncol=len(handles), fontsize=7, frameon=False, borderaxespad=0.0,
                      handlelength=1.5)
    png = _png(fig)
    return _image(png, "Step chart of the warning level of each zone over the event, coloured by "
                       "level. " + ". ".join(alt) + ".")


def _hydrograph_png(event: Event, g: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from .console import _png

    fig, ax = plt.subplots(figsize=(7, 3.3), dpi=DPI)
    obs = g["observed"]
    q = g["quantity"]
    key, unit = q["key"], q["unit"]
    t = np.array([x.replace(tzinfo=None) for x in obs["times"]], dtype="datetime64[s]")
    v = np.array([np.nan if x is None else x for x in obs[key]], dtype=float)
    qc = np.array(obs["qc"], dtype=int)
    if t.size:
        ax.plot(t[qc == 0], v[qc == 0], color="navy", lw=1.6, label=f"observed {q['name']}", zorder=3)
        bad = (qc != 0) & np.isfinite(v)
        if bad.any():
            ax.plot(t[bad], v[bad], "x", color="crimson", ms=4, label="flagged reading (QC)",
                    zorder=3)
    fcs = g["forecasts"]
    if fcs:
        issued = mdates.date2num([f["issued_at"] for f in fcs])
        norm = Normalize(vmin=issued.min(), vmax=max(issued.max(), issued.min() + 1e-6))
        cmap = plt.get_cmap("viridis")
        for f, x in zip(fcs, issued):
            ft = np.array([y.replace(tzinfo=None) for y in f["times"]], dtype="datetime64[s]")
            fv = np.array([np.nan if y is None else y for y in f[key]], dtype=float)
            ax.plot(ft, fv, color=cmap(norm(x)), lw=0.8, alpha=0.9)
        cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01, aspect=30)
        cb.set_label("forecast issued (UTC)", fontsize=7)
        cb.set_ticks(issued[:: max(1, math.ceil(len(issued) / 6))])
        cb.ax.yaxis.set_major_formatter(mdates.DateFormatter("%d %b %H:%M", tz=UTC))
        cb.ax.tick_params(labelsize=6)
    level_colours = {lv["name"]: lv["colour"] for lv in data["levels"]}
    for name, value in g["thresholds"].items():
        ax.axhline(value, ls="--", lw=0.8, color=STAGE_COLOURS.get(name, level_colours.get(name, "grey")),
                   label=f"{name} {value:g} {unit}")
    zones = data["timeline"]
    for code in g["zones"]:
        for onset in zones[code]["observed_onsets"]:
            ax.axvline(onset.replace(tzinfo=None), color="black", ls=":", lw=1)
    ax.set_xlim(event.start.replace(tzinfo=None), event.end.replace(tzinfo=None))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%d %b %H:%M"))
    ax.set_title(f"{g['name']} ({g['id']})", fontsize=9)
    ax.set_ylabel(q["axis"], fontsize=8)
    ax.set_xlabel("time (UTC)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="upper left")
    png = _png(fig)
    peak = g["observed_peak"]
    parts = [f"Hydrograph of gauge {g['name']} ({g['id']})"]
    parts.append(f"observed {q['name']} peaked at {peak['value']:.2f} {unit} at {_when(peak['time'])} UTC"
                 if peak else "no observed readings in the event")
    if fcs:
        parts.append(f"{len(fcs)} forecasts drawn as thin lines coloured by issue time, from "
                     f"{_when(fcs[0]['issued_at'])} to {_when(fcs[-1]['issued_at'])} UTC, highest "
                     f"forecast {q['name']} {_num(g['forecast_peak'])} {unit}")
    else:
        parts.append("no forecast at this gauge (no zone is tied to it)")
    stages = ", ".join(f"{k} {v:g} {unit}" for k, v in g["thresholds"].items())
    parts.append(f"{q['threshold_kind']} {stages}" if stages else f"no {q['threshold_kind']} configured")
    return _image(png, "; ".join(parts) + ".")


def _map_png(cfg: Config, site: Any, cell: dict[str, Any], data: dict[str, Any]
             ) -> dict[str, Any]:
    import matplotlib
    import rasterio

    from .maps import peak_depth_map

    with rasterio.open(_depth_file(cfg, cell["at"])) as src:
        depth = src.read(1).astype("float32")
    levels = {lv["rank"]: lv for lv in data["levels"]}
    colours, titles = {}, {}
    for code, z in data["timeline"].items():  # highest level reached up to this cycle
        top = max((c["level"] for c in z["changes"] if c["time"] <= cell["at"]), default=0)
        if top in levels:
            colours[code], titles[code] = levels[top]["colour"], levels[top]["title"]
    # maps.peak_depth_map draws at its own size; the report's DPI keeps the file small
    with tempfile.TemporaryDirectory() as tmp, matplotlib.rc_context({"savefig.dpi": DPI}):
        title = f"Forecast peak depth, cycle of {cell['at']:%d %b %Y %H:%M} UTC"
        path = peak_depth_map(site, depth, Path(tmp) / "map.png", title=title,
                              zone_colours=colours, zone_levels=titles)
        png = path.read_bytes()
    raised = "; ".join(f"{code} {titles[code]}" for code in titles) or "no zone warned yet"
    alt = (f"Map of the forecast peak flood depth from the cycle of {_when(cell['at'])} UTC "
           f"({', '.join(cell['why'])}): deepest {cell['max_depth_m']:.2f} m, "
           f"{cell['flooded_cells']} cells deeper than {data['maps']['flooded_depth_m']:g} m; "
           f"zones outlined by the highest level reached so far: {raised}.")
    return _image(png, alt)


# --------------------------------------------------------------------------- output
def _render(data: dict[str, Any], figures: dict[str, Any]) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["utc"] = lambda t: "" if t is None else f"{t:%Y-%m-%d %H:%M}"
    env.filters["num"] = _num
    env.filters["minutes"] = _duration
    return env.get_template("report.html.j2").render(d=data, fig=figures, languages=LANGUAGE_NAMES)


def _num(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _duration(minutes: float | None) -> str:
    if minutes is None or math.isnan(minutes):
        return "n/a"
    sign = "-" if minutes < 0 else ""
    m = round(abs(minutes))
    return f"{sign}{m // 60} h {m % 60:02d} min"


def _dt64(t: np.datetime64) -> datetime:
    return datetime.fromtimestamp(int(t.astype("datetime64[s]").astype(np.int64)), tz=UTC)


def _jsonable(obj: Any) -> Any:
    """Datetimes as ISO 8601, NaN and infinities as null, tuples as lists."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.astimezone(UTC).isoformat()
    if isinstance(obj, timedelta):
        return obj.total_seconds() / 60.0
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _safe_url(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("floodwarn")
    except PackageNotFoundError:
        return None
