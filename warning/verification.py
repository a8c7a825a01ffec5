"""Warning verification: in time and by event, against baselines, with what raised each warning.

A zone's warning periods at a level (from a raise to that level, or above, until it is
lowered below it) are scored against its observed floods in two ways.

By event (each observed onset ``T``):

- a **hit** is an onset covered by a warning period that began **no later than** ``T``
  (and had not ended more than ``tolerance`` before it: water rises after a warning
  lapses). Its **lead time** is ``T - start``, never negative. Each hit records what
  raised the warning (:func:`alerts.levels.raised_by`): a **forecast** criterion, or an
  **observation** only. A hit raised by an observation is a *detection*: the river was
  already high. Its lead is kept apart (``detection_leads``) from the forecast lead;
- a **late** detection is an onset whose first warning began after ``T`` but within
  ``tolerance``: it is never a hit, and it counts with the misses in POD and CSI;
- a **miss** is an onset no period covers in time or within the tolerance;
- a **false alarm** is a warning period that covers no onset, in time or late.

In time (hours of the event's window): each moment is warned or not, flooded or dry.
Flood windows come from the event (onset to end). The ``lead_window`` before each onset
is the warning's lead and counts neither way; every other warned hour without flooding is
**false-alarm time**. So a warning left on all year, which by events alone covers every
onset with no false alarm, scores badly in time: ``a`` hours warned and flooded, ``b``
warned and dry, ``c`` flooded and not warned, ``d`` neither.

Scores, as in the verification literature (Wilks, *Statistical Methods in the
Atmospheric Sciences*; Jolliffe & Stephenson, *Forecast Verification*): for a 2x2 table
``a`` (hits), ``b`` (false alarms), ``c`` (misses), ``d`` (correct negatives),
POD = a/(a+c), FAR = b/(a+b), POFD = b/(b+d), CSI = a/(a+b+c), Peirce's skill score
PSS = POD - POFD, Heidke's HSS = 2(ad - bc) / ((a+c)(c+d) + (a+b)(b+d)); NaN where a
denominator is 0. By events the table has no ``d``: POD = hits/(hits+late+misses),
FAR = false/(hits+false), CSI = hits/(hits+late+misses+false).

Baselines (:func:`baseline_periods`), scored on the same events: **never** warn,
**always** warn (one warning over the whole window), and **persistence** (warn while
flooding is observed, from the first cycle at which the observation has arrived).
Never and always have PSS and HSS 0 (always: at most 0) whatever the events: a score
that cannot beat them is no skill. Persistence detects floods but never forecasts one.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

__all__ = ["BASELINES", "Contingency", "EventCounts", "Outcome", "TimeTable", "WarningPeriod", "baseline_periods",
           "periods_from_levels", "scores", "skill_against", "table_scores", "time_table", "verify"]

#: names of the baselines every score is shown beside
BASELINES = ("never", "always", "persistence")
#: what raised a warning: a forecast criterion, an observation only, the always-warn baseline
TRIGGERS = ("forecast", "observed", "always", "none")


@dataclass(frozen=True)
class WarningPeriod:
    """A warning in force from ``start`` until ``end`` (None: still in force), raised by
    ``trigger`` (one of :data:`TRIGGERS`)."""

    start: datetime
    end: datetime | None = None
    trigger: str = "forecast"

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or (self.end is not None and self.end.tzinfo is None):
            raise ValueError("warning periods need time-zone-aware times")
        if self.end is not None and self.end < self.start:
            raise ValueError(f"a warning period ends ({self.end}) before it starts ({self.start})")
        if self.trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {', '.join(TRIGGERS)}, got {self.trigger!r}")


@dataclass(frozen=True)
class Outcome:
    """What became of one observed onset: ``kind`` is ``hit``, ``late`` or ``miss``;
    ``trigger`` what raised the warning (None for a miss); ``lead`` = onset - warning
    start (negative for a late detection, None for a miss)."""

    onset: datetime
    kind: str
    trigger: str | None = None
    lead: timedelta | None = None


@dataclass(frozen=True)
class TimeTable:
    """Hours of a 2x2 table in time: warned and flooded (``a``), warned and dry (``b``,
    false-alarm time), flooded and not warned (``c``), neither (``d``)."""

    a: float = 0.0
    b: float = 0.0
    c: float = 0.0
    d: float = 0.0

    def __add__(self, other: TimeTable) -> TimeTable:
        return TimeTable(self.a + other.a, self.b + other.b, self.c + other.c, self.d + other.d)

    @property
    def total(self) -> float:
        return self.a + self.b + self.c + self.d

    @property
    def warned(self) -> float:
        return self.a + self.b


class EventCounts:
    """Counts derived from ``hits``, ``detections``, ``late`` and ``misses`` (shared by
    :class:`Contingency` and the tuner's scores)."""

    hits: int
    detections: int
    late: int
    misses: int

    @property
    def forecast_hits(self) -> int:
        """Floods warned in time by a forecast criterion (hits that are not detections)."""
        return self.hits - self.detections

    @property
    def floods(self) -> int:
        """Observed floods: in time, late or missed."""
        return self.hits + self.late + self.misses


@dataclass
class Contingency(EventCounts):
    """Counts of one zone (or many, added up), the leads, the outcome of each onset and the
    hours in time. ``hits`` counts forecast hits and detections; ``detections`` the part
    raised by observations only. ``lead_times`` are the forecast hits' leads."""

    hits: int = 0
    misses: int = 0
    false_alarms: int = 0
    lead_times: list[timedelta] = field(default_factory=list)
    late: int = 0
    detections: int = 0
    detection_leads: list[timedelta] = field(default_factory=list)
    late_by: list[timedelta] = field(default_factory=list)
    hours: TimeTable = TimeTable()
    outcomes: list[Outcome] = field(default_factory=list)

    def __add__(self, other: Contingency) -> Contingency:
        return Contingency(self.hits + other.hits, self.misses + other.misses,
                           self.false_alarms + other.false_alarms, self.lead_times + other.lead_times,
                           self.late + other.late, self.detections + other.detections,
                           self.detection_leads + other.detection_leads, self.late_by + other.late_by,
                           self.hours + other.hours, self.outcomes + other.outcomes)


def periods_from_levels(changes: Iterable[tuple], level: int) -> list[WarningPeriod]:
    """Warning periods at ``level`` or above from a zone's level changes, in time order:
    ``(time, rank)`` or ``(time, rank, trigger)`` (rank 0 = no warning; the trigger of
    the change that opened a period is the period's, ``"forecast"`` when not given)."""
    out: list[WarningPeriod] = []
    start: datetime | None = None
    trigger = "forecast"
    for change in changes:
        t, rank = change[0], change[1]
        if rank >= level and start is None:
            start = t
            trigger = change[2] if len(change) > 2 else "forecast"
        elif rank < level and start is not None:
            out.append(WarningPeriod(start, t, trigger))
            start = None
    if start is not None:
        out.append(WarningPeriod(start, None, trigger))
    return out


def verify(periods: Sequence[WarningPeriod], onsets: Sequence[datetime], *,
           tolerance: timedelta = timedelta(hours=1),
           floods: Sequence[tuple[datetime, datetime]] | None = None,
           window: tuple[datetime, datetime] | None = None,
           lead_window: timedelta = timedelta(0)) -> Contingency:
    """Match warning periods with observed flood onsets (see the module notes); with
    ``floods`` (onset, end) and the event's ``window`` (start, end), the hours too."""
    if tolerance < timedelta(0):
        raise ValueError(f"tolerance must not be negative, got {tolerance}")
    periods = sorted(periods, key=lambda p: p.start)
    used = [False] * len(periods)
    c = Contingency()
    for onset in sorted(onsets):
        if onset.tzinfo is None:
            raise ValueError("observed onsets need time-zone-aware times")
        match = None
        for i, p in enumerate(periods):
            ends = p.end + tolerance if p.end is not None else None
            if p.start <= onset + tolerance and (ends is None or onset <= ends):
                match = i
                break
        if match is None:
            c.misses += 1
            c.outcomes.append(Outcome(onset, "miss"))
            continue
        p = periods[match]
        used[match] = True
        lead = onset - p.start
        if lead < timedelta(0):
            c.late += 1
            c.late_by.append(-lead)
            c.outcomes.append(Outcome(onset, "late", p.trigger, lead))
            continue
        c.hits += 1
        if p.trigger == "observed":
            c.detections += 1
            c.detection_leads.append(lead)
        else:
            c.lead_times.append(lead)
        c.outcomes.append(Outcome(onset, "hit", p.trigger, lead))
    c.false_alarms = used.count(False)
    if window is not None:
        c.hours = time_table(periods, floods if floods is not None else [], window, lead_window)
    return c


def _covered(intervals: Sequence[tuple[datetime, datetime | None]], t: datetime) -> bool:
    return any(s <= t and (e is None or t < e) for s, e in intervals)


def time_table(periods: Sequence[WarningPeriod], floods: Sequence[tuple[datetime, datetime]],
               window: tuple[datetime, datetime], lead_window: timedelta = timedelta(0)) -> TimeTable:
    """Hours of ``window`` warned and flooded, warned and dry, flooded and not warned,
    neither; the ``lead_window`` before each onset (when not flooded) counts nowhere."""
    w0, w1 = window
    if w1 <= w0:
        raise ValueError(f"the window ends ({w1}) before it starts ({w0})")
    warned = [(p.start, p.end) for p in periods]
    flooded = [(s, e) for s, e in floods if e > s]
    neutral = [(s - lead_window, s) for s, _ in floods if lead_window > timedelta(0)]
    cuts = {w0, w1}
    for s, e in [*warned, *flooded, *neutral]:
        for t in (s, e):
            if t is not None and w0 < t < w1:
                cuts.add(t)
    edges = sorted(cuts)
    a = b = c = d = 0.0
    for t0, t1 in itertools.pairwise(edges):
        hours = (t1 - t0).total_seconds() / 3600.0
        mid = t0 + (t1 - t0) / 2
        w, f = _covered(warned, mid), _covered(flooded, mid)
        if f:
            a, c = (a + hours, c) if w else (a, c + hours)
        elif _covered(neutral, mid):
            continue
        elif w:
            b += hours
        else:
            d += hours
    return TimeTable(a, b, c, d)


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def table_scores(a: float, b: float, c: float, d: float) -> dict[str, float]:
    """The classic scores of a 2x2 table (hits ``a``, false alarms ``b``, misses ``c``,
    correct negatives ``d``): POD, FAR, POFD, CSI, PSS (Peirce), HSS (Heidke), bias and
    proportion correct; NaN where undefined."""
    n = a + b + c + d
    pod, pofd = _ratio(a, a + c), _ratio(b, b + d)
    return {"pod": pod, "far": _ratio(b, a + b), "pofd": pofd, "csi": _ratio(a, a + b + c),
            "pss": pod - pofd,
            "hss": _ratio(2.0 * (a * d - b * c), (a + c) * (c + d) + (a + b) * (b + d)),
            "bias": _ratio(a + b, a + c), "pc": _ratio(a + d, n)}


def _median_min(leads: Sequence[timedelta]) -> float:
    values = sorted(t.total_seconds() / 60.0 for t in leads)
    if not values:
        return math.nan
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2.0


def scores(c: Contingency) -> dict[str, float]:
    """Event scores (POD, FAR, CSI with late detections counted as misses), the forecast
    and detection median leads (minutes), the share of floods warned in time by a
    forecast, and the scores in time (suffix ``_time``: POD, FAR, POFD, CSI, PSS, HSS,
    from ``c.hours``; NaN without a window); NaN where undefined."""
    floods = c.hits + c.late + c.misses
    out = {"pod": _ratio(c.hits, floods),
           "far": _ratio(c.false_alarms, c.hits + c.false_alarms),
           "csi": _ratio(c.hits, floods + c.false_alarms),
           "forecast_pod": _ratio(c.forecast_hits, floods),
           "median_lead_min": _median_min(c.lead_times),
           "median_detection_lead_min": _median_min(c.detection_leads),
           "median_late_min": _median_min(c.late_by)}
    h = c.hours
    if h.total > 0:
        t = table_scores(h.a, h.b, h.c, h.d)
        out |= {f"{k}_time": t[k] for k in ("pod", "far", "pofd", "csi", "pss", "hss")}
        out["warned_share"] = h.warned / h.total
    else:
        out |= {f"{k}_time": math.nan for k in ("pod", "far", "pofd", "csi", "pss", "hss")}
        out["warned_share"] = math.nan
    return out


def baseline_periods(name: str, floods: Sequence[tuple[datetime, datetime]],
                     window: tuple[datetime, datetime], cycles: Sequence[datetime],
                     observation_delay: timedelta = timedelta(0)) -> list[WarningPeriod]:
    """The warning periods of a baseline over one event.

    ``never``: none. ``always``: one warning from the window's start, never lowered.
    ``persistence``: warn while flooding is observed: raised at the first of ``cycles``
    at or after each flood's onset plus ``observation_delay`` (the reading has to
    arrive), lowered at the first cycle at or after its end plus the delay (None: still
    in force at the last cycle).
    """
    if name == "never":
        return []
    if name == "always":
        return [WarningPeriod(window[0], None, "always")]
    if name != "persistence":
        raise ValueError(f"unknown baseline {name!r}; baselines: {', '.join(BASELINES)}")
    times = sorted(cycles)
    out: list[WarningPeriod] = []

    def next_cycle(t: datetime) -> datetime | None:
        k = bisect.bisect_left(times, t)
        return times[k] if k < len(times) else None

    for onset, end in floods:
        start = next_cycle(onset + observation_delay)
        if start is None:
            continue
        stop = next_cycle(end + observation_delay)
        if stop is not None and stop <= start:
            continue
        if out and out[-1].end is not None and out[-1].end >= start:  # touching floods: one warning
            out[-1] = WarningPeriod(out[-1].start, stop, "observed")
        else:
            out.append(WarningPeriod(start, stop, "observed"))
    return out


def skill_against(c: Contingency, baselines: dict[str, Contingency]) -> dict[str, float]:
    """The gain of ``c`` over the best baseline: in PSS and HSS in time, and in event CSI
    (NaN where undefined); with the name of the best baseline on each."""
    mine = scores(c)
    theirs = {name: scores(b) for name, b in baselines.items()}
    out: dict[str, float] = {}
    for key in ("pss_time", "hss_time", "csi"):
        known = {n: s[key] for n, s in theirs.items() if not math.isnan(s[key])}
        best = max(known, key=known.get) if known else None
        out[f"{key}_gain"] = (mine[key] - known[best]) if best is not None else math.nan
        out[f"{key}_best_baseline"] = best  # type: ignore[assignment]
    return out
