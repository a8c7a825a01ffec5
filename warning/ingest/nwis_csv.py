"""USGS NWIS instantaneous values saved as CSV by hydrofunctions (``NWIS(...).df().to_csv()``).

The file has a time column (``datetimeUTC``; older hydrofunctions wrote ``datetime``) and,
per site and parameter, a value column named ``USGS:<site>:<parameter>:<statistic>``
with a ``..._qualifiers`` column beside it::

    datetimeUTC,USGS:01589330:00060:00000_qualifiers,USGS:01589330:00060:00000,...
    2018-06-01 04:00:00+00:00,A,23.9,A,0.93

Units come from the source itself: the USGS parameter code fixes them (00060 and 00061
discharge in ft3/s, 00065 gage height in ft); columns of other parameters are ignored.
Gage height becomes ``stage`` in m (x 0.3048 exactly) and discharge ``discharge`` in
m3 s-1 (x 0.028316846592 = 0.3048**3 exactly). Qualifiers other than ``A`` (approved)
and ``P`` (provisional) flag the value (``QC_QUALIFIER``): ``e`` estimated, ``Ice``,
``Eqp``, and hydrofunctions' own ``hf.missing`` / ``hf.upsampled`` (values it filled in by
interpolation). An empty value is a missing reading; anything else that is not a number,
a line with the wrong number of fields or a time that cannot be read is a corrupt file,
reported with its line number.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import xarray as xr

from ..errors import IngestError
from .limits import DEFAULT_LIMITS, Limits
from .readings import Series, read_text, readings_dataset

log = logging.getLogger(__name__)

FT_TO_M = 0.3048  # exact (international foot)
CFS_TO_M3S = 0.028316846592  # exact: 0.3048 ** 3
#: USGS parameter code -> (quantity, unit in the file, factor to SI)
PARAMETERS: dict[str, tuple[str, str, float]] = {
    "00060": ("discharge", "ft3/s", CFS_TO_M3S),
    "00061": ("discharge", "ft3/s", CFS_TO_M3S),
    "00065": ("stage", "ft", FT_TO_M),
}
_COLUMN = re.compile(r"^(?P<agency>[A-Za-z]+):(?P<site>[0-9A-Za-z]+):(?P<param>\d{5}):(?P<stat>\d{5})$")
_TIME_COLUMNS = ("datetimeUTC", "datetime", "dateTime")


class NwisCsvSource:
    """Stage and discharge from an NWIS instantaneous-values CSV (hydrofunctions' layout).

    Parameters
    ----------
    path : str or Path
        The CSV file.
    stations : mapping, site number -> gauge id, optional
        Names in the Dataset (default: the site number, e.g. ``01589330``).
    approved_qualifiers : sequence of str
        Qualifier codes that leave a value good (default ``A``, ``P``).
    spike_limit_m : float, m
        Single-reading stage spikes larger than this are flagged.
    stale_after_minutes : float
        Kept in the Dataset's attrs (the pipeline's staleness tolerance).
    units : str, optional
        Accepted for a uniform interface and ignored: the parameter codes fix the units.
    limits : Limits, optional
        Plausibility limits: stage steps faster than ``stage_max_rise_m_per_h`` are flagged
        ``QC_RATE`` (:func:`~warning.ingest.gauge_csv.rate_flags`).
    """

    kind = "nwis_csv"

    def __init__(self, path: str | Path, *, stations: Mapping[str, str] | None = None,
                 approved_qualifiers: Sequence[str] = ("A", "P"), spike_limit_m: float = 0.5,
                 stale_after_minutes: float = 90, units: str | None = None,
                 limits: Limits | None = None):
        self.path = Path(path)
        self.stations = dict(stations or {})
        self.approved = tuple(approved_qualifiers)
        self.spike_limit_m = spike_limit_m
        self.stale_after_minutes = stale_after_minutes
        self.units = units
        self.limits = limits or DEFAULT_LIMITS
        self._cache: tuple[tuple[int, int, Any], xr.Dataset] | None = None

    def read(self, valid_ranges: dict[str, tuple[float, float]] | None = None,
             now: datetime | None = None) -> xr.Dataset:
        """All readings in the file, QC-flagged, as Dataset(station, time).

        ``now`` is accepted for a uniform interface (a file holds what it holds)."""
        try:
            st = self.path.stat()
        except OSError as exc:
            raise IngestError(f"{self.path}: cannot open the NWIS CSV: {exc.strerror}") from None
        key = (st.st_mtime_ns, st.st_size, tuple(sorted((valid_ranges or {}).items())))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        ds = readings_dataset(self._parse(), units={"stage": "m", "discharge": "m3 s-1"},
                              source=str(self.path), kind=self.kind, valid_ranges=valid_ranges,
                              spike_limits={"stage": self.spike_limit_m}, approved=self.approved,
                              limits=self.limits,
                              attrs={"stale_after_minutes": self.stale_after_minutes,
                                     "units_source": "USGS parameter codes: 00060/00061 discharge "
                                                     "ft3/s, 00065 gage height ft"})
        self._cache = (key, ds)
        return ds

    def _parse(self) -> dict[tuple[str, str], Series]:
        lines = read_text(self.path, "an NWIS instantaneous-values CSV")
        rows = csv.reader(lines)
        header = next(rows)
        where = f"{self.path}:1"
        time_col = next((i for i, c in enumerate(header) if c.strip() in _TIME_COLUMNS), None)
        if time_col is None:
            raise IngestError(f"{where}: no time column ({' or '.join(_TIME_COLUMNS)}); the header "
                              f"has {', '.join(header[:6]) or 'nothing'}")
        utc_named = header[time_col].strip().endswith("UTC")
        columns: dict[int, tuple[str, str, float, int | None]] = {}  # value col -> (station, qty, factor, qual col)
        names = {c.strip(): i for i, c in enumerate(header)}
        seen: set[tuple[str, str]] = set()
        for i, name in enumerate(header):
            m = _COLUMN.match(name.strip())
            if not m:
                continue
            param = PARAMETERS.get(m["param"])
            if param is None:
                log.info("%s: column %s (parameter %s) ignored", self.path, name, m["param"])
                continue
            qty, _unit, factor = param
            station = self.stations.get(m["site"], m["site"])
            if (station, qty) in seen:
                log.warning("%s: a second %s column for site %s (%s) ignored", self.path, qty,
                            m["site"], name)
                continue
            seen.add((station, qty))
            columns[i] = (station, qty, factor, names.get(f"{name.strip()}_qualifiers"))
        if not columns:
            raise IngestError(f"{where}: no USGS value column (USGS:<site>:00060|00061|00065:<stat>); "
                              f"the header has {', '.join(header[:6])}")
        series: dict[tuple[str, str], Series] = {}
        for n, row in enumerate(rows, start=2):
            if not row or not any(cell.strip() for cell in row):
                continue
            here = f"{self.path}:{n}"
            if len(row) != len(header):
                raise IngestError(f"{here}: {len(row)} fields where the header has {len(header)}; "
                                  f"the line is cut short or corrupt")
            t = _parse_time(row[time_col], here, utc_named)
            for i, (station, qty, factor, qcol) in columns.items():
                text = row[i].strip()
                if text == "" or text.lower() == "nan":
                    v = float("nan")
                else:
                    try:
                        v = float(text) * factor
                    except ValueError:
                        raise IngestError(f"{here}: column {header[i]}: value {text!r} is not a "
                                          f"number") from None
                q = row[qcol].strip() if qcol is not None else None
                series.setdefault((station, qty), Series()).add(t, v, q)
        if not series:
            raise IngestError(f"{self.path}: no readings after the header")
        return series


def _parse_time(text: str, where: str, utc_named: bool) -> datetime:
    raw = text.strip()
    try:
        t = datetime.fromisoformat(raw)
    except ValueError:
        raise IngestError(f"{where}: time {raw!r} is not ISO 8601 (e.g. 2018-06-01 04:00:00+00:00)") from None
    if t.tzinfo is None:
        if not utc_named:
            raise IngestError(f"{where}: time {raw!r} has no time zone and the column is not "
                              f"datetimeUTC; write e.g. 2018-06-01 04:00:00+00:00")
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC)
