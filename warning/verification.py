"""Warning verification: hits, misses, false alarms and lead times, and the standard scores.

Per zone and warning level, the warning periods (from a raise to the level, or above, until
it is lowered below it) are matched against observed flood onsets:

- a **hit** is an observed onset ``T`` covered by a warning period that began no later
  than ``T + tolerance`` and had not ended before ``T``; its **lead time** is
  ``T - start`` (negative when the warning came late, within the tolerance);
- a **miss** is an observed onset no period covers;
- a **false alarm** is a warning period that covers no observed onset (an onset up to
  ``tolerance`` after the period ended still counts for it: water rises after a warning
  lapses).

An onset is matched to the earliest period that covers it; one long warning may cover
several onsets (several hits), and a period is a false alarm only when it covers none.
Scores, as in EFAS/GloFAS verification and the
warning literature: POD = hits / (hits + misses), FAR = false alarms / (hits + false
alarms), CSI = hits / (hits + misses + false alarms); NaN where the denominator is 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

__all__ = ["Contingency", "WarningPeriod", "periods_from_levels", "scores", "verify"]


@dataclass(frozen=True)
class WarningPeriod:
    """A warning in force from ``start`` until ``end`` (None: still in force)."""

    start: datetime
    end: datetime | None = None

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or (self.end is not None and self.end.tzinfo is None):
            raise ValueError("warning periods need time-zone-aware times")
        if self.end is not None and self.end < self.start:
            raise ValueError(f"a warning period ends ({self.end}) before it starts ({self.start})")


@dataclass
class Contingency:
    """Counts of one zone (or many, added up) and the lead times of the hits."""

    hits: int = 0
    misses: int = 0
    false_alarms: int = 0
    lead_times: list[timedelta] = field(default_factory=list)

    def __add__(self, other: "Contingency") -> "Contingency":
        return Contingency(self.hits + other.hits, self.misses + other.misses,
                           self.false_alarms + other.false_alarms, self.lead_times + other.lead_times)


def periods_from_levels(changes: Iterable[tuple[datetime, int]], level: int) -> list[WarningPeriod]:
    """Warning periods at ``level`` or above from a zone's level changes ``(time, rank)``
    in time order (rank 0 = no warning)."""
    out: list[WarningPeriod] = []
    start: datetime | None = None
    for t, rank in changes:
        if rank >= level and start is None:
            start = t
        elif rank < level and start is not None:
            out.append(WarningPeriod(start, t))
            start = None
    if start is not None:
        out.append(WarningPeriod(start, None))
    return out


def verify(periods: Sequence[WarningPeriod], onsets: Sequence[datetime], *,
           tolerance: timedelta = timedelta(hours=1)) -> Contingency:
    """Match warning periods with observed flood onsets (see the module notes)."""
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
        else:
            used[match] = True
            c.hits += 1
            c.lead_times.append(onset - periods[match].start)
    c.false_alarms = used.count(False)
    return c


def scores(c: Contingency) -> dict[str, float]:
    """POD, FAR, CSI and the median lead time (minutes); NaN where undefined."""
    def ratio(a: int, b: int) -> float:
        return a / b if b else math.nan

    leads = sorted(t.total_seconds() / 60.0 for t in c.lead_times)
    median = math.nan
    if leads:
        mid = len(leads) // 2
        median = leads[mid] if len(leads) % 2 else (leads[mid - 1] + leads[mid]) / 2.0
    return {"pod": ratio(c.hits, c.hits + c.misses),
            "far": ratio(c.false_alarms, c.hits + c.false_alarms),
            "csi": ratio(c.hits, c.hits + c.misses + c.false_alarms),
            "median_lead_min": median}
