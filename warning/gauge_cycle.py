"""The cycle of a gauge site: gauge readings up to the cycle time -> zone metrics.

A gauge site has no DEM and no rainfall forecast; each zone is warned from its gauge::

    readings = the gauge source, cut at the cycle time; QC flags that look at later
               readings (the spike check) are worked out again on what was known then
    observed = per zone: latest good stage, its rise over the last hour, discharge
    forecast = per zone, where [model.lumped] is configured: models.lumped on the rain and
               evaporation observed at the gauge up to the cycle time, then the horizon
               with NO rain (there is no rain forecast) and the last day's evaporation
    zone metrics -> the same alert stage as a grid site (warning.alerting)

Nothing read after the cycle time is used, in the metrics or in the details. The run is
recorded like a grid cycle's: ``Run.forecast_issued`` holds the time of the newest good
reading at or before the cycle time (the cycle's data time) and ``Run.forecast_file``
the gauge file (or feed).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import xarray as xr

from models.lumped import LumpedParams, LumpedState, simulate

from . import alerting
from .config import Config
from .errors import IngestError
from .ingest.gauge_csv import QC_GOOD, QC_SPIKE, spike_flags
from .ingest.readings import qc_problem
from .pipeline import CycleResult, Inputs, _json_safe, _jsonable, observed_stage
from .site import Site
from .storage import Store, finish_run, recorded_run

log = logging.getLogger(__name__)

__all__ = ["GaugeMetrics", "LumpedForecast", "gauge_metrics", "latest_value", "lumped_forecast",
           "measured", "newest_good_time", "readings_until", "run_gauge_cycle"]

NO_RAIN_NOTE = ("the forecast assumes no rain after the cycle time (a gauge site has no rain "
                "forecast); potential evaporation repeats the last 24 hours observed")


def _np(t: datetime) -> np.datetime64:
    return np.datetime64(t.astimezone(timezone.utc).replace(tzinfo=None), "ns")


def _dt(t: np.datetime64) -> datetime:
    return datetime.fromtimestamp(int(t.astype("datetime64[s]").astype(np.int64)), tz=timezone.utc)


def _round(values: np.ndarray, digits: int = 4) -> list[float | None]:
    return [None if not math.isfinite(v) else round(float(v), digits) for v in values]


# ----------------------------------------------------------------------------- readings
def readings_until(ds: xr.Dataset, at: datetime, spike_limit_m: float = 0.5,
                   known_from: np.ndarray | None = None) -> xr.Dataset:
    """The readings known at ``at``: those at or before it (or known by then, with
    ``known_from``), with the stage spike flags worked out on them alone.

    Every QC flag of a reading depends on that reading and earlier ones, except the spike
    check, which compares a reading with the next one too: read from a whole archived
    file, the reading at the cycle time would be judged by the one after it. The spike
    flags are cleared and computed again on the readings up to ``at``, as a live system
    would have had them. (Feed sources' flatline flags also look ahead within a run of
    equal values; they are left as the source set them.)

    Parameters
    ----------
    ds : xarray.Dataset (station, time)
        A gauge source's readings.
    at : datetime
        The cycle time (aware).
    spike_limit_m : float, m
        The source's spike limit.
    known_from : ndarray (time,) of datetime64, optional
        When each reading was in hand (``warning.availability.usable_from``: delivery
        delays, aggregates known at the end of their period); default its time stamp.
    """
    known = ds["time"].values if known_from is None else np.asarray(known_from)
    if known.shape != ds["time"].shape:
        raise ValueError(f"known_from has {known.shape[0]} times for {ds.sizes['time']} readings")
    keep = np.flatnonzero(known <= _np(at))
    sub = ds.isel(time=keep).copy(deep=True)
    qc = sub["qc"].values
    stage = sub["stage"].values
    for s in range(qc.shape[0]):
        qc[s] &= np.invert(qc.dtype.type(QC_SPIKE))
        qc[s] |= spike_flags(stage[s], qc[s], spike_limit_m)
    sub["qc"] = (sub["qc"].dims, qc, sub["qc"].attrs)
    return sub


def measured(ds: xr.Dataset) -> list[str]:
    """The quantities the readings really hold: the source's ``measured`` attribute, else
    stage (and discharge when the Dataset has it), as for the CSV and feed sources."""
    return list(ds.attrs.get("measured") or ["stage", *(["discharge"] if "discharge" in ds else [])])


def newest_good_time(ds: xr.Dataset, at: datetime, stations: list[str] | None = None,
                     quantities: list[str] | None = None) -> datetime | None:
    """Time of the newest good reading at or before ``at`` of any of ``quantities`` (default:
    every measured one) at ``stations`` (default: all). A gauge that measures discharge only
    (the ``peq`` source) is fresh by its discharge, not stale for want of a stage."""
    t = ds["time"].values
    upto = t <= _np(at)
    rows = np.isin(ds["station"].values, stations) if stations is not None else slice(None)
    newest = None
    for var in quantities or measured(ds):
        qc_var = "qc" if var == "stage" else f"{var}_qc"
        if var not in ds or qc_var not in ds:
            continue
        ok = (ds[qc_var].values[rows] == QC_GOOD).any(axis=0) & upto
        if ok.any():
            when = _dt(t[np.flatnonzero(ok)[-1]])
            newest = when if newest is None else max(newest, when)
    return newest


def latest_value(ds: xr.Dataset, station: str, var: str, at: datetime, stale_after_minutes: float
                 ) -> tuple[float, datetime | None, str | None]:
    """Latest good value of ``var`` (e.g. ``discharge``) at ``station`` up to ``at``, its time,
    and a problem string when there is none or it is older than the stale tolerance."""
    qc_var = "qc" if var == "stage" else f"{var}_qc"
    if var not in ds or station not in ds["station"].values:
        return math.nan, None, f"no {var} readings for gauge {station}"
    sub = ds.sel(station=station)
    t = sub["time"].values
    ok = np.flatnonzero((t <= _np(at)) & (sub[qc_var].values == QC_GOOD))
    if ok.size == 0:
        return math.nan, None, f"no good {var} reading at gauge {station} up to {at:%Y-%m-%d %H:%M}Z"
    when = _dt(t[ok[-1]])
    age = (at - when).total_seconds() / 60.0
    if age > stale_after_minutes:
        return math.nan, when, (f"gauge {station} {var} is stale: last good reading {age:.0f} min old "
                                f"(tolerance {stale_after_minutes:.0f} min)")
    return float(sub[var].values[ok[-1]]), when, None


# ----------------------------------------------------------------------------- lumped model
@dataclass
class LumpedForecast:
    """One zone's lumped-model run: the fit to the observed past and the forecast."""

    past_times: np.ndarray  # (n,) datetime64[ns], end of each simulated step up to the last reading
    past_m3s: np.ndarray  # (n,) simulated discharge, m3/s
    times: np.ndarray  # (h,) datetime64[ns], end of each step after the last reading
    q_m3s: np.ndarray  # (h,) forecast discharge, m3/s
    area_km2: float
    at: datetime  # the cycle time
    last_rain: datetime | None  # the newest good rain reading used
    problems: list[str] = field(default_factory=list)

    def _ahead(self) -> np.ndarray:
        """Steps that end after the cycle time (the forecast proper)."""
        return np.flatnonzero(self.times > _np(self.at))

    @property
    def peak_m3s(self) -> float:
        k = self._ahead()
        return float(self.q_m3s[k].max()) if k.size else math.nan

    @property
    def peak_time(self) -> datetime | None:
        k = self._ahead()
        return _dt(self.times[k[int(np.argmax(self.q_m3s[k]))]]) if k.size else None


_PARAMS: dict[tuple[str, int], LumpedParams] = {}


def lumped_params(cfg: Config) -> LumpedParams:
    """The configured parameters (``params`` or the ``params_file``, re-read when it changes)."""
    lm = cfg.model.lumped
    assert lm is not None
    if lm.params is not None:
        return LumpedParams.from_dict(dict(lm.params))
    from .calibration import read_params

    assert lm.params_file is not None  # the config gives params or params_file
    path = cfg.path(lm.params_file)
    key = (str(path), path.stat().st_mtime_ns if path.exists() else 0)
    if key not in _PARAMS:
        _PARAMS.clear()
        _PARAMS[key] = read_params(path)
    return _PARAMS[key]


def lumped_forecast(cfg: Config, ds: xr.Dataset, station: str, at: datetime) -> LumpedForecast | None:
    """Run the lumped model for ``station`` on the readings up to ``at`` (``ds`` must hold
    nothing later: see :func:`readings_until`), then on to ``at + horizon_hours`` with no
    rain and the last day's evaporation repeated.

    Returns None (and the caller reports why) when the gauge has no rain readings in the
    warm-up window.
    """
    lm = cfg.model.lumped
    assert lm is not None
    if "rain" not in ds or station not in ds["station"].values:
        return None
    params = lumped_params(cfg)
    gs = cfg.sources.gauges
    area = float(lm.area_km2 or (gs.settings.get("area_km2") if gs is not None else None)
                 or ds.attrs.get("area_km2", math.nan))
    sub = ds.sel(station=station)
    t_all = sub["time"].values
    start = _np(at) - np.timedelta64(int(lm.warmup_days * 86400), "s")
    win = np.flatnonzero(t_all > start)
    problems: list[str] = []
    if win.size < 2:
        return None
    t = t_all[win]
    step = np.median(np.diff(t)).astype("timedelta64[ns]")
    dt_h = float(step / np.timedelta64(1, "h"))
    # the model needs a regular, complete forcing: put the readings on a regular grid
    grid = np.arange(t[0], t[-1] + step, step)
    pos = np.searchsorted(grid, t)
    on_grid = (pos < grid.size) & (grid[np.minimum(pos, grid.size - 1)] == t)

    def forcing(var: str) -> np.ndarray:
        out = np.full(grid.size, np.nan)
        if var in sub:
            good = sub[f"{var}_qc"].values[win] == QC_GOOD
            sel = on_grid & good
            out[pos[sel]] = sub[var].values[win][sel]
        return out

    rain, etpot, q_obs = forcing("rain"), forcing("etpot"), forcing("discharge")
    has_rain = np.flatnonzero(np.isfinite(rain))
    last_rain = _dt(grid[has_rain[-1]]) if has_rain.size else None
    n_gap = int(np.isnan(rain).sum())
    if n_gap:
        problems.append(f"lumped model at {station}: {n_gap} of {grid.size} rain steps in the "
                        f"{lm.warmup_days:g}-day run have no good reading; taken as dry")
    rain = np.nan_to_num(rain, nan=0.0)
    etpot = np.nan_to_num(etpot, nan=0.0) if "etpot" in sub else np.zeros(grid.size)
    to_mm_h = 3.6 / area  # m3/s -> mm/h over the catchment
    first_q = q_obs[np.isfinite(q_obs)]
    state = LumpedState.initial(params, slow_q_mm_h=float(first_q[0]) * to_mm_h if first_q.size else 0.0)
    q_past, state = simulate(params, rain, etpot, dt_h, state)
    n_h = math.ceil((lm.horizon_hours * 3600 + (_np(at) - grid[-1]) / np.timedelta64(1, "s"))
                    / (dt_h * 3600))
    per_day = max(1, round(24.0 / dt_h))
    last_day = etpot[-per_day:] if etpot.size >= per_day else np.zeros(per_day)
    et_future = np.resize(last_day, n_h)  # the last day's evaporation, repeated
    q_future, _ = simulate(params, np.zeros(n_h), et_future, dt_h, state)
    times = grid[-1] + step * np.arange(1, n_h + 1)
    return LumpedForecast(grid, q_past / to_mm_h, times, q_future / to_mm_h, area, at, last_rain, problems)


# ----------------------------------------------------------------------------- metrics
@dataclass
class GaugeMetrics:
    """A gauge site's zone metrics and everything the run records about them."""

    metrics: dict[str, dict[str, float]]
    details: dict[str, dict[str, Any]]
    problems: list[str]
    data_time: datetime  # newest good reading at or before the cycle time (any zone's gauge)
    data_file: str  # the gauge file or feed read
    sources: list[str]
    models: str
    rain: dict[str, Any] | None  # observed rain (and the no-rain horizon), for the console


def gauge_metrics(site: Site, cfg: Config, inputs: Inputs, at: datetime) -> GaugeMetrics:
    """Zone metrics from the zones' gauges, using nothing read after ``at``.

    Metrics (see ``warning.config.METRICS``): ``observed_stage_m``,
    ``observed_rise_m_per_h`` (when the gauge measures stage), ``observed_discharge_m3s``
    (when it measures discharge), ``forecast_peak_discharge_m3s`` (with
    ``[model.lumped]``); ``forecast_peak_depth_m`` is NaN (no grid, no depth forecast).
    """
    if inputs.gauges is None:
        raise IngestError("a gauge site needs a gauge source ([sources.gauges])")
    problems: list[str] = []
    full = inputs.gauges_or_last_good(problems)
    if full is None:  # nothing this cycle and nothing good from an earlier one: no cycle
        raise IngestError(problems[-1])
    ds = readings_until(full, at, getattr(inputs.gauges, "spike_limit_m", 0.5))
    origin = str(full.attrs.get("source_file") or getattr(inputs.gauges, "path", "") or inputs.gauges.kind)
    data_file = origin.rsplit("/", 1)[-1]
    stale = cfg.sources.gauges.stale_after_minutes if cfg.sources.gauges else 90.0
    quantities = set(measured(full))
    window = timedelta(hours=cfg.model.spinup_hours)
    zcfg = {z.code: z for z in cfg.zones}
    metrics: dict[str, dict[str, float]] = {}
    details: dict[str, dict[str, Any]] = {}
    newest: datetime | None = None
    rain_summary: dict[str, Any] | None = None
    forecasts = 0
    for zone in site.zones:
        gid = zcfg[zone.code].gauge
        assert gid is not None  # check-config: every zone of a gauge site names a gauge
        vals: dict[str, float] = {"forecast_peak_depth_m": math.nan}
        det: dict[str, Any] = {"gauge": gid, "peak_time": None}
        when_any: list[datetime] = []
        if "stage" in quantities:
            when = observed_stage(ds, gid, at, stale, vals, det, problems)
            when_any += [when] if when else []
        if "discharge" in quantities:
            q, when, problem = latest_value(ds, gid, "discharge", at, stale)
            problems += [p for p in (problem, qc_problem(ds, gid, at, max(stale, 60.0), "discharge")) if p]
            vals["observed_discharge_m3s"] = q
            det["observed_discharge_time"] = when.isoformat() if when else None
            when_any += [when] if when else []
        # the observed series up to now, for messages and reports
        if gid in ds["station"].values:
            sub = ds.sel(station=gid)
            t = sub["time"].values
            recent = np.flatnonzero(t > _np(at - window))
            det["observed_times"] = [_dt(x).isoformat() for x in t[recent]]
            for var, key in (("stage", "observed_stage_m"), ("discharge", "observed_discharge_m3s"),
                             ("rain", "observed_rain_mm_h")):
                if var in quantities and var in sub:
                    qc = sub["qc" if var == "stage" else f"{var}_qc"].values[recent]
                    det[key + "_series"] = _round(np.where(qc == QC_GOOD, sub[var].values[recent], np.nan))
        if cfg.model.lumped is not None:
            fc = lumped_forecast(cfg, ds, gid, at)
            if fc is None:
                problems.append(f"no lumped forecast for zone {zone.code}: no rain readings at gauge "
                                f"{gid} in the {cfg.model.lumped.warmup_days:g} days up to "
                                f"{at:%Y-%m-%d %H:%M}Z")
                vals["forecast_peak_discharge_m3s"] = math.nan
            else:
                forecasts += 1
                problems += fc.problems
                vals["forecast_peak_discharge_m3s"] = fc.peak_m3s
                det["peak_time"] = fc.peak_time
                age = (at - fc.last_rain).total_seconds() / 60.0 if fc.last_rain else math.inf
                if age > stale:  # a forecast from old rain is set aside, as an old reading is
                    vals["forecast_peak_discharge_m3s"] = math.nan
                    det["peak_time"] = None
                    problems.append(f"no lumped forecast at gauge {gid}: the last good rain reading is "
                                    + (f"{age:.0f} min old" if fc.last_rain else "missing")
                                    + f" (tolerance {stale:.0f} min)")
                det["gauge_forecast_times"] = [_dt(x).isoformat() for x in fc.times]
                det["gauge_forecast_discharge_m3s"] = _round(fc.q_m3s)
                keep = fc.past_times > _np(at - window)
                det["model_times"] = [_dt(x).isoformat() for x in fc.past_times[keep]]
                det["model_discharge_m3s"] = _round(fc.past_m3s[keep])
                det["forecast_note"] = NO_RAIN_NOTE
                det["catchment_area_km2"] = fc.area_km2
                if rain_summary is None and "observed_rain_mm_h_series" in det:
                    rain_summary = _rain_summary(ds, gid, at, window, fc)
        for w in when_any:
            newest = w if newest is None else max(newest, w)
        metrics[zone.code] = vals
        details[zone.code] = det
    if newest is None:
        gauges = sorted({zcfg[z.code].gauge or "" for z in site.zones})
        raise IngestError(f"no good gauge reading at or before {at:%Y-%m-%d %H:%M}Z in {origin} at the "
                          f"zones' gauges ({', '.join(gauges)})")
    sources = [f"gauge readings {data_file} up to {newest:%Y-%m-%d %H:%M}Z"]
    if forecasts:
        models = ("gauge readings; lumped continuous SCS-CN model with linear-reservoir routing on the "
                  "rain observed up to the cycle time, no rain after it (no rain forecast)")
    else:
        models = "gauge readings only (observed stage, rate of rise and discharge; no model)"
    problems = list(dict.fromkeys(problems))  # zones sharing a gauge: each problem said once
    return GaugeMetrics(metrics, details, problems, newest, data_file, sources, models, rain_summary)


def _rain_summary(ds: xr.Dataset, gid: str, at: datetime, window: timedelta,
                  fc: LumpedForecast) -> dict[str, Any]:
    """Rain for the console's chart: observed (past) then the forecast's zeros, by step start."""
    sub = ds.sel(station=gid)
    t = sub["time"].values
    recent = np.flatnonzero(t > _np(at - window))
    step = fc.times[1] - fc.times[0] if fc.times.size > 1 else np.timedelta64(1, "h")
    rain = np.where(sub["rain_qc"].values[recent] == QC_GOOD, sub["rain"].values[recent], 0.0)
    starts = [_dt(x - step).isoformat() for x in np.concatenate([t[recent], fc.times])]
    return {"times": starts, "site_mean_mm_h": _round(np.concatenate([rain, np.zeros(fc.times.size)]), 3),
            "now_index": int(recent.size), "note": NO_RAIN_NOTE}


# ----------------------------------------------------------------------------- the cycle
def run_gauge_cycle(site: Site, cfg: Config, store: Store, inputs: Inputs, at: datetime, *,
                    drill: str | None = None, channel=None) -> CycleResult:
    """One cycle of a gauge site at ``at``: metrics from the gauges, then the alert stage.

    Same run id, ``Run`` row, summary shape and alert stage as a grid cycle
    (``warning.pipeline.run_cycle``, which calls this for sites without a grid).
    """
    scope = f"drill:{drill}" if drill else "live"
    run_id = f"{at:%Y%m%dT%H%MZ}-{'drill' if drill else 'live'}"
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    g = gauge_metrics(site, cfg, inputs, at)
    timings["ingest_and_models"] = time.perf_counter() - t0
    with recorded_run(store, run_id, at=at, scope=scope, forecast_issued=g.data_time,
                      forecast_file=g.data_file):
        t1 = time.perf_counter()
        run_info = {"model_run": run_id, "data_sources": "; ".join(g.sources), "models": g.models}
        stage = alerting.decide_and_notify(
            site, cfg, store, at, g.metrics, g.details, run_id=run_id, scope=scope, drill=drill,
            run_info=run_info, problems=g.problems)
        sent = alerting.dispatch(cfg, store, channel, clock=lambda: at) if channel is not None else 0
        timings["alerts"] = time.perf_counter() - t1
        finish_run(store, run_id, "done", {
            "metrics": _jsonable(g.metrics), "details": _json_safe(g.details), "problems": g.problems,
            "timings": timings, "decisions": stage.decisions, "failed_zones": stage.failed, "rain": g.rain,
            "run_info": run_info})
    return CycleResult(run_id=run_id, at=at, forecast_issued=g.data_time, forecast_file=g.data_file,
                       metrics=g.metrics, decisions=stage.decisions, notices=stage.notices,
                       messages_queued=stage.queued, messages_sent=sent, problems=g.problems, timings=timings,
                       simulation=None, failed_zones=stage.failed)
