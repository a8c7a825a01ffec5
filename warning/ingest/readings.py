"""The readings Dataset of archived gauge records (``nwis_csv``, ``peq``), with QC flags.

Both sources give the same ``xarray.Dataset (station, time)`` as
:class:`~warning.ingest.gauge_csv.GaugeCsvSource` and the feed sources, so the pipeline and
:func:`~warning.ingest.gauge_csv.latest_good` read any of them alike:

* ``stage`` (m) and ``qc`` are always there (all missing when the record has no stage);
* every other quantity the record has is a variable of its own with a ``<name>_qc`` beside
  it: ``discharge`` (m3 s-1), ``rain`` and ``etpot`` (mm h-1);
* ``<name>_qualifiers``: the provider's own codes (USGS ``A``, ``P``, ``e``) where the
  record has them;
* attrs ``source_file``, ``source_kind``, ``measured`` (the quantities the record really
  holds, e.g. ``["stage", "discharge"]``) and ``stale_after_minutes``.

QC flags (``uint16``) are those of the other gauge sources (missing, range, rate of change,
spike, duplicate, out-of-order; :data:`~warning.ingest.gauge_csv.QC_NAMES`,
:data:`~warning.ingest.gauge_feeds.FEED_QC_NAMES`) plus :data:`QC_QUALIFIER`: a value the
provider marked with a code outside the approved set (USGS: anything but ``A`` approved
and ``P`` provisional, e.g. ``e`` estimated, ``Ice``, ``Eqp``). Flagged values are kept
with their flag and never used by the pipeline. Every flag of a reading depends on that
reading and the ones before it only (the rate-of-change flag too: it compares with the
previous good reading), except the spike flag, which looks at the next reading too;
:func:`warning.gauge_cycle.readings_until` recomputes it on the readings up to the cycle
time. ``attrs["problems"]`` lists what the reader set aside (sentences for operators).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import xarray as xr

from ..errors import IngestError
from .gauge_csv import (
    QC_DTYPE,
    QC_DUPLICATE,
    QC_GOOD,
    QC_MISSING,
    QC_RANGE,
    read_text,
    spike_flags,
    stage_flags,
)
from .gauge_feeds import FEED_QC_NAMES, QC_OUT_OF_ORDER
from .limits import DEFAULT_LIMITS, Limits

QC_QUALIFIER = 128  # the provider's qualifier is not an approved one (e.g. USGS "e" estimated)
ARCHIVE_QC_NAMES = dict(sorted({**FEED_QC_NAMES, QC_QUALIFIER: "qualifier"}.items()))

__all__ = ["ARCHIVE_QC_NAMES", "QC_QUALIFIER", "Series", "qc_name", "qc_problem", "read_text",
           "readings_dataset"]


@dataclass
class Series:
    """One quantity at one station, in the file's order (values in SI / mm h-1 already)."""

    times: list[datetime] = field(default_factory=list)  # UTC
    values: list[float] = field(default_factory=list)
    qualifiers: list[str] | None = None

    def add(self, t: datetime, v: float, q: str | None = None) -> None:
        self.times.append(t)
        self.values.append(v)
        if q is not None:
            if self.qualifiers is None:
                self.qualifiers = [""] * (len(self.values) - 1)
            self.qualifiers.append(q)
        elif self.qualifiers is not None:
            self.qualifiers.append("")


def qc_name(var: str) -> str:
    """The QC variable of a quantity: ``qc`` for stage (the historical name), else ``<var>_qc``."""
    return "qc" if var == "stage" else f"{var}_qc"


_SPLIT = re.compile(r"[,;:\s]+")


def _qualifier_flags(quals: list[str], approved: frozenset[str]) -> np.ndarray:
    out = np.zeros(len(quals), dtype=QC_DTYPE)
    known: dict[str, int] = {}
    for i, q in enumerate(quals):
        if q not in known:
            codes = [c for c in _SPLIT.split(q.strip()) if c]
            known[q] = QC_QUALIFIER if any(c not in approved for c in codes) else 0
        out[i] = known[q]
    return out


def readings_dataset(series: Mapping[tuple[str, str], Series], *, units: Mapping[str, str],
                     source: str, kind: str, valid_ranges: Mapping[str, tuple[float, float]] | None = None,
                     spike_limits: Mapping[str, float | None] | None = None,
                     approved: Iterable[str] | None = None,
                     attrs: Mapping[str, Any] | None = None, limits: Limits | None = None,
                     problems: Sequence[str] = ()) -> xr.Dataset:
    """QC-flag the series and lay them out as ``Dataset(station, time)``.

    Parameters
    ----------
    series : mapping, (station, quantity) -> Series
        Quantities: ``stage`` (m), ``discharge`` (m3 s-1), ``rain``, ``etpot`` (mm h-1), ...
    units : mapping, quantity -> unit text (CF style, e.g. ``m3 s-1``)
    source, kind : str
        The file (or URL) and the source kind, for the attrs.
    valid_ranges : mapping, station -> (low, high) in m, optional
        Stage outside the range is flagged ``QC_RANGE``; any other quantity below zero is.
    spike_limits : mapping, quantity -> limit (its unit) or None, optional
        Quantities checked for single-reading spikes (``gauge_csv.spike_flags``).
    limits : Limits, optional
        Plausibility limits: stage is checked for its rate of change
        (``gauge_csv.rate_flags``).
    approved : iterable of str, optional
        Qualifier codes that leave a value good; any other code flags it ``QC_QUALIFIER``.
    attrs : mapping, optional
        More attributes for the Dataset.
    problems : sequence of str
        What the reader set aside, for operators (``attrs["problems"]``).
    """
    if not series:
        raise IngestError(f"{source}: no readings")
    valid_ranges = valid_ranges or {}
    spike_limits = spike_limits or {}
    limits = limits or DEFAULT_LIMITS
    approved_set = frozenset(approved) if approved is not None else None
    stations = sorted({s for s, _ in series})
    measured = [q for q in ("stage", "discharge", "rain", "etpot") if any(v == q for _, v in series)]
    measured += sorted({v for _, v in series} - set(measured))
    as_np = {key: np.array([np.datetime64(t.replace(tzinfo=None), "ns") for t in ser.times],
                           dtype="datetime64[ns]") for key, ser in series.items()}
    np_times = np.unique(np.concatenate(list(as_np.values())))
    shape = (len(stations), np_times.size)
    flags = {"flag_masks": list(ARCHIVE_QC_NAMES), "flag_meanings": " ".join(ARCHIVE_QC_NAMES.values())}
    data: dict[str, Any] = {}
    for var in ["stage"] + [q for q in measured if q != "stage"]:
        values = np.full(shape, np.nan)
        qc = np.full(shape, QC_MISSING, dtype=QC_DTYPE)
        quals = np.full(shape, "", dtype=object)
        has_quals = False
        for s, name in enumerate(stations):
            ser = series.get((name, var))
            if ser is None:
                continue
            t = as_np[(name, var)]
            v = np.asarray(ser.values, dtype=np.float64)
            idx = np.searchsorted(np_times, t)
            # in file order: a time earlier than one already given is out of order
            late = np.zeros(t.size, dtype=bool)
            late[1:] = t[1:] < np.maximum.accumulate(t)[:-1]
            _, first = np.unique(idx, return_index=True)  # the first reading of each time wins
            values[s, idx[first]] = v[first]
            qc[s, idx[first]] = np.where(np.isnan(v[first]), QC_MISSING, QC_GOOD).astype(QC_DTYPE)
            if ser.qualifiers is not None:
                has_quals = True
                q_arr = np.asarray(ser.qualifiers, dtype=object)
                quals[s, idx[first]] = q_arr[first]
                if approved_set is not None:
                    qc[s, idx[first]] |= _qualifier_flags(list(q_arr[first]), approved_set)
            qc[s, idx[first[late[first]]]] |= QC_OUT_OF_ORDER
            repeat = np.ones(t.size, dtype=bool)
            repeat[first] = False
            for k in np.flatnonzero(repeat):  # a second reading for a time: flagged when it differs
                i = idx[k]
                if not (v[k] == values[s, i] or (np.isnan(v[k]) and np.isnan(values[s, i]))):
                    qc[s, i] |= QC_DUPLICATE
            row = values[s]
            limit = spike_limits.get(var)
            if var == "stage":
                qc[s] = stage_flags(row, qc[s], np_times, valid_range=valid_ranges.get(name),
                                    limits=limits, spike_limit_m=limit)
                continue
            with np.errstate(invalid="ignore"):
                qc[s, row < 0] |= QC_RANGE
            if limit is not None:
                qc[s] |= spike_flags(row, qc[s], limit)
        data[var] = (("station", "time"), values, {"units": units.get(var, "")})
        data[qc_name(var)] = (("station", "time"), qc, flags)
        if has_quals:
            data[f"{var}_qualifiers"] = (("station", "time"), quals.astype(str))
    return xr.Dataset(data, coords={"station": stations, "time": np_times},
                      attrs={"source_file": source, "source_kind": kind, "measured": measured,
                             "problems": list(problems), **(attrs or {})})


def qc_problem(ds: xr.Dataset, station: str, at: datetime, minutes: float, var: str = "stage"
               ) -> str | None:
    """A sentence for operators about the readings of ``var`` at ``station`` in the
    ``minutes`` up to ``at`` that QC set aside (None when there are none): how many, and
    for each flag its count and first example (value, time, the provider's qualifier).

    The cycle adds it to the run's problems, so a flagged reading is never dropped in
    silence; the service tells the operators once while it stays open."""
    qc_var = qc_name(var)
    if qc_var not in ds or station not in ds["station"].values:
        return None
    sub = ds.sel(station=station)
    t = sub["time"].values
    end = np.datetime64(at.astimezone(UTC).replace(tzinfo=None), "ns")
    window = np.flatnonzero((t > end - np.timedelta64(int(minutes * 60), "s")) & (t <= end))
    qc = sub[qc_var].values[window]
    bad = window[qc != QC_GOOD]
    if not bad.size:
        return None
    values = sub[var].values
    quals = sub[f"{var}_qualifiers"].values if f"{var}_qualifiers" in sub else None
    unit = ds[var].attrs.get("units", "")
    parts = []
    for bit, name in ARCHIVE_QC_NAMES.items():
        hit = bad[(sub[qc_var].values[bad] & bit) != 0]
        if not hit.size:
            continue
        k = hit[0]
        v = values[k]
        example = "no value" if np.isnan(v) else f"{v:g} {unit}".strip()
        example += f" at {str(t[k].astype('datetime64[m]')).replace('T', ' ')}Z"
        if quals is not None and str(quals[k]).strip():
            example += f", qualifier {str(quals[k]).strip()}"
        parts.append(f"{name} x{hit.size} (e.g. {example})")
    span = f"{minutes:g} min" if minutes < 120 else f"{minutes / 60:g} h"
    return (f"gauge {station}: {bad.size} of {window.size} {var} readings in the {span} to "
            f"{at:%H:%M}Z set aside by QC: " + "; ".join(parts))
