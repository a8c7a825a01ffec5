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

What the tuner does not check: the ordering of levels. A ``warning`` threshold tuned above
the ``severe`` one is legal config (a zone then goes straight to severe); the verified
periods count any level at or above the verified one, so such a candidate scores as if its
threshold were the severe one.
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
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from alerts.levels import LevelSpec, ZonePolicy, ZoneState, decide

from .config import _CRITERION, Config, ZoneConfig
from .errors import FloodwarnError
from .events import EventTrace
from .verification import Contingency, periods_from_levels, verify

log = logging.getLogger(__name__)

__all__ = [
    "Candidate", "CandidateScore", "Goal", "GoalError", "GroupKey", "TuningError", "apply_changes",
    "by_criterion", "candidate_grid", "config_diff", "decisions_for", "evaluate",
    "pod_far_plot", "recommend", "recommendation", "scores_table",
]

DEFAULT_WORKERS = 1
"""Default of :func:`evaluate`'s ``workers``. One process: 5 events of 30 cycles and 51
candidates (7,650 decisions) take 0.9-1.3 s of CPU, and a pool of 2 processes was no
faster on a 2-core machine (median 1.3-1.4 s with 1 worker, 1.4-1.5 s with 2, the cores
shared with other jobs). A pool pays off only for much larger catalogues on idle cores."""


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

    @property
    def key(self) -> tuple[str, str, int, str, str]:
        """What is being tuned (everything but the value)."""
        return (self.zone, self.level, self.criterion_index, self.metric, self.op)

    @property
    def text(self) -> str:
        """The criterion as written in the config, e.g. ``forecast_peak_depth_m >= 0.42``."""
        return f"{self.metric} {self.op} {self.value:g}"

    @property
    def cautious_key(self) -> float:
        """Smaller for a threshold that warns more often (lower for ``>=``/``>``, higher
        for ``<=``/``<``)."""
        return self.value if self.op in (">=", ">") else -self.value


@dataclass(frozen=True)
class CandidateScore:
    """Verification of one candidate over the catalogue.

    ``pod``, ``far``, ``csi`` are NaN where undefined (e.g. FAR with no warning at all);
    ``lead_times_min`` are the hits' lead times in minutes, sorted (negative: late, within
    the event's tolerance). ``events`` is the number of events that observed the zone.
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

    @classmethod
    def from_contingency(cls, candidate: Candidate, verified_level: str, events: int,
                         c: Contingency) -> CandidateScore:
        def ratio(a: int, b: int) -> float:
            return a / b if b else math.nan

        leads = tuple(sorted(t.total_seconds() / 60.0 for t in c.lead_times))
        return cls(candidate=candidate, verified_level=verified_level, events=events,
                   hits=c.hits, misses=c.misses, false_alarms=c.false_alarms,
                   pod=ratio(c.hits, c.hits + c.misses),
                   far=ratio(c.false_alarms, c.hits + c.false_alarms),
                   csi=ratio(c.hits, c.hits + c.misses + c.false_alarms),
                   lead_times_min=leads)

    def lead_summary(self) -> dict[str, float]:
        """Lead times of the hits, minutes: ``min``, ``q1``, ``median``, ``q3``, ``max``
        (quartiles by linear interpolation, numpy's default); NaN without hits."""
        if not self.lead_times_min:
            return dict.fromkeys(("min", "q1", "median", "q3", "max"), math.nan)
        q = np.percentile(np.asarray(self.lead_times_min), [0, 25, 50, 75, 100])
        return dict(zip(("min", "q1", "median", "q3", "max"), (float(x) for x in q)))

    @property
    def median_lead_min(self) -> float:
        return self.lead_summary()["median"]


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
    spacing's leading digit (0.0255 spacing -> 3 decimals), so they read well in a config."""
    if hi <= lo:
        return [lo]
    step = (hi - lo) / (n - 1)
    decimals = max(0, math.ceil(-math.log10(step)) + 1)
    return [round(lo + k * step, decimals) for k in range(n)]


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
    return [Candidate(zone=zone, level=level, metric=crit.metric, op=crit.op, value=v,
                      current=crit.value, criterion_index=index)
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
             levels: Sequence[LevelSpec], policy: ZonePolicy, zone: str) -> list[tuple[datetime, int]]:
    state = ZoneState()
    out: list[tuple[datetime, int]] = []
    for at, m in zip(times, metrics):
        d = decide(state, m, at, levels, policy, zone=zone)
        state = d.state
        if d.changed:
            out.append((at, d.level))
    return out


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
    return _changes(times, metrics, levels, policy, zone)


@dataclass(frozen=True)
class _EventSeries:
    times: tuple[datetime, ...]
    metrics: tuple[dict[str, float], ...]
    onsets: tuple[datetime, ...]
    tolerance: timedelta


@dataclass(frozen=True)
class _ZoneInputs:
    """Everything needed to score a zone's candidates: plain, picklable data."""

    zone: str
    levels: tuple[LevelSpec, ...]
    policy: ZonePolicy
    events: tuple[_EventSeries, ...]


def _zone_inputs(traces: Sequence[EventTrace], cfg: Config, zone: str) -> _ZoneInputs:
    zone_cfg = _zone_config(cfg, zone)
    events = []
    for trace in _verified(traces, cfg, zone):
        times, metrics = _series(trace, zone)
        events.append(_EventSeries(times, metrics, tuple(trace.event.observed[zone]),
                                   trace.event.tolerance))
    if not events:
        raise TuningError(f"no event observes zone {zone!r}: list it under [observed] in the "
                          "event files (with [] if it did not flood) to tune its thresholds")
    return _ZoneInputs(zone, tuple(cfg.level_specs(zone_cfg)), cfg.zone_policy(zone_cfg),
                       tuple(events))


def _score(inputs: _ZoneInputs, cand: Candidate, verified_level: str) -> CandidateScore:
    levels = _with_value(inputs.levels, cand)
    rank = _level_spec(levels, cand.zone, verified_level).rank
    total = Contingency()
    for ev in inputs.events:
        changes = _changes(ev.times, ev.metrics, levels, inputs.policy, inputs.zone)
        total = total + verify(periods_from_levels(changes, rank), ev.onsets,
                               tolerance=ev.tolerance)
    return CandidateScore.from_contingency(cand, verified_level, len(inputs.events), total)


_WORKER_INPUTS: dict[str, _ZoneInputs] = {}


def _init_worker(inputs: dict[str, _ZoneInputs]) -> None:
    _WORKER_INPUTS.clear()
    _WORKER_INPUTS.update(inputs)


def _score_chunk(chunk: Sequence[tuple[Candidate, str]]) -> list[CandidateScore]:
    return [_score(_WORKER_INPUTS[c.zone], c, lv) for c, lv in chunk]


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
        return [_score(inputs[c.zone], c, lv) for c, lv in jobs]
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

_OBJECTIVES = {"csi": "csi", "pod": "pod", "far": "far", "lead": "median_lead_min"}
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
    objective : {"csi", "pod", "lead", "far"}
        Maximised (``far`` is minimised); ``lead`` is the hits' median lead time.
    max_far : float, optional
        FAR at most this (0-1).
    min_pod : float, optional
        POD at least this (0-1).
    min_median_lead_min : float, optional
        Median lead time of the hits at least this, minutes.
    """

    objective: str = "csi"
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

        Clauses are separated by ``;``: exactly one ``maximise csi|pod|lead`` (or
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
                    raise GoalError(f"{where}: cannot optimise {name!r}; choose csi, pod, lead "
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
    lead = s.median_lead_min
    return (f"{c.zone} {c.level}: {c.metric} {c.op} {c.value:g} (now {c.current:g}): "
            f"CSI {_fmt(s.csi)}, POD {_fmt(s.pod)}, FAR {_fmt(s.far)}, "
            f"median lead {'-' if math.isnan(lead) else f'{lead:.0f} min'} "
            f"({s.hits} hits, {s.misses} misses, {s.false_alarms} false alarms "
            f"over {s.events} events)")


def recommendation(scores: Sequence[CandidateScore], goal: Goal
                   ) -> tuple[CandidateScore | None, str]:
    """The best candidate for ``goal`` and why, or None and why not.

    All scores must be for one criterion (use :func:`by_criterion` first). Candidates that
    miss a constraint, or whose objective is undefined, are out. When the events observed
    no flood at all, only false alarms can judge: the candidate closest to the configured
    value among those without a false alarm is chosen. Among equally good ones
    (objective equal to 1e-12) the one closest to the configured value wins (the smallest
    change to a setting people know; distances equal to 1e-9 tie), then the more cautious
    one: the threshold that warns more often (the lower one for ``>=``, the higher one for
    ``<=``).
    """
    scores = list(scores)
    if not scores:
        return None, "no candidates were scored"
    keys = {(*s.candidate.key, s.verified_level) for s in scores}
    if len(keys) > 1:
        raise TuningError("recommend() picks one threshold, but the scores cover "
                          f"{len(keys)} criteria; group them with by_criterion() first")
    def closest(cands: Sequence[CandidateScore]) -> CandidateScore:
        # distances rounded so 0.45 and 0.55 are equally far from 0.50 despite binary floats
        return min(cands, key=lambda s: (round(abs(s.candidate.value - s.candidate.current), 9),
                                         s.candidate.cautious_key))

    if all(s.hits + s.misses == 0 for s in scores):
        # no flood observed in the catalogue: POD and CSI cannot judge, false alarms can.
        # A threshold that never warns is not "CSI undefined, so worse than CSI 0"
        clean = [s for s in scores if s.false_alarms == 0]
        c = scores[0].candidate
        if not clean:
            return None, (f"{c.zone} {c.level} {c.metric}: no recommendation: no flood observed in "
                          "these events and every candidate warned falsely")
        chosen = closest(clean)
        return chosen, (f"{_describe(chosen)}; no flood observed in these events, so only false "
                        f"alarms count: the closest of the {len(clean)} candidates without any")
    eligible = [s for s in scores if not goal.failures(s) and not math.isnan(goal.value(s))]
    if not eligible:
        return None, _why_none(scores, goal)
    best = max(goal.value(s) for s in eligible)
    tied = [s for s in eligible if goal.value(s) >= best - 1e-12]
    chosen = closest(tied)
    among = (f"the {len(eligible)} of {len(scores)} candidates meeting '{goal}'"
             if len(eligible) < len(scores) else f"all {len(scores)} candidates")
    reason = f"{_describe(chosen)}; best {goal.objective} of {among}"
    if len(tied) > 1:
        reason += f" ({len(tied)} tied: the one closest to the current value)"
    return chosen, reason


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


def recommend(scores: Sequence[CandidateScore], goal: Goal) -> CandidateScore | None:
    """The best candidate for ``goal`` (see :func:`recommendation` for the rules and ties),
    or None when none meets the constraints; the reason is logged either way."""
    chosen, reason = recommendation(scores, goal)
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
            "pod": num(s.pod), "far": num(s.far), "csi": num(s.csi),
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
