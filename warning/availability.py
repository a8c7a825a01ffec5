"""When data become usable: delivery delays and aggregation periods.

A forecast is not in hand at its issue time, nor a gauge reading at its observation time:
each is delivered some minutes later (``delay_minutes`` of ``[sources.forecast]`` and
``[sources.gauges]``). A reading that is an aggregate over a period (a daily mean written
as 24 hourly rows, an hourly total) is not known until its period has ended
(``period_minutes``, ``period_label`` of ``[sources.gauges]``). A replay
(:mod:`warning.replay`) shows each datum from the time given here on, never earlier.

Periods are aligned to UTC multiples of their length counted from 1970-01-01T00:00Z, so a
period of 1440 minutes is a UTC day and one of 60 minutes a clock hour. A reading's time
stamp labels its period's ``"start"`` or ``"end"``; a stamp exactly on a period boundary
``T`` is the period that starts at ``T`` (label ``"start"``) or the one that ends at ``T``
(label ``"end"``). The functions here are pure: times in, times out.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

import numpy as np

__all__ = ["forecast_usable_at", "usable_from"]

_NS_PER_MINUTE = 60_000_000_000


def _minutes_ns(minutes: float) -> int:
    return round(minutes * _NS_PER_MINUTE)


def usable_from(times: np.ndarray, *, delay_minutes: float = 0.0, period_minutes: float | None = None,
                period_label: Literal["start", "end"] = "end") -> np.ndarray:
    """When each reading becomes usable.

    Parameters
    ----------
    times : ndarray of datetime64
        The readings' time stamps (UTC, naive as numpy holds them).
    delay_minutes : float, min
        Delivery delay after the reading is complete (>= 0).
    period_minutes : float, min, optional
        The readings are aggregates over periods of this length, aligned to UTC multiples
        of it from 1970-01-01; None: each reading is an instantaneous value, complete at its
        time stamp.
    period_label : "start" or "end"
        Which end of its period a reading's time stamp labels.

    Returns
    -------
    ndarray of datetime64[ns]
        Per reading: the end of its period (its time stamp without a period) plus the
        delay. NaT stays NaT.
    """
    if delay_minutes < 0:
        raise ValueError(f"delay_minutes must be >= 0, got {delay_minutes!r}")
    if period_minutes is not None and not period_minutes > 0:
        raise ValueError(f"period_minutes must be > 0, got {period_minutes!r}")
    if period_label not in ("start", "end"):
        raise ValueError(f"period_label must be 'start' or 'end', got {period_label!r}")
    t = np.asarray(times).astype("datetime64[ns]")
    nat = np.isnat(t)
    ns = t.astype(np.int64)
    if period_minutes is not None:
        period = _minutes_ns(period_minutes)
        if period_label == "start":
            ends = ns - ns % period + period  # numpy's % takes the divisor's sign: floor
        else:
            ends = ns + (-ns) % period  # ceil: a stamp on a boundary ends there
    else:
        ends = ns
    out = (ends + _minutes_ns(delay_minutes)).astype("datetime64[ns]")
    out[nat] = np.datetime64("NaT")
    return out


def forecast_usable_at(issued: datetime, delay_minutes: float = 0.0) -> datetime:
    """When a forecast issued at ``issued`` is in hand: its issue time plus the delay."""
    if delay_minutes < 0:
        raise ValueError(f"delay_minutes must be >= 0, got {delay_minutes!r}")
    return issued + timedelta(minutes=delay_minutes)


def observed_at(t: datetime, *, delay_minutes: float = 0.0, period_minutes: float | None = None) -> datetime:
    """When what happened at ``t`` (aware) was first seen in a source's readings: at once
    plus the delivery delay; for aggregates, not before the period holding ``t`` has ended
    (periods aligned on 1970-01-01 UTC, as in :func:`usable_from`). Persistence of the
    observation, the baseline of verification, can warn no earlier."""
    if delay_minutes < 0:
        raise ValueError(f"delay_minutes must not be negative, got {delay_minutes}")
    if period_minutes:
        step = timedelta(minutes=float(period_minutes))
        epoch = datetime(1970, 1, 1, tzinfo=t.tzinfo)
        t = epoch + -((epoch - t) // step) * step  # ceiling to the period's end
    return t + timedelta(minutes=float(delay_minutes))
