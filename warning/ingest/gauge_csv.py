"""Gauge readings from CSV (``station, time, <value>``), with quality-control flags.

Readings become an ``xarray.Dataset`` with dims ``(station, time)``: ``stage`` in metres
(converted from the declared unit) and ``qc`` flags (0 good; bits below). Flagged values
are kept with their flag and never used by the model.
"""

from __future__ import annotations

import csv
import logging
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import xarray as xr

from ..errors import IngestError

log = logging.getLogger(__name__)

QC_GOOD = 0
QC_RANGE = 1  # outside the gauge's valid range
QC_SPIKE = 2  # jumps away from both neighbours by more than the spike limit
QC_DUPLICATE = 4  # a second reading for the same station and time
QC_MISSING = 8  # empty or unparseable value
QC_NAMES = {QC_RANGE: "range", QC_SPIKE: "spike", QC_DUPLICATE: "duplicate", QC_MISSING: "missing"}
_TO_M = {"m": 1.0, "cm": 0.01, "ft": 0.3048}


def _parse_time(text: str, where: str) -> datetime:
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise IngestError(f"{where}: time {text!r} is not ISO 8601") from None
    if t.tzinfo is None:
        raise IngestError(f"{where}: time {text!r} has no time zone; write e.g. 2025-11-14T06:00Z")
    return t.astimezone(timezone.utc)


class GaugeCsvSource:
    """Stage readings from one CSV file with columns ``station``, ``time`` and a value."""

    kind = "gauge_csv"

    def __init__(self, path: Path, units: str = "m", stale_after_minutes: float = 90,
                 value_column: str | None = None, spike_limit_m: float = 0.5):
        if units not in _TO_M:
            raise ValueError(f"unknown stage units {units!r}; use one of {', '.join(_TO_M)}")
        self.path = Path(path)
        self.units = units
        self.stale_after_minutes = stale_after_minutes
        self.value_column = value_column
        self.spike_limit_m = spike_limit_m

    def read(self, valid_ranges: dict[str, tuple[float, float]] | None = None) -> xr.Dataset:
        """All readings in the file, QC-flagged, as Dataset(station, time)."""
        try:
            fh = open(self.path, newline="")
        except OSError as exc:
            raise IngestError(f"{self.path}: cannot open gauge file: {exc.strerror}") from None
        with fh:
            reader = csv.DictReader(fh)
            cols = reader.fieldnames or []
            value_col = self.value_column or next(
                (c for c in cols if c not in ("station", "time")), None)
            if "station" not in cols or "time" not in cols or value_col is None:
                raise IngestError(f"{self.path}: needs columns station, time and a value column; "
                                  f"found {', '.join(cols) or 'none'}")
            records: dict[str, dict[datetime, list[float]]] = {}
            for n, row in enumerate(reader, start=2):
                where = f"{self.path}:{n}"
                t = _parse_time(row["time"] or "", where)
                try:
                    v = float(row[value_col]) * _TO_M[self.units]
                except (TypeError, ValueError):
                    v = np.nan
                records.setdefault(row["station"], {}).setdefault(t, []).append(v)
        if not records:
            raise IngestError(f"{self.path}: no readings")
        stations = sorted(records)
        times = sorted({t for r in records.values() for t in r})
        t_index = {t: i for i, t in enumerate(times)}
        stage = np.full((len(stations), len(times)), np.nan)
        qc = np.full((len(stations), len(times)), QC_MISSING, dtype=np.uint8)
        for s, name in enumerate(stations):
            for t, vals in records[name].items():
                i = t_index[t]
                stage[s, i] = vals[0]
                qc[s, i] = QC_MISSING if np.isnan(vals[0]) else QC_GOOD
                if len(vals) > 1:
                    qc[s, i] |= QC_DUPLICATE if any(v != vals[0] for v in vals[1:]) else 0
            lo, hi = (valid_ranges or {}).get(name, (-np.inf, np.inf))
            row = stage[s]
            qc[s, (row < lo) | (row > hi)] |= QC_RANGE
            qc[s] |= self._spikes(row, qc[s])
        np_times = np.array([np.datetime64(t.replace(tzinfo=None), "ns") for t in times])
        return xr.Dataset(
            {"stage": (("station", "time"), stage, {"units": "m"}),
             "qc": (("station", "time"), qc, {"flag_masks": list(QC_NAMES),
                                               "flag_meanings": " ".join(QC_NAMES.values())})},
            coords={"station": stations, "time": np_times},
            attrs={"source_file": str(self.path)})

    def _spikes(self, row: np.ndarray, qc: np.ndarray) -> np.ndarray:
        return spike_flags(row, qc, self.spike_limit_m)


def spike_flags(row: np.ndarray, qc: np.ndarray, limit_m: float) -> np.ndarray:
    """Flag single good readings that jump away from both good neighbours by more than
    ``limit_m`` (m) and straight back."""
    flags = np.zeros(row.size, dtype=np.uint8)
    good = np.flatnonzero(qc == QC_GOOD)
    if good.size < 3:
        return flags
    v = row[good]
    up = v[1:-1] - v[:-2]
    down = v[1:-1] - v[2:]
    spike = (np.abs(up) > limit_m) & (np.abs(down) > limit_m) & (np.sign(up) == np.sign(down))
    flags[good[1:-1][spike]] = QC_SPIKE
    return flags


def latest_good(ds: xr.Dataset, station: str, at: datetime, stale_after_minutes: float
                ) -> tuple[float, float, datetime | None, str | None]:
    """Latest good stage at ``station`` up to ``at``, the rise over the hour before it (m/h),
    its time, and a problem string when there is none or it is stale."""
    if station not in ds["station"].values:
        return np.nan, np.nan, None, f"no readings for gauge {station}"
    sub = ds.sel(station=station)
    t = sub["time"].values
    limit = np.datetime64(at.astimezone(timezone.utc).replace(tzinfo=None), "ns")
    ok = (t <= limit) & (sub["qc"].values == QC_GOOD)
    if not ok.any():
        return np.nan, np.nan, None, f"no good reading at gauge {station} up to {at:%Y-%m-%d %H:%M}Z"
    idx = np.flatnonzero(ok)
    last = idx[-1]
    when = datetime.fromtimestamp(t[last].astype("datetime64[s]").astype(np.int64), tz=timezone.utc)
    value = float(sub["stage"].values[last])
    hour_ago = t[last] - np.timedelta64(1, "h")
    # rate of rise: against the reading an hour earlier, or the earliest within the hour
    before = idx[t[idx] <= hour_ago]
    within = idx[(t[idx] > hour_ago) & (idx != last)]
    ref = before[-1] if before.size else (within[0] if within.size else None)
    rise = np.nan
    if ref is not None:
        dt_h = float((t[last] - t[ref]) / np.timedelta64(1, "h"))
        rise = (value - float(sub["stage"].values[ref])) / dt_h
    age_min = (at - when).total_seconds() / 60.0
    problem = None
    if age_min > stale_after_minutes:
        problem = (f"gauge {station} is stale: last good reading {age_min:.0f} min old "
                   f"(tolerance {stale_after_minutes:.0f} min)")
        value, rise = np.nan, np.nan
    return value, rise, when, problem
