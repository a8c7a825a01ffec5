"""One forecast cycle: a plain function of (site, inputs, clock).

    rain   = forecast issued last before `at` (+ best-estimate rain before `at`)
    excess = SCS-CN runoff                         models.runoff
    Q      = kinematic wave along the D8 network   models.routing
    depth  = HAND + synthetic rating curves        models.inundation
    zone metrics -> level decisions -> CAP notices + SMS outbox -> dispatch

The models run on a ``Domain`` of whole drainage basins (``run_models``): the whole site in
this process, or one task per group of basins on Dask (``warning.national.cycle``, when
``[compute] engine = "dask"``); the runs are merged into one ``Simulation`` either way.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from models import inundation, risk, routing, runoff

from . import alerting
from .config import Config, ModelConfig
from .errors import IngestError
from .ingest import get_source
from .ingest.forecast_netcdf import ForecastIssue
from .ingest.gauge_csv import latest_good
from .ingest.readings import qc_problem
from .logs import log_context
from .site import RATING_STAGES, Site
from .storage import Store, finish_run, recorded_run

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
    zone_depth: dict[str, ZoneDepth]  # zone code -> flood depth over its cells per (member, time)


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
    #: zones whose alert stage failed this cycle: {"zone", "error"} (their state is unchanged)
    failed_zones: list[dict[str, str]] = field(default_factory=list)


class Inputs:
    """The cycle's data sources, built from the config; caches reprojected forecasts.

    ``forecast`` is None on a gauge site (it has no rainfall forecast source)."""

    def __init__(self, cfg: Config):
        fc = cfg.sources.forecast
        limits = cfg.limits.to_limits()
        self.forecast = (get_source(fc.kind, limits=limits, **fc.source_settings(cfg.path))
                         if fc is not None else None)
        gs = cfg.sources.gauges
        self.gauges = (get_source(gs.kind, limits=limits, **gs.source_settings(cfg.path))
                       if gs is not None else None)
        self.valid_ranges = {g.id: g.valid_range_m for g in cfg.gauges}
        self._cache: dict[tuple[str, float, bool], Any] = {}
        self._steps: dict[tuple, tuple[np.ndarray, float, list[str]]] = {}
        self.last_gauges = None

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

    #: model steps of frame sources kept (a day of 30-min steps and some)
    KEEP_STEPS = 96

    def frame_step_mean(self, frames: list[ForecastIssue], site: Site,
                        spans: dict[Path, tuple[np.datetime64, np.datetime64]],
                        problems: list[str]) -> tuple[np.ndarray, float]:
        """The mean rain rate (y, x) mm/h over the frames of one model step, and the
        seconds they cover; unreadable frames are left out with a problem line. Cached by
        the frames' files and times, so a service reads each frame once."""
        key = tuple((str(f.path), f.path.stat().st_mtime_ns) for f in frames)
        hit = self._steps.get(key)
        if hit is None:
            acc = np.zeros((site.ny, site.nx), dtype=np.float64)
            covered = 0.0
            notes: list[str] = []
            for f in frames:
                try:
                    da = self.forecast.load(f, site)
                except IngestError as exc:
                    notes.append(f"rain frame unusable, left out: {exc}")
                    continue
                b, e = spans[f.path]
                secs = (e - b) / np.timedelta64(1, "s")
                acc += da.values[0, 0].astype(np.float64) * secs
                covered += secs
                notes += da.attrs.get("problems", [])
            mean = (acc / covered).astype(np.float32) if covered else acc.astype(np.float32)
            hit = (mean, covered, notes)
            if len(self._steps) >= self.KEEP_STEPS:
                self._steps.pop(next(iter(self._steps)))
            self._steps[key] = hit
        problems += [n for n in hit[2] if n not in problems]
        return hit[0], hit[1]

    def read_gauges(self):
        """The gauge readings (None without a gauge source); raises IngestError."""
        if self.gauges is None:
            return None
        ds = self.gauges.read(self.valid_ranges)
        self.last_gauges = ds
        return ds

    def gauges_or_last_good(self, problems: list[str]):
        """The gauge readings, or when the source fails the last good ones (with a problem
        line saying so): a broken gauge feed must not stop a rain-driven cycle."""
        try:
            ds = self.read_gauges()
        except IngestError as exc:
            last = self.last_gauges
            problems.append(f"gauge readings unusable ({exc}); "
                            + ("the last good readings stand" if last is not None else
                               "no gauge readings this cycle"))
            return last
        if ds is not None:
            problems += [p for p in ds.attrs.get("problems", []) if p not in problems]
        return ds

    def describe_gauges(self) -> str:
        """The gauge file's name or the feed's address, for the run's data sources."""
        src = self.gauges
        where = getattr(src, "path", None)
        if where is None and getattr(src, "fetcher", None) is not None:
            where = src.fetcher.location
        return Path(str(where)).name if where is not None and not str(where).startswith("http") \
            else str(where or src.kind)


# ----------------------------------------------------------------------------- rain
def assemble_rain(inputs: Inputs, site: Site, cfg: Config, at: datetime
                  ) -> tuple[np.ndarray, np.ndarray, int, ForecastIssue, list[str]]:
    """Rain (member, time, y, x) in mm/h over [at - spin-up, at + horizon), hourly.

    After ``at``: every member of the latest forecast issued at or before ``at``. Before
    ``at``: the best estimate, i.e. for each hour the control member of the newest issue
    that was out by then (shortest lead time). Nothing issued after ``at`` is used.
    """
    if is_frame_source(inputs.forecast):
        return assemble_frames(inputs, site, cfg, at)
    issues = [i for i in inputs.forecast.issues() if i.issued <= at]
    problems = [f"forecast file skipped: {p}" for p in inputs.forecast.skipped]
    if not issues:
        raise IngestError(f"no rainfall forecast issued at or before {at:%Y-%m-%d %H:%M}Z in "
                          f"{inputs.forecast.path}" + "".join(f"; {p}" for p in problems))
    for current in reversed(issues):  # the newest readable issue; fall back on bad files
        try:
            fc = inputs.load_forecast(current, site)
            break
        except IngestError as exc:
            problems.append(f"forecast unusable, fell back to the issue before it: {exc}")
    else:
        raise IngestError(f"no readable rainfall forecast issued at or before "
                          f"{at:%Y-%m-%d %H:%M}Z: " + "; ".join(problems))
    problems += [p for p in fc.attrs.get("problems", []) if p not in problems]
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


def is_frame_source(src: Any) -> bool:
    """A source of one rain frame per file (radar, GeoTIFF sequence, GRIB), which tells
    each frame's interval (``span``), rather than of whole forecast issues (NetCDF)."""
    return callable(getattr(src, "span", None))


def frame_step(interval: np.timedelta64, cfg: Config) -> np.timedelta64:
    """The model step for frames of length ``interval``: the smallest whole number of
    frames that is at least the routing step (5-min radar frames with a 30-min routing
    step run in 30-min steps: the routing would not see finer rain anyway)."""
    routing = np.timedelta64(int(cfg.model.routing_dt_minutes * 60), "s")
    k = max(1, int(np.ceil(routing / interval - 1e-9)))
    return (interval * k).astype("timedelta64[ns]")


def assemble_frames(inputs: Inputs, site: Site, cfg: Config, at: datetime
                    ) -> tuple[np.ndarray, np.ndarray, int, ForecastIssue, list[str]]:
    """``assemble_rain`` for a frame source: rain (1, time, y, x) mm/h over
    [at - spin-up, at + horizon) in steps of whole frames (``frame_step``).

    Every frame out by ``at`` (a radar frame is out at the end of its interval, a
    forecast frame at its issue time) counts; where frames of several issues cover the
    same interval, the newest issue's is used. A step's rain is the mean rate over the
    frames in it; a step with some of its frames missing takes the mean of those it has
    (and says so), a step with none is dry (and says so). After the last frame there is
    no rain: a radar or other observed-rain source has no forecast, and the cycle's
    forecast is then the response of the catchment to the rain that has fallen.
    """
    src = inputs.forecast
    catalogue = src.issues()
    problems = [f"rain frame skipped: {p}" for p in src.skipped]
    issues = [i for i in catalogue if i.issued <= at]
    if not issues:
        raise IngestError(f"no rain frame available at or before {at:%Y-%m-%d %H:%M}Z in {src.path}")
    at64 = np.datetime64(at.replace(tzinfo=None), "ns")
    spans: dict[Path, tuple[np.datetime64, np.datetime64]] = {}
    for issue in issues:
        start, end = src.span(issue)
        spans[issue.path] = (np.datetime64(start.replace(tzinfo=None), "ns"),
                             np.datetime64(end.replace(tzinfo=None), "ns"))
    lengths = np.array([e - b for b, e in spans.values()])
    interval = np.median(lengths).astype("timedelta64[ns]")
    step = frame_step(interval, cfg)
    start = at64 - np.timedelta64(int(cfg.model.spinup_hours * 3600), "s")
    start = start - (start - np.datetime64("1970-01-01T00:00", "ns")) % step
    end = at64 + np.timedelta64(int(cfg.model.horizon_hours * 3600), "s")
    times = np.arange(start, end, step)
    now_index = int(np.searchsorted(times, at64))
    # per interval start, the newest issue's frame
    chosen: dict[np.datetime64, ForecastIssue] = {}
    for issue in issues:  # oldest first: a newer issue replaces an older one
        b, e = spans[issue.path]
        if e > start and b < end:
            chosen[b] = issue
    rain = np.zeros((1, times.size, site.ny, site.nx), dtype=np.float32)
    partial = empty = 0
    last_end = max(spans[i.path][1] for i in issues)
    for k, t in enumerate(times):
        inside = [chosen[b] for b in sorted(chosen) if t <= b < t + step]
        if not inside:
            empty += t < max(at64, last_end)
            continue
        acc, covered = inputs.frame_step_mean(inside, site, spans, problems)
        if covered <= 0:
            empty += 1
            continue
        rain[0, k] = acc
        partial += covered < (step / np.timedelta64(1, "s")) - 1e-6
    if partial:
        problems.append(f"rain frames missing in {partial} of the {times.size} model steps; those "
                        f"steps take the mean rate of the frames they have")
    if empty:
        problems.append(f"no rain frame for {empty} of the model steps up to the last frame; they "
                        f"count as dry")
    current = max(issues, key=lambda i: (i.issued, spans[i.path][1]))
    age = (at64 - last_end) / np.timedelta64(1, "m")
    if age > 2 * interval / np.timedelta64(1, "m") and age > 30:
        problems.append(f"the newest rain frame ({current.path.name}) ends {age:.0f} min before the "
                        f"cycle time; rain since then is unknown and counts as dry")
    return rain, times, now_index, current, problems


def rain_source_text(inputs: Inputs, issue: ForecastIssue, members: int, at: datetime) -> str:
    """The rain behind a cycle, in words, for the run's data sources (and every notice)."""
    src = inputs.forecast
    if not is_frame_source(src):
        return f"rainfall forecast {issue.path.name} ({members} member{'s' if members > 1 else ''})"
    _, end = src.span(issue)
    text = f"{src.kind} rain frames up to {issue.path.name}"
    if end <= at:
        text += f" (observed rain; none is forecast after {end:%Y-%m-%d %H:%M}Z)"
    return text


# ----------------------------------------------------------------------------- models
@dataclass(frozen=True)
class Domain:
    """The cells one run of the models covers, on a window of the site grid.

    A domain holds whole drainage basins: the whole site on the local path, one group of
    basins per Dask task on the national path (``warning.national.cycle``). No water
    crosses its edge, so the models give its cells exactly what one run over the whole
    site gives them. Its reaches are numbered 1..k (0: no reach); ``reaches`` maps them
    back to the site's reach ids.
    """

    rows: slice  # the window on the site grid
    cols: slice
    valid: np.ndarray  # (y, x) bool, the domain's cells
    fdir: np.ndarray  # (y, x) uint8, ESRI D8 codes; 255 (nodata) off the domain
    cn: np.ndarray  # (y, x) float32, curve number (AMC II)
    drainage: np.ndarray  # (y, x) bool, channel cells
    slope: np.ndarray  # (y, x) float32, m/m along D8
    hand: np.ndarray  # (y, x) float32, m above the nearest drainage cell; inf where none
    reach_of_cell: np.ndarray  # (y, x) int32, domain reach each cell drains to first, 0 none
    reaches: np.ndarray  # (k,) int64, site reach id of domain reaches 1..k
    rating_q: np.ndarray  # (k+1, n_stage) float64, m3/s at RATING_STAGES
    record: np.ndarray  # (k + n_gauge,) int64, window flat indices: reach outlets, then gauges
    gauges: tuple[str, ...]  # the gauges recorded after the reach outlets
    zones: dict[str, np.ndarray]  # zone code -> (y, x) bool, its cells in the domain
    dx: float  # m
    dy: float  # m


def site_domain(site: Site, rows: slice = slice(None), cols: slice = slice(None),
                cells: np.ndarray | None = None) -> Domain:
    """The domain of ``cells`` ((y, x) bool on the window ``rows`` x ``cols``; default:
    every valid cell of it). ``cells`` must hold whole drainage basins (see
    ``warning.national.cycle.basin_groups``): flow into a cell off the domain would leave
    the model there."""
    t = site.terrain
    valid = site.valid[rows, cols] if cells is None else cells & site.valid[rows, cols]
    r0, _, _ = rows.indices(site.ny)
    c0, _, _ = cols.indices(site.nx)
    wny, wnx = valid.shape

    def window_flat(flat: np.ndarray) -> np.ndarray:
        """Flat site indices -> flat window indices; -1 off the domain."""
        r, c = np.divmod(flat, site.nx)
        r, c = r - r0, c - c0
        inside = (r >= 0) & (r < wny) & (c >= 0) & (c < wnx)
        inside[inside] = valid[r[inside], c[inside]]
        return np.where(inside, r * wnx + c, -1)

    outlets = window_flat(t.reach_outlet[1:])
    reaches = np.flatnonzero(outlets >= 0) + 1
    local = np.zeros(t.n_reach + 1, dtype=np.int32)
    local[reaches] = np.arange(1, reaches.size + 1, dtype=np.int32)
    gauge_flat = window_flat(np.array([g.row * site.nx + g.col for g in site.gauges.values()],
                                      dtype=np.int64))
    gauges = tuple(gid for gid, f in zip(site.gauges, gauge_flat, strict=True) if f >= 0)
    zones = {z.code: z.mask[rows, cols] & valid for z in site.zones if z.mask is not None}
    return Domain(
        rows=rows, cols=cols, valid=valid,
        fdir=np.where(valid, t.fdir[rows, cols], np.uint8(255)).astype(np.uint8),
        cn=site.cn[rows, cols], drainage=t.drainage[rows, cols], slope=t.slope[rows, cols],
        hand=np.nan_to_num(t.hand[rows, cols], nan=np.inf),
        reach_of_cell=np.where(valid, local[t.reach_of_cell[rows, cols]], 0).astype(np.int32),
        reaches=reaches, rating_q=t.rating_q[np.r_[0, reaches]],
        record=np.concatenate([outlets[reaches - 1], gauge_flat[gauge_flat >= 0]]).astype(np.int64),
        gauges=gauges, zones={code: m for code, m in zones.items() if m.any()},
        dx=site.dx, dy=site.dy)


@dataclass(frozen=True)
class ZoneDepth:
    """Flood depth over (part of) a zone per member and time step: what the depth metrics
    of ``zone_metrics`` need, in a form that adds up over parts of the zone (the maximum
    of the parts' maxima, the sum of their counts), so a zone split over several domains
    gets exactly the numbers of one run over the whole site."""

    max_m: np.ndarray  # (member, time) float32, m, depth of the deepest cell
    wet: np.ndarray  # (member, time) int64, cells deeper than model.flooded_depth_m
    cells: int  # cells of the zone (in the part)

    @classmethod
    def of(cls, stage: np.ndarray, reach_of_cell: np.ndarray, hand: np.ndarray,
           mask: np.ndarray, flooded_m: float) -> ZoneDepth:
        """Depth = stage of the reach a cell drains to above the cell's HAND, floored at
        0, over the cells of ``mask``; ``stage`` (member, time, reach) m; one member at a
        time so no (member, time, cell) array is held."""
        rz = reach_of_cell[mask]
        hz = hand[mask]
        max_m = np.empty(stage.shape[:2], dtype=stage.dtype)
        wet = np.empty(stage.shape[:2], dtype=np.int64)
        for k in range(stage.shape[0]):
            depth = np.maximum(stage[k][:, rz] - hz, 0.0)  # (time, cells)
            max_m[k] = depth.max(axis=1)
            wet[k] = np.count_nonzero(depth > flooded_m, axis=1)
        return cls(max_m=max_m, wet=wet, cells=int(rz.size))

    @classmethod
    def combine(cls, parts: Sequence[ZoneDepth]) -> ZoneDepth:
        """The whole zone's depth from its parts (exact: a maximum and integer sums)."""
        return cls(max_m=np.maximum.reduce([p.max_m for p in parts]),
                   wet=np.sum([p.wet for p in parts], axis=0),
                   cells=sum(p.cells for p in parts))


@dataclass
class DomainRun:
    """What the models give on one domain (see :func:`run_models`)."""

    stage: np.ndarray  # (member, time, k+1) float32, m above the bed, by domain reach
    q_gauge: dict[str, np.ndarray]  # gauge id -> (member, time) m3/s
    peak_depth: np.ndarray  # (y, x) float32, m, NaN off the domain and where no reach
    analysis_depth: np.ndarray  # (y, x) float32, m, likewise
    zone_depth: dict[str, ZoneDepth]  # the depth over each zone's cells in the domain


def run_models(dom: Domain, m: ModelConfig, rain: np.ndarray, dt_h: float, now_index: int
               ) -> DomainRun:
    """The model steps of a cycle on one domain: runoff, routing, reach stage, inundation
    and the zones' depth. ``rain`` (member, time, y, x) mm/h on the domain's window,
    ``dt_h`` the step in hours. The one implementation for the local and the Dask path."""
    method = runoff.get_runoff_method(m.runoff_method)
    if m.runoff_method == "green_ampt":
        excess = method(rain, dt_h, ks=m.green_ampt_ks_mm_h, psi=m.green_ampt_psi_mm,
                        delta_theta=m.green_ampt_delta_theta)
    else:
        cn = dom.cn
        if m.antecedent_moisture != "II":
            cn = runoff.amc_convert(cn, to=m.antecedent_moisture)
        excess = method(rain, dt_h, np.where(dom.valid, cn, 100.0).astype(np.float32),
                        lam=m.initial_abstraction_ratio)
    channel = dom.drainage
    width = np.where(channel, m.channel_width_m, dom.dx).astype(np.float32)
    manning = np.where(channel, m.manning_channel, m.manning_overland).astype(np.float32)
    substeps = max(1, round(dt_h * 60.0 / m.routing_dt_minutes))
    res = routing.route_kinematic_d8(dom.fdir, excess, dt_h * 3600.0, dom.dx, dom.dy, dom.slope,
                                     manning, width, substeps=substeps, record=dom.record)
    del excess
    n_reach = dom.reaches.size
    q_reach = np.zeros(res.q_record.shape[:2] + (n_reach + 1,), dtype=np.float32)
    q_reach[..., 1:] = res.q_record[..., :n_reach]
    stage = inundation.stage_from_discharge(RATING_STAGES, dom.rating_q, q_reach).astype(np.float32)
    stage[..., 0] = 0.0
    q_gauge = {gid: res.q_record[:, :, n_reach + i] for i, gid in enumerate(dom.gauges)}
    hand = dom.hand
    roc = dom.reach_of_cell
    fut = stage[:, now_index:].max(axis=1)  # (member, n_reach+1)
    peak = np.median(np.maximum(fut[:, roc] - hand[None], 0.0), axis=0)
    past = stage[0, : now_index + 1].max(axis=0)
    analysis = np.maximum(past[roc] - hand, 0.0)
    nodata = ~dom.valid | (roc == 0)
    peak[nodata] = np.nan
    analysis[nodata] = np.nan
    zone_depth = {code: ZoneDepth.of(stage, roc, hand, mask, m.flooded_depth_m)
                  for code, mask in dom.zones.items()}
    return DomainRun(stage=stage, q_gauge=q_gauge, peak_depth=peak.astype(np.float32),
                     analysis_depth=analysis.astype(np.float32), zone_depth=zone_depth)


def step_hours(times: np.ndarray) -> float:
    """Length of the input steps of ``times`` (datetime64), hours; 1 for a single step."""
    return float((times[1] - times[0]) / np.timedelta64(1, "h")) if times.size > 1 else 1.0


def merge_runs(site: Site, runs: Sequence[tuple[Domain, DomainRun]], times: np.ndarray,
               now_index: int, forecast: ForecastIssue) -> Simulation:
    """The site's simulation from runs over domains that share no cell and together hold
    every valid cell: reach stages by site reach id, gauges in the site's order, depth
    grids pasted, each zone's depth combined over its parts."""
    nm, nt = runs[0][1].stage.shape[:2]
    stage = np.zeros((nm, nt, site.terrain.n_reach + 1), dtype=np.float32)
    peak = np.full((site.ny, site.nx), np.nan, dtype=np.float32)
    analysis = np.full((site.ny, site.nx), np.nan, dtype=np.float32)
    q_gauge: dict[str, np.ndarray] = {}
    parts: dict[str, list[ZoneDepth]] = {}
    for dom, run in runs:
        stage[..., dom.reaches] = run.stage[..., 1:]
        q_gauge.update(run.q_gauge)
        peak[dom.rows, dom.cols][dom.valid] = run.peak_depth[dom.valid]
        analysis[dom.rows, dom.cols][dom.valid] = run.analysis_depth[dom.valid]
        for code, zd in run.zone_depth.items():
            parts.setdefault(code, []).append(zd)
    return Simulation(times=times, now_index=now_index, stage=stage,
                      q_gauge={gid: q_gauge[gid] for gid in site.gauges},
                      peak_depth=peak, analysis_depth=analysis, members=nm, forecast=forecast,
                      zone_depth={code: ZoneDepth.combine(p) for code, p in parts.items()})


def simulate(site: Site, cfg: Config, rain: np.ndarray, times: np.ndarray, now_index: int,
             forecast: ForecastIssue) -> Simulation:
    """The models over the whole site in this process (``rain`` (member, time, y, x) mm/h);
    ``warning.national.cycle.simulate_on_dask`` runs the same steps per group of basins."""
    dom = site_domain(site)
    run = run_models(dom, cfg.model, rain, step_hours(times), now_index)
    return merge_runs(site, [(dom, run)], times, now_index, forecast)


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
    metrics: dict[str, dict[str, float]] = {}
    details: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    zcfg = {z.code: z for z in cfg.zones}
    fut_times = sim.times[sim.now_index:]
    stale = cfg.sources.gauges.stale_after_minutes if cfg.sources.gauges else 90.0
    for zone in site.zones:
        zd = sim.zone_depth[zone.code]
        zmax = zd.max_m[:, sim.now_index:]  # (member, time) deepest cell from now on
        peak_m = zmax.max(axis=1)  # (member,)
        share = (zd.wet[:, sim.now_index:] / zd.cells).max(axis=1)
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
        det["analysis_series"] = zd.max_m[0, : sim.now_index + 1].round(3).tolist()
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
    flagged = qc_problem(gauges, gid, at, max(stale, 60.0))
    for p in (problem, flagged):
        if p and p not in problems:  # zones sharing a gauge: said once
            problems.append(p)
    vals["observed_stage_m"] = obs
    vals["observed_rise_m_per_h"] = rise
    det["observed_time"] = when.isoformat() if when else None
    return when


def _dt(t: np.datetime64) -> datetime:
    return datetime.fromtimestamp(int(t.astype("datetime64[s]").astype(np.int64)), tz=timezone.utc)


# ----------------------------------------------------------------------------- the cycle
def run_cycle(site: Site, cfg: Config, store: Store, inputs: Inputs, at: datetime, *,
              drill: str | None = None, channel=None, write_depth: bool = True,
              client: Any = None) -> CycleResult:
    """Run one forecast cycle at ``at`` (aware datetime) and return what it did.

    The models run in this process, or on Dask (one task per group of whole drainage
    basins, ``warning.national.cycle``) when ``cfg.compute.engine`` is "dask" or a
    ``client`` (a ``distributed.Client`` the caller keeps open) is given; without a
    client a cluster is opened from ``cfg.compute`` for this cycle. Same results either way.
    """
    if not site.has_grid:  # a gauge site: gauge readings (and a lumped forecast), same alert stage
        from .gauge_cycle import run_gauge_cycle

        return run_gauge_cycle(site, cfg, store, inputs, at, drill=drill, channel=channel)
    scope = f"drill:{drill}" if drill else "live"
    run_id = f"{at:%Y%m%dT%H%MZ}-{'drill' if drill else 'live'}"
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    rain, times, now_index, issue, problems = assemble_rain(inputs, site, cfg, at)
    gauges = inputs.gauges_or_last_good(problems)
    timings["ingest"] = time.perf_counter() - t0
    with log_context(run_id=run_id), recorded_run(store, run_id, at=at, scope=scope,
                                                  forecast_issued=issue.issued, forecast_file=issue.path.name):
        t1 = time.perf_counter()
        site_rain = np.median(rain[:, :, site.valid].mean(axis=2, dtype=np.float64), axis=0)  # (time,) mm/h, for the console
        if client is not None or cfg.compute.engine == "dask":
            from .national.cycle import simulate_on_dask  # Dask is imported only when used

            sim = simulate_on_dask(site, cfg, rain, times, now_index, issue, client=client)
        else:
            sim = simulate(site, cfg, rain, times, now_index, issue)
        del rain
        timings["models"] = time.perf_counter() - t1
        metrics, details, more = zone_metrics(site, cfg, sim, gauges, at)
        problems += more
        t2 = time.perf_counter()
        sources = [rain_source_text(inputs, issue, sim.members, at)]
        if inputs.gauges is not None:
            sources.append(f"gauge readings {inputs.describe_gauges()} up to {at:%H:%M}Z")
        run_info = {
            "model_run": run_id,
            "forecast_issued": issue.issued.isoformat(timespec="minutes"),
            "forecast_file": issue.path.name,
            "data_sources": "; ".join(sources),
            "models": "Priority-Flood + D8, SCS-CN, kinematic wave, HAND rating curves",
        }
        stage = alerting.decide_and_notify(
            site, cfg, store, at, metrics, details, run_id=run_id, scope=scope, drill=drill,
            run_info=run_info, problems=problems)
        sent = alerting.dispatch(cfg, store, channel, clock=lambda: at) if channel is not None else 0
        timings["alerts"] = time.perf_counter() - t2
        if write_depth:
            site.write_geotiff(cfg.output_dir / "depth" / f"peak_depth_{at:%Y%m%dT%H%MZ}.tif",
                               sim.peak_depth, units="m", run=run_id,
                               meaning="ensemble-median forecast peak flood depth",
                               forecast_issued=issue.issued.isoformat())
        finish_run(store, run_id, "done", {
            "metrics": _jsonable(metrics), "details": _json_safe(details), "problems": problems,
            "timings": timings, "decisions": stage.decisions, "failed_zones": stage.failed,
            "run_info": run_info,
            "rain": {"times": [_dt(x).isoformat() for x in times],
                     "site_mean_mm_h": np.round(site_rain, 4).tolist(), "now_index": now_index}})
    return CycleResult(run_id=run_id, at=at, forecast_issued=issue.issued,
                       forecast_file=issue.path.name, metrics=metrics, decisions=stage.decisions,
                       notices=stage.notices, messages_queued=stage.queued, messages_sent=sent,
                       problems=problems, timings=timings, simulation=sim, failed_zones=stage.failed)


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
