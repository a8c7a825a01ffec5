"""Rain, potential evapotranspiration and discharge from a WALRUS ``PEQ`` file.

The WALRUS rainfall-runoff model (Brauer et al. 2014, GMD 7:2313 and HESS 18:4007) reads
its forcing from a whitespace-separated table with a header::

    "date" "P" "ETpot" "Q"
    2011010100 0 0 0.042

``date`` is ``YYYYmmddHH`` (or ``YYYYmmdd``, ``YYYYmmddHHMM``); ``P``, ``ETpot`` and ``Q``
are in mm per hour (the WALRUS format; the file itself states no unit), ``Q`` being the
*specific* discharge at the outlet. ``NA`` marks a missing value.

* **Time stamps.** WALRUS's own preprocessing (``WALRUS_preprocessing.R``) accumulates
  each row's amount from its stamp to the next stamp, so a row covers the interval that
  *starts* at its stamp and is only known at the interval's end. Readings are therefore
  placed at the end of their interval (stamp + one step), the moment they could have been
  read: a cycle at 12:00 sees the hour 11:00-12:00 (stamped 11) and nothing later.
* **Time zone.** The file does not say; WALRUS parses the stamps as UTC, and so do we.
  If the record is in Dutch local time, every time is off by one or two hours.
* **Units.** ``Q`` becomes ``discharge`` in m3 s-1 with the catchment area:
  Q [mm/h] x area [km2] / 3.6. The default area, 6.5 km2, is the Hupsel Brook
  catchment's as given in the literature (Brauer et al. 2014); it is not measured here.
  ``P`` becomes ``rain`` and ``ETpot`` ``etpot``, both kept in mm h-1 (forcing, not
  observations of the river). The record has no stage: ``stage`` is all missing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..errors import IngestError
from .limits import DEFAULT_LIMITS, Limits
from .readings import Series, read_text, readings_dataset

log = logging.getLogger(__name__)

#: the Hupsel Brook catchment, km2 (Brauer et al. 2014; literature value, not verified here)
HUPSEL_AREA_KM2 = 6.5
_COLUMNS = {"P": "rain", "ETpot": "etpot", "Q": "discharge"}
_FORMATS = {8: "%Y%m%d", 10: "%Y%m%d%H", 12: "%Y%m%d%H%M"}
_MISSING = {"NA", "NAN", ""}


def specific_to_discharge(q_mm_h: np.ndarray | float, area_km2: float) -> np.ndarray | float:
    """Specific discharge (mm/h over the catchment) -> discharge (m3/s).

    1 mm/h over 1 km2 is 1e6 m2 x 1e-3 m / 3600 s = 1 / 3.6 m3/s.
    """
    return q_mm_h * area_km2 / 3.6


class PeqSource:
    """A WALRUS ``PEQ`` table as gauge readings: discharge observed, rain and ETpot as forcing.

    Parameters
    ----------
    path : str or Path
        The table.
    station : str
        The gauge id the readings belong to (default ``HUPSEL``).
    area_km2 : float, km2
        Catchment area that turns specific discharge into m3/s (default 6.5, Hupsel Brook).
    stale_after_minutes : float
        Kept in the Dataset's attrs (the pipeline's staleness tolerance).
    units : str, optional
        Accepted for a uniform interface and ignored: the format fixes mm/h.
    limits : Limits, optional
        Plausibility limits, passed on to the readings' QC (the record has no stage, so the
        stage rate check has nothing to judge).
    """

    kind = "peq"

    def __init__(self, path: str | Path, *, station: str = "HUPSEL", area_km2: float = HUPSEL_AREA_KM2,
                 stale_after_minutes: float = 90, units: str | None = None,
                 limits: Limits | None = None):
        if not area_km2 > 0:
            raise IngestError(f"peq: area_km2 must be > 0, got {area_km2!r}")
        self.path = Path(path)
        self.station = station
        self.area_km2 = float(area_km2)
        self.stale_after_minutes = stale_after_minutes
        self.units = units
        self.limits = limits or DEFAULT_LIMITS
        self._cache: tuple[tuple[int, int, Any], xr.Dataset] | None = None

    def read(self, valid_ranges: dict[str, tuple[float, float]] | None = None,
             now: datetime | None = None) -> xr.Dataset:
        """All readings in the file, QC-flagged, as Dataset(station, time); times are the
        ends of the intervals (see the module notes)."""
        try:
            st = self.path.stat()
        except OSError as exc:
            raise IngestError(f"{self.path}: cannot open the PEQ file: {exc.strerror}") from None
        key = (st.st_mtime_ns, st.st_size, tuple(sorted((valid_ranges or {}).items())))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        series, step = self._parse()
        ds = readings_dataset(
            series, units={"stage": "m", "discharge": "m3 s-1", "rain": "mm h-1", "etpot": "mm h-1"},
            source=str(self.path), kind=self.kind, valid_ranges=valid_ranges, limits=self.limits,
            attrs={"stale_after_minutes": self.stale_after_minutes, "area_km2": self.area_km2,
                   "interval_minutes": step.total_seconds() / 60.0,
                   "time_convention": "end of each interval (WALRUS stamps the interval start); "
                                      "the file states no time zone: read as UTC",
                   "units_source": "WALRUS PEQ format: P, ETpot, Q in mm/h; Q specific discharge, "
                                   f"x {self.area_km2:g} km2 / 3.6 -> m3/s"})
        self._cache = (key, ds)
        return ds

    def _parse(self) -> tuple[dict[tuple[str, str], Series], timedelta]:
        lines = read_text(self.path, "a WALRUS PEQ table")
        first = next(i for i, line in enumerate(lines) if line.strip())
        header = [c.strip().strip('"').strip("'") for c in lines[first].split()]
        where = f"{self.path}:{first + 1}"
        if "date" not in header or not all(c in header for c in _COLUMNS):
            raise IngestError(f"{where}: the header must name date, P, ETpot and Q (WALRUS PEQ "
                              f"format); found {' '.join(header) or 'nothing'}")
        i_date = header.index("date")
        cols = {header.index(c): q for c, q in _COLUMNS.items()}
        stamps: list[datetime] = []
        values: dict[str, list[float]] = {q: [] for q in _COLUMNS.values()}
        fmt: str | None = None
        width = 0
        for n in range(first + 1, len(lines)):
            line = lines[n]
            if not line.strip():
                continue
            here = f"{self.path}:{n + 1}"
            fields = line.split()
            if len(fields) != len(header):
                raise IngestError(f"{here}: {len(fields)} fields where the header has {len(header)} "
                                  f"({' '.join(header)}); the line is cut short or corrupt")
            text = fields[i_date].strip('"')
            if fmt is None:  # the first row fixes the date format
                fmt, width = _FORMATS.get(len(text)), len(text)
            try:
                if fmt is None or not text.isdigit() or len(text) != width:
                    raise ValueError
                t = datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10] or 0),
                             int(text[10:12] or 0), tzinfo=UTC)
            except ValueError:
                raise IngestError(f"{here}: date {text!r} is not YYYYmmddHH (or YYYYmmdd, "
                                  f"YYYYmmddHHMM, the same for every row)") from None
            stamps.append(t)
            for i, q in cols.items():
                raw = fields[i].strip('"')
                if raw.upper() in _MISSING:
                    v = float("nan")
                else:
                    try:
                        v = float(raw)
                    except ValueError:
                        raise IngestError(f"{here}: column {header[i]}: value {raw!r} is not a number "
                                          f"(NA marks a missing one)") from None
                values[q].append(v)
        if not stamps:
            raise IngestError(f"{self.path}: no rows after the header")
        step = _step(stamps, self.path)
        series: dict[tuple[str, str], Series] = {}
        for q, vals in values.items():
            ser = Series()
            for t, v in zip(stamps, vals):
                if q == "discharge":
                    v = float(specific_to_discharge(v, self.area_km2))
                ser.add(t + step, v)
            series[(self.station, q)] = ser
        return series, step


def _step(stamps: list[datetime], path: Path) -> timedelta:
    """The record's time step: the most common difference between consecutive stamps."""
    if len(stamps) < 2:
        raise IngestError(f"{path}: one row only; the time step cannot be told")
    diffs = np.diff(np.array([t.timestamp() for t in stamps]))
    diffs = diffs[diffs > 0]
    if diffs.size == 0:
        raise IngestError(f"{path}: every row has the same date")
    vals, counts = np.unique(diffs, return_counts=True)
    return timedelta(seconds=float(vals[np.argmax(counts)]))
