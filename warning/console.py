"""The operators' console: log in, see the site (zones by level on a map over the
hillshade with the latest forecast depth, gauges), the alert log with each decision's
reasons, the approval queue (approve, edit, reject), residents' reports and feed health.

Server-rendered pages (Jinja2, no JavaScript). Operators are in the ``operators`` table
with argon2id password hashes (``floodwarn operators add``, see warning.logins); sign-in is
throttled per account and address and its form carries a token bound to a pre-session
cookie; a login sets a random, HTTP-only, Secure, SameSite=Strict session cookie kept on
the server; every form carries a CSRF token bound to the session.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import math
import secrets
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import jinja2
from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import delete, func, select

from .config import Config
from .errors import FloodwarnError
from .logins import LoginThrottle, Passwords
from .secrets import env_secret
from .storage import ROLES, AuditRow, Operator, ReportRow, SessionRow, Store, ZoneStateRow, utcnow

COOKIE = "floodwarn_session"
#: before sign-in: a random nonce whose HMAC the login form carries (login CSRF)
LOGIN_COOKIE = "floodwarn_login"
SESSION_S = 12 * 3600
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates" / "console"),
                          autoescape=True)


# --------------------------------------------------------------------------- operators
def verify_operator(store: Store, name: str, password: str, *, passwords: Passwords | None = None) -> str:
    """The role of operator ``name`` if ``password`` is theirs; FloodwarnError otherwise.
    A hash made with older parameters is replaced by one with ``passwords``' own."""
    passwords = passwords or Passwords()
    with store.session() as s:
        row = s.get(Operator, name)
        stored = row.password_hash if row is not None else None
    ok, rehash = passwords.verify(password, stored)
    if not ok or row is None:
        raise FloodwarnError(f"wrong name or password for {name!r}")
    if rehash is not None:
        _store_rehash(store, name, stored, rehash)
    return row.role


def _store_rehash(store: Store, name: str, old: str | None, new: str) -> None:
    """Replace ``old`` by ``new`` unless the password was changed meanwhile."""
    with store.session.begin() as s:
        row = s.get(Operator, name)
        if row is not None and row.password_hash == old:
            row.password_hash = new
            store.audit(s, "password_rehashed", {"operator": name})


OPERATOR_EVENTS = ("data_problem", "data_problem_cleared", "zone_failed", "cycle_failed",
                   "delivery_in_doubt")
"""Audit events shown to operators as problems on the console's overview."""


def add_operator(store: Store, name: str, password: str, role: str = "manager", *,
                 passwords: Passwords | None = None) -> None:
    """Add operator ``name`` or set their password and role (ending their sessions)."""
    if role not in ROLES:
        raise FloodwarnError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if not name or len(name) > 120:
        raise FloodwarnError("an operator's name has 1 to 120 characters")
    digest = (passwords or Passwords()).hash(password)
    with store.session.begin() as s:
        row = s.get(Operator, name)
        if row is None:
            s.add(Operator(name=name, password_hash=digest, role=role))
            ended = 0
        else:  # a new password ends the sessions signed in with the old one
            row.password_hash, row.role = digest, role
            ended = end_sessions(store, name, s)
        store.audit(s, "operator_set", {"operator": name, "role": role, "sessions_ended": ended})


# --------------------------------------------------------------------------- sessions
class Sessions:
    """Console sessions kept in the database: the cookie is a random token; the server
    keeps its SHA-256 with the operator and the expiry, so a session ends at once when it
    signs out, when the operator's password changes or when the operator is removed (see
    :func:`end_sessions`). CSRF tokens are an HMAC of the session token."""

    def __init__(self, key: bytes, store: Store):
        self.key, self.store = key, store

    @staticmethod
    def _hash(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    def issue(self, name: str) -> str:
        token = secrets.token_urlsafe(32)
        now = utcnow()
        with self.store.session.begin() as s:
            s.add(SessionRow(token_hash=self._hash(token), operator=name, created=now,
                             expires=now + timedelta(seconds=SESSION_S)))
        return token

    def read(self, token: str | None) -> str | None:
        """The operator's name, or None for a missing, unknown, ended or expired session
        (or one whose operator no longer exists)."""
        if not token or len(token) > 200:
            return None
        with self.store.session() as s:
            row = s.get(SessionRow, self._hash(token))
            if row is None or row.expires <= utcnow() or s.get(Operator, row.operator) is None:
                return None
            return row.operator

    def end(self, token: str | None) -> None:
        if token:
            with self.store.session.begin() as s:
                s.execute(delete(SessionRow).where(SessionRow.token_hash == self._hash(token)))

    def csrf(self, token: str) -> str:
        return hmac.new(self.key, ("csrf|" + token).encode(), hashlib.sha256).hexdigest()

    def login_csrf(self, nonce: str) -> str:
        """The sign-in form's token: an HMAC of the nonce in its pre-session cookie, so a
        form posted from another site (which cannot read or set that cookie) is refused."""
        return hmac.new(self.key, ("login|" + nonce).encode(), hashlib.sha256).hexdigest()


def end_sessions(store: Store, name: str, s: Any = None) -> int:
    """End every console session of operator ``name``; the number ended."""
    if s is None:
        with store.session.begin() as s2:
            return end_sessions(store, name, s2)
    return s.execute(delete(SessionRow).where(SessionRow.operator == name)).rowcount or 0


def remove_operator(store: Store, name: str) -> int:
    """Remove operator ``name`` and end their sessions; the number of sessions ended."""
    with store.session.begin() as s:
        row = s.get(Operator, name)
        if row is None:
            raise FloodwarnError(f"no operator named {name!r}")
        ended = end_sessions(store, name, s)
        s.delete(row)
        store.audit(s, "operator_removed", {"operator": name, "sessions_ended": ended})
    return ended


def list_operators(store: Store) -> list[dict[str, Any]]:
    """Name, role and number of open console sessions of each operator."""
    now = utcnow()
    with store.session() as s:
        ops = s.scalars(select(Operator).order_by(Operator.name)).all()
        open_ = dict(s.execute(select(SessionRow.operator, func.count()).where(SessionRow.expires > now)
                               .group_by(SessionRow.operator)).all())
        return [{"name": o.name, "role": o.role, "sessions": int(open_.get(o.name, 0))} for o in ops]


def _session_key() -> bytes:
    """The key that signs session cookies, derived from FLOODWARN_SECRET_KEY (or the file
    named by FLOODWARN_SECRET_KEY_FILE), so every process of a site accepts the same cookies."""
    secret = env_secret("FLOODWARN_SECRET_KEY")
    if not secret:  # sessions then last as long as the process
        return secrets.token_bytes(32)
    return hashlib.sha256(("floodwarn-session:" + secret).encode()).digest()


# --------------------------------------------------------------------------- router
def make_console(cfg: Config, store: Store, *, site: Callable[[], Any] | None = None,
                 service: Any = None) -> APIRouter:
    """The console's routes under ``/console``. ``site()`` gives the loaded Site (for the map).
    The console shows the scope of the service's cycles: live, or a drill being replayed."""
    scope = f"drill:{service.drill}" if service is not None and getattr(service, "drill", None) else "live"
    from .alerting import publisher
    from .outbox import decide_approval, pending_approvals

    sessions = Sessions(_session_key(), store)
    r = APIRouter(prefix="/console", include_in_schema=False)
    by_rank = {rank: lv for rank, lv in enumerate(cfg.levels, start=1)}

    passwords = Passwords.from_config(cfg)
    throttle = LoginThrottle(store, cfg.console)

    def who(request: Request) -> str | None:
        return sessions.read(request.cookies.get(COOKIE))

    def role(user: str) -> str:
        with store.session() as s:
            op = s.get(Operator, user)
        return op.role if op is not None else ""

    def page(request: Request, name: str, *, status: int = 200, **ctx: Any) -> HTMLResponse:
        token = request.cookies.get(COOKIE, "")
        user = who(request)
        html = _env.get_template(name).render(site=cfg.site.name, user=user, role=role(user) if user else None,
                                              csrf=sessions.csrf(token), **ctx)
        # framing, CSP and the other security headers: warning.security, on every response
        return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})

    def require(request: Request) -> str:
        user = who(request)
        if user is None:
            raise HTTPException(303, headers={"Location": "/console/login"})
        return user

    def check_csrf(request: Request, token: str) -> None:
        expected = sessions.csrf(request.cookies.get(COOKIE, ""))
        if not hmac.compare_digest(expected, token or ""):
            raise HTTPException(403, "the form's CSRF token does not match your session; reload the page")

    def login_page(request: Request, error: str | None, status: int = 200) -> HTMLResponse:
        """The sign-in form with a fresh pre-session nonce (cookie) and its token (form)."""
        nonce = secrets.token_urlsafe(24)
        resp = page(request, "login.html", status=status, error=error, login_csrf=sessions.login_csrf(nonce))
        resp.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, httponly=True, secure=True, samesite="strict",
                        path="/console")
        return resp

    @r.get("/login")
    def login_form(request: Request) -> HTMLResponse:
        return login_page(request, None)

    @r.post("/login")
    def login(request: Request, name: str = Form(..., max_length=120), password: str = Form(..., max_length=1024),
              csrf: str = Form("", max_length=128)) -> Response:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not hmac.compare_digest(sessions.login_csrf(nonce), csrf):
            return login_page(request, "This sign-in form has expired or was not sent from this site: "
                                       "sign in again from this page.", status=403)
        address = request.client.host if request.client is not None else "unknown"
        refusal = throttle.check(name, address)
        if refusal is not None:  # answered without checking the password, right or wrong
            resp = login_page(request, refusal.message(), status=429)
            resp.headers["Retry-After"] = str(max(1, math.ceil(refusal.wait_s)))
            return resp
        with store.session() as s:
            op = s.get(Operator, name)
            stored = op.password_hash if op is not None else None
        ok, rehash = passwords.verify(password, stored)  # equal time for unknown names
        if not ok:
            throttle.failed(name, address)
            return login_page(request, "Wrong name or password.")
        if rehash is not None:
            _store_rehash(store, name, stored, rehash)
        throttle.succeeded(name, address)
        resp = RedirectResponse("/console", status_code=303)
        resp.set_cookie(COOKIE, sessions.issue(name), max_age=SESSION_S, httponly=True, secure=True,
                        samesite="strict", path="/console")
        resp.delete_cookie(LOGIN_COOKIE, path="/console")
        return resp

    @r.post("/logout")
    def logout(request: Request, csrf: str = Form("")) -> Response:
        check_csrf(request, csrf)
        sessions.end(request.cookies.get(COOKIE))  # the cookie is worthless from now on
        resp = RedirectResponse("/console/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/console")
        return resp

    @r.get("")
    def dashboard(request: Request) -> HTMLResponse:
        require(request)
        with store.session() as s:
            states = {z.zone: z for z in s.scalars(select(ZoneStateRow).where(ZoneStateRow.scope == scope))}
        pending = [p for p in pending_approvals(store) if p.scope == scope]
        held = {p.zone: f"{p.level} (request {p.id})" for p in pending}
        zones = []
        names = _zone_names(cfg)
        for z in cfg.zones:
            st = states.get(z.code)
            lv = by_rank.get(st.level) if st else None
            zones.append({"code": z.code, "name": names.get(z.code, z.code), "level": lv.title if lv else "No warning",
                          "level_name": lv.name if lv else "none", "colour": lv.colour if lv else "#dddddd",
                          "since": st.since if st and lv else None, "held": held.get(z.code)})
        health = _feed_health(cfg, service)
        with store.session() as s:
            gaps = s.scalars(select(AuditRow).where(AuditRow.event.in_(OPERATOR_EVENTS))
                             .order_by(AuditRow.id.desc()).limit(10)).all()
        return page(request, "dashboard.html", zones=zones, health=health, gaps=gaps,
                    gauges=[g.id for g in cfg.gauges], pending=len(pending))

    @r.get("/map.png")
    def map_png(request: Request) -> Response:
        require(request)
        if site is None:
            raise HTTPException(404, "no site loaded")
        return Response(_map_png(cfg, store, site(), by_rank, scope), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    @r.get("/approvals")
    def approvals(request: Request) -> HTMLResponse:
        user = require(request)
        return page(request, "approvals.html", items=pending_approvals(store), message=None,
                    manager=role(user) == "manager")

    @r.post("/approvals/{approval_id}")
    def decide(request: Request, approval_id: int, action: str = Form(...), csrf: str = Form(""),
               text: str = Form(""), note: str = Form("")) -> Response:
        user = require(request)
        check_csrf(request, csrf)
        if action not in ("approve", "reject"):
            raise HTTPException(400, "action must be approve or reject")
        if role(user) != "manager":
            raise HTTPException(403, "only managers approve or reject warnings")
        try:
            clock = service.clock if service is not None else utcnow  # a replay's simulated clock too
            decide_approval(store, approval_id, approve=action == "approve", by=user, text=text.strip() or None,
                            note=note.strip() or None, at=clock(), publish=publisher(cfg, clock))
        except FloodwarnError as exc:
            return page(request, "approvals.html", items=pending_approvals(store), message=str(exc),
                        manager=True)
        return RedirectResponse("/console/log", status_code=303)

    @r.get("/log")
    def log_page(request: Request, zone: str = "") -> HTMLResponse:
        require(request)
        q = select(AuditRow).order_by(AuditRow.id.desc()).limit(300)
        if zone:
            q = q.where(AuditRow.zone == zone)
        with store.session() as s:
            rows = s.scalars(q).all()
        entries = [{"time": a.time, "zone": a.zone or "", "event": a.event, "text": _describe(a)} for a in rows]
        return page(request, "log.html", entries=entries, zone=zone)

    @r.get("/reports")
    def reports(request: Request) -> HTMLResponse:
        require(request)
        with store.session() as s:
            rows = s.scalars(select(ReportRow).order_by(ReportRow.id.desc()).limit(300)).all()
        return page(request, "reports.html", reports=rows)

    @r.get("/gauges/{gauge_id}.png")
    def hydrograph(request: Request, gauge_id: str) -> Response:
        require(request)
        g = next((g for g in cfg.gauges if g.id == gauge_id), None)
        if g is None:
            raise HTTPException(404, f"no gauge {gauge_id}")
        return Response(_hydrograph_png(cfg, g, service, store, scope), media_type="image/png")

    @r.get("/rain.png")
    def rain_png(request: Request) -> Response:
        require(request)
        return Response(_rain_png(store, scope), media_type="image/png", headers={"Cache-Control": "no-store"})

    return r


def _zone_names(cfg: Config) -> dict[str, str]:
    import json

    try:
        return {f["properties"]["code"]: f["properties"].get("name", f["properties"]["code"])
                for f in json.loads(cfg.path(cfg.site.zones).read_text())["features"]}
    except (OSError, ValueError, KeyError):
        return {}


def _describe(a: AuditRow) -> str:
    d = a.detail or {}
    if a.event == "decision":
        return f"{d.get('action')} -> {d.get('level_name')}: " + "; ".join(d.get("reasons", [])[:3])
    return ", ".join(f"{k}={v}" for k, v in d.items() if v not in (None, "", []))[:300]


def _feed_health(cfg: Config, service: Any) -> list[dict[str, str]]:
    if service is not None and service.state.feeds:
        out = [{"source": name, "latest": f"{f.last_data:%Y-%m-%d %H:%M}Z" if f.last_data else "none",
                "state": f.state} for name, f in service.state.feeds.items()]
        return out + _service_rows(service)
    out = []
    if cfg.sources.forecast is not None:  # a gauge site has none
        fc = cfg.path(cfg.sources.forecast.path)
        files = sorted(fc.glob(cfg.sources.forecast.pattern)) if fc.is_dir() else []
        newest = max(files, key=lambda p: p.stat().st_mtime) if files else None
        out.append({"source": f"forecast ({cfg.sources.forecast.kind})", "latest": newest.name if newest else "none",
                    "state": "ok" if newest else "no data"})
    if cfg.sources.gauges is not None and cfg.sources.gauges.path is not None:
        gp = cfg.path(cfg.sources.gauges.path)
        out.append({"source": f"gauges ({cfg.sources.gauges.kind})", "latest":
                    datetime.fromtimestamp(gp.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
                    if gp.exists() else "missing", "state": "ok" if gp.exists() else "no data"})
    if service is not None:
        out += _service_rows(service)
    return out


def _service_rows(service: Any) -> list[dict[str, str]]:
    """The forecast cycle's state and every open data problem, for the feeds table."""
    st = service.state
    cycle = st.problems.get("cycle")
    rows = [{"source": "forecast cycle", "latest": f"{st.last_cycle_at:%Y-%m-%d %H:%M}Z"
             if st.last_cycle_at else "none yet", "state": cycle.text if cycle else "ok"}]
    rows += [{"source": "data problem", "latest": f"since {p.since:%Y-%m-%d %H:%M}Z", "state": p.text}
             for key, p in st.problems.items() if key != "cycle"]
    return rows


def _map_png(cfg: Config, store: Store, site: Any, by_rank: dict, scope: str = "live") -> bytes:
    import numpy as np
    import rasterio

    from .maps import peak_depth_map

    if not site.has_grid:  # a gauge site: no depth grid, a map of the zones would be empty
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 1.2), dpi=100)
        ax.axis("off")
        ax.text(0.5, 0.5, "gauge site: no flood-depth map (see the gauges below)", ha="center", va="center")
        out = io.BytesIO()
        fig.savefig(out, format="png")
        plt.close(fig)
        return out.getvalue()

    depth_dir = cfg.output_dir / "depth"
    files = sorted(depth_dir.glob("peak_depth_*.tif")) if depth_dir.is_dir() else []
    if files:
        with rasterio.open(files[-1]) as src:
            depth = src.read(1).astype("float32")
        title = f"latest forecast peak depth ({files[-1].stem.removeprefix('peak_depth_')})"
    else:
        depth = np.zeros((site.ny, site.nx), dtype="float32")
        title = "no forecast yet"
    with store.session() as s:
        states = {z.zone: z.level for z in s.scalars(select(ZoneStateRow).where(ZoneStateRow.scope == scope))}
    colours = {z: by_rank[lv].colour for z, lv in states.items() if lv in by_rank}
    levels = {z: by_rank[lv].title for z, lv in states.items() if lv in by_rank}
    buf = Path(cfg.output_dir / "console_map.png")
    peak_depth_map(site, depth, buf, title=title, zone_colours=colours, zone_levels=levels)
    return buf.read_bytes()


def _png(fig: Any) -> bytes:
    """A time-axis figure as PNG bytes (and closed)."""
    import matplotlib.pyplot as plt

    fig.autofmt_xdate()
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()


def _latest_summary(store: Store, scope: str = "live") -> dict[str, Any]:
    from .storage import Run

    with store.session() as s:
        run = s.scalars(select(Run).where(Run.scope == scope, Run.status == "done")
                        .order_by(Run.at.desc()).limit(1)).first()
    return dict(run.summary or {}, at=run.at) if run is not None else {}


def _rain_png(store: Store, scope: str = "live") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    summ = _latest_summary(store, scope)
    fig, ax = plt.subplots(figsize=(7, 2.6), dpi=100)
    rain = summ.get("rain")
    if rain:
        t = np.array([np.datetime64(x[:19]) for x in rain["times"]])
        v = np.array(rain["site_mean_mm_h"])
        k = rain["now_index"]
        width = (t[1] - t[0]) if t.size > 1 else np.timedelta64(1, "h")
        ax.bar(t[:k], v[:k], width=width, align="edge", color="grey", label="best estimate (past)")
        ax.bar(t[k:], v[k:], width=width, align="edge", color="steelblue", label="forecast (ensemble median)")
        ax.legend(fontsize=7)
        ax.set_title(f"site-mean rainfall, run of {summ['at']:%Y-%m-%d %H:%M}Z", fontsize=9)
    else:
        ax.set_title("no rainfall forecast run yet" if summ.get("at") is None else
                     "no gridded rainfall forecast at this site", fontsize=9)
    ax.set_ylabel("mm/h")
    return _png(fig)


def _hydrograph_png(cfg: Config, gauge: Any, service: Any, store: Store | None = None,
                    scope: str = "live") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .pipeline import Inputs
    from .report import STAGE_COLOURS, gauge_quantity

    ds = Inputs(cfg).read_gauges()
    q = gauge_quantity(cfg, gauge, ds)  # stage, or flow at a gauge that measures only flow
    fig, ax = plt.subplots(figsize=(7, 3), dpi=100)
    if ds is not None and gauge.id in ds["station"].values:
        st = ds.sel(station=gauge.id)
        t, v = st["time"].values, st[q["variable"]].values
        if service is not None:
            now = np.datetime64(service.clock().replace(tzinfo=None))
            keep = t <= now
            t, v = t[keep], v[keep]
        ok = st[q["qc"]].values[: t.size] == 0
        ax.plot(t[ok], v[ok], color="navy", lw=1.2, label=f"observed {q['name']}")
    det = next((d for d in (_latest_summary(store, scope).get("details") or {}).values()
                if d.get("gauge") == gauge.id), None) if store is not None else None
    if det and det.get("gauge_forecast_times") and det.get(q["forecast"]):
        ft = np.array([np.datetime64(x[:19]) for x in det["gauge_forecast_times"]])
        if q["forecast_low"] and det.get(q["forecast_low"]):
            ax.fill_between(ft, det[q["forecast_low"]], det[q["forecast_high"]], color="orange", alpha=0.25,
                            label="forecast range (ensemble)")
        ax.plot(ft, det[q["forecast"]], color="darkorange", lw=1.4, label=f"forecast {q['name']}")
    for name, value in q["thresholds"].items():
        ax.axhline(value, ls="--", lw=0.8, color=STAGE_COLOURS.get(name, "grey"), label=f"{name} {value:g} {q['unit']}")
    ax.set_title(f"{gauge.name} ({gauge.id})", fontsize=9)
    ax.set_ylabel(q["axis"])
    ax.legend(fontsize=7, loc="upper left")
    return _png(fig)
