"""Gauge readings from CSV, and the quality control every gauge source shares.

:class:`GaugeCsvSource` reads a CSV file of ``station, time, <value>`` rows (and an
optional per-row ``unit``) into an ``xarray.Dataset`` with dims ``(station, time)``:
``stage`` in metres and ``qc`` flags (0 good; bits below). Flagged values are kept with
their flag and never used by the model (:func:`latest_good` takes ``QC_GOOD`` only).
``ds.attrs["problems"]`` lists, as plain sentences naming the file and line, every row that
was set aside or flagged for what the file itself got wrong (a truncated last row, a value
that is not a number, an unknown unit); the cycle shows them to operators.

This module also holds what the feed sources (:mod:`.gauge_feeds`) and the archived records
(:mod:`.readings`) share: the QC bits and their names, the stage checks
(:func:`stage_flags`: range, rate of change, spike, flatline), the length units, ISO 8601
time parsing, :func:`read_text` and :class:`ProblemList`.

QC bits of a reading (``qc``, ``discharge_qc``, ...; ``uint16``, :data:`QC_DTYPE`)::

    1 range      outside the gauge's valid range (discharge, rain: below zero)
    2 spike      one reading away from both neighbours by more than the spike limit
    4 duplicate  a second, different reading for the same station and time
    8 missing    empty, not a number, or in an unknown unit
    16 flatline  the same value for longer than the flatline limit
    32 out_of_order  (feeds, archives) a time earlier than one already given
    128 qualifier    (archives) the provider's qualifier is not an approved one
    256 rate     a step from the previous good reading faster than any river rises

64 is ``QC_STALE`` of the feeds' per-station ``station_qc``, not a reading flag.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import xarray as xr

from ..errors import IngestError
from .limits import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)

QC_DTYPE = np.uint16  # 256 (rate) does not fit a uint8
QC_GOOD = 0
QC_RANGE = 1  # outside the gauge's valid range
QC_SPIKE = 2  # jumps away from both neighbours by more than the spike limit
QC_DUPLICATE = 4  # a second reading for the same station and time
QC_MISSING = 8  # empty or unparseable value
QC_FLATLINE = 16  # the same value repeated for longer than the flatline limit
QC_RATE = 256  # changes from the previous good reading faster than the plausible rate
#: the flags a CSV gauge file can get (the feeds and archives add theirs to it)
QC_NAMES = {QC_RANGE: "range", QC_SPIKE: "spike", QC_DUPLICATE: "duplicate", QC_MISSING: "missing",
            QC_FLATLINE: "flatline", QC_RATE: "rate"}

FT = 0.3048  # exact (international foot)
#: length unit -> metres
LENGTH_UNITS: dict[str, float] = {"m": 1.0, "cm": 0.01, "mm": 0.001, "ft": FT, "in": 0.0254}
_LENGTH_ALIASES = {"metre": "m", "metres": "m", "meter": "m", "meters": "m",
                   "centimetre": "cm", "centimetres": "cm", "centimeter": "cm", "centimeters": "cm",
                   "millimetre": "mm", "millimetres": "mm", "millimeter": "mm", "millimeters": "mm",
                   "foot": "ft", "feet": "ft", "inch": "in", "inches": "in"}
_MISSING_TEXT = {"", "nan", "na"}

__all__ = [
    "FT", "LENGTH_UNITS", "QC_DTYPE", "QC_DUPLICATE", "QC_FLATLINE", "QC_GOOD", "QC_MISSING",
    "QC_NAMES", "QC_RANGE", "QC_RATE", "QC_SPIKE", "FlatlineRule", "GaugeCsvSource", "ProblemList",
    "flatline_flags", "latest_good", "length_unit", "parse_time", "rate_flags", "read_text",
    "spike_flags", "stage_flags",
]


# =================================================================== shared helpers
def length_unit(text: str | None) -> str | None:
    """The canonical length unit (a key of :data:`LENGTH_UNITS`) for ``text``, or None.

    Case and surrounding blanks do not matter; ``metres``, ``feet``, ``inches``... are
    accepted for ``m``, ``ft``, ``in``."""
    if text is None:
        return None
    key = str(text).strip().lower()
    key = _LENGTH_ALIASES.get(key, key)
    return key if key in LENGTH_UNITS else None


def parse_time(text: str, where: str) -> datetime:
    """An ISO 8601 time with its zone (``Z`` or an offset), in UTC; IngestError otherwise."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise IngestError(f"{where}: time {text!r} is not ISO 8601") from None
    if t.tzinfo is None:
        raise IngestError(f"{where}: time {text!r} has no time zone; write e.g. 2025-11-14T06:00Z")
    return t.astimezone(UTC)


def read_text(path: Path, what: str) -> list[str]:
    """The file's lines, or an IngestError naming the file and, for bad bytes, the line.

    UTF-8, with or without a byte-order mark; NUL bytes and an empty file are refused."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise IngestError(f"{path}: cannot open {what}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise IngestError(f"{path}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x}); is this "
                          f"really {what}?") from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise IngestError(f"{path}:{line}: NUL byte in the text; the file is corrupt or not {what}")
    lines = text.splitlines()
    if not any(line.strip() for line in lines):
        raise IngestError(f"{path}: empty file; expected {what}")
    return lines


class ProblemList:
    """Problem sentences for operators, at most ``per_kind`` of each kind, then a count.

    A file with ten thousand bad rows gives a handful of examples and one line saying how
    many more there were, not ten thousand lines."""

    def __init__(self, per_kind: int = 5):
        self.per_kind = per_kind
        self._lines: list[str] = []
        self._counts: dict[str, int] = {}

    def add(self, sentence: str, kind: str | None = None, *, once: bool = False) -> None:
        """Record ``sentence``; ``kind`` (default: the sentence) groups like problems, and
        names them in the count line (so it should name the file or feed). With ``once`` a
        sentence already recorded is not counted again."""
        kind = kind or sentence
        if once and kind in self._counts:
            return
        n = self._counts.get(kind, 0) + 1
        self._counts[kind] = n
        if n <= self.per_kind:
            self._lines.append(sentence)

    def __len__(self) -> int:
        return sum(self._counts.values())

    def lines(self) -> list[str]:
        """The sentences, and for each kind with more than ``per_kind`` one count line."""
        more = [f"{kind}: {n - self.per_kind} more like this not listed ({n} in all)"
                for kind, n in self._counts.items() if n > self.per_kind]
        return self._lines + more


# ======================================================================= checks
def spike_flags(row: np.ndarray, qc: np.ndarray, limit_m: float) -> np.ndarray:
    """Flag single good readings that jump away from both good neighbours by more than
    ``limit_m`` (m) and straight back."""
    flags = np.zeros(row.size, dtype=QC_DTYPE)
    good = np.flatnonzero(qc == QC_GOOD)
    if good.size < 3:
        return flags
    v = row[good]
    up = v[1:-1] - v[:-2]
    down = v[1:-1] - v[2:]
    spike = (np.abs(up) > limit_m) & (np.abs(down) > limit_m) & (np.sign(up) == np.sign(down))
    flags[good[1:-1][spike]] = QC_SPIKE
    return flags


def rate_flags(row: np.ndarray, qc: np.ndarray, times: np.ndarray,
               limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Flag stage readings that step from the previous good reading faster than a river can.

    A WMO-style step (time-consistency) test, as WMO's guidance on quality control of
    automatic station data describes it (WMO-No. 8): a good reading ``v[i]`` at ``t[i]``
    is flagged ``QC_RATE`` when::

        |v[i] - v[ref]| > stage_max_rise_m_per_h * max(t[i] - t[ref], stage_rate_min_minutes)

    (hours), where ``ref`` is the previous reading that is good and was not itself flagged
    here. The floor on the time step (15 min by default) keeps the noise of one-minute
    readings from counting as a rise: two readings 1 min apart may differ by up to
    5 m/h x 0.25 h = 1.25 m. Rises and falls count alike.

    Because the reference stays at the last good reading, a single wild reading is flagged
    and the next normal one is good again; a real lasting step (a weir gate, a moved
    sensor) is accepted once enough time has passed for a plausible rise to reach it
    (a 3 m step after 36 min at 5 m/h), so the check never blanks a gauge for good.

    Every flag depends on the reading and earlier ones only, so readings cut at a cycle
    time keep their flags (unlike the spike check, which looks at the next reading).

    Parameters
    ----------
    row : ndarray (time,), m
    qc : ndarray (time,)
        Flags so far; only ``QC_GOOD`` readings are judged and used as reference.
    times : ndarray (time,) datetime64, ascending
    limits : Limits
        ``stage_max_rise_m_per_h`` and ``stage_rate_min_minutes``.
    """
    flags = np.zeros(row.size, dtype=QC_DTYPE)
    good = np.flatnonzero(qc == QC_GOOD)
    if good.size < 2:
        return flags
    hours = ((times[good] - times[good[0]]) / np.timedelta64(1, "s") / 3600.0).tolist()
    values = row[good].tolist()
    rate = float(limits.stage_max_rise_m_per_h)
    floor_h = float(limits.stage_rate_min_minutes) / 60.0
    ref = 0
    for k in range(1, len(values)):
        if abs(values[k] - values[ref]) > rate * max(hours[k] - hours[ref], floor_h):
            flags[good[k]] = QC_RATE
        else:
            ref = k
    return flags


@dataclass(frozen=True)
class FlatlineRule:
    """A run of one value (within ``tolerance_m``) is a flatline when it has more than
    ``readings`` good readings or spans more than ``minutes``; None turns that test off."""

    readings: int | None = None
    minutes: float | None = 360.0
    tolerance_m: float = 0.0


def flatline_flags(row: np.ndarray, qc: np.ndarray, times: np.ndarray,
                   rule: FlatlineRule = FlatlineRule()) -> np.ndarray:
    """Flag runs of one value (within the tolerance) longer than the flatline limit.

    A run counts only good readings (a missing reading inside it does not break it); all
    but its first reading are flagged ``QC_FLATLINE``. The flags look ahead within a run."""
    flags = np.zeros(row.size, dtype=QC_DTYPE)
    if rule.readings is None and rule.minutes is None:
        return flags
    good = np.flatnonzero(qc == QC_GOOD)
    start = 0
    for k in range(1, good.size + 1):
        if k < good.size and abs(row[good[k]] - row[good[start]]) <= rule.tolerance_m + 1e-9:
            continue
        run = good[start:k]
        if run.size:
            minutes = float((times[run[-1]] - times[run[0]]) / np.timedelta64(1, "m"))
            if ((rule.readings is not None and run.size > rule.readings)
                    or (rule.minutes is not None and minutes > rule.minutes)):
                flags[run[1:]] = QC_FLATLINE
        start = k
    return flags


def stage_flags(row: np.ndarray, qc: np.ndarray, times: np.ndarray, *,
                valid_range: tuple[float, float] | None = None, limits: Limits = DEFAULT_LIMITS,
                spike_limit_m: float | None = None, flatline: FlatlineRule | None = None
                ) -> np.ndarray:
    """The stage checks of every gauge source, in order: range, rate, spike, flatline.

    Each check judges only the readings still good after the ones before it. Returns
    ``qc`` with the new flags or-ed in (a new array of :data:`QC_DTYPE`).

    Parameters
    ----------
    row : ndarray (time,), m
    qc : ndarray (time,)
        Flags so far (missing, duplicate, out of order, qualifier).
    times : ndarray (time,) datetime64, ascending
    valid_range : (low, high), m, optional
        The gauge's valid range; outside it is ``QC_RANGE``.
    limits : Limits
        For the rate-of-change check (:func:`rate_flags`).
    spike_limit_m : float, m, optional
        Spike check (:func:`spike_flags`); None skips it.
    flatline : FlatlineRule, optional
        Flatline check (:func:`flatline_flags`); None skips it.
    """
    out = qc.astype(QC_DTYPE, copy=True)
    if valid_range is not None:
        lo, hi = valid_range
        with np.errstate(invalid="ignore"):
            out[(row < lo) | (row > hi)] |= QC_RANGE
    out |= rate_flags(row, out, times, limits)
    if spike_limit_m is not None:
        out |= spike_flags(row, out, spike_limit_m)
    if flatline is not None:
        out |= flatline_flags(row, out, times, flatline)
    return out


# ==================================================================== the source
def _is_iso(text: str) -> bool:
    """Is ``text`` a whole ISO 8601 time (with or without a zone)?"""
    try:
        datetime.fromisoformat(text.strip())
    except ValueError:
        return False
    return True


@dataclass
class _Row:
    station: str
    time: datetime
    value: float  # m, nan when missing


class GaugeCsvSource:
    """Stage readings from one CSV file: a station, a time and a value per row.

    Parameters
    ----------
    path : str or Path
        The file: UTF-8 (a byte-order mark is fine), a header row, then one reading per row.
    units : str
        The stage unit when the file has no unit column (``m``, ``cm``, ``mm``, ``ft``,
        ``in``). A unit column wins: each row is read in the unit it states.
    stale_after_minutes : float
        The staleness tolerance (kept in the attrs for the pipeline).
    value_column, station_column, time_column, unit_column : str, optional
        Header names (matched without regard to case or surrounding blanks). Defaults:
        ``station``, ``time``, the first other column, and ``unit`` when there is one.
    spike_limit_m : float, m
        Single-reading spikes larger than this are flagged.
    flatline_readings, flatline_minutes, flatline_tolerance_m
        The flatline check, as for the feed sources, but by default more than 12 h of one
        value (the feeds: 6 h): a CSV is often an export rounded to the centimetre, where a
        steady low flow repeats for hours.
    limits : Limits, optional
        Plausibility limits (rate of change, the share of bad rows that refuses the file).

    Rows the file gets wrong are not fatal unless they are many:

    * the **last row** cut short (fewer fields than the header, or a time that is not
      ISO 8601: a file caught mid-write) is ignored, with a problem;
    * a row in the middle whose station or time cannot be read is skipped, with a problem;
    * a row whose value is not a number, whose unit is unknown or whose number of fields
      is wrong is kept as a missing reading (``QC_MISSING``), with a problem;
    * more than ``limits.max_flagged_share`` of the rows skipped or flagged so: the file is
      refused (IngestError). An empty value (or ``nan``, ``NA``) is a plain missing reading,
      neither a problem nor a bad row.
    """

    kind = "gauge_csv"

    def __init__(self, path: str | Path, units: str = "m", stale_after_minutes: float = 90,
                 value_column: str | None = None, spike_limit_m: float = 0.5, *,
                 station_column: str | None = None, time_column: str | None = None,
                 unit_column: str | None = None, flatline_readings: int | None = None,
                 flatline_minutes: float | None = 720.0, flatline_tolerance_m: float = 0.0,
                 limits: Limits | None = None):
        unit = length_unit(units)
        if unit is None:
            raise IngestError(f"gauge_csv {path}: unknown stage units {units!r}; use one of "
                              f"{', '.join(LENGTH_UNITS)}")
        self.path = Path(path)
        self.units = unit
        self.stale_after_minutes = stale_after_minutes
        self.value_column = value_column
        self.station_column = station_column
        self.time_column = time_column
        self.unit_column = unit_column
        self.spike_limit_m = spike_limit_m
        self.flatline = FlatlineRule(flatline_readings, flatline_minutes, flatline_tolerance_m)
        self.limits = limits or DEFAULT_LIMITS

    # ------------------------------------------------------------------ reading
    def read(self, valid_ranges: Mapping[str, tuple[float, float]] | None = None,
             now: datetime | None = None) -> xr.Dataset:
        """All readings in the file, QC-flagged, as Dataset(station, time).

        ``now`` is accepted for a uniform interface (a file holds what it holds)."""
        problems = ProblemList()
        rows = self._rows(problems)
        return self._dataset(rows, valid_ranges or {}, problems)

    def _columns(self, header: list[str], line: int) -> tuple[int, int, int, int | None]:
        names = [h.strip().lower() for h in header]

        def find(want: str) -> int | None:
            key = want.strip().lower()
            return names.index(key) if key in names else None

        missing: list[str] = []
        i_st = find(self.station_column or "station")
        if i_st is None:
            missing.append(f"no station column {self.station_column or 'station'!r} "
                           "(setting station_column)")
        i_t = find(self.time_column or "time")
        if i_t is None:
            missing.append(f"no time column {self.time_column or 'time'!r} (setting time_column)")
        i_u = find(self.unit_column or "unit")
        if self.unit_column is not None and i_u is None:
            missing.append(f"no unit column {self.unit_column!r} (setting unit_column)")
        if self.value_column is not None:
            i_v = find(self.value_column)
            if i_v is None:
                missing.append(f"no value column {self.value_column!r} (setting value_column)")
        else:
            taken = {i_st, i_t, i_u}
            i_v = next((i for i, n in enumerate(names) if i not in taken and n), None)
            if i_v is None:
                missing.append("no value column besides station, time and unit "
                               "(setting value_column)")
        if missing:
            raise IngestError(f"{self.path}:{line}: needs columns station, time and a value; "
                              f"{'; '.join(missing)}; the header has "
                              f"{', '.join(repr(h) for h in header) or 'nothing'}")
        assert i_st is not None and i_t is not None and i_v is not None
        return i_st, i_t, i_v, i_u

    def _rows(self, problems: ProblemList) -> list[_Row]:
        lines = read_text(self.path, "a gauge CSV (station, time, value)")
        reader = csv.reader(lines)
        name = self.path.name
        header: list[str] = []
        for header in reader:
            if any(c.strip() for c in header):
                break
        i_st, i_t, i_v, i_u = self._columns(header, reader.line_num)
        width = len(header)
        body = [(reader.line_num, row) for row in reader if any(c.strip() for c in row)]
        rows: list[_Row] = []
        bad: list[str] = []  # rows skipped or flagged for what the file got wrong
        skipped = 0

        def note(sentence: str, kind: str) -> None:
            bad.append(sentence)
            problems.add(sentence, f"{name}: {kind}")

        for k, (n, row) in enumerate(body):
            here = f"{name}:{n}"
            station = row[i_st].strip() if i_st < len(row) else ""
            raw_t = row[i_t] if i_t < len(row) else ""
            try:
                t: datetime | None = parse_time(raw_t, here)
                t_error = ""
            except IngestError as exc:
                t, t_error = None, str(exc)
            if k == len(body) - 1 and (len(row) < width or (t is None and not _is_iso(raw_t))):
                problems.add(f"{here}: truncated last row ({','.join(row)!r}) ignored; the file "
                             f"was probably read while being written")
                continue
            if not station or t is None:
                skipped += 1
                note(f"{t_error or f'{here}: no station'}; row skipped",
                     "rows skipped (no station or time)")
                continue
            if len(row) != width:
                note(f"{here}: station {station}: {len(row)} fields where the header has "
                     f"{width}; that reading is flagged missing",
                     "rows with the wrong number of fields")
                rows.append(_Row(station, t, math.nan))
                continue
            value = row[i_v].strip()
            if value.lower() in _MISSING_TEXT:
                rows.append(_Row(station, t, math.nan))
                continue
            try:
                v = float(value)
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                note(f"{here}: station {station}: value {value!r} at {t:%Y-%m-%dT%H:%M}Z is not a "
                     f"number; that reading is flagged missing", "values that are not numbers")
                rows.append(_Row(station, t, math.nan))
                continue
            unit: str | None = self.units
            if i_u is not None:
                stated = row[i_u].strip()
                unit = length_unit(stated)
                if unit is None:
                    note(f"{here}: station {station}: unit {stated!r} at {t:%Y-%m-%dT%H:%M}Z is "
                         f"not a length unit ({', '.join(LENGTH_UNITS)}); that reading is flagged "
                         f"missing", "rows with an unknown unit")
                    rows.append(_Row(station, t, math.nan))
                    continue
            rows.append(_Row(station, t, v * LENGTH_UNITS[unit]))
        judged = len(rows) + skipped
        if judged and len(bad) / judged > self.limits.max_flagged_share:
            raise IngestError(f"{self.path}: {len(bad)} of {judged} rows unreadable or flagged "
                              f"(more than {self.limits.max_flagged_share:.0%}); the file is "
                              f"refused. First: {'; '.join(bad[:3])}")
        if not rows:
            raise IngestError(f"{self.path}: no readings"
                              + (f" ({'; '.join(problems.lines()[:3])})" if len(problems) else ""))
        return rows

    def _dataset(self, rows: list[_Row], valid_ranges: Mapping[str, tuple[float, float]],
                 problems: ProblemList) -> xr.Dataset:
        records: dict[str, dict[datetime, list[float]]] = {}
        for r in rows:
            records.setdefault(r.station, {}).setdefault(r.time, []).append(r.value)
        stations = sorted(records)
        times = sorted({t for rec in records.values() for t in rec})
        t_index = {t: i for i, t in enumerate(times)}
        np_times = np.array([np.datetime64(t.replace(tzinfo=None), "ns") for t in times],
                            dtype="datetime64[ns]")
        stage = np.full((len(stations), len(times)), np.nan)
        qc = np.full((len(stations), len(times)), QC_MISSING, dtype=QC_DTYPE)
        for s, name in enumerate(stations):
            for t, vals in records[name].items():
                i = t_index[t]
                stage[s, i] = vals[0]
                qc[s, i] = QC_MISSING if np.isnan(vals[0]) else QC_GOOD
                if len(vals) > 1 and any(not (v == vals[0] or (np.isnan(v) and np.isnan(vals[0])))
                                         for v in vals[1:]):
                    qc[s, i] |= QC_DUPLICATE
            qc[s] = stage_flags(stage[s], qc[s], np_times, valid_range=valid_ranges.get(name),
                                limits=self.limits, spike_limit_m=self.spike_limit_m,
                                flatline=self.flatline)
        lines = problems.lines()
        for p in lines:
            log.warning("%s", p)
        return xr.Dataset(
            {"stage": (("station", "time"), stage, {"units": "m"}),
             "qc": (("station", "time"), qc, {"flag_masks": list(QC_NAMES),
                                               "flag_meanings": " ".join(QC_NAMES.values())})},
            coords={"station": stations, "time": np_times},
            attrs={"source_file": str(self.path), "source_kind": self.kind,
                   "stale_after_minutes": self.stale_after_minutes, "problems": lines})

# ==================================================================== the reader
def latest_good(ds: xr.Dataset, station: str, at: datetime, stale_after_minutes: float
                ) -> tuple[float, float, datetime | None, str | None]:
    """Latest good stage at ``station`` up to ``at``, the rise over the hour before it (m/h),
    its time, and a problem string when there is none or it is stale."""
    if station not in ds["station"].values:
        return np.nan, np.nan, None, f"no readings for gauge {station}"
    sub = ds.sel(station=station)
    t = sub["time"].values
    limit = np.datetime64(at.astimezone(UTC).replace(tzinfo=None), "ns")
    ok = (t <= limit) & (sub["qc"].values == QC_GOOD)
    if not ok.any():
        return np.nan, np.nan, None, f"no good reading at gauge {station} up to {at:%Y-%m-%d %H:%M}Z"
    idx = np.flatnonzero(ok)
    last = idx[-1]
    when = datetime.fromtimestamp(t[last].astype("datetime64[s]").astype(np.int64), tz=UTC)
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
