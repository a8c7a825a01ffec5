"""A corpus of broken input files, and what floodwarn must do with each (issue 14, part 7).

Every bad input ends in exactly one of three ways, and each case says which:

* **error**: the command exits non-zero with a clear message naming the file (or zone)
  and the problem, and no Python traceback;
* **flagged**: the run completes, one of the run's ``problems`` (``runs.summary`` in the
  site's database) is a sentence about the defect, and the bad values are not used;
* **read**: the run completes and the value is read correctly.

Oracles are the files' own numbers: the rain rate written into each step (uniform over the
grid, so the site mean is the rate itself), unit definitions (1 in = 25.4 mm, 1 ft =
0.3048 m exactly), the stage written into each reading, and the DEM's own cell centres.

Sites: forecast files on the demo grid site (``config/demo.toml``; spin-up and horizon
cut to 6 h, forecasts folder holding the demo's 09:00Z and 12:00Z issues and the case's
15:00Z issue, cycle 2025-11-14T16:00Z); gauge files on the Dead Run gauge site
(``sites/deadrun/site.toml``, no terrain, cycle 2018-06-03T22:00Z) with synthetic
readings; config and zone files through ``floodwarn check-config``.

Usage::

    python tests/corpus/make_corpus.py OUT          # write the corpus into OUT/<case-id>/
    python tests/corpus/make_corpus.py OUT --run    # ... and run every case through the CLI,
                                                    # printing a Markdown table of outcomes

``tests/warning/test_corpus.py`` runs the same cases in the test suite.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import random
import re
import shutil
import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make `warning` and `tests` importable
    sys.path.insert(0, str(REPO))

import numpy as np

from tests.conftest import SHARED, demo_config_text

# ------------------------------------------------------------------------------ constants
DEMO = REPO / "sample_data" / "demo"
DEMO_FORECASTS = DEMO / "forecasts"
AT = "2025-11-14T16:00Z"                        # the demo grid site's cycle
ISSUED = datetime(2025, 11, 14, 15, tzinfo=UTC)  # the issue the cycle uses
CASE_NC = "rain_20251114T1500Z.nc"               # the case's forecast file (that issue)
PREVIOUS_NC = "rain_20251114T1200Z.nc"           # the issue before it: the fallback
EARLIER = ("rain_20251114T0900Z.nc", PREVIOUS_NC)
STEPS = 36                                       # hourly steps in a forecast file
SPINUP_H = HORIZON_H = 6                         # the corpus's grid runs: short and fast

DEADRUN = REPO / "sites" / "deadrun"
DEADRUN_AT = "2018-06-03T22:00Z"
DEADRUN_T = datetime(2018, 6, 3, 22, tzinfo=UTC)
GAUGE = "01589330"
ZONE = "DR-FRANKLINTOWN"
FT = 0.3048
IN = 25.4

EXPECTS = ("error", "flagged", "read")


# ------------------------------------------------------------------------------ cases
@dataclass
class Outcome:
    """What one command did: exit code, output (the case folder written as ``CASE``), an
    exception that escaped the CLI (``Type: message``), and the run's row (``status``,
    ``forecast_file``, ``summary``) when the command was ``run``."""

    exit_code: int
    output: str
    crash: str | None = None
    run: dict[str, Any] | None = None

    @property
    def problems(self) -> list[str]:
        return list((self.run or {}).get("summary", {}).get("problems") or [])


#: a check on an outcome: None when it holds, else what is wrong
Check = Callable[[Outcome], "str | None"]


@dataclass
class Case:
    """One bad input and what must become of it.

    ``check`` proves the outcome: for ``error`` a regex the output must match (naming the
    file or zone and the reason); for ``flagged`` a regex one of the run's problems must
    match; for ``read`` a ``(metric, zone, expected value)`` the run summary must show, or
    a callable on the ``Outcome``. ``also`` is a further callable (e.g. the bad file was
    not used). ``grid``: the case runs on the demo grid site and needs its terrain cache.
    """

    id: str
    what: str
    command: list[str]
    expect: str
    check: str | tuple[str, str, float] | Check
    folder: Path
    also: Check | None = None
    env: dict[str, str] = field(default_factory=dict)
    grid: bool = False
    skip: str | None = None

    def __post_init__(self) -> None:
        assert self.expect in EXPECTS, self.expect

    @property
    def run_id(self) -> str | None:
        """The run id (``<%Y%m%dT%H%MZ>-live``) of a ``run`` command, else None."""
        if self.command[0] != "run":
            return None
        at = datetime.fromisoformat(self.command[self.command.index("--at") + 1])
        return f"{at:%Y%m%dT%H%MZ}-live"


_MAKERS: dict[str, Callable[[Path], Case]] = {}


def _case(fn: Callable[[Path], Case]) -> Callable[[Path], Case]:
    """Register a case maker; its name, with dashes, is the case id and its folder's name."""
    _MAKERS[fn.__name__.removeprefix("case_").replace("_", "-")] = fn
    return fn


def case_ids() -> list[str]:
    return list(_MAKERS)


def _all(*patterns: str) -> str:
    """A regex matching text that contains every pattern, in any order."""
    scoped = [f"(?i:{p[4:]})" if p.startswith("(?i)") else p for p in patterns]  # (?i) only at the start
    return "(?s)" + "".join(f"(?=.*(?:{p}))" for p in scoped)


# ------------------------------------------------------------------------------ configs
def _table(text: str, name: str, body: str | None) -> str:
    """``text`` with the TOML table ``[name]`` (up to the next table) replaced by ``body``
    (or removed when body is None)."""
    pat = re.compile(rf"^\[{re.escape(name)}\]\n.*?(?=^\[)", re.DOTALL | re.MULTILINE)
    assert pat.search(text), name
    return pat.sub("" if body is None else body.strip() + "\n\n", text, count=1)


def _output_dir(text: str, folder: Path) -> str:
    return re.sub(r'^output_dir = "[^"]*"', f'output_dir = "{folder / "out"}"', text, count=1, flags=re.MULTILINE)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def grid_config(d: Path, forecast: str | None = None, units: str | None = "mm/h") -> Path:
    """The demo config in ``d`` with outputs in ``d/out``, 6 h spin-up and horizon, and the
    rain from ``d/forecasts`` (or the ``[sources.forecast]`` table ``forecast``)."""
    if forecast is None:
        forecast = f'''
[sources.forecast]
kind = "netcdf"
path = "{d / "forecasts"}"
pattern = "rain_*.nc"
variable = "precipitation_rate"
''' + (f'units = "{units}"\n' if units is not None else "")
    text = _table(demo_config_text(), "sources.forecast", forecast)
    text = re.sub(r"^spinup_hours = \d+", f"spinup_hours = {SPINUP_H}", text, flags=re.MULTILINE)
    text = re.sub(r"^horizon_hours = \d+", f"horizon_hours = {HORIZON_H}", text, flags=re.MULTILINE)
    return _write(d / "site.toml", _output_dir(text, d))


def deadrun_config(d: Path, gauges: str) -> Path:
    """The Dead Run gauge site in ``d`` with ``gauges`` as its ``[sources.gauges]`` table."""
    text = (DEADRUN / "site.toml").read_text()
    text = text.replace('zones = "zones.geojson"', f'zones = "{DEADRUN / "zones.geojson"}"')
    text = _table(text, "sources.gauges", gauges)
    return _write(d / "site.toml", _output_dir(text, d))


def _run(cfg: Path, at: str = AT) -> list[str]:
    return ["run", "--config", str(cfg), "--at", at]


# ------------------------------------------------------------------------------ rain files
def rate(k: int) -> float:
    """The corpus's rain rate in step k (15:00Z + k h), mm/h: 0.2 to 2.2, neighbours unalike."""
    return round(0.2 * (1 + (7 * k) % 11), 1)


def step_time(k: int) -> datetime:
    return ISSUED + timedelta(hours=k)


RATES = {step_time(k): rate(k) for k in range(STEPS)}


@functools.cache
def _demo_axes() -> tuple[np.ndarray, np.ndarray]:
    """lat (descending) and lon of the demo's forecast grid (0.01 degree)."""
    import xarray as xr

    with xr.open_dataset(DEMO_FORECASTS / CASE_NC, engine="h5netcdf") as ds:
        return ds["lat"].values.copy(), ds["lon"].values.copy()


def uniform(values: list[float], shape: tuple[int, int] | None = None) -> np.ndarray:
    """(time, lat, lon) float32, each step one value everywhere."""
    if shape is None:
        lat, lon = _demo_axes()
        shape = (lat.size, lon.size)
    return np.asarray(values, dtype=np.float32)[:, None, None] * np.ones(shape, dtype=np.float32)


def _ns(t: datetime) -> np.datetime64:
    return np.datetime64(t.replace(tzinfo=None), "ns")


def write_rain(path: Path, data: np.ndarray, times: list[datetime], *, units: str | None = "mm h-1",
               lat: np.ndarray | None = None, lon: np.ndarray | None = None,
               bounds: list[tuple[datetime, datetime]] | None = None, variable: str = "precipitation_rate",
               encoding: dict[str, Any] | None = None) -> Path:
    """A CF-1.8 rain forecast like the demo's (issued 15:00Z, lat/lon 0.01 degree)."""
    import xarray as xr

    lat0, lon0 = _demo_axes()
    lat = lat0 if lat is None else lat
    lon = lon0 if lon is None else lon
    attrs = {"standard_name": "lwe_precipitation_rate", "long_name": "rainfall rate, mean over the interval",
             "grid_mapping": "crs", "cell_methods": "time: mean"}
    if units is not None:
        attrs["units"] = units
    ds = xr.Dataset(
        {variable: (("time", "lat", "lon"), np.asarray(data, dtype=np.float32), attrs),
         "crs": ((), np.int32(0), {"grid_mapping_name": "latitude_longitude", "epsg_code": "EPSG:4326"}),
         "forecast_reference_time": ((), _ns(ISSUED), {"standard_name": "forecast_reference_time"})},
        coords={"time": ("time", np.array([_ns(t) for t in times]), {"standard_name": "time", "axis": "T"}),
                "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("lon", lon, {"standard_name": "longitude", "units": "degrees_east"})},
        attrs={"Conventions": "CF-1.8", "title": "floodwarn corpus rain forecast"})
    since = "hours since 2025-11-14"
    enc: dict[str, Any] = {"time": {"units": since, "calendar": "standard", "dtype": "float64"},
                           "forecast_reference_time": {"units": since, "dtype": "float64"}}
    if bounds is not None:
        ds["time"].attrs["bounds"] = "time_bnds"
        ds["time_bnds"] = (("time", "nv"), np.array([[_ns(a), _ns(b)] for a, b in bounds]))
        enc["time_bnds"] = {"units": since, "calendar": "standard", "dtype": "float64"}
    enc.update(encoding or {})
    ds.to_netcdf(path, engine="h5netcdf", encoding=enc)
    return path


def forecasts(d: Path, earlier: bool = True) -> Path:
    """``d/forecasts`` holding the demo's 09:00Z and 12:00Z issues (the case adds 15:00Z)."""
    folder = d / "forecasts"
    folder.mkdir()
    for name in EARLIER if earlier else ():
        shutil.copy(DEMO_FORECASTS / name, folder / name)
    return folder


def _steps() -> list[datetime]:
    return [step_time(k) for k in range(STEPS)]


def control_rain(path: Path, **kw: Any) -> Path:
    return write_rain(path, uniform([rate(k) for k in range(STEPS)]), _steps(), **kw)


# ------------------------------------------------------------------------------ rain checks
def site_rain(summary: dict[str, Any]) -> dict[datetime, float]:
    r = summary.get("rain") or {}
    return {datetime.fromisoformat(t): v for t, v in zip(r.get("times", []), r.get("site_mean_mm_h", []))}


def rain_is(expected: dict[datetime, float], file: str = CASE_NC) -> Check:
    """The cycle used ``file`` and its site-mean rain is ``expected`` at the times it shows
    (to 0.002 mm/h + 0.1 %: the summary rounds to 0.001 and sums 65 536 cells in float32)."""
    def check(o: Outcome) -> str | None:
        if o.run is None:
            return "no run row"
        if o.run["forecast_file"] != file:
            return f"the cycle used {o.run['forecast_file']}, not {file}"
        got = site_rain(o.run["summary"])
        shown = [t for t in expected if t in got]
        if not shown:
            return "none of the expected times is in the run's rain"
        for t in shown:
            if got[t] is None or not abs(got[t] - expected[t]) <= 2e-3 + 1e-3 * abs(expected[t]):
                return f"rain at {t:%H:%M}Z is {got[t]} mm/h; the file says {expected[t]:g} mm/h"
        return None
    return check


def used(file: str) -> Check:
    """The cycle's forecast file is ``file`` (e.g. it fell back to the issue before)."""
    def check(o: Outcome) -> str | None:
        got = (o.run or {}).get("forecast_file")
        return None if got == file else f"the cycle used {got}, expected {file}"
    return check


def rain_clean(expected: dict[datetime, float]) -> Check:
    """No bad value reached the models: every site-mean rain is finite, and where the case's
    file was used, between 0 and the file's good value (bad cells excluded, not spread)."""
    def check(o: Outcome) -> str | None:
        if o.run is None:
            return "no run row"
        got = site_rain(o.run["summary"])
        bad = [t for t, v in got.items() if v is None or not math.isfinite(v)]
        if bad:
            return f"rain at {bad[0]:%H:%M}Z is {got[bad[0]]}"
        if o.run["forecast_file"] == CASE_NC:
            for t, v in expected.items():
                if t in got and not -1e-3 <= got[t] <= v + 2e-3:
                    return f"rain at {t:%H:%M}Z is {got[t]} mm/h: the bad cells were used (good value {v:g})"
        return None
    return check


# ------------------------------------------------------------------------------ gauge data
def readings(start: datetime, end: datetime = DEADRUN_T, step_min: int = 5) -> list[tuple[datetime, float]]:
    """Synthetic stage (m) every 5 min: a slow rise with a wobble, no two neighbours alike,
    far from every QC limit (spike 0.5 m, rate 5 m/h, range -1..20 m, flatline)."""
    out, t, k = [], start, 0
    while t <= end:
        out.append((t, round(0.4 + 0.0031 * k + 0.01 * ((7 * k) % 5), 4)))
        t += timedelta(minutes=step_min)
        k += 1
    return out


def stage_at(rows: list[tuple[datetime, float]], t: datetime) -> float:
    return dict(rows)[t]


def _z(t: datetime) -> str:
    return f"{t:%Y-%m-%dT%H:%M}Z"


def csv_lines(rows: list[tuple[datetime, float]], station: str = GAUGE) -> list[str]:
    """The demo's gauge CSV layout (station,time,stage_m), header first."""
    return ["station,time,stage_m"] + [f"{station},{_z(t)},{v}" for t, v in rows]


def gauge_csv_config(d: Path, extra: str = "") -> Path:
    return deadrun_config(d, f'''
[sources.gauges]
kind = "gauge_csv"
path = "{d / "gauges.csv"}"
stale_after_minutes = 30
{extra}''')


def stage_is(value: float, tol: float = 2e-4) -> Check:
    def check(o: Outcome) -> str | None:
        got = _metric(o, "observed_stage_m", ZONE)
        return None if got is not None and abs(got - value) <= tol else \
            f"observed_stage_m is {got}, expected {value:.4f} (the last good reading)"
    return check


def stage_not(*values: float) -> Check:
    def check(o: Outcome) -> str | None:
        got = _metric(o, "observed_stage_m", ZONE)
        return None if got is None or all(abs(got - v) > 1e-4 for v in values) else \
            f"observed_stage_m is {got}: a flagged reading was used"
    return check


def stage_missing(o: Outcome) -> str | None:
    got = _metric(o, "observed_stage_m", ZONE)
    return None if got is None else f"observed_stage_m is {got}: the refused readings were used"


def _metric(o: Outcome, metric: str, zone: str) -> float | None:
    return ((o.run or {}).get("summary", {}).get("metrics", {}).get(zone) or {}).get(metric)


def usgs_doc(rows: list[tuple[str, str, list[str]]], code: str = "00065",
             unit: dict[str, str] | None = None) -> dict[str, Any]:
    """A USGS NWIS IV JSON document with one timeSeries (rows: dateTime, value, qualifiers)."""
    return {"name": "ns1:timeSeriesResponseType", "value": {"queryInfo": {}, "timeSeries": [{
        "sourceInfo": {"siteName": "DEAD RUN AT FRANKLINTOWN, MD",
                       "siteCode": [{"value": GAUGE, "network": "NWIS", "agencyCode": "USGS"}]},
        "variable": {"variableCode": [{"value": code, "network": "NWIS", "default": True}],
                     "unit": {"unitCode": "ft"} if unit is None else unit, "noDataValue": -999999.0},
        "values": [{"value": [{"value": v, "qualifiers": q, "dateTime": t} for t, v, q in rows],
                    "qualifier": [{"qualifierCode": "P"}], "method": [{"methodID": 1}]}],
        "name": f"USGS:{GAUGE}:{code}:00000"}]}}


def usgs_config(d: Path) -> Path:
    return deadrun_config(d, f'''
[sources.gauges]
kind = "usgs_iv"
path = "{d / "iv.json"}"
stale_after_minutes = 30''')


def feet(rows: list[tuple[datetime, float]]) -> list[tuple[datetime, float]]:
    return [(t, round(v / FT, 4)) for t, v in rows]


# ------------------------------------------------------------------------------ forecast cases
def _nc_case(d: Path, what: str, expect: str, check: Any, also: Check | None = None,
             units: str | None = "mm/h") -> Case:
    return Case(d.name, what, _run(grid_config(d, units=units)), expect, check, d, also=also, grid=True)


def _named(*reason: str) -> str:
    return _all(re.escape(CASE_NC), *reason)


@_case
def case_nc_control(d: Path) -> Case:
    control_rain(forecasts(d) / CASE_NC)
    return _nc_case(d, "control: the corpus's own well-formed forecast (uniform rain per step)", "read",
                    rain_is(RATES))


@_case
def case_nc_time_descending(d: Path) -> Case:
    k = list(range(STEPS))[::-1]
    write_rain(forecasts(d) / CASE_NC, uniform([rate(i) for i in k]), [step_time(i) for i in k])
    return _nc_case(d, "time axis descending (newest step first)", "read", rain_is(RATES))


@_case
def case_nc_time_shuffled(d: Path) -> Case:
    k = list(range(STEPS))
    random.Random(14).shuffle(k)
    write_rain(forecasts(d) / CASE_NC, uniform([rate(i) for i in k]), [step_time(i) for i in k])
    return _nc_case(d, "time axis in no order, but sortable (no duplicates)", "read", rain_is(RATES))


@_case
def case_nc_time_all_equal(d: Path) -> Case:
    control_data = uniform([rate(k) for k in range(STEPS)])
    write_rain(forecasts(d) / CASE_NC, control_data, [ISSUED] * STEPS)
    return _nc_case(d, "every time step labelled 15:00Z", "flagged",
                    _named(r"(?i)time|duplicate|repeat|monoton|increasing"), also=used(PREVIOUS_NC))


@_case
def case_nc_time_duplicated(d: Path) -> Case:
    times = _steps()
    times[3] = times[2]
    write_rain(forecasts(d) / CASE_NC, uniform([rate(k) for k in range(STEPS)]), times)
    return _nc_case(d, "two steps share one time (17:00Z twice, 18:00Z missing) with different rain",
                    "flagged", _named(r"(?i)duplicate|repeat|twice|monoton|increasing|same time"),
                    also=used(PREVIOUS_NC))


@_case
def case_nc_time_bnds_end_labels(d: Path) -> Case:
    bounds = [(step_time(k), step_time(k + 1)) for k in range(STEPS)]
    write_rain(forecasts(d) / CASE_NC, uniform([rate(k) for k in range(STEPS)]), [b for _, b in bounds],
               bounds=bounds)
    return _nc_case(d, "CF time_bnds; time labels the interval END: rain belongs at the interval start",
                    "read", rain_is(RATES))


@_case
def case_nc_units_in_per_h(d: Path) -> Case:
    write_rain(forecasts(d) / CASE_NC, uniform([rate(k) / IN for k in range(STEPS)]), _steps(), units="in/h")
    return _nc_case(d, 'units "in/h" (config units unset): x 25.4', "read", rain_is(RATES), units=None)


@_case
def case_nc_units_m_per_s(d: Path) -> Case:
    write_rain(forecasts(d) / CASE_NC, uniform([rate(k) / 3.6e6 for k in range(STEPS)]), _steps(),
               units="m s-1")
    return _nc_case(d, 'units "m s-1" (config units unset): x 3.6e6', "read", rain_is(RATES), units=None)


@_case
def case_nc_units_kg_m2_s(d: Path) -> Case:
    write_rain(forecasts(d) / CASE_NC, uniform([rate(k) / 3600 for k in range(STEPS)]), _steps(),
               units="kg m-2 s-1")
    return _nc_case(d, 'units "kg m-2 s-1" (config units unset): x 3600', "read", rain_is(RATES), units=None)


@_case
def case_nc_units_kelvin(d: Path) -> Case:
    write_rain(forecasts(d) / CASE_NC, uniform([280.0 + rate(k) for k in range(STEPS)]), _steps(), units="K")
    return _nc_case(d, 'units "K" (a temperature, not rain): refused', "flagged",
                    _named(r"\bK\b", r"(?i)unit"), also=used(PREVIOUS_NC), units=None)


@_case
def case_nc_units_missing(d: Path) -> Case:
    write_rain(forecasts(d) / CASE_NC, uniform([rate(k) for k in range(STEPS)]), _steps(), units=None)
    return _nc_case(d, "no units attribute and config units unset: refused", "flagged",
                    _named(r"(?i)unit"), also=used(PREVIOUS_NC), units=None)


@_case
def case_nc_units_contradict_config(d: Path) -> Case:
    write_rain(forecasts(d) / CASE_NC, uniform([rate(k) / IN for k in range(STEPS)]), _steps(), units="in/h")
    return _nc_case(d, 'file says "in/h", config says "mm/h": refused', "flagged",
                    _named(r"in/h", r"mm/h"), also=used(PREVIOUS_NC))


@_case
def case_nc_packed_int16(d: Path) -> Case:
    control_rain(forecasts(d) / CASE_NC, encoding={"precipitation_rate": {
        "dtype": "int16", "scale_factor": 0.01, "add_offset": 0.0, "_FillValue": -32767}})
    return _nc_case(d, "rain packed as int16 with scale_factor 0.01 (CF packing)", "read", rain_is(RATES))


@_case
def case_nc_lat_ascending(d: Path) -> Case:
    """Latitude stored south to north, and rain rising northwards: a reader that assumes
    north-up flips the field and gets a different site mean."""
    import rasterio
    from rasterio.warp import transform

    lat = np.round(np.arange(51.30, 51.505, 0.01), 2)  # ascending, 21 rows
    _, lon = _demo_axes()
    field_ = (1.0 + 100.0 * (lat - 51.30))[:, None] * np.ones(lon.size)  # mm/h, 1 to 21
    write_rain(forecasts(d) / CASE_NC, np.repeat(field_[None], STEPS, axis=0), _steps(), lat=lat, lon=lon)
    with rasterio.open(DEMO / "dem.tif") as dem:  # the site's cell centres in lon/lat
        z = dem.read(1, masked=True)
        rows, cols = np.nonzero(~np.ma.getmaskarray(z) & np.isfinite(z.filled(np.nan)))
        xs, ys = rasterio.transform.xy(dem.transform, rows, cols)
        _, lats = transform(dem.crs, "EPSG:4326", list(np.ravel(xs)), list(np.ravel(ys)))
    mean = 1.0 + 100.0 * (float(np.mean(lats)) - 51.30)  # bilinear is exact on a linear field
    return _nc_case(d, "latitude ascending (south-up), rain rising northwards", "read",
                    rain_is({t: mean for t in RATES}))


@_case
def case_nc_variable_missing(d: Path) -> Case:
    control_rain(forecasts(d) / CASE_NC, variable="pr")
    return _nc_case(d, 'rain variable named "pr", config says precipitation_rate', "flagged",
                    _named("precipitation_rate"), also=used(PREVIOUS_NC))


@_case
def case_nc_grid_off_site(d: Path) -> Case:
    _, lon = _demo_axes()
    control_rain(forecasts(d) / CASE_NC, lon=lon + 1.0)
    return _nc_case(d, "forecast grid one degree east of the site", "flagged",
                    _named(r"(?i)cover|outside"), also=used(PREVIOUS_NC))


def _cells(data: np.ndarray, value: float, step: int = 1) -> np.ndarray:
    """``data`` with a 2 x 3 block of cells over the site (lat rows 6-7, lon cols 6-8) set to value."""
    data = data.copy()
    data[step, 6:8, 6:9] = value
    return data


@_case
def case_nc_nan_cells(d: Path) -> Case:
    write_rain(forecasts(d) / CASE_NC, _cells(uniform([rate(k) for k in range(STEPS)]), np.nan), _steps())
    return _nc_case(d, "six NaN cells over the site at 16:00Z", "flagged",
                    _named(r"(?i)nan|missing|not a number"), also=rain_clean(RATES))


@_case
def case_nc_nan_everywhere(d: Path) -> Case:
    write_rain(forecasts(d) / CASE_NC, uniform([np.nan] * STEPS), _steps())
    return _nc_case(d, "every value NaN", "flagged", _named(r"(?i)nan|missing|no (valid|rain)"),
                    also=used(PREVIOUS_NC))


@_case
def case_nc_inf_cells(d: Path) -> Case:
    write_rain(forecasts(d) / CASE_NC, _cells(uniform([rate(k) for k in range(STEPS)]), np.inf), _steps())
    return _nc_case(d, "six +inf cells over the site at 16:00Z", "flagged",
                    _named(r"(?i)inf|not finite|non-finite"), also=rain_clean(RATES))


_IMPLAUSIBLE = r"(?i)implausib|1e\+?0?6|1000000|1,000,000|exceed|above|limit|400 mm/h"


@_case
def case_nc_1e6_everywhere(d: Path) -> Case:
    write_rain(forecasts(d) / CASE_NC, uniform([1e6] * STEPS), _steps())
    return _nc_case(d, "1e6 mm/h everywhere: refused, the cycle falls back (no warning from it)", "flagged",
                    _named(_IMPLAUSIBLE), also=used(PREVIOUS_NC))


@_case
def case_nc_1e6_cells(d: Path) -> Case:
    write_rain(forecasts(d) / CASE_NC, _cells(uniform([rate(k) for k in range(STEPS)]), 1e6), _steps())
    return _nc_case(d, "six 1e6 mm/h cells over the site at 16:00Z: flagged and excluded", "flagged",
                    _named(_IMPLAUSIBLE), also=rain_clean(RATES))


@_case
def case_nc_negative_cells(d: Path) -> Case:
    write_rain(forecasts(d) / CASE_NC, _cells(uniform([rate(k) for k in range(STEPS)]), -5.0), _steps())
    return _nc_case(d, "six -5 mm/h cells over the site at 16:00Z", "flagged",
                    _named(r"(?i)negative|-5"), also=rain_clean(RATES))


@_case
def case_nc_negative_everywhere(d: Path) -> Case:
    write_rain(forecasts(d) / CASE_NC, uniform([-5.0] * STEPS), _steps())
    return _nc_case(d, "-5 mm/h everywhere: refused", "flagged", _named(r"(?i)negative|-5"),
                    also=used(PREVIOUS_NC))


@_case
def case_nc_tiny_negative(d: Path) -> Case:
    values = [rate(k) for k in range(STEPS)]
    values[2] = -1e-6
    write_rain(forecasts(d) / CASE_NC, uniform(values), _steps())
    return _nc_case(d, "-1e-6 mm/h everywhere at 17:00Z (model rounding): read as 0", "read",
                    rain_is({**RATES, step_time(2): 0.0}))


def _broken_nc(d: Path, content: bytes, what: str) -> Case:
    (forecasts(d) / CASE_NC).write_bytes(content)
    return _nc_case(d, what, "flagged", _named(r"(?i)not|empty|truncat|unreadable|corrupt|invalid|html"),
                    also=used(PREVIOUS_NC))


def _good_nc_bytes(d: Path) -> bytes:
    tmp = control_rain(d / "whole.nc")
    data = tmp.read_bytes()
    tmp.unlink()
    return data


@_case
def case_nc_zero_bytes(d: Path) -> Case:
    return _broken_nc(d, b"", "zero-byte file")


@_case
def case_nc_html_page(d: Path) -> Case:
    return _broken_nc(d, b"<!DOCTYPE html>\n<html><head><title>503 Service Unavailable</title></head>"
                         b"<body><h1>Service Unavailable</h1><p>The forecast server is down for "
                         b"maintenance.</p></body></html>\n", "an HTML error page saved as .nc")


@_case
def case_nc_truncated(d: Path) -> Case:
    data = _good_nc_bytes(d)
    return _broken_nc(d, data[: len(data) * 6 // 10], "NetCDF cut at 60 % (interrupted download)")


@_case
def case_nc_random_bytes(d: Path) -> Case:
    return _broken_nc(d, random.Random(14).randbytes(20000), "20 kB of random bytes")


@_case
def case_nc_only_file_truncated(d: Path) -> Case:
    data = _good_nc_bytes(d)
    (forecasts(d, earlier=False) / CASE_NC).write_bytes(data[: len(data) // 2])
    return Case(d.name, "the only forecast file is truncated: nothing to fall back to", _run(grid_config(d)),
                "error", _named(r"(?i)not a readable|truncat|unreadable|corrupt"), d, grid=True)


# ------------------------------------------------------------------------------ frame sources
def _demo_grid() -> dict[str, Any]:
    import rasterio

    with rasterio.open(DEMO / "dem.tif") as ds:
        return {"crs": ds.crs, "transform": ds.transform, "height": ds.height, "width": ds.width}


def write_frame(path: Path, value: float, crs: bool = True) -> None:
    import rasterio

    g = _demo_grid()
    if not crs:
        g["crs"] = None
    with rasterio.open(path, "w", driver="GTiff", count=1, dtype="float32", **g) as ds:
        ds.write(np.full((g["height"], g["width"]), value, dtype=np.float32), 1)
        ds.units = ("mm/h",)


def _frames_case(d: Path, what: str, broken: Callable[[Path], None], regex: str,
                 also: Check | None = None) -> Case:
    """Hourly GeoTIFF frames labelled by their start, 08:00Z to 15:00Z; the 13:00Z frame is
    replaced by ``broken(path)``."""
    folder = d / "frames"
    folder.mkdir()
    at = datetime(2025, 11, 14, 16, tzinfo=UTC)
    for k in range(8):
        t = at - timedelta(hours=k + 1)
        path = folder / f"rain_{t:%Y%m%d%H%M}.tif"
        if t.hour == 13:
            broken(path)
        else:
            write_frame(path, 1.0 + 0.5 * k)
    cfg = grid_config(d, forecast=f'''
[sources.forecast]
kind = "geotiff"
path = "{folder}"
units = "mm/h"
settings = {{ name_format = "rain_%Y%m%d%H%M.tif" }}''')
    return Case(d.name, what, _run(cfg), "flagged", regex, d, also=also, grid=True)


@_case
def case_tif_text_renamed(d: Path) -> Case:
    return _frames_case(d, "GeoTIFF frame that is a text file renamed .tif",
                        lambda p: p.write_text("rain 13:00Z: see attached\n"),
                        _all(r"rain_202511141300\.tif", r"(?i)geotiff|not|unreadable|invalid"))


def _rain_at_13_not_99(o: Outcome) -> str | None:
    v = site_rain((o.run or {}).get("summary", {})).get(datetime(2025, 11, 14, 13, tzinfo=UTC))
    return f"rain at 13:00Z is {v} mm/h: the frame without a CRS was used" if v is not None and \
        abs(v - 99.0) < 1 else None


@_case
def case_tif_no_crs(d: Path) -> Case:
    return _frames_case(d, "GeoTIFF frame without a CRS (99 mm/h)", lambda p: write_frame(p, 99.0, crs=False),
                        _all(r"rain_202511141300\.tif", r"(?i)crs|coordinate reference"),
                        also=_rain_at_13_not_99)


@_case
def case_knmi_h5_truncated(d: Path) -> Case:
    radar = SHARED / "data" / "storms" / "knmi_radar_20100826"
    what = "KNMI radar HDF5 frame (06:25-06:30Z) cut in half, among eleven good ones"
    cfg = d / "site.toml"
    if not radar.is_dir():
        return Case(d.name, what, _run(cfg, "2010-08-26T07:00Z"), "flagged", "", d, grid=True,
                    skip=f"{radar} not found: the shared data folder must sit beside the repository")
    folder = d / "radar"
    folder.mkdir()
    for m in range(5, 65, 5):
        t = datetime(2010, 8, 26, 6, tzinfo=UTC) + timedelta(minutes=m)
        name = f"RAD_NL25_RAP_5min_{t:%Y%m%d%H%M}.h5"
        data = (radar / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2] if t.minute == 30 else data)
    grid_config(d, forecast=f'''
[sources.forecast]
kind = "odim_h5"
path = "{folder}"''')
    return Case(d.name, what, _run(cfg, "2010-08-26T07:00Z"), "flagged",
                _all(r"RAD_NL25_RAP_5min_201008260630\.h5", r"(?i)not a readable|truncat|unreadable|hdf5|corrupt"),
                d, grid=True)


# ------------------------------------------------------------------------------ gauge CSV cases
def _gauge_case(d: Path, what: str, expect: str, check: Any, also: Check | None = None,
                extra: str = "") -> Case:
    return Case(d.name, what, _run(gauge_csv_config(d, extra), DEADRUN_AT), expect, check, d, also=also)


ROWS = readings(datetime(2018, 6, 3, 16, tzinfo=UTC))
LAST = stage_at(ROWS, DEADRUN_T)                              # the 22:00Z reading
BEFORE = stage_at(ROWS, DEADRUN_T - timedelta(minutes=5))     # the 21:55Z reading


def _csv(d: Path, lines: list[str], *, encoding: str = "utf-8", end: str = "\n", bom: bool = False,
         final_newline: bool = True) -> None:
    text = end.join(lines) + (end if final_newline else "")
    (d / "gauges.csv").write_bytes(("\ufeff" if bom else "").encode("utf-8") + text.encode(encoding))


def _csv_named(*reason: str) -> str:
    return _all(r"gauges\.csv", *reason)


def _line(n: int) -> str:
    return rf"line {n}\b|gauges\.csv:{n}\b"


@_case
def case_csv_control(d: Path) -> Case:
    _csv(d, csv_lines(ROWS))
    return _gauge_case(d, "control: the demo's gauge CSV layout, Dead Run station", "read",
                       ("observed_stage_m", ZONE, LAST))


@_case
def case_csv_latin1(d: Path) -> Case:
    lines = csv_lines(ROWS)
    lines.insert(39, f"Mühlbach-2,{_z(ROWS[10][0])},0.52")  # line 40, written in Latin-1
    _csv(d, lines, encoding="latin-1")
    return _gauge_case(d, "Latin-1 bytes (a station named Mühlbach) on line 40", "error",
                       _csv_named(_line(40), r"(?i)utf-8|encoding"))


@_case
def case_csv_utf8_bom(d: Path) -> Case:
    _csv(d, csv_lines(ROWS), bom=True)
    return _gauge_case(d, "UTF-8 byte-order mark (Excel's CSV UTF-8)", "read", ("observed_stage_m", ZONE, LAST))


@_case
def case_csv_utf16(d: Path) -> Case:
    (d / "gauges.csv").write_bytes("\n".join(csv_lines(ROWS)).encode("utf-16"))
    return _gauge_case(d, "UTF-16 with BOM (Excel's Unicode text)", "error",
                       _csv_named(r"(?i)utf-16|utf-8|encoding"))


@_case
def case_csv_header_spaced_with_settings(d: Path) -> Case:
    _csv(d, ["Station , Time , Stage"] + csv_lines(ROWS)[1:])
    return _gauge_case(d, 'header "Station , Time , Stage" with station_column/time_column/value_column',
                       "read", ("observed_stage_m", ZONE, LAST),
                       extra='settings = { station_column = "Station", time_column = "Time", value_column = "Stage" }')


@_case
def case_csv_header_other_names(d: Path) -> Case:
    _csv(d, ["site_no,datetime,gage_height"] + csv_lines(ROWS)[1:])
    return _gauge_case(d, 'header "site_no,datetime,gage_height" and no column settings', "error",
                       _csv_named("site_no", "datetime", "gage_height"))


@_case
def case_csv_semicolons(d: Path) -> Case:
    _csv(d, [line.replace(",", ";") for line in csv_lines(ROWS)])
    return _gauge_case(d, "semicolon-separated (a European spreadsheet's CSV)", "error",
                       _csv_named(r"station;time;stage_m|(?i:semicolon|delimiter|separat)"))


@_case
def case_csv_unit_column_ft(d: Path) -> Case:
    ft = feet(ROWS)
    _csv(d, ["station,time,stage,unit"] + [f"{GAUGE},{_z(t)},{v},ft" for t, v in ft])
    return _gauge_case(d, "a unit column saying ft: x 0.3048", "read",
                       ("observed_stage_m", ZONE, stage_at(ft, DEADRUN_T) * FT))


@_case
def case_csv_unit_column_mixed(d: Path) -> Case:
    ft = dict(feet(ROWS))
    lines = ["station,time,stage,unit"] + [f"{GAUGE},{_z(t)},{ft[t]},ft" if i % 2 else f"{GAUGE},{_z(t)},{v},m"
                                           for i, (t, v) in enumerate(ROWS)]
    _csv(d, lines)
    last = ft[DEADRUN_T] * FT if (len(ROWS) - 1) % 2 else LAST
    return _gauge_case(d, "a unit column mixing m and ft row by row", "read", ("observed_stage_m", ZONE, last))


@_case
def case_csv_crlf(d: Path) -> Case:
    _csv(d, csv_lines(ROWS), end="\r\n")
    return _gauge_case(d, "Windows line endings (CRLF)", "read", ("observed_stage_m", ZONE, LAST))


@_case
def case_csv_time_offset(d: Path) -> Case:
    edt = timedelta(hours=-4)
    _csv(d, ["station,time,stage_m"] + [f"{GAUGE},{(t + edt).replace(tzinfo=None).isoformat()}-04:00,{v}"
                                        for t, v in ROWS])
    return _gauge_case(d, "times in local time with offset -04:00 (EDT)", "read", ("observed_stage_m", ZONE, LAST))


@_case
def case_csv_truncated_last_row(d: Path) -> Case:
    lines = csv_lines(ROWS)
    lines[-1] = lines[-1][: len(GAUGE) + 16]  # "01589330,2018-06-03T22:0", no newline
    _csv(d, lines, final_newline=False)
    return _gauge_case(d, "last row cut mid-time, no final newline (file still being written)", "flagged",
                       _csv_named(r"(?i)truncat|incomplete|cut|last (row|line)|" + _line(len(lines))),
                       also=stage_is(BEFORE))


@_case
def case_csv_value_abc(d: Path) -> Case:
    lines = csv_lines(ROWS)
    lines[-1] = f"{GAUGE},{_z(DEADRUN_T)},abc"
    _csv(d, lines)
    return _gauge_case(d, 'the 22:00Z value is "abc"', "flagged", _all(r"(?i)abc|missing|not a number"),
                       also=stage_is(BEFORE))


@_case
def case_csv_flatline_12h(d: Path) -> Case:
    start = datetime(2018, 6, 3, 8, tzinfo=UTC)
    flat_from = datetime(2018, 6, 3, 9, tzinfo=UTC)
    rows = [(t, v if t < flat_from else 0.512) for t, v in readings(start)]
    _csv(d, csv_lines(rows))
    return _gauge_case(d, "the same stage (0.512 m) every 5 min for the last 13 hours", "flagged",
                       r"(?i)flat ?line", also=stage_not(0.512))


@_case
def case_csv_jump_3m_5min(d: Path) -> Case:
    lines = csv_lines(ROWS)
    lines[-1] = f"{GAUGE},{_z(DEADRUN_T)},{BEFORE + 3.0:.4f}"
    _csv(d, lines)
    return _gauge_case(d, "the 22:00Z reading 3 m above the one 5 min before", "flagged",
                       r"(?i)rate|rise|jump|m/h|too fast", also=stage_is(BEFORE))


@_case
def case_csv_stage_999(d: Path) -> Case:
    lines = csv_lines(ROWS)
    lines[-1] = f"{GAUGE},{_z(DEADRUN_T)},999"
    _csv(d, lines)
    return _gauge_case(d, "stage 999 m at 22:00Z", "flagged", r"(?i)range|999|implausib",
                       also=stage_is(BEFORE))


@_case
def case_csv_duplicate_conflict(d: Path) -> Case:
    lines = csv_lines(ROWS) + [f"{GAUGE},{_z(DEADRUN_T)},{LAST + 0.35:.4f}"]
    _csv(d, lines)
    return _gauge_case(d, "two different readings for 22:00Z", "flagged", r"(?i)duplicate|conflict|twice",
                       also=stage_not(LAST + 0.35))


@_case
def case_csv_time_without_zone(d: Path) -> Case:
    lines = csv_lines(ROWS)
    t = ROWS[18][0]
    lines[19] = f"{GAUGE},{t:%Y-%m-%dT%H:%M:%S},{ROWS[18][1]}"  # line 20
    _csv(d, lines)
    # one ambiguous row is set aside (a flag naming its line), not the whole file
    return _gauge_case(d, "a time without zone (2018-06-03T17:30:00) on line 20", "flagged",
                       _csv_named(_line(20), r"(?i)zone|offset"), also=stage_is(LAST))


@_case
def case_csv_empty_file(d: Path) -> Case:
    (d / "gauges.csv").write_bytes(b"")
    return _gauge_case(d, "zero-byte gauge file", "error",
                       _csv_named(r"(?i)empty|no readings|no header|found none|no columns"))


# ------------------------------------------------------------------------------ gauge feed files
def _usgs_rows(rows: list[tuple[datetime, float]]) -> list[tuple[str, str, list[str]]]:
    return [(t.strftime("%Y-%m-%dT%H:%M:%S.000+00:00"), str(v), ["P"]) for t, v in feet(rows)]


@_case
def case_usgs_eqp_value(d: Path) -> Case:
    rows = _usgs_rows(ROWS)
    i = [r[0] for r in rows].index("2018-06-03T21:30:00.000+00:00")
    rows[i] = (rows[i][0], "-999999", ["P", "Eqp"])
    (d / "iv.json").write_text(json.dumps(usgs_doc(rows)))
    return Case(d.name, "USGS IV JSON: the 21:30Z value is -999999 with qualifier Eqp", _run(usgs_config(d),
                DEADRUN_AT), "flagged", r"Eqp|(?i:equipment)", d,
                also=stage_is(stage_at(feet(ROWS), DEADRUN_T) * FT))


@_case
def case_usgs_empty_series(d: Path) -> Case:
    (d / "iv.json").write_text(json.dumps(usgs_doc([])))
    # the site's only gauge has nothing to say, and no earlier readings stand in: no cycle
    return Case(d.name, "USGS IV JSON: the stage series has no values", _run(usgs_config(d), DEADRUN_AT),
                "error", _all(r"iv\.json", GAUGE, r"(?i)no values|empty"), d)


@_case
def case_usgs_no_unitcode(d: Path) -> Case:
    (d / "iv.json").write_text(json.dumps(usgs_doc(_usgs_rows(ROWS), unit={})))
    return Case(d.name, "USGS IV JSON: variable.unit without unitCode (00065 is in feet)",
                _run(usgs_config(d), DEADRUN_AT), "read",
                ("observed_stage_m", ZONE, stage_at(feet(ROWS), DEADRUN_T) * FT), d)


@_case
def case_usgs_ft3s_on_00065(d: Path) -> Case:
    (d / "iv.json").write_text(json.dumps(usgs_doc(_usgs_rows(ROWS), unit={"unitCode": "ft3/s"})))
    return Case(d.name, "USGS IV JSON: unitCode ft3/s on parameter 00065 (gage height)",
                _run(usgs_config(d), DEADRUN_AT), "error", _all(r"iv\.json", "ft3/s", "00065"), d)


@_case
def case_ea_unknown_unit(d: Path) -> Case:
    base = "http://environment.data.gov.uk/flood-monitoring"
    measure = "level-stage-i-5_min-furlong"
    items = [{"@id": f"{base}/data/readings/DR1-{measure}/{t:%Y-%m-%dT%H:%M:%SZ}",
              "dateTime": f"{t:%Y-%m-%dT%H:%M:%SZ}", "measure": f"{base}/id/measures/DR1-{measure}",
              "value": v} for t, v in reversed(ROWS)]
    (d / "ea.json").write_text(json.dumps({"meta": {"publisher": "Environment Agency"}, "items": items}))
    cfg = deadrun_config(d, f'''
[sources.gauges]
kind = "ea_flood_monitoring"
path = "{d / "ea.json"}"
stale_after_minutes = 30
settings = {{ station = "DR1", gauge_id = "{GAUGE}" }}''')
    return Case(d.name, 'EA flood-monitoring JSON: measure unit "furlong"', _run(cfg, DEADRUN_AT), "error",
                _all(r"ea\.json", "furlong", r"(?i)unit"), d)


@_case
def case_sta_null_result(d: Path) -> Case:
    obs = [{"phenomenonTime": f"{t:%Y-%m-%dT%H:%M:%SZ}", "result": None if t.minute == 30 and t.hour == 21 else v}
           for t, v in ROWS]
    (d / "sta.json").write_text(json.dumps({"value": obs}))
    cfg = deadrun_config(d, f'''
[sources.gauges]
kind = "sensorthings"
path = "{d / "sta.json"}"
units = "m"
stale_after_minutes = 30
settings = {{ datastream = 1, gauge_id = "{GAUGE}" }}''')
    return Case(d.name, "SensorThings: the 21:30Z observation's result is null", _run(cfg, DEADRUN_AT),
                "flagged", r"(?i)null|missing|no result", d, also=stage_is(LAST))


# ------------------------------------------------------------------------------ config and zones
def demo_check(d: Path, text: str | None = None, zones: dict[str, Any] | None = None,
               zones_bytes: bytes | None = None) -> list[str]:
    """``check-config`` on the demo config in ``d`` (outputs in ``d/out``), with its zones
    file replaced by ``zones`` (GeoJSON) or ``zones_bytes`` when given."""
    text = _output_dir(demo_config_text() if text is None else text, d)
    if zones is not None or zones_bytes is not None:
        path = d / "zones.geojson"
        path.write_bytes(zones_bytes if zones_bytes is not None else json.dumps(zones).encode())
        text = re.sub(r'^zones = "[^"]*"', f'zones = "{path}"', text, count=1, flags=re.MULTILINE)
    cfg = _write(d / "site.toml", text)
    return ["check-config", str(cfg)]


def _zones_with(change: Callable[[list], list]) -> dict[str, Any]:
    """The demo zones with MB-TOWN's outer ring (lon/lat pairs) replaced by ``change(ring)``."""
    gj = json.loads((DEMO / "zones.geojson").read_text())
    for f in gj["features"]:
        if f["properties"]["code"] == "MB-TOWN":
            f["geometry"]["coordinates"][0] = change(f["geometry"]["coordinates"][0])
    return gj


def _zone_error(d: Path, what: str, change: Callable[[list], list], *reason: str) -> Case:
    return Case(d.name, what, demo_check(d, zones=_zones_with(change)), "error", _all("MB-TOWN", *reason), d)


def _check_ok(o: Outcome) -> str | None:
    return None if re.search(r"^ok: ", o.output, re.MULTILINE) else "check-config did not say ok"


@_case
def case_config_latin1(d: Path) -> Case:
    text = _output_dir(demo_config_text(), d).replace('name = "Millbrook (demo site)"', 'name = "Millbrook (démo)"')
    (d / "site.toml").write_bytes(text.encode("latin-1"))
    return Case(d.name, "config TOML saved as Latin-1 (é in the site name)", ["check-config", str(d / "site.toml")],
                "error", _all(r"site\.toml", r"UTF-8"), d)


@_case
def case_config_utf8_bom(d: Path) -> Case:
    cmd = demo_check(d)
    path = Path(cmd[1])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    return Case(d.name, "config TOML with a UTF-8 byte-order mark (Notepad)", cmd, "read", _check_ok, d)


@_case
def case_config_rain_units_unknown(d: Path) -> Case:
    text = demo_config_text().replace('units = "mm/h"', 'units = "furlong/h"', 1)
    assert 'units = "furlong/h"' in text
    return Case(d.name, 'config sources.forecast.units = "furlong/h"', demo_check(d, text), "error",
                _all(r"site\.toml", r"sources\.forecast", "furlong/h", r"mm/h"), d)


@_case
def case_zone_utm_metres(d: Path) -> Case:
    from rasterio.warp import transform

    def to_utm(ring: list) -> list:
        xs, ys = transform("EPSG:4326", "EPSG:32631", [p[0] for p in ring], [p[1] for p in ring])
        return [[round(x, 1), round(y, 1)] for x, y in zip(xs, ys)]

    return _zone_error(d, "MB-TOWN's polygon in UTM 31N metres, not WGS 84 degrees", to_utm,
                       r"(?i)wgs ?84|degree|longitude|metres|meters")


@_case
def case_zone_bow_tie(d: Path) -> Case:
    def bow_tie(ring: list) -> list:
        xs, ys = [p[0] for p in ring], [p[1] for p in ring]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        return [[x0, y0], [x1, y1], [x1, y0], [x0, y1], [x0, y0]]

    return _zone_error(d, "MB-TOWN's polygon a self-intersecting bow-tie", bow_tie,
                       r"(?i)self-intersect|self intersect|invalid|not valid")


@_case
def case_zone_outside_dem(d: Path) -> Case:
    return _zone_error(d, "MB-TOWN's polygon moved one degree east, off the DEM",
                       lambda ring: [[x + 1.0, y] for x, y in ring], r"\bDEM\b|site\.dem|(?i:outside)")


@_case
def case_zone_lat_lon_swapped(d: Path) -> Case:
    return _zone_error(d, "MB-TOWN's polygon written lat, lon (not RFC 7946's lon, lat)",
                       lambda ring: [[y, x] for x, y in ring],
                       r"\bDEM\b|site\.dem|(?i:outside|swap|order|latitude)")


@_case
def case_zones_latin1(d: Path) -> Case:
    text = (DEMO / "zones.geojson").read_text().replace("Millbrook Town", "Millbrook Town (centre-ville, rivière)")
    return Case(d.name, "zones GeoJSON saved as Latin-1", demo_check(d, zones_bytes=text.encode("latin-1")),
                "error", _all(r"zones\.geojson", "UTF-8"), d)


@_case
def case_zones_truncated_json(d: Path) -> Case:
    data = (DEMO / "zones.geojson").read_bytes()
    return Case(d.name, "zones GeoJSON cut in half", demo_check(d, zones_bytes=data[: len(data) // 2]), "error",
                _all(r"zones\.geojson", r"(?i)json|truncat"), d)


@_case
def case_output_dir_is_file(d: Path) -> Case:
    (d / "out").write_text("not a folder\n")
    return Case(d.name, "site.output_dir names an existing file", demo_check(d), "error",
                _all(r"output_dir", r"(?i)is a file|not a folder|folder|directory"), d)


@_case
def case_subscribers_latin1(d: Path) -> Case:
    cmd = demo_check(d)
    csv_path = d / "subscribers.csv"
    csv_path.write_bytes("phone,zones,language,consent_source\n07700 900100,MB-TOWN,en,paper form\n"
                         "07700 900107,MB-TOWN,es,formulario de inscripción\n".encode("latin-1"))
    return Case(d.name, "subscribers CSV in Latin-1 (ó on line 3) through `subscribers import`",
                ["subscribers", "import", "--config", cmd[1], str(csv_path)], "error",
                _all(r"subscribers\.csv", r"line 3\b", "UTF-8"), d,
                env={"FLOODWARN_SECRET_KEY": "corpus-test-key-not-secret"})


# ------------------------------------------------------------------------------ build
def prepare_terrain(folder: Path) -> Path:
    """Prepare the demo site's terrain once in ``folder``; the cache file every grid case copies."""
    from warning.config import load_config
    from warning.site import Site

    folder.mkdir(parents=True, exist_ok=True)
    cfg = _write(folder / "site.toml", _output_dir(demo_config_text(), folder))
    return Site.load(load_config(cfg)).cache_path()


def install_terrain(case: Case, cache: Path) -> None:
    dest = case.folder / "out" / "cache"
    dest.mkdir(parents=True, exist_ok=True)
    if not (dest / cache.name).exists():
        shutil.copy(cache, dest / cache.name)


def build(folder: Path, terrain_cache: Path | None = None) -> list[Case]:
    """Write every case into ``folder/<case-id>/`` (replacing what was there) and return them.
    With ``terrain_cache`` (see ``prepare_terrain``), grid cases get a copy of it."""
    cases = []
    for cid, maker in _MAKERS.items():
        d = folder / cid
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        case = maker(d)
        if case.grid and terrain_cache is not None and case.skip is None:
            install_terrain(case, terrain_cache)
        cases.append(case)
    return cases


# ------------------------------------------------------------------------------ running
class _CurrentStderr(logging.StreamHandler):
    """Log records to whatever ``sys.stderr`` is now (the CLI runner's, during a command)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def run_case(case: Case) -> Outcome:
    """Run the case's command in-process (typer's CliRunner) and read the run's row.

    For readable messages, set ``warning.cli.console.width`` and ``err_console.width`` wide
    (the test and ``main`` do) so that rich does not wrap them."""
    from typer.testing import CliRunner

    from warning.cli import app

    root = logging.getLogger()
    handler = _CurrentStderr()
    root.addHandler(handler)  # and logging.basicConfig in the CLI leaves it alone
    try:
        res = CliRunner().invoke(app, case.command, env=case.env or None)
    finally:
        root.removeHandler(handler)
    crash = None
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        crash = f"{type(res.exception).__name__}: {res.exception}"
    output = res.output
    for p in sorted({str(case.folder.resolve()), str(case.folder)}, key=len, reverse=True):
        output = output.replace(p, "CASE")
    return Outcome(res.exit_code, output, crash, _run_row(case))


def _run_row(case: Case) -> dict[str, Any] | None:
    db = case.folder / "out" / "floodwarn.sqlite"
    if case.run_id is None or not db.is_file():
        return None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT status, forecast_file, summary FROM runs WHERE id = ?", (case.run_id,)).fetchone()
    finally:
        con.close()
    if row is None:
        return None
    summary = json.loads(row[2]) if isinstance(row[2], str) else (row[2] or {})
    return {"status": row[0], "forecast_file": row[1], "summary": summary}


def _read_failure(check: Any, o: Outcome) -> str | None:
    if callable(check):
        return check(o)
    metric, zone, value = check
    got = _metric(o, metric, zone)
    return None if got is not None and abs(got - value) <= 2e-4 else \
        f"{metric} of {zone} is {got}, expected {value:.4f}"


def matching_problem(case: Case, o: Outcome) -> str | None:
    return next((p for p in o.problems if isinstance(case.check, str) and re.search(case.check, p)), None)


_LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: .*\n?", re.MULTILINE)


def without_logs(output: str) -> str:
    """The command's own output, without the log lines (``LEVEL logger: message``) that
    ``run_case`` lets through: an error must name the file itself, not leave it to a log."""
    return _LOG_LINE.sub("", output)


def judge(case: Case, o: Outcome) -> list[str]:
    """What the outcome lacks to meet the case's expectation (empty: it meets it)."""
    unmet = []
    if o.crash:
        unmet.append(f"an exception escaped the CLI: {o.crash}")
    if "Traceback" in o.output:
        unmet.append("a Python traceback in the output")
    if case.expect == "error":
        if o.exit_code == 0:
            unmet.append("exit code 0: expected an error")
        if not re.search(case.check, without_logs(o.output)):  # type: ignore[arg-type]
            unmet.append(f"the error message does not match {case.check!r} (log lines not counted)")
        return unmet
    if o.exit_code != 0:
        unmet.append(f"exit code {o.exit_code}: expected the command to complete")
    if case.run_id is not None:
        if o.run is None:
            unmet.append(f"no run {case.run_id} in the database")
        elif o.run["status"] != "done":
            unmet.append(f"run status {o.run['status']!r}, not 'done'")
    if case.expect == "flagged" and matching_problem(case, o) is None:
        unmet.append(f"no problem of the run matches {case.check!r}; problems: {o.problems}")
    if case.expect == "read":
        failure = _read_failure(case.check, o)
        if failure:
            unmet.append(failure)
    if case.also is not None and o.exit_code == 0:
        failure = case.also(o)
        if failure:
            unmet.append(failure)
    return unmet


def actual(o: Outcome) -> str:
    """What happened: crash (a traceback), error, flagged (completed with problems) or read."""
    if o.crash or "Traceback" in o.output:
        return "crash"
    if o.exit_code != 0:
        return "error"
    return "flagged" if o.problems else "read"


def message(case: Case, o: Outcome) -> str:
    """One line about the outcome: the error, the matching (or first) problem, or the value read
    (the case folder written as ``CASE``)."""
    text = _message(case, o)
    for p in sorted({str(case.folder.resolve()), str(case.folder)}, key=len, reverse=True):
        text = text.replace(p, "CASE")
    return text


def _message(case: Case, o: Outcome) -> str:
    if o.crash:
        return o.crash
    text = " ".join(without_logs(o.output).split())
    if o.exit_code != 0:
        i = text.find("error:")
        return text[i:] if i >= 0 else text[-200:]
    if case.command[0] == "check-config":
        return text
    hit = matching_problem(case, o)
    if hit and case.expect == "flagged":
        return hit
    if case.expect == "read" or not o.problems:
        if o.run is None:
            return "no run row"
        if case.grid:
            r = site_rain(o.run["summary"])
            ahead = [f"{t:%H}Z {v:.3f}" if v is not None else f"{t:%H}Z none" for t, v in r.items()
                     if t >= ISSUED][:3]
            return f"{o.run['forecast_file']}; rain (mm/h) {', '.join(ahead)}"
        return f"stage {_metric(o, 'observed_stage_m', ZONE)} m from {o.run['forecast_file']}"
    return o.problems[0]


def table(rows: list[tuple[Case, Outcome, list[str]]]) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    out = ["| case | input | expected | outcome | message |", "|---|---|---|---|---|"]
    for case, o, unmet in rows:
        if case.skip:
            out.append(f"| {case.id} | {cell(case.what)} | {case.expect} | skipped | {cell(case.skip[:100])} |")
            continue
        mark = "ok" if not unmet else "NOT MET"
        out.append(f"| {case.id} | {cell(case.what)} | {case.expect} | {actual(o)} ({mark}) | "
                   f"{cell(message(case, o)[:100])} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder to write the corpus into (one folder per case)")
    parser.add_argument("--run", action="store_true",
                        help="run every case through the CLI and print a Markdown table of outcomes")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    cache = prepare_terrain(out / "_terrain") if args.run else None
    cases = build(out, terrain_cache=cache)
    counts = {e: sum(c.expect == e for c in cases) for e in EXPECTS}
    print(f"wrote {len(cases)} cases to {out} ({', '.join(f'{n} {e}' for e, n in counts.items())})")
    if not args.run:
        return 0
    from warning import cli

    cli.console.width = cli.err_console.width = 1000  # no wrapped messages
    rows = []
    for case in cases:
        if case.skip:
            rows.append((case, Outcome(0, ""), []))
            continue
        o = run_case(case)
        rows.append((case, o, judge(case, o)))
        print(f"  {case.id}: {actual(o)}{'' if not rows[-1][2] else ' (NOT MET)'}", file=sys.stderr)
    print()
    print(table(rows))
    failing = [(c, o, u) for c, o, u in rows if u]
    print(f"\n{len(rows) - len(failing)} of {len(rows)} cases meet their expectation.")
    for c, o, u in failing:
        print(f"\n- {c.id} (expected {c.expect}, got {actual(o)}): " + "; ".join(u)[:600])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
