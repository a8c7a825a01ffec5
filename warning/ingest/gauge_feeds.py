"""Gauge readings from public feeds: USGS IV, EA flood-monitoring and OGC SensorThings.

Each source reads its feed's JSON through a :class:`~warning.ingest.fetch.Fetcher` (a file,
the newest file in a folder, or an HTTP(S) URL) and returns the same ``xarray.Dataset``
``(station, time)`` as :class:`~warning.ingest.gauge_csv.GaugeCsvSource`: ``stage`` in
metres and ``qc`` flags (0 good), so the pipeline and
:func:`~warning.ingest.gauge_csv.latest_good` use any gauge source alike. Besides them:

* ``discharge`` (m3 s-1) and ``discharge_qc`` when the feed has flow;
* ``stage_qualifiers`` / ``discharge_qualifiers``: the feed's own codes (USGS ``A``, ``P``, ``e``);
* ``station_qc`` (station): :data:`QC_STALE` when the latest good stage is older than
  ``stale_after_minutes`` at read time, and ``last_good_time`` (station);
* attrs ``source_file`` (URL or file), ``source_kind``, ``not_modified`` (1 when the feed
  answered 304 / the file is unchanged and the previous readings were reused),
  ``problems`` (sentences naming the feed and station: what the feed itself got wrong and
  what was dropped for it) and ``data_gaps`` (the state of the series at read time: stale
  gauges, gaps between good readings). The two lists are kept apart: ``problems`` depend
  on the document only, ``data_gaps`` on the clock too.

Besides the CSV source's checks (range, rate of change, spike, duplicate, missing,
flatline: :func:`~warning.ingest.gauge_csv.stage_flags`) readings are flagged
:data:`QC_OUT_OF_ORDER` (a time earlier than one the feed already gave; the series is
sorted). Flagged values are kept. Units are converted here, at the edge.

Bad content costs as little as it can: a value that is not a number is a missing reading,
a reading without a readable time is skipped, a series (USGS) or measure (EA) that is
broken or in a unit that does not fit its parameter is dropped, each with a problem, and
the rest of the feed is read. Only a document that cannot be read (not JSON, truncated,
no top-level ``value`` / ``items``) or one that yields no reading at all is refused
(:class:`~warning.errors.IngestError`).
"""

from __future__ import annotations

import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import xarray as xr

from ..errors import IngestError
from .fetch import Fetched, Fetcher, is_url
from .gauge_csv import (
    FT,
    LENGTH_UNITS,
    QC_DTYPE,
    QC_DUPLICATE,
    QC_FLATLINE,
    QC_GOOD,
    QC_MISSING,
    QC_NAMES,
    FlatlineRule,
    ProblemList,
    flatline_flags,
    length_unit,
    parse_time,
    stage_flags,
)
from .limits import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)

QC_OUT_OF_ORDER = 32  # the feed gave this time after a later one
QC_STALE = 64  # station_qc: the latest good stage is older than the stale tolerance
FEED_QC_NAMES = dict(sorted({**QC_NAMES, QC_OUT_OF_ORDER: "out_of_order"}.items()))

STAGE_UNITS = LENGTH_UNITS  # -> m (one table for every gauge source)
FLOW_UNITS = {"m3/s": 1.0, "l/s": 1e-3, "cfs": FT ** 3, "ft3/s": FT ** 3}  # -> m3 s-1
_FLOW_ALIASES = {"m3 s-1": "m3/s", "m^3/s": "m3/s", "cumecs": "m3/s", "l s-1": "l/s",
                 "ft^3/s": "ft3/s", "ft3 s-1": "ft3/s"}

__all__ = [
    "FEED_QC_NAMES",
    "FLOW_UNITS",
    "QC_FLATLINE",
    "QC_OUT_OF_ORDER",
    "QC_STALE",
    "STAGE_UNITS",
    "EaFloodMonitoringSource",
    "SensorThingsSource",
    "UsgsIvSource",
    "flow_unit",
]


def flow_unit(text: str | None) -> str | None:
    """The canonical flow unit (a key of :data:`FLOW_UNITS`) for ``text``, or None."""
    if text is None:
        return None
    key = str(text).strip()
    key = _FLOW_ALIASES.get(key.lower(), key.lower())
    return key if key in FLOW_UNITS else None


def _factor(units: str, table: Mapping[str, float], what: str, where: str) -> float:
    try:
        return table[units]
    except KeyError:
        raise IngestError(f"{where}: unknown {what} unit {units!r}; valid units: "
                          f"{', '.join(table)}") from None


@dataclass
class _Reading:
    time: datetime  # UTC
    value: float  # SI units, nan when missing
    qualifiers: str = ""


# (station, "stage" | "discharge") -> readings in the order the feed gave them
_Series = dict[tuple[str, str], list[_Reading]]


def _key(obj: Any, key: str | int, where: str) -> Any:
    """``obj[key]``, or an IngestError naming the path of the missing key."""
    try:
        return obj[key]
    except (KeyError, IndexError, TypeError):
        raise IngestError(f"{where}: missing {key!r}") from None


def _number(raw: Any) -> float | None:
    """A reading's value: a float, nan for an empty one, None when it is not a number."""
    if raw is None or raw == "":
        return math.nan
    if isinstance(raw, list):  # EA occasionally sends [v, v] for a duplicated reading
        return _number(raw[0]) if raw else math.nan
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        return None
    try:
        v = float(raw)
    except ValueError:
        return None
    return v if not math.isinf(v) else None


def _short(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 40 else text[:37] + "..."


class _FeedSource(ABC):
    """What the three feeds share: fetching, conditional reuse, QC and the Dataset."""

    kind = "feed"
    #: the order the feed promises (out-of-order readings are flagged against it)
    descending = False

    def __init__(self, location: str | Path, *, stale_after_minutes: float = 90,
                 spike_limit_m: float = 0.5, flatline_readings: int | None = None,
                 flatline_minutes: float | None = 360.0, flatline_tolerance_m: float = 0.0,
                 max_gap_minutes: float | None = None, clock: Callable[[], datetime] | None = None,
                 fetcher: Fetcher | None = None, limits: Limits | None = None,
                 **fetch_settings: Any):
        self.fetcher = fetcher or Fetcher(location, **fetch_settings)
        self.stale_after_minutes = stale_after_minutes
        self.spike_limit_m = spike_limit_m
        self.flatline_readings = flatline_readings
        self.flatline_minutes = flatline_minutes
        self.flatline_tolerance_m = flatline_tolerance_m
        self.max_gap_minutes = max_gap_minutes if max_gap_minutes is not None else stale_after_minutes
        self.clock = clock or (lambda: datetime.now(UTC))
        self.limits = limits or DEFAULT_LIMITS
        self.not_modified = False
        self.data_gaps: list[str] = []
        self.problems: list[str] = []
        self._last: tuple[_Series, str, list[str]] | None = None

    # -------------------------------------------------------------- to override
    def _request(self, now: datetime) -> tuple[str | None, dict[str, str] | None]:
        return None, None

    @abstractmethod
    def _parse(self, doc: Any, where: str, series: _Series, problems: ProblemList) -> str | None:
        """Add the page's readings to ``series`` and what is wrong with them to ``problems``;
        return the next page's URL, if any. Raise IngestError only when the page as a whole
        cannot be read."""
        ...

    # ---------------------------------------------------------------- reading
    def read(self, valid_ranges: dict[str, tuple[float, float]] | None = None,
             now: datetime | None = None) -> xr.Dataset:
        """The feed's readings, QC-flagged, as Dataset(station, time).

        Parameters
        ----------
        valid_ranges : dict, station -> (low, high) in m, optional
            Stage outside the range is flagged ``QC_RANGE``.
        now : datetime, optional
            The clock for staleness (default: the source's ``clock``, the wall clock).
        """
        now = (now or self.clock()).astimezone(UTC)
        url, params = self._request(now)
        first = self.fetcher.fetch(url, params)
        if first.not_modified and self._last is not None:
            series, origin, problems = self._last
            self.not_modified = True
            log.info("%s: not modified; reusing the previous readings", origin)
        else:
            series, problems = self._parse_pages(first)
            origin = first.origin
            self._last = (series, origin, problems)
            self.not_modified = False
            for line in problems:
                log.warning("%s", line)
        self.problems = list(problems)
        return self._dataset(series, origin, valid_ranges or {}, now, problems)

    def _parse_pages(self, first: Fetched, max_pages: int = 1000) -> tuple[_Series, list[str]]:
        series: _Series = {}
        problems = ProblemList()
        page: Fetched | None = first
        seen: set[str] = set()
        while page is not None:
            where = f"{self.kind} feed {page.origin}"
            doc = self._decode(page.content, where)
            nxt = self._parse(doc, where, series, problems)
            page = None
            if nxt:
                if nxt in seen or len(seen) >= max_pages:
                    raise IngestError(f"{where}: next-page links loop or exceed {max_pages} pages")
                seen.add(nxt)
                if not is_url(nxt):
                    raise IngestError(f"{where}: next-page link {nxt!r} is not an http(s) URL")
                page = self.fetcher.fetch(nxt)
        if not any(series.values()):
            where = f"{self.kind} feed {first.origin}"
            lines = [line.removeprefix(f"{where}: ") for line in problems.lines()]
            raise IngestError(f"{where}: no usable readings" + (f": {'; '.join(lines[:3])}" if lines else ""))
        return series, problems.lines()

    @staticmethod
    def _decode(content: bytes, where: str) -> Any:
        try:
            return json.loads(content)
        except UnicodeDecodeError:
            raise IngestError(f"{where}: body is not UTF-8 JSON") from None
        except json.JSONDecodeError as exc:
            cut = _ends_early(content.decode("utf-8", "replace"))
            what = "truncated JSON (the body ends early)" if cut else f"malformed JSON: {exc.msg}"
            raise IngestError(f"{where}: {what} at line {exc.lineno} column {exc.colno}") from None

    # ------------------------------------------------------- one reading's parts
    @staticmethod
    def _time(item: dict[str, Any], key: str, label: str, here: str, problems: ProblemList
              ) -> datetime | None:
        """The reading's time, or None (with a problem) when it has none or it cannot be read."""
        raw = item.get(key)
        if raw is None or raw == "":
            problems.add(f"{label}: {here}: missing {key!r}; that reading is skipped",
                         f"{label}: readings without a time")
            return None
        text = str(raw).split("/")[-1] if key == "phenomenonTime" else str(raw)
        try:
            return parse_time(text, f"{label}: {here}")
        except IngestError as exc:
            problems.add(f"{exc}; that reading is skipped", f"{label}: readings with a bad time")
            return None

    @staticmethod
    def _value(item: dict[str, Any], key: str, t: datetime, label: str, here: str,
               problems: ProblemList) -> float:
        """The reading's value, nan (with a problem) when it has none or it is not a number."""
        if key not in item:
            problems.add(f"{label}: {here}: missing {key!r} at {t:%Y-%m-%dT%H:%M}Z; that reading "
                         f"is flagged missing", f"{label}: readings without a value")
            return math.nan
        v = _number(item[key])
        if v is None:
            problems.add(f"{label}: value {_short(item[key])} at {t:%Y-%m-%dT%H:%M}Z is not a "
                         f"number; that reading is flagged missing",
                         f"{label}: values that are not numbers")
            return math.nan
        return v

    # -------------------------------------------------------------------- QC
    def _dataset(self, series: _Series, origin: str, valid_ranges: dict[str, tuple[float, float]],
                 now: datetime, problems: list[str]) -> xr.Dataset:
        stations = sorted({s for s, _ in series})
        times = sorted({r.time for rs in series.values() for r in rs})
        t_index = {t: i for i, t in enumerate(times)}
        np_times = np.array([np.datetime64(t.replace(tzinfo=None), "ns") for t in times],
                            dtype="datetime64[ns]")
        shape = (len(stations), len(times))
        flatline = FlatlineRule(self.flatline_readings, self.flatline_minutes,
                                self.flatline_tolerance_m)
        out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for var in ("stage", "discharge"):
            if var == "discharge" and not any(v == var for _, v in series):
                continue
            values = np.full(shape, np.nan)
            qc = np.full(shape, QC_MISSING, dtype=QC_DTYPE)
            quals = np.full(shape, "", dtype=object)
            seen = np.zeros(shape, dtype=bool)
            for s, name in enumerate(stations):
                readings = series.get((name, var), [])
                for r, late in zip(readings, self._out_of_order([r.time for r in readings]),
                                   strict=True):
                    i = t_index[r.time]
                    if seen[s, i]:  # a second reading for this time: flag it when it differs
                        if not (r.value == values[s, i] or (np.isnan(r.value) and np.isnan(values[s, i]))):
                            qc[s, i] |= QC_DUPLICATE
                        continue
                    seen[s, i] = True
                    values[s, i] = r.value
                    quals[s, i] = r.qualifiers
                    qc[s, i] = QC_MISSING if np.isnan(r.value) else QC_GOOD
                    if late:
                        qc[s, i] |= QC_OUT_OF_ORDER
                if var == "stage":
                    qc[s] = stage_flags(values[s], qc[s], np_times, valid_range=valid_ranges.get(name),
                                        limits=self.limits, spike_limit_m=self.spike_limit_m,
                                        flatline=flatline)
                else:
                    qc[s] |= flatline_flags(values[s], qc[s], np_times, flatline)
            out[var] = (values, qc, quals)

        stage, qc, quals = out["stage"]
        flags = {"flag_masks": list(FEED_QC_NAMES), "flag_meanings": " ".join(FEED_QC_NAMES.values())}
        data: dict[str, Any] = {
            "stage": (("station", "time"), stage, {"units": "m"}),
            "qc": (("station", "time"), qc, flags),
            "stage_qualifiers": (("station", "time"), quals.astype(str)),
        }
        if "discharge" in out:
            q, qqc, qquals = out["discharge"]
            data["discharge"] = (("station", "time"), q, {"units": "m3 s-1"})
            data["discharge_qc"] = (("station", "time"), qqc, flags)
            data["discharge_qualifiers"] = (("station", "time"), qquals.astype(str))

        limit = np.datetime64(now.replace(tzinfo=None), "ns")
        last_good = np.full(len(stations), np.datetime64("NaT", "ns"))
        station_qc = np.zeros(len(stations), dtype=QC_DTYPE)
        gaps: list[str] = []
        for s, name in enumerate(stations):
            ok = np.flatnonzero((qc[s] == QC_GOOD) & (np_times <= limit))
            if ok.size == 0:
                station_qc[s] = QC_STALE | QC_MISSING
                gaps.append(f"gauge {name}: no good stage reading up to {now:%Y-%m-%d %H:%M}Z")
                continue
            last_good[s] = np_times[ok[-1]]
            age = float((limit - np_times[ok[-1]]) / np.timedelta64(1, "m"))
            if age > self.stale_after_minutes:
                station_qc[s] = QC_STALE
                gaps.append(f"gauge {name} is stale: last good reading "
                            f"{np.datetime_as_string(np_times[ok[-1]], unit='m')}Z is {age:.0f} min "
                            f"old at {now:%Y-%m-%d %H:%M}Z (tolerance {self.stale_after_minutes:g} min)")
            steps = np.diff(np_times[ok]) / np.timedelta64(1, "m")
            for k in np.flatnonzero(steps > self.max_gap_minutes):
                gaps.append(f"gauge {name}: no good reading for {steps[k]:.0f} min between "
                            f"{np.datetime_as_string(np_times[ok[k]], unit='m')}Z and "
                            f"{np.datetime_as_string(np_times[ok[k + 1]], unit='m')}Z")
        data["station_qc"] = (("station",), station_qc,
                              {"flag_masks": [QC_MISSING, QC_STALE], "flag_meanings": "missing stale"})
        data["last_good_time"] = (("station",), last_good)
        self.data_gaps = gaps
        for g in gaps:
            log.warning("%s: %s", origin, g)
        return xr.Dataset(data, coords={"station": stations, "time": np_times},
                          attrs={"source_file": origin, "source_kind": self.kind,
                                 "not_modified": int(self.not_modified), "data_gaps": gaps,
                                 "problems": list(problems),
                                 "stale_after_minutes": self.stale_after_minutes})

    def _out_of_order(self, times: list[datetime]) -> list[bool]:
        """For each reading in feed order: does it come after one the feed said is later?"""
        late: list[bool] = []
        edge: datetime | None = None
        for t in times:
            if edge is None:
                late.append(False)
                edge = t
            elif self.descending:
                late.append(t > edge)
                edge = min(edge, t)
            else:
                late.append(t < edge)
                edge = max(edge, t)
        return late


def _ends_early(text: str) -> bool:
    """Does the JSON text stop inside a string or with brackets still open?"""
    depth, in_str, escaped = 0, False, False
    for ch in text:
        if in_str:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
    return in_str or depth > 0


def _location(path: str | Path | None, url: str | None, default_url: str | None, kind: str
              ) -> str | Path:
    if path is not None and url is not None:
        raise IngestError(f"{kind}: give either path or url, not both")
    if path is not None:
        return path if is_url(path) else Path(path)
    if url is not None or default_url is not None:
        return url or default_url  # type: ignore[return-value]
    raise IngestError(f"{kind}: needs a path (file or folder) or a url")


# ===================================================================== USGS IV
class UsgsIvSource(_FeedSource):
    """USGS Water Services instantaneous values (``/nwis/iv/?format=json``).

    Parameter 00065 (gage height) becomes ``stage`` in m, 00060 (discharge) ``discharge``
    in m3 s-1; time stamps with their UTC offsets become UTC; the series' ``noDataValue``
    (-999999) is missing; the value qualifiers are kept.

    Units: each series' ``variable.unit.unitCode`` is checked against its parameter: 00065
    must be a length (``ft``, ``m``, ``cm``, ...), 00060 a flow (``ft3/s``, ``cfs``,
    ``m3/s``, ...). A series without a unitCode is read in the unit the USGS parameter code
    defines (00065 "Gage height, feet": ft; 00060 "Discharge, cubic feet per second":
    ft3/s), with a problem saying so. A unitCode that contradicts its parameter, or that is
    unknown, drops that series with a problem; the rest of the feed is read.

    Parameters
    ----------
    sites : sequence of str
        USGS site numbers to request (HTTP only; a file holds what it holds).
    url : str, optional
        The IV service, default ``https://waterservices.usgs.gov/nwis/iv/``; the query
        (``format=json&sites=...&parameterCd=00065,00060&period=PT{lookback_hours}H``) is added.
    path : str or Path, optional
        A saved response, or a folder of them (the newest ``pattern`` file is read).
    stations : mapping, site number -> gauge id, optional
        Names in the Dataset (default: the site number).
    lookback_hours : float, h
        Period requested from the service.
    units : str, optional
        Accepted for a uniform interface and ignored: the parameter code fixes the unit a
        series without a unitCode is in (never the site config's ``units``).
    stale_after_minutes, spike_limit_m, flatline_readings, flatline_minutes,
    flatline_tolerance_m, max_gap_minutes, clock, fetcher, limits
        QC settings (minutes, m), the clock and the plausibility limits, as for every feed.
    **fetch_settings
        Passed to :class:`Fetcher` (``timeout_s``, ``tries``, ``backoff_s``, ``sleep``, ...).
    """

    kind = "usgs_iv"
    DEFAULT_URL = "https://waterservices.usgs.gov/nwis/iv/"
    PARAMETERS: ClassVar[dict[str, str]] = {"00065": "stage", "00060": "discharge"}
    #: the unit the USGS parameter code dictionary defines, and its name there
    PARAMETER_UNITS: ClassVar[dict[str, tuple[str, str]]] = {
        "00065": ("ft", "Gage height, feet"),
        "00060": ("ft3/s", "Discharge, cubic feet per second"),
    }

    def __init__(self, sites: Sequence[str] = (), *, url: str | None = None,
                 path: str | Path | None = None, stations: Mapping[str, str] | None = None,
                 lookback_hours: float = 24.0, units: str | None = None, **settings: Any):
        self.sites = [str(s) for s in sites]
        if path is None and not self.sites:
            raise IngestError("usgs_iv: name the sites to request (e.g. sites=['01589330'])")
        self.units = units
        self.stations = dict(stations or {})
        self.lookback_hours = lookback_hours
        super().__init__(_location(path, url, self.DEFAULT_URL, self.kind), **settings)

    def _request(self, now: datetime) -> tuple[str | None, dict[str, str] | None]:
        if not self.fetcher.is_http:
            return None, None
        return None, {"format": "json", "sites": ",".join(self.sites),
                      "parameterCd": ",".join(self.PARAMETERS),
                      "period": f"PT{int(np.ceil(self.lookback_hours))}H"}

    def _parse(self, doc: Any, where: str, series: _Series, problems: ProblemList) -> str | None:
        all_ts = _key(_key(doc, "value", where), "timeSeries", f"{where}: value")
        if not isinstance(all_ts, list):
            raise IngestError(f"{where}: value.timeSeries is not a list")
        for n, ts in enumerate(all_ts):
            self._parse_series(ts, f"value.timeSeries[{n}]", where, series, problems)
        return None

    def _parse_series(self, ts: Any, at: str, where: str, series: _Series,
                      problems: ProblemList) -> None:
        """One timeSeries: its readings into ``series``, or a problem when it is dropped."""
        try:
            site = str(_key(_key(_key(_key(ts, "sourceInfo", at), "siteCode", f"{at}.sourceInfo"),
                                 0, f"{at}.sourceInfo.siteCode"), "value",
                            f"{at}.sourceInfo.siteCode[0]"))
        except IngestError as exc:
            problems.add(f"{where}: {exc} (the station is unknown); that series is dropped",
                         f"{where}: series dropped")
            return
        gauge = self.stations.get(site, site)
        label = f"{where}: station {site}" + (f" (gauge {gauge})" if gauge != site else "")
        try:
            var = _key(ts, "variable", at)
            code = str(_key(_key(_key(var, "variableCode", f"{at}.variable"), 0,
                                 f"{at}.variable.variableCode"), "value",
                            f"{at}.variable.variableCode[0]"))
        except IngestError as exc:
            problems.add(f"{label}: {exc}; that series is dropped", f"{where}: series dropped")
            return
        what = self.PARAMETERS.get(code)
        if what is None:
            return
        readings = series.setdefault((gauge, what), [])
        factor = self._factor_of(var, code, what, label, problems)
        if factor is None:
            return
        blocks = ts.get("values")
        if not isinstance(blocks, list):
            problems.add(f"{label}: parameter {code} has no values block; the station has no "
                         f"{what} readings")
            return
        filled = [(b, blk) for b, blk in enumerate(blocks)
                  if isinstance(blk, dict) and isinstance(blk.get("value"), list) and blk["value"]]
        if not filled:
            problems.add(f"{label}: parameter {code} has no values; the station has no {what} "
                         f"readings")
            return
        if len(filled) > 1:
            log.warning("%s: %d methods for parameter %s; using the first", label, len(filled), code)
        b, block = filled[0]
        nodata = var.get("noDataValue", -999999.0)
        for k, item in enumerate(block["value"]):
            here = f"{at}.values[{b}].value[{k}]"
            if not isinstance(item, dict):
                problems.add(f"{label}: {here}: {_short(item)} is not a reading; skipped",
                             f"{label}: readings skipped")
                continue
            t = self._time(item, "dateTime", label, here, problems)
            if t is None:
                continue
            v = self._value(item, "value", t, label, here, problems)
            if nodata is not None and v == _number(nodata):
                v = math.nan
            quals = item.get("qualifiers") or []
            quals = quals if isinstance(quals, list) else [quals]
            readings.append(_Reading(t, v * factor, ",".join(map(str, quals))))

    def _factor_of(self, var: dict[str, Any], code: str, what: str, label: str,
                   problems: ProblemList) -> float | None:
        """The factor to SI for the series' unitCode, or None (with a problem) to drop it."""
        unit = var.get("unit")
        declared = unit.get("unitCode") if isinstance(unit, dict) else None
        defined, name = self.PARAMETER_UNITS[code]
        if declared is None or str(declared).strip() == "":
            problems.add(f"{label}: parameter {code} declares no unit; read in {defined}, the unit "
                         f"USGS defines for it ({name})")
            declared = defined
        text = str(declared)
        own, other = (length_unit, flow_unit) if what == "stage" else (flow_unit, length_unit)
        found = own(text)
        if found is not None:
            return (STAGE_UNITS if what == "stage" else FLOW_UNITS)[found]
        if other(text) is not None:
            kind = "a flow" if what == "stage" else "a length"
            problems.add(f"{label}: parameter {code} ({name}) has unit {text!r}, {kind}; the "
                         f"unit contradicts the parameter, so that series is dropped")
        else:
            table = STAGE_UNITS if what == "stage" else FLOW_UNITS
            problems.add(f"{label}: unknown parameter {code} unit {text!r}; valid units: "
                         f"{', '.join(table)}; that series is dropped")
        return None


# ======================================================= EA flood monitoring
class EaFloodMonitoringSource(_FeedSource):
    """UK Environment Agency flood-monitoring readings of one station.

    ``GET {url}/id/stations/{station}/readings?_sorted&since=...`` gives ``items[]`` with
    ``dateTime`` (UTC, ``Z``), ``value`` and the ``measure`` URL, whose last part names the
    parameter and unit (``...-level-stage-i-15_min-mASD``, ``...-flow--i-15_min-m3_s``).
    Level (m, mASD, mAOD, mBDAT) becomes ``stage`` in m, flow (m3_s, l_s) ``discharge``
    in m3 s-1; other measures are ignored. A level or flow measure in another unit is
    dropped with a problem, the rest read. ``_sorted`` means newest first. The data are
    "Environment Agency flood and river level data from the real-time data API (Beta)".

    Parameters
    ----------
    station : str
        EA station reference, e.g. ``1491TH``.
    url : str, optional
        API root, default ``https://environment.data.gov.uk/flood-monitoring``.
    path : str or Path, optional
        A saved readings response, or a folder of them.
    gauge_id : str, optional
        Name in the Dataset (default: the station reference).
    level_qualifier : str
        Which level measure is the stage (``stage``; ``downstage`` for the downstream one).
    lookback_hours : float, h
        ``since`` is this long before the read time, rounded down to the hour so repeated
        polls reuse one URL (and its ETag).
    units : str, optional
        Accepted for a uniform interface; the measure's own unit is used.
    **settings
        QC, clock, limits and fetch settings as for :class:`UsgsIvSource`.
    """

    kind = "ea_flood_monitoring"
    descending = True
    DEFAULT_URL = "https://environment.data.gov.uk/flood-monitoring"
    LEVEL_UNITS: ClassVar[dict[str, float]] = {"m": 1.0, "mASD": 1.0, "mAOD": 1.0, "mBDAT": 1.0}
    FLOW_UNITS: ClassVar[dict[str, float]] = {"m3_s": 1.0, "l_s": 1e-3}

    def __init__(self, station: str, *, url: str | None = None, path: str | Path | None = None,
                 gauge_id: str | None = None, level_qualifier: str = "stage",
                 lookback_hours: float = 24.0, units: str | None = None, **settings: Any):
        self.station = station
        self.gauge_id = gauge_id or station
        self.level_qualifier = level_qualifier
        self.lookback_hours = lookback_hours
        self.units = units
        self.datums: set[str] = set()
        loc = _location(path, url, self.DEFAULT_URL, self.kind)
        if isinstance(loc, str):
            loc = f"{loc.rstrip('/')}/id/stations/{station}/readings"
        super().__init__(loc, **settings)

    def _request(self, now: datetime) -> tuple[str | None, dict[str, str] | None]:
        if not self.fetcher.is_http:
            return None, None
        since = (now - timedelta(hours=self.lookback_hours)).replace(minute=0, second=0, microsecond=0)
        return None, {"_sorted": "", "since": since.strftime("%Y-%m-%dT%H:%M:%SZ")}

    def _parse(self, doc: Any, where: str, series: _Series, problems: ProblemList) -> str | None:
        items = _key(doc, "items", where)
        if not isinstance(items, list):
            raise IngestError(f"{where}: items is not a list")
        label = f"{where}: station {self.station}"
        for k, item in enumerate(items):
            here = f"items[{k}]"
            if not isinstance(item, dict):
                problems.add(f"{label}: {here}: {_short(item)} is not a reading; skipped",
                             f"{label}: readings skipped")
                continue
            measure = item.get("measure")
            if isinstance(measure, dict):
                measure = measure.get("@id")
            if not measure:
                problems.add(f"{label}: {here}: missing 'measure'; that reading is skipped",
                             f"{label}: readings skipped")
                continue
            parts = str(measure).rstrip("/").rsplit("/", 1)[-1].split("-")
            if len(parts) < 6:
                problems.add(f"{label}: {here}: measure {measure!r} is not <station>-<parameter>-"
                             f"<qualifier>-<type>-<interval>-<unit>; its readings are dropped",
                             once=True)
                continue
            param, qualifier, unit = parts[-5], parts[-4], parts[-1]
            if param == "level" and qualifier == self.level_qualifier:
                what, table = "stage", self.LEVEL_UNITS
            elif param == "flow":
                what, table = "discharge", self.FLOW_UNITS
            else:
                continue
            if unit not in table:
                problems.add(f"{label}: measure {measure}: unknown {param} unit {unit!r}; valid "
                             f"units: {', '.join(table)}; its readings are dropped", once=True)
                continue
            if what == "stage":
                self.datums.add(unit)
            t = self._time(item, "dateTime", label, here, problems)
            if t is None:
                continue
            v = self._value(item, "value", t, label, here, problems)
            series.setdefault((self.gauge_id, what), []).append(_Reading(t, v * table[unit]))
        return None

    def read(self, valid_ranges: dict[str, tuple[float, float]] | None = None,
             now: datetime | None = None) -> xr.Dataset:
        ds = super().read(valid_ranges, now)
        if self.datums:
            ds["stage"].attrs["datum"] = ", ".join(sorted(self.datums))
        return ds


# ============================================================== SensorThings
class SensorThingsSource(_FeedSource):
    """One OGC SensorThings API v1.1 datastream of stage (or discharge).

    ``GET {url}/Datastreams({id})/Observations?$orderby=phenomenonTime&$top=N`` gives
    ``value[]`` with ``phenomenonTime`` (ISO 8601 with zone; an interval ``a/b`` counts at
    its end) and ``result``; ``@iot.nextLink`` pages are followed. An observation without
    a readable time is skipped, a result that is not a number is a missing reading (each
    with a problem).

    Parameters
    ----------
    datastream : int or str
        The datastream's ``@iot.id``.
    url : str, optional
        The service root, e.g. ``https://host/FROST-Server/v1.1``.
    path : str or Path, optional
        A saved Observations response, or a folder of them.
    units : str
        The datastream's unit (the observations do not carry one): ``m``, ``cm``, ``mm``,
        ``ft``, ``in`` for stage; ``m3/s``, ``l/s``, ``cfs``, ``ft3/s`` for discharge.
    quantity : {"stage", "discharge"}
        What the datastream measures.
    gauge_id : str, optional
        Name in the Dataset (default: the datastream id).
    top : int
        Page size asked for.
    **settings
        QC, clock, limits and fetch settings as for :class:`UsgsIvSource`.
    """

    kind = "sensorthings"

    def __init__(self, datastream: int | str, *, url: str | None = None,
                 path: str | Path | None = None, units: str = "m", quantity: str = "stage",
                 gauge_id: str | None = None, top: int = 1000, **settings: Any):
        if quantity not in ("stage", "discharge"):
            raise IngestError(f"{self.kind}: quantity {quantity!r} must be stage or discharge")
        table = STAGE_UNITS if quantity == "stage" else FLOW_UNITS
        canonical = (length_unit if quantity == "stage" else flow_unit)(units)
        self.factor = _factor(canonical or units, table, quantity, f"{self.kind} datastream {datastream}")
        self.units = units
        self.quantity = quantity
        self.datastream = datastream
        self.gauge_id = gauge_id or str(datastream)
        self.top = top
        loc = _location(path, url, None, self.kind)
        if isinstance(loc, str):
            ident = datastream if isinstance(datastream, int) or str(datastream).isdigit() \
                else f"'{datastream}'"
            loc = f"{loc.rstrip('/')}/Datastreams({ident})/Observations"
        super().__init__(loc, **settings)

    def _request(self, now: datetime) -> tuple[str | None, dict[str, str] | None]:
        if not self.fetcher.is_http:
            return None, None
        return None, {"$orderby": "phenomenonTime", "$top": str(self.top)}

    def _parse(self, doc: Any, where: str, series: _Series, problems: ProblemList) -> str | None:
        obs = _key(doc, "value", where)
        if not isinstance(obs, list):
            raise IngestError(f"{where}: value is not a list of observations")
        label = f"{where}: datastream {self.datastream}" + (
            f" (gauge {self.gauge_id})" if self.gauge_id != str(self.datastream) else "")
        readings = series.setdefault((self.gauge_id, self.quantity), [])
        for k, item in enumerate(obs):
            here = f"value[{k}]"
            if not isinstance(item, dict):
                problems.add(f"{label}: {here}: {_short(item)} is not an observation; skipped",
                             f"{label}: readings skipped")
                continue
            t = self._time(item, "phenomenonTime", label, here, problems)
            if t is None:
                continue
            v = self._value(item, "result", t, label, here, problems)
            readings.append(_Reading(t, v * self.factor))
        nxt = doc.get("@iot.nextLink") if isinstance(doc, dict) else None
        return str(nxt) if nxt else None
