"""The web app of ``floodwarn serve``: public notices, the JSON API (with its OpenAPI
document at ``/openapi.json``), ``/health``, and the Twilio webhooks.

Public, without login: ``/`` (current warnings), ``/notices/<id>.xml`` and ``.html``,
``/feed.atom``; a name that cannot be a notice (too long for a file name, odd characters)
is a plain 404, never a server error. JSON API under ``/api``: zones with their current
level, levels, gauges, a gauge's readings with QC flags, alerts. The operator console
(login, map, approval queue) is built on top of this app.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, Field
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from .config import ZONE_CODE, Config, read_zones
from .errors import IngestError
from .secrets import env_secret
from .security import SecurityHeaders
from .storage import AlertRow, Store, ZoneStateRow

log = logging.getLogger(__name__)

#: the name of a published notice file without its extension: its CAP identifier, made of
#: a zone code (warning.config.ZONE_CODE), the cycle time and ".drill" for a drill
#: (warning.alerting), well inside a file name's 255 bytes
NOTICE_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]{0,199}$")

#: a scope of the API: the live warnings, or a drill's ("drill:<name>", 80 characters at most
#: as stored, no control characters)
SCOPE = r"^(live|drill:[^\x00-\x1f\x7f]{1,74})$"

#: what ``since`` and ``until`` accept: an ISO 8601 date and time (seconds and fraction
#: optional), with its zone; a number is not read as a Unix time. A time without a zone
#: passes here and is refused by the route with a 400 that says to add one.
ISO_DATE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?"
                           r"([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)?")


def _iso_date_time(value: Any) -> Any:
    if isinstance(value, str) and not ISO_DATE_TIME.fullmatch(value):
        raise ValueError("give an ISO 8601 date-time with a time zone, e.g. 2025-11-14T06:00:00Z")
    return value


#: a query parameter that is an ISO 8601 date-time (never a number of seconds)
QueryTime = Annotated[datetime, BeforeValidator(_iso_date_time)]
#: a time in a /health document, as ISO 8601 text
IsoTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class Problem(BaseModel):
    """An error answer: ``detail`` says what is wrong (and what to ask instead)."""

    detail: str


class LevelOut(BaseModel):
    rank: int
    name: str
    title: str
    colour: str
    severity: str
    sms: bool
    approval: bool


class ZoneOut(BaseModel):
    code: str
    name: str
    level: int
    level_name: str
    since: datetime | None
    active: bool


class GaugeOut(BaseModel):
    id: str
    name: str
    lon: float
    lat: float
    flood_stages_m: dict[str, float]


class ReadingOut(BaseModel):
    time: datetime
    stage_m: float | None
    flag: str
    #: where the gauge measures flow: discharge (m3/s) and its QC flag
    discharge_m3s: float | None = None
    discharge_flag: str | None = None


class LastCycleOut(BaseModel):
    at: IsoTime
    ok: bool
    seconds: float
    detail: str


class SchedulerOut(BaseModel):
    """Without a service (the web app alone) only ``running`` (false)."""

    running: bool
    clock: IsoTime | None = None
    last_cycle_at: IsoTime | None = None
    last_forecast: str | None = None
    last_error: str | None = None
    refused_overlaps: int | None = None
    last_cycle: LastCycleOut | None = None


class FeedOut(BaseModel):
    state: str
    last_data: IsoTime | None
    checked: IsoTime | None


class DataProblemOut(BaseModel):
    key: str
    text: str
    since: IsoTime


class HealthOut(BaseModel):
    ok: bool
    status: Literal["ok", "degraded", "down"]
    #: why it answers 503 (empty when healthy)
    reasons: list[str]
    problems: list[DataProblemOut]
    database: str
    scheduler: SchedulerOut
    feeds: dict[str, FeedOut]


class LiveOut(BaseModel):
    alive: bool
    scheduler_running: bool


class ReadyOut(BaseModel):
    ready: bool
    reasons: list[str]


class AlertOut(BaseModel):
    identifier: str
    zone: str
    level: int
    level_name: str
    msg_type: str
    status: str
    sent: datetime
    expires: datetime
    headline: str
    state: str
    cap_url: str
    html_url: str


def create_app(cfg: Config, *, store: Store | None = None, service: Any = None) -> FastAPI:
    """The app for one site. ``service`` (a :class:`warning.service.Service`) feeds /health."""
    store = store or Store(cfg.db_url)
    app = FastAPI(title=f"floodwarn: {cfg.site.name}", version="1",
                  description="Flood warnings for the site's zones: levels, gauges, readings and notices "
                              "(CAP 1.2). Public and read-only.",
                  docs_url=None, redoc_url=None)  # their pages load scripts from a CDN: warning.security
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(packages=[("warning", "static")]), name="static")
    out = cfg.output_dir
    levels = [LevelOut(rank=r, name=lv.name, title=lv.title, colour=lv.colour, severity=lv.severity, sms=lv.sms,
                       approval=lv.approval) for r, lv in enumerate(cfg.levels, start=1)]
    by_rank = {lv.rank: lv for lv in levels}
    # public zone names from the zones GeoJSON (the config holds codes and thresholds)
    zones_file = read_zones(cfg.path(cfg.site.zones))
    names = {z.code: z.name for z in zones_file.zones}
    if zones_file.problems:
        log.warning("zone names may be missing (%s); showing codes", "; ".join(zones_file.problems))

    def public_file(path: Path, media_type: str) -> FileResponse:
        try:
            published = path.is_file()
        except (OSError, ValueError):  # a name the system refuses cannot be a published file
            published = False
        if not published:
            raise HTTPException(404, f"{path.name} is not published (yet)")
        return FileResponse(path, media_type=media_type)

    # ------------------------------------------------------------------ public pages
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> Response:
        page = out / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return HTMLResponse(f"<!doctype html><html lang='en'><title>{cfg.notices.sender_name}</title>"
                            "<h1>No flood warnings are in force.</h1></html>")

    @app.get("/feed.atom", include_in_schema=False)
    def feed() -> FileResponse:
        return public_file(out / "feed.atom", "application/atom+xml")

    @app.get("/notices/{name}", include_in_schema=False)
    def notice(name: str) -> FileResponse:
        stem, _, ext = name.rpartition(".")
        if ext not in ("xml", "html") or not NOTICE_STEM.match(stem):
            raise HTTPException(404, "no such notice: notices are served as <identifier>.xml (CAP) "
                                     "or <identifier>.html")
        media = "application/cap+xml" if ext == "xml" else "text/html"
        return public_file(out / "cap" / f"{stem}.{ext}", media)

    # ------------------------------------------------------------------ JSON API
    @app.get("/api/levels", response_model=list[LevelOut], tags=["api"])
    def api_levels() -> list[LevelOut]:
        """The warning levels, lowest first."""
        return levels

    @app.get("/api/zones", response_model=list[ZoneOut], tags=["api"])
    def api_zones(scope: str = Query("live", pattern=SCOPE, description="live, or drill:<name>")) -> list[ZoneOut]:
        """Every zone with its published level (a raise held for approval is not public)."""
        with store.session() as s:
            rows = {r.zone: r for r in s.scalars(select(ZoneStateRow).where(ZoneStateRow.scope == scope))}
        zones = []
        for z in cfg.zones:
            r = rows.get(z.code)
            lvl = r.level if r else 0
            zones.append(ZoneOut(code=z.code, name=names.get(z.code, z.code), level=lvl,
                                 level_name=by_rank[lvl].name if lvl in by_rank else "none",
                                 since=r.since if r else None, active=bool(r and r.active)))
        return zones

    @app.get("/api/gauges", response_model=list[GaugeOut], tags=["api"])
    def api_gauges() -> list[GaugeOut]:
        """Gauges with their location (WGS 84) and flood stages (m above gauge zero)."""
        return [GaugeOut(id=g.id, name=g.name, lon=g.lon, lat=g.lat,
                         flood_stages_m=g.flood_stages.model_dump(exclude_none=True)
                         if g.flood_stages is not None else {})
                for g in cfg.gauges]

    @app.get("/api/gauges/{gauge_id}/readings", response_model=list[ReadingOut], tags=["api"], responses={
        400: {"model": Problem, "description": "`since` or `until` without a time zone"},
        404: {"model": Problem, "description": "no such gauge (the answer lists the gauges)"},
        503: {"model": Problem, "description": "the gauge readings cannot be read now"}})
    def api_readings(
            gauge_id: str = PathParam(description="a gauge's id, as listed by /api/gauges",
                                      examples=[g.id for g in cfg.gauges]),
            since: Annotated[QueryTime | None, Query(description="readings from this time on (ISO 8601 with "
                                                                 "a time zone, e.g. 2025-11-14T06:00:00Z)")] = None,
            until: Annotated[QueryTime | None, Query(description="readings up to this time (ISO 8601 with "
                                                                 "a time zone)")] = None,
            limit: Annotated[int, Query(ge=1, le=100_000, description="the newest this many")] = 2000,
    ) -> list[ReadingOut]:
        """A gauge's stage readings (m) with their QC flag ("ok" or why it was set aside), and
        its discharge (m3/s) with its own flag where the gauge measures flow."""
        if gauge_id not in {g.id for g in cfg.gauges}:
            raise HTTPException(404, f"no gauge {gauge_id[:64]!r}; gauges: "
                                     f"{', '.join(g.id for g in cfg.gauges)}")
        for key, value in (("since", since), ("until", until)):
            if value is not None and value.tzinfo is None:
                raise HTTPException(400, f"{key}: give a time zone, e.g. 2025-11-14T06:00:00Z")
        from .pipeline import Inputs

        try:
            ds = Inputs(cfg).read_gauges()
        except IngestError as exc:
            raise HTTPException(503, f"gauge readings unavailable: {exc}") from None
        if ds is None or gauge_id not in ds["station"].values:
            return []
        from .ingest.gauge_csv import QC_NAMES

        st = ds.sel(station=gauge_id)

        def flag(f: Any) -> str:
            bits = [name for mask, name in QC_NAMES.items() if int(f) & int(mask)]
            return ",".join(bits) if bits else "ok"

        n = st.sizes["time"]
        has_q = "discharge" in st and "discharge_qc" in st
        q = st["discharge"].values if has_q else np.full(n, np.nan)
        qf = st["discharge_qc"].values if has_q else np.zeros(n, dtype=np.uint8)
        rows = []
        for t, v, f, qv, qq in zip(st["time"].values, st["stage"].values, st["qc"].values, q, qf, strict=True):
            when = datetime.fromisoformat(str(np.datetime_as_string(t, unit="s")) + "+00:00")
            if (since and when < since) or (until and when > until):
                continue
            rows.append(ReadingOut(time=when, stage_m=None if np.isnan(v) else float(v), flag=flag(f),
                                   discharge_m3s=None if not has_q or np.isnan(qv) else float(qv),
                                   discharge_flag=flag(qq) if has_q else None))
        return rows[-limit:]

    @app.get("/api/alerts", response_model=list[AlertOut], tags=["api"])
    def api_alerts(zone: str | None = Query(None, pattern=ZONE_CODE.pattern, examples=[z.code for z in cfg.zones],
                                            description="a zone's code, as listed by /api/zones"),
                   scope: str = Query("live", pattern=SCOPE, description="live, or drill:<name>"),
                   limit: int = Query(100, ge=1, le=10_000, description="the newest this many")
                   ) -> list[AlertOut]:
        """Published notices (newest first), with links to their CAP file and page. Notices held
        for a manager's approval, rejected or withdrawn are not public and are not listed."""
        from alerts.notices import notice_html_url, notice_url

        q = (select(AlertRow).where(AlertRow.scope == scope, AlertRow.state == "published")
             .order_by(AlertRow.id.desc()).limit(limit))
        if zone:
            q = q.where(AlertRow.zone == zone)
        with store.session() as s:
            rows = s.scalars(q).all()
        base = cfg.notices.web_base
        return [AlertOut(identifier=r.identifier, zone=r.zone, level=r.level, level_name=r.level_name,
                         msg_type=r.msg_type, status=r.status, sent=r.sent, expires=r.expires,
                         headline=r.headline, state=r.state, cap_url=notice_url(base, r.identifier),
                         html_url=notice_html_url(base, r.identifier)) for r in rows]

    # ------------------------------------------------------------------ health
    def database_check() -> tuple[bool, str]:
        """The database answers a query on the schema; a SQLite file is still a file (an
        open connection keeps answering after the file is removed or replaced)."""
        try:
            u = make_url(store.url)
            if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
                path = Path(u.database)
                if not path.is_file():
                    what = "a folder" if path.is_dir() else "missing"
                    return False, f"database file {path} is {what}"
            with store.engine.connect() as c:
                c.execute(text("SELECT 1 FROM runs LIMIT 1"))
        except Exception as exc:  # noqa: BLE001  (report, never crash the health check)
            return False, f"{type(exc).__name__}: {exc}"
        return True, "ok"

    def health_report() -> tuple[dict[str, Any], list[str], list[str]]:
        """The health document, the reasons it is failing (503), and the further reasons
        the service is not ready (no cycle has succeeded yet)."""
        db_ok, db_detail = database_check()
        sched: dict[str, Any] = {"running": False}
        failing: list[str] = [] if db_ok else [f"database: {db_detail}"]
        not_ready: list[str] = []
        if service is not None:
            st = service.state
            last = st.cycles[-1] if st.cycles else None
            sched = {"running": st.running, "clock": service.clock().isoformat(timespec="seconds"),
                     "last_cycle_at": st.last_cycle_at.isoformat() if st.last_cycle_at else None,
                     "last_forecast": Path(st.last_forecast).name if st.last_forecast else None,
                     "last_error": st.last_error, "refused_overlaps": st.refused_overlaps,
                     "last_cycle": None if last is None else {"at": last.at.isoformat(), "ok": last.ok,
                                                              "seconds": round(last.seconds, 2),
                                                              "detail": last.detail}}
            if not st.running:
                failing.append("scheduler: not running")
            if last is not None and not last.ok:
                failing.append(f"forecast cycle: the last one ({last.at:%Y-%m-%d %H:%M}Z) failed: "
                               f"{last.detail or st.last_error or 'no detail'}")
            if not any(c.ok for c in st.cycles):
                not_ready.append("forecast cycle: none has succeeded yet")
            for name, f in st.feeds.items():
                if f.state.startswith(("stale", "error")):
                    failing.append(f"feed {name}: {f.state}")
        feeds = {} if service is None else {
            name: {"state": f.state, "last_data": f.last_data.isoformat() if f.last_data else None,
                   "checked": f.checked.isoformat(timespec="seconds") if f.checked else None}
            for name, f in service.state.feeds.items()}
        problems = [] if service is None else [
            {"key": p.key, "text": p.text, "since": p.since.isoformat(timespec="seconds")}
            for p in list(service.state.problems.values())]
        down = not db_ok or (service is not None and not sched["running"])
        status = "down" if down else "degraded" if problems else "ok"
        ok = not failing and not any(p["key"] == "cycle" for p in problems)
        return ({"ok": ok, "status": status, "reasons": failing, "problems": problems, "database": db_detail,
                 "scheduler": sched, "feeds": feeds}, failing, not_ready)

    @app.get("/health", tags=["operations"], response_model=HealthOut, response_model_exclude_unset=True,
             responses={503: {"model": HealthOut, "description": "failing: the reasons are listed in `reasons`"}})
    def health(response: Response) -> dict[str, Any]:
        """Scheduler, feeds, database, the last forecast cycle and open data problems.

        Answers **503** with ``reasons`` when the database does not answer (or its file is
        gone), the scheduler is not running, the last forecast cycle failed, or a feed is
        past its allowed delay or in error; otherwise 200. ``status`` is "down" (database
        or scheduler), "degraded" (open data problems, listed in ``problems``) or "ok".
        """
        body, failing, _ = health_report()
        response.status_code = 503 if failing or not body["ok"] else 200
        return body

    @app.get("/health/live", tags=["operations"], response_model=LiveOut,
             responses={503: {"model": LiveOut, "description": "the scheduler has stopped: restart the process"}})
    def live(response: Response) -> LiveOut:
        """Liveness: the process answers and its scheduler runs (503 when it has stopped)."""
        running = service is None or bool(service.state.running)
        response.status_code = 200 if running else 503
        return LiveOut(alive=running, scheduler_running=running)

    @app.get("/health/ready", tags=["operations"], response_model=ReadyOut,
             responses={503: {"model": ReadyOut, "description": "not ready: the reasons are listed in `reasons`"}})
    def ready(response: Response) -> ReadyOut:
        """Readiness: healthy (as ``/health``) and at least one forecast cycle has
        succeeded, so the warnings shown come from this service's data (503 otherwise)."""
        _, failing, not_ready = health_report()
        reasons = failing + not_ready
        response.status_code = 200 if not reasons else 503
        return ReadyOut(ready=not reasons, reasons=reasons)

    # ------------------------------------------------------------------ console
    from .console import make_console
    from .metrics import make_metrics_router

    loaded: dict[str, Any] = {}

    def site() -> Any:
        if service is not None:
            return service.site
        if "site" not in loaded:
            from .site import Site

            loaded["site"] = Site.load(cfg)
        return loaded["site"]

    app.include_router(make_console(cfg, store, site=site, service=service))
    app.include_router(make_metrics_router(store, service))  # GET /metrics, for Prometheus

    # ------------------------------------------------------------------ Twilio webhooks
    token = env_secret("TWILIO_AUTH_TOKEN")
    if token:
        from .subscribers import PhoneVault
        from .webhooks import make_router

        base = env_secret("FLOODWARN_PUBLIC_URL") or cfg.notices.web_base
        app.include_router(make_router(store, auth_token=token, public_base_url=base, vault=PhoneVault.from_env(),
                                       region=cfg.subscribers.default_region,
                                       zones={z.code: names.get(z.code, z.code) for z in cfg.zones},
                                       sender_name=cfg.notices.sender_name))
    else:
        log.info("TWILIO_AUTH_TOKEN not set: the Twilio webhooks are not mounted")
    return app

