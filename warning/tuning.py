"""Threshold tuning: score candidate thresholds against a catalogue of past events.

How it works
------------
During a replay the hydrological models do not depend on the warning thresholds; only
the level decisions do. So a catalogue of events is replayed **once** (that yields one
:class:`~warning.events.EventTrace` per event: every cycle's zone metrics), and the tuner
re-runs the pure decision state machine :func:`alerts.levels.decide` over the recorded
metric series for each candidate threshold. This is exact (the same code path, with the
same :class:`~alerts.levels.ZonePolicy` persistence, hysteresis and minimum hold, as live
decisions) and cheap: one candidate over one 30-cycle event is 30 calls of a pure
function, a few milliseconds (most of it spent writing the decisions' reasons).

For every candidate the zone's :class:`~alerts.levels.LevelSpec` list is copied with one
value changed (one criterion of one level, via :func:`dataclasses.replace`), the decisions
are replayed cycle by cycle from ``ZoneState()`` for each event, the warning periods at the
verified level are matched with the event's observed flood onsets
(:func:`warning.verification.verify`), and the contingencies are summed over events. Only
zones an event observed count for it (:meth:`~warning.events.Event.verified_zones`).

Then:

- :func:`candidate_grid` proposes the values to try;
- :func:`evaluate` scores them (POD, FAR, CSI, lead-time distribution);
- :class:`Goal` (parsed from ``"maximise csi; far <= 0.3; lead >= 60"``) and
  :func:`recommend` choose one;
- :func:`config_diff` / :func:`apply_changes` show or write the change to the TOML file,
  touching only the threshold string (comments and layout kept);
- :func:`pod_far_plot` and :func:`scores_table` report.

Ordering of levels: a candidate that would warn at a level *before* a lower level on the
same metric (a ``severe`` discharge threshold below the ``warning`` one) is refused, as a
value that warns always or never is: the events give one flood onset per zone, so scored
against them a higher level can only gain by being raised earlier, and the levels would
lose their meaning. A threshold tuned above the next level's is legal config (a zone then
goes straight to the higher level) and is scored as such.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import logging
import math
import os
import re
import shutil
import tempfile
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from dataclasses import field as dataclass_field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from alerts.levels import LevelSpec, ZonePolicy, ZoneState, decide, raised_by

from .config import _CRITERION, Config, ZoneConfig
from .errors import FloodwarnError
from .events import Event, EventTrace
from .verification import (
    BASELINES,
    Contingency,
    EventCounts,
    TimeTable,
    baseline_periods,
    periods_from_levels,
    verify,
)
from .verification import scores as verification_scores

log = logging.getLogger(__name__)

__all__ = [
    "ALWAYS_SHARE", "MIN_EVENTS", "MIN_FLOODS", "Assessment", "Candidate", "CandidateScore", "Goal",
    "GoalError", "GroupKey", "TuningError", "apply_changes", "assess", "by_criterion", "candidate_grid", "config_diff", "decisions_for", "evaluate", "EventSeries",
    "pod_far_plot", "recommend", "recommendation", "scores_table", "triggered",
]

DEFAULT_WORKERS = 1
"""Default of :func:`evaluate`'s ``workers``. One process: 5 events of 30 cycles and 51
candidates (7,650 decisions) take 0.9-1.3 s of CPU, and a pool of 2 processes was no
faster on a 2-core machine (median 1.3-1.4 s with 1 worker, 1.4-1.5 s with 2, the cores
shared with other jobs). A pool pays off only for much larger catalogues on idle cores."""


#: a candidate warning at least this share of the events' time "warns always" and is refused
ALWAYS_SHARE = 0.95
#: fewest events observing a zone, and fewest observed floods among them, to tune it
MIN_EVENTS = 3
MIN_FLOODS = 2


class TuningError(FloodwarnError):
    """The tuner cannot do what was asked; the message says why and what to change."""


class GoalError(TuningError, ValueError):
    """A goal string could not be read; the message shows the accepted forms."""


# --------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Candidate:
    """One value to try for one criterion of one level of one zone.

    Parameters
    ----------
    zone : str
        Zone code.
    level : str
        Level name (``"warning"``).
    metric : str
        The criterion's metric (``"forecast_peak_depth_m"``).
    op : str
        The criterion's operator (``">="``).
    value : float
        The candidate threshold, in the metric's unit.
    current : float
        The threshold in the configuration now.
    criterion_index : int
        Position of the criterion in the level's ``any``/``all`` list.
    """

    zone: str
    level: str
    metric: str
    op: str
    value: float
    current: float
    criterion_index: int = 0
    #: the same metric's threshold at the highest lower level (``>=``: the candidate may not
    #: go below it; ``<=``: not above it); None when no lower level uses the metric
    floor: float | None = None

    @property
    def key(self) -> tuple[str, str, int, str, str]:
        """What is being tuned (everything but the value)."""
        return (self.zone, self.level, self.criterion_index, self.metric, self.op)

    @property
    def text(self) -> str:
        """The criterion as written in the config, e.g. ``forecast_peak_depth_m >= 0.42``."""
        return f"{self.metric} {self.op} {self.value:g}"

    @property
    def below_lower_level(self) -> bool:
        """True when this value would warn at its level before a lower level does."""
        if self.floor is None:
            return False
        return self.value < self.floor if self.op in (">=", ">") else self.value > self.floor

    @property
    def cautious_key(self) -> float:
        """Smaller for a threshold that warns more often (lower for ``>=``/``>``, higher
        for ``<=``/``<``)."""
        return self.value if self.op in (">=", ">") else -self.value


@dataclass(frozen=True)
class CandidateScore(EventCounts):
    """Verification of one candidate over the catalogue (in sample: every event).

    ``pod``, ``far``, ``csi`` are event scores (late detections count as misses); ``pss``,
    ``hss``, ``csi_time`` the scores in time (hours warned and flooded, warned and dry,
    ...); NaN where undefined. ``lead_times_min`` are the forecast hits' lead times in
    minutes, sorted; hits raised by an observation only are ``detections`` (their leads
    apart). ``events`` is the number of events that observed the zone; ``per_event`` the
    contingency of each (in the order of ``event_starts``), which the out-of-sample check
    re-combines; ``baselines`` the per-event contingencies of never/always/persistence.
    """

    candidate: Candidate
    verified_level: str
    events: int
    hits: int
    misses: int
    false_alarms: int
    pod: float
    far: float
    csi: float
    lead_times_min: tuple[float, ...]
    late: int = 0
    detections: int = 0
    detection_leads_min: tuple[float, ...] = ()
    hours: TimeTable = TimeTable()
    pss: float = math.nan
    hss: float = math.nan
    csi_time: float = math.nan
    warned_share: float = math.nan
    forecast_pod: float = math.nan
    per_event: tuple[Contingency, ...] = ()
    event_starts: tuple[datetime, ...] = ()
    baselines: Mapping[str, tuple[Contingency, ...]] = dataclass_field(default_factory=dict)
    #: share of the events' cycles in which the tuned criterion itself holds (NaN: unknown)
    criterion_share: float = math.nan

    @classmethod
    def from_contingency(cls, candidate: Candidate, verified_level: str, events: int,
                         c: Contingency, *, per_event: Sequence[Contingency] = (),
                         event_starts: Sequence[datetime] = (),
                         baselines: Mapping[str, tuple[Contingency, ...]] | None = None,
                         criterion_share: float = math.nan) -> CandidateScore:
        sc = verification_scores(c)
        return cls(candidate=candidate, verified_level=verified_level, events=events,
                   hits=c.hits, misses=c.misses, false_alarms=c.false_alarms,
                   pod=sc["pod"], far=sc["far"], csi=sc["csi"],
                   lead_times_min=tuple(sorted(t.total_seconds() / 60.0 for t in c.lead_times)),
                   late=c.late, detections=c.detections,
                   detection_leads_min=tuple(sorted(t.total_seconds() / 60.0 for t in c.detection_leads)),
                   hours=c.hours, pss=sc["pss_time"], hss=sc["hss_time"], csi_time=sc["csi_time"],
                   warned_share=sc["warned_share"], forecast_pod=sc["forecast_pod"],
                   per_event=tuple(per_event), event_starts=tuple(event_starts),
                   baselines=dict(baselines or {}), criterion_share=criterion_share)

    def lead_summary(self) -> dict[str, float]:
        """Forecast lead times of the hits, minutes: ``min``, ``q1``, ``median``, ``q3``,
        ``max`` (quartiles by linear interpolation, numpy's default); NaN without hits."""
        if not self.lead_times_min:
            return dict.fromkeys(("min", "q1", "median", "q3", "max"), math.nan)
        q = np.percentile(np.asarray(self.lead_times_min), [0, 25, 50, 75, 100])
        return dict(zip(("min", "q1", "median", "q3", "max"), (float(x) for x in q)))

    @property
    def median_lead_min(self) -> float:
        return self.lead_summary()["median"]

    @property
    def trivial(self) -> str | None:
        """``"always"`` when the tuned criterion holds in every cycle of the events (the
        threshold is at or beyond every value seen, like ``>= 0``) or the level is in
        force :data:`ALWAYS_SHARE` of the events' time or more; ``"never"`` when the
        criterion holds in no cycle or the level is never in force; None otherwise."""
        if self.criterion_share == 1.0:
            return "always"
        if self.criterion_share == 0.0:
            return "never"
        if self.hours.total <= 0:
            return None
        if self.hours.warned <= 0:
            return "never"
        if self.warned_share >= ALWAYS_SHARE:
            return "always"
        return None


def _zone_config(cfg: Config, zone: str) -> ZoneConfig:
    for z in cfg.zones:
        if z.code == zone:
            return z
    raise TuningError(f"zone {zone!r} is not configured; zones: "
                      f"{', '.join(z.code for z in cfg.zones)}")


def _level_spec(levels: Sequence[LevelSpec], zone: str, level: str) -> LevelSpec:
    for spec in levels:
        if spec.name == level:
            return spec
    raise TuningError(f"zone {zone!r} has no thresholds for level {level!r}; its levels: "
                      f"{', '.join(s.name for s in levels)}")


def _criterion_index(spec: LevelSpec, zone: str, metric: str | None) -> int:
    for i, c in enumerate(spec.criteria):
        if (c.metric == metric) if metric is not None else not c.observed:
            return i
    have = ", ".join(c.metric for c in spec.criteria)
    if metric is None:
        raise TuningError(f"zone {zone!r} level {spec.name!r} has no forecast criterion "
                          f"(only {have}); name the metric to tune")
    raise TuningError(f"zone {zone!r} level {spec.name!r} has no criterion on {metric!r}; "
                      f"its criteria use {have}")


def _verified(traces: Iterable[EventTrace], cfg: Config, zone: str) -> list[EventTrace]:
    return [t for t in traces if zone in t.event.verified_zones(cfg)]


def _even_grid(lo: float, hi: float, n: int) -> list[float]:
    """``n`` evenly spaced values from ``lo`` to ``hi``, rounded to a tenth of the
    spacing's leading digit (0.0255 spacing -> 3 decimals), so they read well in a config;
    the first is rounded down and the last up, so the grid spans every value seen (the
    lowest value is met in every cycle: the "always warn" end is always tried, and
    refused)."""
    if hi <= lo:
        return [lo]
    step = (hi - lo) / (n - 1)
    decimals = max(0, math.ceil(-math.log10(step)) + 1)
    scale = 10.0 ** decimals
    grid = [round(lo + k * step, decimals) for k in range(n)]
    grid[0] = math.floor(lo * scale + 1e-9) / scale
    grid[-1] = math.ceil(hi * scale - 1e-9) / scale
    return grid


def candidate_grid(
    traces: Sequence[EventTrace],
    cfg: Config,
    zone: str,
    level: str,
    metric: str | None = None,
    n: int = 50,
    *,
    values: Iterable[float] | None = None,
    include_current: bool = True,
) -> list[Candidate]:
    """Candidate thresholds for one criterion of one level of a zone.

    Parameters
    ----------
    traces : sequence of EventTrace
        The replayed catalogue.
    cfg : Config
    zone, level : str
        Zone code and level name.
    metric : str, optional
        The criterion to vary, by metric name. Default: the level's first criterion on a
        forecast metric (one whose name does not start with ``observed_``).
    n : int
        Number of values when ``values`` is not given: evenly spaced from the lowest to
        the highest value of that metric in the zone's cycles of the events that observe
        the zone (events that do not cannot score), each rounded to a tenth of the spacing
        (so ``0.418``, not ``0.41836734``).
    values : iterable of float, optional
        Explicit values to try instead of the grid.
    include_current : bool
        Add the configured value, so the current setting is always scored (default).

    Returns
    -------
    list of Candidate
        Sorted by value, without duplicates.
    """
    zone_cfg = _zone_config(cfg, zone)
    spec = _level_spec(cfg.level_specs(zone_cfg), zone, level)
    index = _criterion_index(spec, zone, metric)
    crit = spec.criteria[index]
    if values is not None:
        grid = [float(v) for v in values]
        bad = [v for v in grid if not math.isfinite(v)]
        if bad:
            raise TuningError(f"candidate values must be finite numbers, got {bad}")
    else:
        if n < 2:
            raise TuningError(f"n must be at least 2 candidate values, got {n}")
        seen = [
            float(v)
            for trace in _verified(traces, cfg, zone)
            for cycle in trace.cycles
            if (v := cycle.metrics.get(zone, {}).get(crit.metric)) is not None
            and math.isfinite(float(v))
        ]
        if not seen:
            raise TuningError(
                f"no value of {crit.metric!r} for zone {zone!r} in the events that observe it; "
                "give explicit values, or add events with the zone under [observed]")
        grid = _even_grid(min(seen), max(seen), n)
    if include_current:
        grid.append(crit.value)
    if not grid:
        raise TuningError("no candidate values to try")
    lower = [c.value for other in cfg.level_specs(zone_cfg) if other.rank < spec.rank
             for c in other.criteria if (c.metric, c.op) == (crit.metric, crit.op)]
    floor = (max(lower) if crit.op in (">=", ">") else min(lower)) if lower else None
    return [Candidate(zone=zone, level=level, metric=crit.metric, op=crit.op, value=v,
                      current=crit.value, criterion_index=index, floor=floor)
            for v in sorted(set(grid))]


# --------------------------------------------------------------------------- replay


def _with_value(levels: Sequence[LevelSpec], cand: Candidate) -> list[LevelSpec]:
    """``levels`` with only the candidate's criterion set to its value."""
    out = []
    found = False
    for spec in levels:
        if spec.name == cand.level:
            i = cand.criterion_index
            crit = spec.criteria[i] if i < len(spec.criteria) else None
            if crit is None or (crit.metric, crit.op) != (cand.metric, cand.op):
                raise TuningError(
                    f"zone {cand.zone!r} level {cand.level!r}: criterion {cand.criterion_index} "
                    f"is not '{cand.metric} {cand.op} ...' (the config changed since the "
                    "candidates were made?)")
            criteria = list(spec.criteria)
            criteria[cand.criterion_index] = replace(crit, value=cand.value)
            spec = replace(spec, criteria=tuple(criteria))
            found = True
        out.append(spec)
    if not found:
        raise TuningError(f"zone {cand.zone!r} has no thresholds for level {cand.level!r}")
    return out


def _changes(times: Sequence[datetime], metrics: Sequence[Mapping[str, float]],
             levels: Sequence[LevelSpec], policy: ZonePolicy, zone: str
             ) -> list[tuple[datetime, int, int, Mapping[str, float]]]:
    """Level changes ``(time, rank, previous rank, metrics)``."""
    state = ZoneState()
    out: list[tuple[datetime, int, int, Mapping[str, float]]] = []
    for at, m in zip(times, metrics):
        d = decide(state, m, at, levels, policy, zone=zone)
        state = d.state
        if d.changed:
            out.append((at, d.level, d.previous, m))
    return out


def triggered(changes: Sequence[tuple[datetime, int, int, Mapping[str, float]]],
              levels: Sequence[LevelSpec], rank: int) -> list[tuple[datetime, int, str]]:
    """Level changes ``(time, rank, trigger)`` for verifying at ``rank``: a raise to it or
    above records what raised it there (a forecast criterion or an observation only, of
    the levels from ``rank`` up to the new one; :func:`alerts.levels.raised_by`)."""
    return [(at, new, raised_by(levels, m, max(rank, prev + 1), new) if new > prev else "none")
            for at, new, prev, m in changes]


def _series(trace: EventTrace, zone: str
            ) -> tuple[tuple[datetime, ...], tuple[dict[str, float], ...]]:
    times = tuple(c.at for c in trace.cycles)
    if any(b <= a for a, b in itertools.pairwise(times)):
        raise TuningError(f"event {trace.event.name!r}: cycles are not in time order")
    return times, tuple(dict(c.metrics.get(zone, {})) for c in trace.cycles)


def decisions_for(
    trace: EventTrace,
    cfg: Config,
    zone: str,
    levels: Sequence[LevelSpec] | None = None,
    policy: ZonePolicy | None = None,
) -> list[tuple[datetime, int]]:
    """A zone's level changes ``(cycle time, new rank)`` over an event, replaying
    :func:`alerts.levels.decide` cycle by cycle from ``ZoneState()``.

    ``levels`` and ``policy`` default to the zone's configured ones. A cycle without
    metrics for the zone is decided on no data, as live (every criterion false).
    """
    zone_cfg = _zone_config(cfg, zone)
    levels = cfg.level_specs(zone_cfg) if levels is None else levels
    policy = cfg.zone_policy(zone_cfg) if policy is None else policy
    times, metrics = _series(trace, zone)
    return [(t, rank) for t, rank, _, _ in _changes(times, metrics, levels, policy, zone)]


@dataclass(frozen=True)
class EventSeries:
    """One event as a zone's verification sees it: its cycle times (and the zone's metrics
    in each), onsets, flood windows, window and lead window, and when persistence could see
    each flood; :meth:`verify` scores warning periods on it, :meth:`baseline` a baseline.
    Used by the tuner, the replay report and ``floodwarn replay`` alike."""

    times: tuple[datetime, ...]
    metrics: tuple[dict[str, float], ...]
    onsets: tuple[datetime, ...]
    tolerance: timedelta
    floods: tuple[tuple[datetime, datetime], ...] = ()
    window: tuple[datetime, datetime] | None = None
    lead_window: timedelta = timedelta(0)
    #: persistence's floods: when the observation of each flood's onset and end arrived
    seen: tuple[tuple[datetime, datetime], ...] = ()

    @classmethod
    def of(cls, event: Event, zone: str, cfg: Config, times: Sequence[datetime],
           metrics: Sequence[dict[str, float]] = ()) -> EventSeries:
        """The series of ``zone`` over ``event`` with the cycles at ``times``."""
        arrival = observation_arrival(cfg)
        floods = tuple(event.floods(zone))
        return cls(tuple(times), tuple(metrics), tuple(event.observed[zone]), event.tolerance, floods,
                   (event.start, event.end), event.lead_window,
                   tuple((arrival(t0), arrival(t1)) for t0, t1 in floods))

    def verify(self, periods) -> Contingency:
        return verify(periods, self.onsets, tolerance=self.tolerance, floods=self.floods,
                      window=self.window, lead_window=self.lead_window)

    def baseline(self, name: str) -> Contingency:
        window = self.window or (self.times[0], self.times[-1])
        return self.verify(baseline_periods(name, self.seen or self.floods, window, self.times))


@dataclass(frozen=True)
class _ZoneInputs:
    """Everything needed to score a zone's candidates: plain, picklable data."""

    zone: str
    levels: tuple[LevelSpec, ...]
    policy: ZonePolicy
    events: tuple[EventSeries, ...]


def _zone_inputs(traces: Sequence[EventTrace], cfg: Config, zone: str) -> _ZoneInputs:
    zone_cfg = _zone_config(cfg, zone)
    events = []
    for trace in _verified(traces, cfg, zone):
        times, metrics = _series(trace, zone)
        events.append(EventSeries.of(trace.event, zone, cfg, times, metrics))
    if not events:
        raise TuningError(f"no event observes zone {zone!r}: list it under [observed] in the "
                          "event files (with [] if it did not flood) to tune its thresholds")
    return _ZoneInputs(zone, tuple(cfg.level_specs(zone_cfg)), cfg.zone_policy(zone_cfg),
                       tuple(events))


def observation_arrival(cfg: Config):
    """When what happened at a moment was first seen at the site's gauges, as a function of
    time (:meth:`warning.config.GaugeSourceConfig.observed_at`; at once without gauges).
    Persistence can warn no earlier."""
    src = cfg.sources.gauges
    return src.observed_at if src is not None else (lambda t: t)


def _baselines(inputs: _ZoneInputs) -> dict[str, tuple[Contingency, ...]]:
    return {name: tuple(ev.baseline(name) for ev in inputs.events) for name in BASELINES}


def _score(inputs: _ZoneInputs, cand: Candidate, verified_level: str,
           baselines: Mapping[str, tuple[Contingency, ...]] | None = None) -> CandidateScore:
    levels = _with_value(inputs.levels, cand)
    rank = _level_spec(levels, cand.zone, verified_level).rank
    crit = _level_spec(levels, cand.zone, cand.level).criteria[cand.criterion_index]
    per_event = []
    held = seen = 0
    for ev in inputs.events:
        changes = _changes(ev.times, ev.metrics, levels, inputs.policy, inputs.zone)
        per_event.append(ev.verify(periods_from_levels(triggered(changes, levels, rank), rank)))
        for m in ev.metrics:
            v = m.get(crit.metric)
            if v is not None and math.isfinite(float(v)):
                seen += 1
                held += crit.holds(float(v))
    total = sum(per_event, Contingency())
    return CandidateScore.from_contingency(
        cand, verified_level, len(inputs.events), total, per_event=per_event,
        event_starts=[ev.window[0] if ev.window else ev.times[0] for ev in inputs.events],
        baselines=baselines if baselines is not None else _baselines(inputs),
        criterion_share=held / seen if seen else math.nan)


_WORKER_INPUTS: dict[str, _ZoneInputs] = {}


def _init_worker(inputs: dict[str, _ZoneInputs]) -> None:
    _WORKER_INPUTS.clear()
    _WORKER_INPUTS.update(inputs)


def _score_chunk(chunk: Sequence[tuple[Candidate, str]]) -> list[CandidateScore]:
    return [_score(_WORKER_INPUTS[c.zone], c, lv) for c, lv in chunk]  # baselines per candidate


def evaluate(
    traces: Sequence[EventTrace],
    cfg: Config,
    candidates: Sequence[Candidate],
    level: str | None = None,
    *,
    workers: int = DEFAULT_WORKERS,
    chunk_size: int | None = None,
) -> list[CandidateScore]:
    """Score each candidate over the catalogue.

    Parameters
    ----------
    traces : sequence of EventTrace
        The replayed catalogue (one replay per event, whatever the thresholds).
    cfg : Config
        The configuration the candidates vary.
    candidates : sequence of Candidate
        From :func:`candidate_grid` (several zones or criteria may be mixed).
    level : str, optional
        The level whose warning periods (that level or above) are verified. Default: each
        candidate's own level.
    workers : int
        Processes to use; above 1, chunks of candidates go to a
        :class:`~concurrent.futures.ProcessPoolExecutor`.
    chunk_size : int, optional
        Candidates per task (default: an even share, four tasks per worker).

    Returns
    -------
    list of CandidateScore
        In the order of ``candidates``.
    """
    if workers < 1:
        raise TuningError(f"workers must be at least 1, got {workers}")
    candidates = list(candidates)
    zones = dict.fromkeys(c.zone for c in candidates)
    inputs = {zone: _zone_inputs(traces, cfg, zone) for zone in zones}
    jobs = [(c, level or c.level) for c in candidates]
    for c, lv in jobs:  # fail before any work on a level the zone lacks
        _level_spec(inputs[c.zone].levels, c.zone, lv)
    if workers == 1 or len(jobs) < 2:
        base = {zone: _baselines(inp) for zone, inp in inputs.items()}
        return [_score(inputs[c.zone], c, lv, base[c.zone]) for c, lv in jobs]
    size = chunk_size or max(1, math.ceil(len(jobs) / (workers * 4)))
    chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
    log.debug("scoring %d candidates in %d chunks on %d processes", len(jobs), len(chunks), workers)
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                             initargs=(inputs,)) as pool:
        return [s for part in pool.map(_score_chunk, chunks) for s in part]


GroupKey = tuple[str, str, int, str, str, str]
"""``(zone, level, criterion_index, metric, op, verified_level)``: one tuned criterion."""


def by_criterion(scores: Iterable[CandidateScore]) -> dict[GroupKey, list[CandidateScore]]:
    """Scores grouped by what was tuned and verified (a :data:`GroupKey`), each list sorted
    by value."""
    out: dict[GroupKey, list[CandidateScore]] = {}
    for s in scores:
        out.setdefault((*s.candidate.key, s.verified_level), []).append(s)
    return {k: sorted(v, key=lambda s: s.candidate.value) for k, v in out.items()}


# --------------------------------------------------------------------------- goals

_OBJECTIVES = {"csi": "csi", "pod": "pod", "far": "far", "lead": "median_lead_min", "pss": "pss",
               "hss": "hss"}
_LEAD_NAMES = ("lead", "median_lead", "median_lead_min")
_GOAL_EXAMPLE = "e.g. 'maximise csi; far <= 0.3; lead >= 60'"
_OBJECTIVE_RE = re.compile(r"^(maximi[sz]e|minimi[sz]e)\s+([a-z_]+)$")
_CONSTRAINT_RE = re.compile(
    r"^([a-z_]+)\s*(<=|>=|=<|=>|<|>|=)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)\s*"
    r"(%|min|minutes|h|hours)?$")


@dataclass(frozen=True)
class Goal:
    """What a recommendation optimises, and the constraints it must meet.

    Parameters
    ----------
    objective : {"pss", "hss", "csi", "pod", "lead", "far"}
        Maximised (``far`` is minimised): ``pss`` and ``hss`` are Peirce's and Heidke's
        skill scores in time (the default: neither an always-on nor a never-on warning
        can score above 0), ``csi``, ``pod`` and ``far`` event scores, ``lead`` the
        forecast hits' median lead time.
    max_far : float, optional
        FAR at most this (0-1).
    min_pod : float, optional
        POD at least this (0-1).
    min_median_lead_min : float, optional
        Median lead time of the hits at least this, minutes.
    """

    objective: str = "pss"
    max_far: float | None = None
    min_pod: float | None = None
    min_median_lead_min: float | None = None

    def __post_init__(self) -> None:
        if self.objective not in _OBJECTIVES:
            raise GoalError(f"unknown objective {self.objective!r}; one of "
                            f"{', '.join(_OBJECTIVES)}")

    @classmethod
    def parse(cls, text: str) -> Goal:
        """Read a goal such as ``"maximise csi; far <= 0.3; lead >= 60"``.

        Clauses are separated by ``;``: exactly one ``maximise pss|hss|csi|pod|lead`` (or
        ``minimise far``; ``-ize`` spellings too) and any of ``far <= x``, ``pod >= x``
        (fractions, or percentages ``30%``) and ``lead >= x`` (minutes; ``x h`` for hours).
        """
        clauses = [c.strip().lower() for c in text.split(";")]
        clauses = [c for c in clauses if c]
        if not clauses:
            raise GoalError(f"the goal is empty; say what to optimise, {_GOAL_EXAMPLE}")
        objective: str | None = None
        limits: dict[str, float] = {}
        for clause in clauses:
            where = f"goal {text!r}, clause {clause!r}"
            m = _OBJECTIVE_RE.match(clause)
            if m:
                verb, name = m.groups()
                name = "lead" if name in _LEAD_NAMES else name
                if name not in _OBJECTIVES:
                    raise GoalError(f"{where}: cannot optimise {name!r}; choose pss, hss, csi, pod, lead "
                                    "(maximise) or far (minimise)")
                if verb.startswith("maxi") and name == "far":
                    raise GoalError(f"{where}: maximising FAR rewards false alarms; "
                                    "did you mean 'minimise far'?")
                if verb.startswith("mini") and name != "far":
                    raise GoalError(f"{where}: only far is minimised; did you mean "
                                    f"'maximise {name}'?")
                if objective is not None:
                    raise GoalError(f"{where}: give one objective only (already {objective!r})")
                objective = name
                continue
            m = _CONSTRAINT_RE.match(clause)
            if not m:
                raise GoalError(f"{where}: not understood; write 'maximise csi' or a limit "
                                f"like 'far <= 0.3', {_GOAL_EXAMPLE}")
            name, op, number, unit = m.groups()
            op = {"=<": "<=", "=>": ">="}.get(op, op)
            name = "lead" if name in _LEAD_NAMES else name
            value = float(number)
            allowed = {"far": "<=", "pod": ">=", "lead": ">="}
            if name not in allowed:
                raise GoalError(f"{where}: no limit on {name!r}; limits are far <= x, "
                                "pod >= x and lead >= minutes")
            if op != allowed[name]:
                raise GoalError(f"{where}: {name} takes '{allowed[name]}' "
                                f"(e.g. '{name} {allowed[name]} {number}'), not {op!r}")
            if name in limits:
                raise GoalError(f"{where}: {name} is limited twice")
            if name == "lead":
                if unit in ("%",):
                    raise GoalError(f"{where}: lead is a time, in minutes or hours (60, 1 h)")
                value *= 60.0 if unit in ("h", "hours") else 1.0
            else:
                if unit in ("min", "minutes", "h", "hours"):
                    raise GoalError(f"{where}: {name} is a fraction (0.3) or a percentage (30%)")
                value /= 100.0 if unit == "%" else 1.0
                if not 0.0 <= value <= 1.0:
                    raise GoalError(f"{where}: {name} is between 0 and 1 (or 0% and 100%)")
            limits[name] = value
        if objective is None:
            raise GoalError(f"goal {text!r}: say what to optimise, {_GOAL_EXAMPLE}")
        return cls(objective=objective, max_far=limits.get("far"), min_pod=limits.get("pod"),
                   min_median_lead_min=limits.get("lead"))

    def __str__(self) -> str:
        parts = ["minimise far" if self.objective == "far" else f"maximise {self.objective}"]
        if self.max_far is not None:
            parts.append(f"far <= {self.max_far:g}")
        if self.min_pod is not None:
            parts.append(f"pod >= {self.min_pod:g}")
        if self.min_median_lead_min is not None:
            parts.append(f"lead >= {self.min_median_lead_min:g}")
        return "; ".join(parts)

    def failures(self, s: CandidateScore) -> list[str]:
        """The constraints ``s`` does not meet (an undefined score never meets one)."""
        out = []
        if self.max_far is not None and not s.far <= self.max_far:
            out.append("far")
        if self.min_pod is not None and not s.pod >= self.min_pod:
            out.append("pod")
        lead = self.min_median_lead_min
        if lead is not None and not s.median_lead_min >= lead:
            out.append("lead")
        return out

    def value(self, s: CandidateScore) -> float:
        """The objective, larger is better (FAR negated); NaN where undefined."""
        v = s.median_lead_min if self.objective == "lead" else getattr(s, self.objective)
        return -v if self.objective == "far" else v


def _fmt(v: float, digits: int = 2) -> str:
    return "undefined" if math.isnan(v) else f"{v:.{digits}f}"


def _describe(s: CandidateScore) -> str:
    c = s.candidate
    return f"{c.zone} {c.level}: {c.metric} {c.op} {c.value:g} (now {c.current:g}): {_summary(s)}"


def _summary(s: CandidateScore | Contingency) -> str:
    """Scores in words: events, then time."""
    if isinstance(s, Contingency):
        s = CandidateScore.from_contingency(Candidate("", "", "", ">=", 0.0, 0.0), "", 0, s)
    lead = s.median_lead_min
    parts = [f"{s.hits} in time ({s.forecast_hits} by forecast"
             + (f", median lead {lead:.0f} min" if not math.isnan(lead) else "")
             + (f"; {s.detections} only detected by observation" if s.detections else "") + ")",
             f"{s.late} late", f"{s.misses} missed", f"{s.false_alarms} false"]
    return (", ".join(parts) + f"; CSI {_fmt(s.csi)}, POD {_fmt(s.pod)}, FAR {_fmt(s.far)}; in time: "
            f"PSS {_fmt(s.pss)}, HSS {_fmt(s.hss)}, {s.hours.b:.0f} h warned without flooding")


@dataclass(frozen=True)
class Assessment:
    """What :func:`assess` found for one tuned criterion.

    ``chosen`` is the recommendation (None: keep the configured threshold) and ``reason``
    says why in words. ``in_sample`` is the best candidate on the events tuned on (None
    when none qualified); ``out_of_sample`` the contingency of the tuning procedure on
    events it did not tune on; ``baselines`` those of never/always/persistence on the
    same events; ``refused`` the values refused as warning always or never.
    """

    chosen: CandidateScore | None
    reason: str
    in_sample: CandidateScore | None = None
    out_of_sample: Contingency | None = None
    baselines: Mapping[str, Contingency] = dataclass_field(default_factory=dict)
    refused: Mapping[str, tuple[float, ...]] = dataclass_field(default_factory=dict)
    validation: str = ""
    current: CandidateScore | None = None


def _subset(s: CandidateScore, keep: Sequence[int]) -> CandidateScore:
    per = [s.per_event[k] for k in keep]
    base = {n: tuple(v[k] for k in keep) for n, v in s.baselines.items()}
    # the criterion's share stays that of the whole catalogue: a threshold met in every
    # cycle seen is refused in every fold
    return CandidateScore.from_contingency(s.candidate, s.verified_level, len(per), sum(per, Contingency()),
                                           per_event=per, event_starts=[s.event_starts[k] for k in keep],
                                           baselines=base, criterion_share=s.criterion_share)


def _closest(cands: Sequence[CandidateScore]) -> CandidateScore:
    # distances rounded so 0.45 and 0.55 are equally far from 0.50 despite binary floats
    return min(cands, key=lambda s: (round(abs(s.candidate.value - s.candidate.current), 9),
                                     s.candidate.cautious_key))


def _pick(scores: Sequence[CandidateScore], goal: Goal
          ) -> tuple[CandidateScore | None, str, dict[str, tuple[float, ...]]]:
    """The best candidate on the events the scores cover, or None and why."""
    c = scores[0].candidate
    head = f"{c.zone} {c.level} {c.metric}"
    events, floods = scores[0].events, scores[0].floods
    refused = {kind: tuple(s.candidate.value for s in scores if s.trivial == kind) for kind in ("always", "never")}
    refused["before a lower level"] = tuple(s.candidate.value for s in scores
                                            if s.trivial is None and s.candidate.below_lower_level)
    if events < MIN_EVENTS or floods < MIN_FLOODS:
        return None, (f"{head}: too few events to tune: {events} event(s) observe the zone, with "
                      f"{floods} flood(s); at least {MIN_EVENTS} events and {MIN_FLOODS} floods are "
                      "needed (add past storms, and dry spells, to the catalogue)"), refused
    rest = [s for s in scores if s.trivial is None and not s.candidate.below_lower_level]
    if not rest:
        return None, (f"{head}: no recommendation: every candidate warns always or never, or before a "
                      "lower level"), refused
    eligible = [s for s in rest if not goal.failures(s) and not math.isnan(goal.value(s))]
    if not eligible:
        return None, _why_none(rest, goal), refused
    best = max(goal.value(s) for s in eligible)
    tied = [s for s in eligible if goal.value(s) >= best - 1e-12]
    chosen = _closest(tied)
    among = (f"the {len(eligible)} of {len(rest)} candidates meeting '{goal}'"
             if len(eligible) < len(rest) else f"all {len(rest)} candidates")
    reason = f"best {goal.objective} of {among}"
    if len(tied) > 1:
        reason += f" ({len(tied)} tied: the one closest to the current value)"
    return chosen, reason, refused


def _refused_text(refused: Mapping[str, Sequence[float]]) -> str:
    parts = []
    for kind, values in refused.items():
        if values:
            span = f"{min(values):g}" if len(values) == 1 else f"{min(values):g} to {max(values):g}"
            what = "would warn before a lower level" if kind == "before a lower level" else f"warn {kind}"
            parts.append(f"{len(values)} value(s) ({span}) {what} and were refused")
    return "; ".join(parts)


def assess(scores: Sequence[CandidateScore], goal: Goal, *, holdout_from: datetime | None = None
           ) -> Assessment:
    """Choose a threshold for ``goal`` and check it out of sample against the baselines.

    1. A zone needs at least :data:`MIN_EVENTS` events and :data:`MIN_FLOODS` observed
       floods; otherwise nothing is recommended ("too few events to tune").
    2. Candidates that warn always (:data:`ALWAYS_SHARE` of the time or more) or never
       are refused. Among the rest, those meeting the goal's constraints compete on its
       objective; ties go to the value closest to the configured one, then to the more
       cautious threshold (the one that warns more often).
    3. Out of sample: by default leave-one-event-out (each event is scored with the
       threshold chosen, as in 1-2, on the other events; when they are too few to tune,
       the configured threshold stands, or no warning when it was not scored), or with ``holdout_from`` a split by date (tune on
       events starting before it, score on the others; the recommendation is the
       threshold chosen on the earlier events).
    4. The threshold is recommended only when, out of sample, its Peirce skill in time
       is above that of never and always warning (both 0 at best), it warns in time by a
       forecast for more floods than persistence does (which only detects, so none), and
       its objective beats the configured threshold's on the same events: a threshold
       that cannot beat doing nothing, warning always, reading the gauge, or the setting
       people already know, is no improvement.
    """
    scores = list(scores)
    if not scores:
        return Assessment(None, "no candidates were scored")
    keys = {(*s.candidate.key, s.verified_level) for s in scores}
    if len(keys) > 1:
        raise TuningError("recommend() picks one threshold, but the scores cover "
                          f"{len(keys)} criteria; group them with by_criterion() first")
    c = scores[0].candidate
    head = f"{c.zone} {c.level} {c.metric}"
    current = next((s for s in scores if s.candidate.value == s.candidate.current), None)
    n = len(scores[0].per_event)
    if n == 0:  # scores made by hand, without events: only the in-sample choice exists
        chosen, why, refused = _pick(scores, goal)
        return Assessment(chosen, f"{_describe(chosen)}; {why}" if chosen else why, chosen,
                          refused=refused, current=current)
    if holdout_from is not None:
        train = [k for k in range(n) if scores[0].event_starts[k] < holdout_from]
        test = [k for k in range(n) if k not in train]
        if not test:
            raise TuningError(f"no event starts on or after {holdout_from:%Y-%m-%d %H:%M}Z to check on")
        chosen, why, refused = _pick([_subset(s, train) for s in scores], goal)
        pick = chosen.candidate.value if chosen is not None else c.current
        held = next((s for s in scores if s.candidate.value == pick), None)
        oos = sum(((held.per_event[k] if held is not None else scores[0].baselines["never"][k]) for k in test),
                  Contingency())
        validation = (f"split by date: tuned on the {len(train)} events before "
                      f"{holdout_from:%Y-%m-%d}, checked on the {len(test)} from then on")
        in_sample = chosen
        if chosen is not None:
            chosen = next(s for s in scores if s.candidate.value == pick)
    else:
        test = list(range(n))
        in_sample, why, refused = _pick(scores, goal)
        oos = Contingency()
        for k in range(n):
            rest = [j for j in range(n) if j != k]
            fold, _, _ = _pick([_subset(s, rest) for s in scores], goal) if rest else (None, "", {})
            if fold is not None:
                oos = oos + next(s for s in scores if s.candidate.value == fold.candidate.value).per_event[k]
            elif current is not None:  # nothing to tune on: the configured threshold stands
                oos = oos + current.per_event[k]
            else:  # ... and when it was not scored, no warning on this criterion
                oos = oos + scores[0].baselines["never"][k]
        validation = f"leave-one-event-out over {n} events"
        chosen = in_sample
    base = {name: sum((v[k] for k in test), Contingency()) for name, v in scores[0].baselines.items()}
    out = dict(in_sample=in_sample, out_of_sample=oos, baselines=base, refused=refused,
               validation=validation, current=current)
    refused_note = _refused_text(refused)
    if chosen is None:
        return Assessment(None, why + (f"; {refused_note}" if refused_note else ""), **out)
    oos_sc = verification_scores(oos)
    trivial_best = max((verification_scores(b)["pss_time"] for n_, b in base.items() if n_ in ("never", "always")
                        and not math.isnan(verification_scores(b)["pss_time"])), default=0.0)
    persistence_hits = base["persistence"].forecast_hits if "persistence" in base else 0
    failures = []
    if not oos_sc["pss_time"] > trivial_best:
        failures.append(f"its Peirce skill in time out of sample is {_fmt(oos_sc['pss_time'])}, not above "
                        f"never/always warning ({_fmt(trivial_best)})")
    if not oos.forecast_hits > persistence_hits:
        failures.append(f"out of sample it warned no more floods in time by a forecast "
                        f"({oos.forecast_hits} of {oos.floods}) than persistence of the observation "
                        f"({persistence_hits}), which only detects floods")
    if current is not None and chosen.candidate.value != c.current:
        # the configured threshold is a baseline too: a fixed value is not tuned, so its
        # score on the same events is already out of sample
        now = sum((current.per_event[k] for k in test), Contingency())
        mine, theirs = (goal.value(CandidateScore.from_contingency(c, chosen.verified_level, len(test), x))
                        for x in (oos, now))
        if not mine > theirs:
            failures.append(f"out of sample its {goal.objective} ({_fmt(abs(mine))}) is no better than that "
                            f"of the configured {c.current:g} on the same events ({_fmt(abs(theirs))})")
    text = f"{_describe(chosen)}; {why}; out of sample ({validation}): {_summary(oos)}"
    if refused_note:
        text += f"; {refused_note}"
    if failures:
        return Assessment(None, f"{head}: no recommendation: the best candidate, {chosen.candidate.value:g}, "
                          f"does not beat the baselines: " + "; ".join(failures) + f" [{text}]", **out)

    return Assessment(chosen, text, **out)


def recommendation(scores: Sequence[CandidateScore], goal: Goal, *, holdout_from: datetime | None = None
                   ) -> tuple[CandidateScore | None, str]:
    """The best candidate for ``goal`` that beats the baselines out of sample, and why;
    or None and why not (see :func:`assess` for the rules)."""
    a = assess(scores, goal, holdout_from=holdout_from)
    return a.chosen, a.reason


def _why_none(scores: Sequence[CandidateScore], goal: Goal) -> str:
    parts = []
    checks = (("far", goal.max_far, "lowest FAR", lambda s: s.far, min),
              ("pod", goal.min_pod, "highest POD", lambda s: s.pod, max),
              ("lead", goal.min_median_lead_min, "longest median lead (min)",
               lambda s: s.median_lead_min, max))
    for name, limit, what, get, pick in checks:
        if limit is None or any(name not in goal.failures(s) for s in scores):
            continue
        defined = [s for s in scores if not math.isnan(get(s))]
        if defined:
            s = pick(defined, key=get)
            parts.append(f"no candidate meets {name} {'<=' if name == 'far' else '>='} "
                         f"{limit:g} ({what}: {get(s):.2f}, at {s.candidate.value:g})")
        else:
            parts.append(f"{name} is undefined for every candidate (no warnings or no hits)")
    if not parts:
        if all(goal.failures(s) for s in scores):
            parts.append(f"each constraint of '{goal}' is met by some candidate, but none "
                         "meets all of them")
        else:
            parts.append(f"{goal.objective} is undefined for every candidate meeting the "
                         "constraints (no warnings and no observed floods?)")
    c = scores[0].candidate
    return f"{c.zone} {c.level} {c.metric}: no recommendation: " + "; ".join(parts)


def recommend(scores: Sequence[CandidateScore], goal: Goal, *, holdout_from: datetime | None = None
              ) -> CandidateScore | None:
    """The best candidate for ``goal`` (see :func:`assess` for the rules and ties), or None
    when none qualifies; the reason is logged either way."""
    chosen, reason = recommendation(scores, goal, holdout_from=holdout_from)
    (log.info if chosen is not None else log.warning)("%s", reason)
    return chosen


# --------------------------------------------------------------------------- config edits


def _as_candidate(change: Candidate | CandidateScore) -> Candidate:
    return change.candidate if isinstance(change, CandidateScore) else change


def _number_text(value: float, old: str) -> str:
    """``value`` written with at least as many decimals as ``old`` (0.50 -> 0.42), and as
    few more as it needs."""
    decimals = len(old.split(".", 1)[1]) if "." in old and "e" not in old.lower() else 0
    for d in range(decimals, 13):
        text = f"{value:.{d}f}"
        if abs(float(text) - value) <= 1e-12 * max(1.0, abs(value)):
            return text
    return repr(value)


def _edit_one(text: str, raw: dict[str, Any], cand: Candidate, source: str
              ) -> tuple[str, dict[str, Any]]:
    zones = raw.get("zones") or []
    zi = next((i for i, z in enumerate(zones) if z.get("code") == cand.zone), None)
    if zi is None:
        raise TuningError(f"{source}: no [[zones]] with code = {cand.zone!r}")
    table = (zones[zi].get("thresholds") or {}).get(cand.level)
    if not isinstance(table, dict):
        raise TuningError(f"{source}: zone {cand.zone!r} has no thresholds.{cand.level}")
    key = "any" if "any" in table else "all"
    items = table.get(key) or []
    if cand.criterion_index >= len(items):
        raise TuningError(f"{source}: zones[{zi}].thresholds.{cand.level}.{key} has no "
                          f"criterion {cand.criterion_index}")
    old = items[cand.criterion_index]
    m = _CRITERION.match(old)
    if (not m or (m.group(1), m.group(2)) != (cand.metric, cand.op)
            or float(m.group(3)) != cand.current):
        raise TuningError(f"{source}: zones[{zi}].thresholds.{cand.level} has {old!r}, not "
                          f"'{cand.metric} {cand.op} {cand.current:g}': the file changed since "
                          "the tuning; tune again")
    new = old[:m.start(3)] + _number_text(cand.value, m.group(3)) + old[m.end(3):]
    expected = copy.deepcopy(raw)
    expected["zones"][zi]["thresholds"][cand.level][key][cand.criterion_index] = new
    # Every quoted occurrence of the old string is a place it might be written; the right
    # one is the one whose replacement changes exactly this value when the file is re-read.
    for quote in ('"', "'"):
        needle = f"{quote}{old}{quote}"
        start = text.find(needle)
        while start >= 0:
            edited = text[:start] + f"{quote}{new}{quote}" + text[start + len(needle):]
            try:
                if tomllib.loads(edited) == expected:
                    return edited, expected
            except tomllib.TOMLDecodeError:
                pass
            start = text.find(needle, start + 1)
    raise TuningError(f"{source}: could not find where zones[{zi}].thresholds.{cand.level} "
                      f"writes {old!r} (an escaped or multi-line string?); edit it by hand")


def _edited_text(config_path: Path, changes: Iterable[Candidate | CandidateScore]
                 ) -> tuple[str, str]:
    text = config_path.read_text()
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TuningError(f"{config_path}: not valid TOML: {exc}") from None
    seen: set[tuple[str, str, int, str, str]] = set()
    new = text
    for cand in map(_as_candidate, changes):
        if cand.key in seen:
            raise TuningError(f"two changes to {cand.zone} {cand.level} {cand.metric}; give one")
        seen.add(cand.key)
        if cand.value == cand.current:
            continue
        new, raw = _edit_one(new, raw, cand, str(config_path))
    return text, new


def config_diff(config_path: str | Path, changes: Iterable[Candidate | CandidateScore]) -> str:
    """The changes as a unified diff of the config file ('' when nothing changes).

    Only the threshold string is edited (``"forecast_peak_depth_m >= 0.50"`` ->
    ``"forecast_peak_depth_m >= 0.42"``, keeping the old number's decimals), so comments
    and layout stay. Each edit is checked by re-reading the file with :mod:`tomllib`: the
    result must differ from the original in that one value and nowhere else.
    """
    path = Path(config_path)
    old, new = _edited_text(path, changes)
    return "".join(difflib.unified_diff(old.splitlines(keepends=True),
                                        new.splitlines(keepends=True),
                                        fromfile=f"a/{path.name}", tofile=f"b/{path.name}"))


def apply_changes(config_path: str | Path, changes: Iterable[Candidate | CandidateScore]) -> str:
    """Write the changes into the config file (atomically, keeping its permissions) and
    return the diff (see :func:`config_diff`)."""
    path = Path(config_path)
    old, new = _edited_text(path, changes)
    if new == old:
        return ""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(new)
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("wrote the new thresholds to %s", path)
    return "".join(difflib.unified_diff(old.splitlines(keepends=True),
                                        new.splitlines(keepends=True),
                                        fromfile=f"a/{path.name}", tofile=f"b/{path.name}"))


# --------------------------------------------------------------------------- reports


def scores_table(scores: Iterable[CandidateScore]) -> list[dict[str, Any]]:
    """One JSON-able row per candidate (undefined scores are ``None``)."""
    def num(v: float) -> float | None:
        return None if math.isnan(v) else v

    rows = []
    for s in scores:
        c = s.candidate
        lead = s.lead_summary()
        rows.append({
            "zone": c.zone, "level": c.level, "criterion_index": c.criterion_index,
            "metric": c.metric, "op": c.op, "value": c.value, "current": c.current,
            "verified_level": s.verified_level, "events": s.events, "hits": s.hits,
            "misses": s.misses, "false_alarms": s.false_alarms,
            "late": s.late, "detections": s.detections, "forecast_hits": s.forecast_hits,
            "pod": num(s.pod), "far": num(s.far), "csi": num(s.csi),
            "hours_warned_flooded": s.hours.a, "hours_warned_dry": s.hours.b,
            "hours_flooded_unwarned": s.hours.c, "hours_quiet": s.hours.d,
            "pss": num(s.pss), "hss": num(s.hss), "csi_time": num(s.csi_time),
            "warned_share": num(s.warned_share), "criterion_share": num(s.criterion_share),
            "warns": s.trivial or "",
            **{f"lead_{k}_min": num(v) for k, v in lead.items()},
        })
    return rows


def pod_far_plot(
    scores: Iterable[CandidateScore],
    path: str | Path,
    recommended: CandidateScore | Iterable[CandidateScore] | None = None,
) -> Path:
    """POD against FAR, one point per candidate coloured by its threshold, one panel per
    tuned criterion (zone, level, metric); the recommended candidate is circled in red and
    the current value marked with a black square. Grey lines are CSI isolines. Candidates
    with an undefined FAR (no warning at all) or POD (no observed flood) cannot be placed
    and are counted in the panel's title. Written as PNG; returns the path."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state

    groups = by_criterion(scores)
    if not groups:
        raise TuningError("nothing to plot: no scores")
    if isinstance(recommended, CandidateScore):
        recommended = [recommended]
    marked = {(*r.candidate.key, r.verified_level): r.candidate.value for r in (recommended or [])}
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 4.0 * nrows), dpi=100, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    far_grid, pod_grid = np.meshgrid(np.linspace(0, 0.999, 200), np.linspace(0.001, 1, 200))
    csi = 1.0 / (1.0 / pod_grid + 1.0 / (1.0 - far_grid) - 1.0)
    for ax, (key, group) in zip(axes, groups.items()):
        zone, level, _, metric, op, verified = key
        lines = ax.contour(far_grid, pod_grid, csi, levels=[0.2, 0.4, 0.6, 0.8],
                           colors="0.75", linewidths=0.7)
        ax.clabel(lines, fmt="CSI %.1f", fontsize=7)
        placed = [s for s in group if not (math.isnan(s.far) or math.isnan(s.pod))]
        if placed:
            pts = ax.scatter([s.far for s in placed], [s.pod for s in placed],
                             c=[s.candidate.value for s in placed], cmap="viridis", s=28,
                             zorder=3)
            fig.colorbar(pts, ax=ax, label=f"{metric} {op} threshold")
        current = [s for s in placed if s.candidate.value == s.candidate.current]
        if current:
            ax.scatter([current[0].far], [current[0].pod], marker="s", s=110, facecolors="none",
                       edgecolors="black", linewidths=1.2, zorder=4, label="current")
        rec = [s for s in placed if marked.get(key) == s.candidate.value]
        if rec:
            ax.scatter([rec[0].far], [rec[0].pod], marker="o", s=220, facecolors="none",
                       edgecolors="red", linewidths=2, zorder=5,
                       label=f"recommended ({rec[0].candidate.value:g})")
        if current or rec:
            ax.legend(loc="lower right", fontsize=7)
        missing = len(group) - len(placed)
        title = f"{zone} · {level}" + (f" (verified at {verified})" if verified != level else "")
        if missing:
            title += f"\n{missing} candidate(s) with undefined POD or FAR not shown"
        ax.set_title(title, fontsize=9)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("FAR (false alarm ratio)")
        ax.set_ylabel("POD (probability of detection)")
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    path = Path(path)
    fig.savefig(path, format="png")
    return path
