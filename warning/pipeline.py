"""One forecast cycle: a plain function of (site, inputs, clock).

    rain   = forecast issued last before `at` (+ best-estimate rain before `at`)
    excess = SCS-CN runoff                         models.runoff
    Q      = kinematic wave along the D8 network   models.routing
    depth  = HAND + synthetic rating curves        models.inundation
    zone metrics -> level decisions -> CAP notices + SMS outbox -> dispatch

A gauge site (no DEM) runs the gauge cycle instead (``warning.gauge_cycle``): its zones'
gauge readings up to ``at`` (and a lumped-model forecast where configured) give the zone
metrics, and the alert stage is the same.

The scheduler calls ``run_cycle`` with the wall clock; the demo and replay call it with a
simulated clock over archived inputs. There is no second copy for drills: a drill is
the same cycle with ``scope`` set, CAP status Exercise and an exercise marker on SMS.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from models import inundation, risk, routing, runoff

from . import alerting
from .config import Config
from .errors import IngestError
from .ingest import get_source
from .ingest.forecast_netcdf import ForecastIssue
from .ingest.gauge_csv import latest_good
from .site import RATING_STAGES, Site
from .storage import Run, Store, utcnow

log = logging.getLogger(__name__)


@dataclass
class Simulation:
    """What the models say for one cycle (all depths in metres)."""

    times: np.ndarray  # (time,) datetime64[ns], start of each input step
    now_index: int  # first step at or after the cycle time
    stage: np.ndarray  # (member, time, n_reach+1) float32, m above the channel bed
    q_gauge: dict[str, np.ndarray]  # gauge id -> (member, time) m3/s
    peak_depth: np.ndarray  # (y, x) float32, ensemble-median forecast peak depth from now on
    analysis_depth: np.ndarray  # (y, x) float32, peak depth before now (best-estimate rain)
    members: int
    forecast: ForecastIssue


@dataclass
class CycleResult:
    run_id: str
    at: datetime
    forecast_issued: datetime
    forecast_file: str
    metrics: dict[str, dict[str, float]]
    decisions: list[dict[str, Any]]
    notices: list[str]
    messages_queued: int
    messages_sent: int
    problems: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    simulation: Simulation | None = None


class Inputs:
    """The cycle's data sources, built from the config; caches reprojected forecasts.

    ``forecast`` is None on a gauge site (it has no rainfall forecast source)."""

    def __init__(self, cfg: Config):
        fc = cfg.sources.forecast
        self.forecast = get_source(fc.kind, **fc.source_settings(cfg.path)) if fc is not None else None
        gs = cfg.sources.gauges
        self.gauges = get_source(gs.kind, **gs.source_settings(cfg.path)) if gs is not None else None
        self.valid_ranges = {g.id: g.valid_range_m for g in cfg.gauges}
        self._cache: dict[tuple[str, float, bool], Any] = {}

    #: reprojected issues kept: all members of the newest few, the control member of more
    #: (the best-estimate past rain reads only that); bounds a long-running service's memory
    KEEP_FULL, KEEP_CONTROL = 2, 16

    def load_forecast(self, issue: ForecastIssue, site: Site, control_only: bool = False):
        """The issue on the site grid (member, time, y, x) mm/h; ``control_only``: member 0."""
        key = (str(issue.path), issue.path.stat().st_mtime, control_only)
        if key not in self._cache:
            full = self._cache.get((key[0], key[1], False))
            if control_only and full is not None:
                da = full.isel(member=[0]).copy()
            else:
                da = self.forecast.load(issue, site)
                if control_only:
                    da = da.isel(member=[0]).copy()
            same = [k for k in self._cache if k[2] == control_only]
            if len(same) >= (self.KEEP_CONTROL if control_only else self.KEEP_FULL):
                self._cache.pop(same[0])
            self._cache[key] = da
        else:  # most recently used last
            self._cache[key] = self._cache.pop(key)
        return self._cache[key]

    def read_gauges(self):
        return self.gauges.read(self.valid_ranges) if self.gauges is not None else None


# ----------------------------------------------------------------------------- rain
def assemble_rain(inputs: Inputs, site: Site, cfg: Config, at: datetime
                  ) -> tuple[np.ndarray, np.ndarray, int, ForecastIssue, list[str]]:
    """Rain (member, time, y, x) in mm/h over [at - spin-up, at + horizon), hourly.

    After ``at``: every member of the latest forecast issued at or before ``at``. Before
    ``at``: the best estimate, i.e. for each hour the control member of the newest issue
    that was out by then (shortest lead time). Nothing issued after ``at`` is used.
    """
    issues = [i for i in inputs.forecast.issues() if i.issued <= at]
    problems = [f"forecast file skipped: {p}" for p in inputs.forecast.skipped]
    if not issues:
        raise IngestError(f"no rainfall forecast issued at or before {at:%Y-%m-%d %H:%M}Z in "
                          f"{inputs.forecast.path}")
    for current in reversed(issues):  # the newest readable issue; fall back on bad files
        try:
            fc = inputs.load_forecast(current, site)
            break
        except IngestError as exc:
            problems.append(f"forecast unusable, fell back to the issue before it: {exc}")
    else:
        raise IngestError(f"no readable rainfall forecast issued at or before "
                          f"{at:%Y-%m-%d %H:%M}Z: " + "; ".join(problems))
    step = np.timedelta64(1, "h")
    fc_times = fc["time"].values
    if fc_times.size > 1:
        step = np.median(np.diff(fc_times)).astype("timedelta64[ns]")
    at64 = np.datetime64(at.replace(tzinfo=None), "ns")
    start = at64 - np.timedelta64(int(cfg.model.spinup_hours * 3600), "s")
    start = start - (start - fc_times[0]) % step  # align on the forecast's steps
    end = min(at64 + np.timedelta64(int(cfg.model.horizon_hours * 3600), "s"),
              fc_times[-1] + step)
    times = np.arange(start, end, step)
    now_index = int(np.searchsorted(times, at64))
    members = fc.sizes["member"]
    rain = np.zeros((members, times.size, site.ny, site.nx), dtype=np.float32)
    # future (and the current step): the current issue, all members
    idx = np.searchsorted(fc_times, times)
    hit = (idx < fc_times.size) & (fc_times[np.minimum(idx, fc_times.size - 1)] == times)
    future = hit & (times >= at64 - step)
    rain[:, future] = fc.values[:, idx[future]]
    # past: for each step, the newest issue out by its start that covers it
    missing = 0
    for k in np.flatnonzero(~future):
        t = times[k]
        done = False
        for issue in reversed(issues):
            if np.datetime64(issue.issued.replace(tzinfo=None), "ns") > t:
                continue
            try:
                past = inputs.load_forecast(issue, site, control_only=True)
            except IngestError:
                continue  # already reported when it was the current issue, or skipped
            j = np.searchsorted(past["time"].values, t)
            if j < past.sizes["time"] and past["time"].values[j] == t:
                rain[:, k] = past.values[0, j]
                done = True
                break
        missing += not done
    if missing:
        problems.append(f"no rain estimate for {missing} of the {now_index} spin-up steps "
                        f"(no forecast covers them); they count as dry")
    return rain, times, now_index, current, problems


# ----------------------------------------------------------------------------- models
def simulate(site: Site, cfg: Config, rain: np.ndarray, times: np.ndarray, now_index: int,
             forecast: ForecastIssue) -> Simulation:
    t = site.terrain
    m = cfg.model
    dt_h = float((times[1] - times[0]) / np.timedelta64(1, "h")) if times.size > 1 else 1.0
    method = runoff.get_runoff_method(m.runoff_method)
    if m.runoff_method == "green_ampt":
        excess = method(rain, dt_h, ks=m.green_ampt_ks_mm_h, psi=m.green_ampt_psi_mm,
                        delta_theta=m.green_ampt_delta_theta)
    else:
        cn = site.cn
        if m.antecedent_moisture != "II":
            cn = runoff.amc_convert(cn, to=m.antecedent_moisture)
        excess = method(rain, dt_h, np.where(site.valid, cn, 100.0).astype(np.float32),
                        lam=m.initial_abstraction_ratio)
    channel = t.drainage
    width = np.where(channel, m.channel_width_m, site.dx).astype(np.float32)
    manning = np.where(channel, m.manning_channel, m.manning_overland).astype(np.float32)
    gauge_cells = np.array([g.row * site.nx + g.col for g in site.gauges.values()], dtype=np.int64)
    outlets = t.reach_outlet[1:]
    record = np.concatenate([outlets, gauge_cells])
    substeps = max(1, int(round(dt_h * 60.0 / m.routing_dt_minutes)))
    res = routing.route_kinematic_d8(t.fdir, excess, dt_h * 3600.0, site.dx, site.dy, t.slope,
                                     manning, width, substeps=substeps, record=record)
    del excess
    n_reach = t.n_reach
    q_reach = np.zeros(res.q_record.shape[:2] + (n_reach + 1,), dtype=np.float32)
    q_reach[..., 1:] = res.q_record[..., :n_reach]
    stage = inundation.stage_from_discharge(RATING_STAGES, t.rating_q, q_reach).astype(np.float32)
    stage[..., 0] = 0.0
    q_gauge = {gid: res.q_record[:, :, n_reach + i] for i, gid in enumerate(site.gauges)}
    hand = np.nan_to_num(t.hand, nan=np.inf)
    roc = t.reach_of_cell
    fut = stage[:, now_index:].max(axis=1)  # (member, n_reach+1)
    peak = np.median(np.maximum(fut[:, roc] - hand[None], 0.0), axis=0)
    past = stage[0, : now_index + 1].max(axis=0)
    analysis = np.maximum(past[roc] - hand, 0.0)
    nodata = ~site.valid | (roc == 0)
    peak[nodata] = np.nan
    analysis[nodata] = np.nan
    return Simulation(times=times, now_index=now_index, stage=stage, q_gauge=q_gauge,
                      peak_depth=peak.astype(np.float32), analysis_depth=analysis.astype(np.float32),
                      members=rain.shape[0], forecast=forecast)


def warm_up(site: Site, cfg: Config) -> float:
    """Run the models once on three dry hours so Numba compiles (and caches on disk) every
    kernel a cycle uses; the first cycle of a storm then pays no compile time. Seconds."""
    t0 = time.perf_counter()
    times = np.datetime64("2000-01-01T00:00", "ns") + np.arange(3) * np.timedelta64(1, "h")
    rain = np.zeros((1, times.size, site.ny, site.nx), dtype=np.float32)
    rain[:, 1] = 1.0
    sim = simulate(site, cfg, rain, times, 1, ForecastIssue(_dt(times[0]), site.cache_path()))
    zone_metrics(site, cfg, sim, None, _dt(times[1]))
    return time.perf_counter() - t0


def zone_metrics(site: Site, cfg: Config, sim: Simulation, gauges, at: datetime
                 ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]], list[str]]:
    """Metrics per zone (see ``warning.config.METRICS``), details for messages, problems."""
    t = site.terrain
    m = cfg.model
    hand = np.nan_to_num(t.hand, nan=np.inf)
    metrics: dict[str, dict[str, float]] = {}
    details: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    zcfg = {z.code: z for z in cfg.zones}
    fut = sim.stage[:, sim.now_index:]  # (member, time, reach)
    fut_times = sim.times[sim.now_index:]
    stale = cfg.sources.gauges.stale_after_minutes if cfg.sources.gauges else 90.0
    for zone in site.zones:
        rz = t.reach_of_cell[zone.mask]
        hz = hand[zone.mask]
        depth = np.maximum(fut[:, :, rz] - hz, 0.0)  # (member, time, cells)
        zmax = depth.max(axis=2)  # (member, time)
        peak_m = zmax.max(axis=1)  # (member,)
        share = (depth > m.flooded_depth_m).mean(axis=2).max(axis=1)
        series = np.median(zmax, axis=0)
        vals = {
            "forecast_peak_depth_m": float(np.median(peak_m)),
            "flooded_share": float(np.median(share)),
            "depth_exceedance_probability": float(
                risk.exceedance_probability(peak_m, m.probability_depth_m)),
        }
        det: dict[str, Any] = {"depth_series": series.round(3).tolist()}
        wet = np.flatnonzero(series >= m.flooded_depth_m)
        if wet.size:
            det["onset"] = _dt(fut_times[wet[0]])
        det["peak_time"] = _dt(fut_times[int(np.argmax(series))]) if series.max() > 0 else None
        past_depth = np.maximum(sim.stage[0, : sim.now_index + 1][:, rz] - hz, 0.0).max(axis=1)
        det["analysis_series"] = past_depth.round(3).tolist()
        det["analysis_times"] = [_dt(x).isoformat() for x in sim.times[: sim.now_index + 1]]
        gid = zcfg[zone.code].gauge
        if gid is not None:
            g = site.gauges[gid]
            bed = float(t.filled[g.row, g.col])
            st = sim.stage[:, :, g.reach] + bed - g.datum_m
            vals["forecast_stage_m"] = float(np.median(st[:, sim.now_index:].max(axis=1)))
            # the forecast hydrograph at the gauge: ensemble median and range, m above gauge zero
            fut_st = st[:, sim.now_index:]
            det["gauge_forecast_times"] = [_dt(x).isoformat() for x in sim.times[sim.now_index:]]
            det["gauge_forecast_stage_m"] = np.round(np.median(fut_st, axis=0), 3).tolist()
            det["gauge_forecast_low_m"] = np.round(fut_st.min(axis=0), 3).tolist()
            det["gauge_forecast_high_m"] = np.round(fut_st.max(axis=0), 3).tolist()
            if gauges is not None:
                observed_stage(gauges, gid, at, stale, vals, det, problems)
            det["gauge"] = gid
        metrics[zone.code] = vals
        details[zone.code] = det
    return metrics, details, problems


def observed_stage(gauges, gid: str, at: datetime, stale: float, vals: dict[str, float],
                   det: dict[str, Any], problems: list[str]) -> datetime | None:
    """The zone's observed stage metrics from its gauge (latest good reading up to ``at``
    and its rise over the hour), into ``vals`` and ``det``; returns the reading's time."""
    obs, rise, when, problem = latest_good(gauges, gid, at, stale)
    if problem:
        problems.append(problem)
    vals["observed_stage_m"] = obs
    vals["observed_rise_m_per_h"] = rise
    det["observed_time"] = when.isoformat() if when else None
    return when


def _dt(t: np.datetime64) -> datetime:
    return datetime.fromtimestamp(int(t.astype("datetime64[s]").astype(np.int64)), tz=timezone.utc)


# ----------------------------------------------------------------------------- the cycle
def run_cycle(site: Site, cfg: Config, store: Store, inputs: Inputs, at: datetime, *,
              drill: str | None = None, channel=None, write_depth: bool = True) -> CycleResult:
    """Run one forecast cycle at ``at`` (aware datetime) and return what it did."""
    if not site.has_grid:  # a gauge site: gauge readings (and a lumped forecast), same alert stage
        from .gauge_cycle import run_gauge_cycle

        return run_gauge_cycle(site, cfg, store, inputs, at, drill=drill, channel=channel)
    scope = f"drill:{drill}" if drill else "live"
    run_id = f"{at:%Y%m%dT%H%MZ}-{'drill' if drill else 'live'}"
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    rain, times, now_index, issue, problems = assemble_rain(inputs, site, cfg, at)
    gauges = inputs.read_gauges()
    timings["ingest"] = time.perf_counter() - t0
    with store.session.begin() as s:
        if s.get(Run, run_id) is not None:
            s.query(Run).filter(Run.id == run_id).delete()
        s.add(Run(id=run_id, at=at, scope=scope, forecast_issued=issue.issued,
                  forecast_file=issue.path.name, status="running", started=utcnow()))
    t1 = time.perf_counter()
    site_rain = np.median(rain[:, :, site.valid].mean(axis=2), axis=0)  # (time,) mm/h, for the console
    sim = simulate(site, cfg, rain, times, now_index, issue)
    del rain
    timings["models"] = time.perf_counter() - t1
    metrics, details, more = zone_metrics(site, cfg, sim, gauges, at)
    problems += more
    t2 = time.perf_counter()
    sources = [f"rainfall forecast {issue.path.name} ({sim.members} member"
               f"{'s' if sim.members > 1 else ''})"]
    if inputs.gauges is not None:
        sources.append(f"gauge readings {inputs.gauges.path.name} up to {at:%H:%M}Z")
    run_info = {
        "model_run": run_id,
        "forecast_issued": issue.issued.isoformat(timespec="minutes"),
        "forecast_file": issue.path.name,
        "data_sources": "; ".join(sources),
        "models": "Priority-Flood + D8, SCS-CN, kinematic wave, HAND rating curves",
    }
    decisions, notices, queued = alerting.decide_and_notify(
        site, cfg, store, at, metrics, details, run_id=run_id, scope=scope, drill=drill,
        run_info=run_info, problems=problems)
    sent = alerting.dispatch(cfg, store, channel) if channel is not None else 0
    timings["alerts"] = time.perf_counter() - t2
    if write_depth:
        site.write_geotiff(cfg.output_dir / "depth" / f"peak_depth_{at:%Y%m%dT%H%MZ}.tif",
                           sim.peak_depth, units="m", run=run_id,
                           meaning="ensemble-median forecast peak flood depth",
                           forecast_issued=issue.issued.isoformat())
    with store.session.begin() as s:
        run = s.get(Run, run_id)
        run.status = "done"
        run.finished = utcnow()
        run.summary = {"metrics": _jsonable(metrics), "details": _json_safe(details),
                       "problems": problems, "timings": timings,
                       "decisions": decisions,
                       "rain": {"times": [_dt(x).isoformat() for x in times],
                                "site_mean_mm_h": np.round(site_rain, 3).tolist(), "now_index": now_index}}
    return CycleResult(run_id=run_id, at=at, forecast_issued=issue.issued,
                       forecast_file=issue.path.name, metrics=metrics, decisions=decisions,
                       notices=notices, messages_queued=queued, messages_sent=sent,
                       problems=problems, timings=timings, simulation=sim)


def _jsonable(metrics: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    return {z: {k: (None if not np.isfinite(v) else round(float(v), 4)) for k, v in d.items()}
            for z, d in metrics.items()}


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    return obj


def cycle_times(start: datetime, end: datetime, every_hours: float) -> list[datetime]:
    out, t = [], start
    while t <= end:
        out.append(t)
        t += timedelta(hours=every_hours)
    return out
