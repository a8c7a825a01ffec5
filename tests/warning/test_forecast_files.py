"""Forecast files as users really send them: units from the file, CF time bounds, unsorted
and broken time axes, implausible values, and files that are not what their name says.

Most NetCDF tests put the forecast on a projected grid whose cells are exactly the site's
cells, so the regridding is the identity and the values read can be compared with the
values written, converted by hand (the oracle: 1 in = 25.4 mm, 1 h = 3600 s, ...).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import rasterio
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from tests.conftest import shared_path
from warning.errors import IngestError
from warning.ingest import get_source
from warning.ingest.forecast_netcdf import ForecastIssue
from warning.ingest.limits import Limits
from warning.ingest.rain_qc import rain_unit

UTM31 = CRS.from_epsg(32631)
X0, Y0, DX = 600_000.0, 5_700_000.0, 1000.0
NY, NX = 5, 6
T0 = datetime(2025, 11, 14, 0, tzinfo=UTC)
T0_UNITS = "hours since 2025-11-14 00:00:00"


def site_grid(nx=NX, ny=NY, dx=DX, x0=X0, y0=Y0, crs=UTM31):
    return SimpleNamespace(nx=nx, ny=ny, dx=dx, transform=Affine(dx, 0, x0, 0, -dx, y0), crs=crs,
                           x_coords=x0 + (np.arange(nx) + 0.5) * dx,
                           y_coords=y0 - (np.arange(ny) + 0.5) * dx)


def field(nt: int, members: int | None = None, base: float = 1.0) -> np.ndarray:
    """Distinct, plausible values: base + 0.1 t + 0.01 row + 0.001 col (+ 1 per member)."""
    t, r, c = np.meshgrid(np.arange(nt), np.arange(NY), np.arange(NX), indexing="ij")
    one = base + 0.1 * t + 0.01 * r + 0.001 * c
    if members is None:
        return one
    return np.stack([one + m for m in range(members)])


def write_nc(path, data: np.ndarray, hours, *, units: str | None = "mm h-1",
             var_attrs: dict | None = None, time_attrs: dict | None = None,
             bounds_hours=None, ref_hours: float | None = None, engine: str = "h5netcdf"):
    """A CF file on the site's own grid (UTM 31N, same cells). ``hours`` are the raw time
    values in ``T0_UNITS``; ``bounds_hours`` (nt, 2) become ``time_bnds``."""
    dims = ("time", "y", "x") if data.ndim == 3 else ("member", "time", "y", "x")
    attrs = {"grid_mapping": "crs", **(var_attrs or {})}
    if units is not None:
        attrs["units"] = units
    tattrs = {"units": T0_UNITS, "calendar": "standard", "standard_name": "time",
              **(time_attrs or {})}
    tattrs = {k: v for k, v in tattrs.items() if v is not None}
    coords = {"time": ("time", np.asarray(hours, dtype=np.float64), tattrs),
              "y": ("y", Y0 - (np.arange(NY) + 0.5) * DX), "x": ("x", X0 + (np.arange(NX) + 0.5) * DX)}
    if data.ndim == 4:
        coords["member"] = ("member", np.arange(data.shape[0]))
    ds = xr.Dataset({"precipitation_rate": (dims, data.astype(np.float32), attrs),
                     "crs": ((), np.int32(0), {"crs_wkt": UTM31.to_wkt()})}, coords=coords)
    if bounds_hours is not None:
        ds["time"].attrs["bounds"] = "time_bnds"
        ds["time_bnds"] = (("time", "nv"), np.asarray(bounds_hours, dtype=np.float64))
    if ref_hours is not None:
        ds["forecast_reference_time"] = ((), np.float64(ref_hours),
                                         {"units": T0_UNITS, "standard_name": "forecast_reference_time"})
    ds.to_netcdf(path, engine=engine)
    return path


def source(path, **settings):
    return get_source("netcdf", path=path, **settings)


def load_only(src):
    (issue,) = src.issues()
    return src.load(issue, site_grid())


def hours(da: xr.DataArray) -> list[float]:
    return [float((t - np.datetime64("2025-11-14T00:00", "ns")) / np.timedelta64(1, "h"))
            for t in da["time"].values]


# ---------------------------------------------------------------------- units
@pytest.mark.parametrize("units, to_mm_h", [
    ("in/h", 25.4), ("in h-1", 25.4), ("mm hr-1", 1.0), ("mm/hr", 1.0), ("mm s-1", 3600.0),
    ("kg m-2 s-1", 3600.0), ("kg m**-2 s**-1", 3600.0), ("kg/m2/s", 3600.0), ("m s-1", 3.6e6)])
def test_rate_units_from_the_file(tmp_path, units, to_mm_h):
    data = field(3) / to_mm_h  # so that the file holds ``field`` mm/h in its own unit
    write_nc(tmp_path / "r.nc", data, [0, 1, 2], units=units)
    da = load_only(source(tmp_path / "r.nc"))
    assert da.attrs["units"] == "mm/h" and da.attrs["interval_s"] == 3600.0
    np.testing.assert_allclose(da.values[0], field(3), rtol=1e-5)


def test_inches_per_hour_are_25_4_mm(tmp_path):
    write_nc(tmp_path / "in.nc", np.full((2, NY, NX), 0.5), [0, 1], units="in/h")
    da = load_only(source(tmp_path / "in.nc"))
    np.testing.assert_allclose(da.values, 12.7, rtol=1e-6)  # 0.5 in/h = 12.7 mm/h


@pytest.mark.parametrize("units, mm_per_unit", [("mm", 1.0), ("kg m-2", 1.0), ("kg/m2", 1.0),
                                               ("m", 1000.0), ("in", 25.4)])
def test_depth_units_are_totals_over_the_step(tmp_path, units, mm_per_unit):
    """3-hourly totals: a depth d (in its unit) is d x mm_per_unit / 3 mm/h."""
    depth = field(4) / mm_per_unit  # mm per 3 h, written in the file's unit
    write_nc(tmp_path / "d.nc", depth, [0, 3, 6, 9], units=units,
             var_attrs={"cell_methods": "time: sum"})
    da = load_only(source(tmp_path / "d.nc"))
    assert da.attrs["interval_s"] == 3 * 3600.0
    np.testing.assert_allclose(da.values[0], field(4) / 3.0, rtol=1e-5)


def test_ecmwf_tp_in_metres_with_bounds(tmp_path):
    """ECMWF-like: tp in m per 6-h step, time at the step's end, time_bnds, cell_methods sum."""
    tp = np.full((2, NY, NX), 0.006)  # 6 mm in 6 h = 1 mm/h
    write_nc(tmp_path / "tp.nc", tp, [6, 12], units="m", bounds_hours=[[0, 6], [6, 12]],
             var_attrs={"cell_methods": "time: sum", "standard_name": "precipitation_amount"})
    da = load_only(source(tmp_path / "tp.nc"))
    np.testing.assert_allclose(da.values, 1.0, rtol=1e-5)
    assert hours(da) == [0.0, 6.0]


@pytest.mark.parametrize("units", ["K", "Pa", "%", "1", "degC", "mm/fortnight", ""])
def test_units_that_are_not_rain_are_refused(tmp_path, units):
    write_nc(tmp_path / "k.nc", field(2), [0, 1], units=units)
    src = source(tmp_path / "k.nc")
    (issue,) = src.issues()
    if units:
        match = rf"k\.nc: variable 'precipitation_rate' has units '{units}', which is not a rain rate or depth; expected one of"
    else:
        match = r"k\.nc: variable 'precipitation_rate' has no units attribute"
    with pytest.raises(IngestError, match=match):
        src.load(issue, site_grid())


def test_missing_units_need_the_config(tmp_path):
    write_nc(tmp_path / "n.nc", field(2), [0, 1], units=None)
    src = source(tmp_path / "n.nc")
    with pytest.raises(IngestError, match=r"n\.nc: variable 'precipitation_rate' has no units "
                                          r"attribute; add one .*or set sources\.forecast\.units"):
        load_only(src)
    da = load_only(source(tmp_path / "n.nc", units="in/h"))
    np.testing.assert_allclose(da.values[0], 25.4 * field(2), rtol=1e-5)


def test_config_units_must_agree_with_the_file(tmp_path):
    write_nc(tmp_path / "a.nc", field(2), [0, 1], units="mm h-1")
    # the same meaning in another spelling is fine
    np.testing.assert_allclose(load_only(source(tmp_path / "a.nc", units="mm/h")).values[0],
                               field(2), rtol=1e-6)
    with pytest.raises(IngestError, match=r"a\.nc: variable 'precipitation_rate' has units "
                                          r"'mm h-1'.*but sources\.forecast\.units is 'mm/s'"):
        load_only(source(tmp_path / "a.nc", units="mm/s"))
    write_nc(tmp_path / "b.nc", field(2) / 1000.0, [0, 1], units="m",
             var_attrs={"cell_methods": "time: sum"})
    with pytest.raises(IngestError, match=r"b\.nc: .*units 'm'.*sources\.forecast\.units is 'mm'"):
        load_only(source(tmp_path / "b.nc", units="mm"))
    with pytest.raises(ValueError, match="unknown rain units 'furlongs'"):
        source(tmp_path / "b.nc", units="furlongs")


def test_cell_methods_must_agree_with_the_units(tmp_path):
    write_nc(tmp_path / "s.nc", field(2), [0, 1], units="mm/h",
             var_attrs={"cell_methods": "area: mean time: sum"})
    with pytest.raises(IngestError, match=r"s\.nc: .*cell_methods 'area: mean time: sum' \(a total "
                                          r"over each step\) but units 'mm/h', a rate"):
        load_only(source(tmp_path / "s.nc"))
    write_nc(tmp_path / "m.nc", field(2), [0, 1], units="mm", var_attrs={"cell_methods": "time: mean"})
    with pytest.raises(IngestError, match=r"m\.nc: .*'time: mean'.*units 'mm', a depth"):
        load_only(source(tmp_path / "m.nc"))
    write_nc(tmp_path / "x.nc", field(2), [0, 1], units="mm/h",
             var_attrs={"cell_methods": "time: maximum"})
    with pytest.raises(IngestError, match=r"x\.nc: .*'time: maximum' is not a mean"):
        load_only(source(tmp_path / "x.nc"))
    # an instantaneous rate is read as the mean over its step
    write_nc(tmp_path / "p.nc", field(2), [0, 1], units="mm/h", var_attrs={"cell_methods": "time: point"})
    np.testing.assert_allclose(load_only(source(tmp_path / "p.nc")).values[0], field(2), rtol=1e-6)


def test_unit_table_spellings():
    assert rain_unit("kg m**-2 s**-1").factor == 3600.0
    assert rain_unit(" MM/H ").factor == 1.0
    assert rain_unit("kg.m-2.s-1").factor == 3600.0
    assert rain_unit("m").kind == "depth" and rain_unit("m").factor == 1000.0
    assert rain_unit("K") is None and rain_unit("unknown") is None


# ---------------------------------------------------------------------- times
def test_time_bounds_labelled_by_end_give_starts(tmp_path):
    lower = [0, 1, 2]
    write_nc(tmp_path / "e.nc", field(3), [1, 2, 3], bounds_hours=[[h, h + 1] for h in lower],
             var_attrs={"cell_methods": "time: mean"})
    src = source(tmp_path / "e.nc")
    (issue,) = src.issues()
    assert issue.issued == T0  # no reference time: the first step's start
    da = src.load(issue, site_grid())
    assert hours(da) == [float(h) for h in lower]
    np.testing.assert_allclose(da.values[0], field(3), rtol=1e-6)


def test_time_bounds_labelled_by_middle(tmp_path):
    write_nc(tmp_path / "m.nc", field(3), [0.5, 1.5, 2.5], bounds_hours=[[0, 1], [1, 2], [2, 3]])
    da = load_only(source(tmp_path / "m.nc"))
    assert hours(da) == [0.0, 1.0, 2.0] and da.attrs["interval_s"] == 3600.0


def test_end_labels_without_bounds_need_time_label(tmp_path):
    write_nc(tmp_path / "e.nc", field(3), [1, 2, 3])
    assert hours(load_only(source(tmp_path / "e.nc"))) == [1.0, 2.0, 3.0]  # labels are starts
    assert hours(load_only(source(tmp_path / "e.nc", time_label="end"))) == [0.0, 1.0, 2.0]


def test_descending_file_reads_like_its_ascending_twin(tmp_path):
    data = field(4, members=2)
    write_nc(tmp_path / "asc.nc", data, [0, 1, 2, 3], ref_hours=0)
    write_nc(tmp_path / "desc.nc", data[:, ::-1], [3, 2, 1, 0], ref_hours=0)
    a = load_only(source(tmp_path / "asc.nc"))
    d = load_only(source(tmp_path / "desc.nc"))
    xr.testing.assert_identical(a.drop_attrs(), d.drop_attrs())
    assert hours(d) == [0.0, 1.0, 2.0, 3.0]
    np.testing.assert_allclose(d.values, data, rtol=1e-6)


def test_descending_bounds_and_end_labels(tmp_path):
    data = field(3)
    write_nc(tmp_path / "db.nc", data[::-1], [3, 2, 1], bounds_hours=[[3, 2], [2, 1], [1, 0]])
    da = load_only(source(tmp_path / "db.nc"))
    assert hours(da) == [0.0, 1.0, 2.0]
    np.testing.assert_allclose(da.values[0], data, rtol=1e-6)


@pytest.mark.parametrize("name, hours_, bounds, match", [
    ("dup", [0, 0, 0], None, r"time 2025-11-14T00:00Z appears 3 times"),
    ("gap", [0, 1, 3, 4], None,
     r"not regular: from 2025-11-14T01:00Z to 2025-11-14T03:00Z is 2 h, the others 1 h"),
    ("unequal", [1, 2, 4], [[0, 1], [1, 2], [2, 4]],
     r"unequal lengths: 2025-11-14T02:00Z to 2025-11-14T04:00Z is 2 h, the first 1 h"),
    ("overlap", [1, 2, 3], [[0, 1.5], [0.5, 2], [2, 3.5]],
     r"time steps overlap: 2025-11-14T00:00Z to 2025-11-14T01:30Z"),
    ("bgap", [1, 3], [[0, 1], [2, 3]], r"gap from 2025-11-14T01:00Z to 2025-11-14T02:00Z"),
    ("outside", [1, 5], [[0, 1], [1, 2]], r"time 2025-11-14T05:00Z lies outside its bounds"),
])
def test_broken_time_axes_are_skipped_with_the_reason(tmp_path, name, hours_, bounds, match):
    f = write_nc(tmp_path / f"{name}.nc", field(len(hours_)), hours_, bounds_hours=bounds)
    src = source(tmp_path)
    assert src.issues() == []
    (msg,) = src.skipped
    assert msg.startswith(f"{f}: ")
    assert re.search(match, msg), msg
    with pytest.raises(IngestError, match=match):
        src.load(ForecastIssue(T0, f), site_grid())


@pytest.mark.parametrize("tattrs, match", [
    ({"units": None}, r"time variable 'time' has no units attribute"),
    ({"units": "fortnights since 2025-11-14"}, (r"has units 'fortnights since 2025-11-14', which are "
                                               r"not CF time units")),
    ({"units": "hours since yesterday"}, r"cannot be decoded as 'hours since yesterday'"),
    ({"calendar": "360_day"}, r"uses calendar '360_day'"),
])
def test_undecodable_time_is_skipped(tmp_path, tattrs, match):
    f = write_nc(tmp_path / "t.nc", field(2), [0, 1], time_attrs=tattrs)
    src = source(tmp_path)
    assert src.issues() == [] and len(src.skipped) == 1
    assert str(f) in src.skipped[0]
    assert re.search(match, src.skipped[0]), src.skipped[0]
    with pytest.raises(IngestError, match=match):
        src.load(ForecastIssue(T0, f), site_grid())


def test_reference_time(tmp_path):
    # issued after the first step's start (a nowcast that also covers the last hours): fine
    write_nc(tmp_path / "ok.nc", field(4), [0, 1, 2, 3], ref_hours=2.5)
    src = source(tmp_path / "ok.nc")
    (issue,) = src.issues()
    assert issue.issued == T0 + timedelta(hours=2.5)
    # issued after the last valid time: not a forecast of these times. The catalogue reads
    # the reference time alone (cheap for folders of many issues); loading checks the axis
    # and refuses the file, so a cycle falls back to the issue before it
    f = write_nc(tmp_path / "late.nc", field(4), [0, 1, 2, 3], ref_hours=4)
    src = source(tmp_path / "late.nc")
    (issue,) = src.issues()
    assert issue.issued == T0 + timedelta(hours=4)
    with pytest.raises(IngestError) as err:
        load_only(src)
    assert str(err.value) == (f"{f}: forecast_reference_time 2025-11-14T04:00Z is after the last valid "
                              f"time 2025-11-14T03:00Z; the file cannot be a forecast issued then")


def test_single_step_file_uses_interval_minutes(tmp_path):
    write_nc(tmp_path / "one.nc", np.full((1, NY, NX), 1.5), [0], units="mm")
    assert load_only(source(tmp_path / "one.nc")).attrs["interval_s"] == 3600.0
    da = load_only(source(tmp_path / "one.nc", interval_minutes=30))
    assert da.attrs["interval_s"] == 1800.0
    np.testing.assert_allclose(da.values, 3.0, rtol=1e-6)  # 1.5 mm in 30 min


# ---------------------------------------------------------------------- values
def test_implausible_values_are_filled_from_their_neighbour_and_counted(tmp_path):
    """Whole edge rows and columns are flagged, so every flagged value has exactly one
    nearest good value: the one next to it inwards."""
    data = field(3, members=2)
    want = data.copy()
    data[1, 2, :, 0] = 1.0e6  # member 1, step 2: the west column is garbage ...
    want[1, 2, :, 0] = want[1, 2, :, 1]  # ... and takes the values one column east
    data[0, 0, 0, :] = np.nan  # member 0, step 0: the north row is missing
    want[0, 0, 0, :] = want[0, 0, 1, :]
    data[0, 1, :, -1] = [np.inf, -np.inf, np.inf, -np.inf, np.inf]  # the east column, +/-inf
    want[0, 1, :, -1] = want[0, 1, :, -2]
    data[1, 1, -1, :] = -5.0  # the south row: far below zero, not model rounding
    want[1, 1, -1, :] = want[1, 1, -2, :]
    data[1, 0, 0, 0] = -0.004  # model rounding: becomes 0, not flagged
    want[1, 0, 0, 0] = 0.0
    f = write_nc(tmp_path / "rain_2025.nc", data, [0, 1, 2])
    da = load_only(source(tmp_path / "rain_2025.nc"))
    np.testing.assert_allclose(da.values, want, rtol=1e-5)
    n = data.size
    assert da.attrs["qc"] == {"missing": NX, "implausible": NY + 3 + 2 + NX,
                              "filled": NX + NY + 3 + 2 + NX, "cells": n}
    assert da.attrs["problems"] == [
        (f"{f}: {NX} of {n} rain values are missing (NaN or fill value) and were filled from "
         f"their nearest neighbours"),
        (f"{f}: {NY + 3} of {n} rain values above 400 mm/h (max inf mm/h) were excluded and "
         f"filled from their nearest neighbours"),
        (f"{f}: {2 + NX} of {n} rain values below -0.01 mm/h (min -inf mm/h) were excluded and "
         f"filled from their nearest neighbours")]


def test_clean_file_has_empty_problems(tmp_path):
    write_nc(tmp_path / "c.nc", field(2), [0, 1])
    da = load_only(source(tmp_path / "c.nc"))
    assert da.attrs["problems"] == []
    assert da.attrs["qc"] == {"missing": 0, "implausible": 0, "filled": 0, "cells": 2 * NY * NX}


def test_limits_come_from_the_site(tmp_path):
    data = field(2)
    data[0, 0, :] = 60.0  # the north row of the first step: a heavy shower, or not
    write_nc(tmp_path / "l.nc", data, [0, 1])
    np.testing.assert_allclose(load_only(source(tmp_path / "l.nc")).values[0], data, rtol=1e-6)
    da = load_only(source(tmp_path / "l.nc", limits=Limits(rain_max_mm_h=50.0)))
    np.testing.assert_allclose(da.values[0, 0, 0], data[0, 1], rtol=1e-6)
    assert da.attrs["qc"]["implausible"] == NX


def test_a_mostly_implausible_file_is_refused(tmp_path):
    write_nc(tmp_path / "rain_2025.nc", np.full((2, NY, NX), 1.0e6), [0, 1])
    src = source(tmp_path)
    with pytest.raises(IngestError, match=r"rain_2025\.nc: 100% of rain values are implausible "
                                          r"\(above 400 mm/h; max 1e\+06 mm/h\); the file is refused"):
        load_only(src)
    # just over the share allowed (limits.max_flagged_share = 0.5): 31 of 60 values missing
    data = field(2)
    data.reshape(-1)[:31] = np.nan
    write_nc(tmp_path / "rain_2025.nc", data, [0, 1])
    with pytest.raises(IngestError, match=r"rain_2025\.nc: 51\.6% of rain values are missing"):
        load_only(source(tmp_path))
    # a unit mistake (mm/s for mm/h) makes everything implausible: refused, not a flood
    write_nc(tmp_path / "rain_2025.nc", field(2), [0, 1], units="mm/s")
    with pytest.raises(IngestError, match=r"100% of rain values are implausible \(above 400 mm/h; "
                                          r"max 4\.12e\+03 mm/h\)"):
        load_only(source(tmp_path))


def test_a_field_without_any_good_value_is_refused(tmp_path):
    data = field(4, members=2)
    data[1, 2] = np.nan  # 1 of 8 fields: 12.5 % of the values, under the share
    f = write_nc(tmp_path / "hole.nc", data, [0, 1, 2, 3])
    with pytest.raises(IngestError, match=rf"{f}: member 1, step 2025-11-14T02:00Z has no valid "
                                          r"rain value"):
        load_only(source(tmp_path))


# ---------------------------------------------------------------------- files that are not NetCDF
def test_garbage_files_are_skipped_and_named(tmp_path):
    good = write_nc(tmp_path / "good.nc", field(2), [0, 1])
    (tmp_path / "empty.nc").write_bytes(b"")
    (tmp_path / "page.nc").write_text("<!DOCTYPE html><html><body>502 Bad Gateway</body></html>")
    (tmp_path / "latin1.nc").write_bytes("précipitation\n".encode("latin-1") + bytes(range(256)))
    data = good.read_bytes()
    (tmp_path / "truncated.nc").write_bytes(data[: len(data) // 2])
    src = source(tmp_path)
    assert [i.path for i in src.issues()] == [good]
    assert len(src.skipped) == 4
    by_name = {m.split(":")[0].rsplit("/", 1)[-1]: m for m in src.skipped}
    assert "empty (0 bytes)" in by_name["empty.nc"]
    assert "HTML or XML page" in by_name["page.nc"]
    for name in ("latin1.nc", "truncated.nc"):
        assert "not a readable NetCDF file" in by_name[name]
    for name in by_name:
        with pytest.raises(IngestError, match=rf"{name}: "):
            src.load(ForecastIssue(T0, tmp_path / name), site_grid())


def test_netcdf3_classic_files_are_read(tmp_path):
    write_nc(tmp_path / "classic.nc", field(2), [0, 1], units="in/h", engine="scipy")
    assert (tmp_path / "classic.nc").read_bytes()[:3] == b"CDF"
    np.testing.assert_allclose(load_only(source(tmp_path / "classic.nc")).values[0],
                               25.4 * field(2), rtol=1e-5)


def test_demo_forecast_declares_its_units():
    """The demo site's files say mm h-1 and time: mean; its config's "mm/h" agrees."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[2] / "sample_data" / "demo" / "forecasts"
    f = min(folder.glob("rain_*.nc"))
    with xr.open_dataset(f, engine="h5netcdf", decode_times=False) as ds:
        assert rain_unit(ds["precipitation_rate"].attrs["units"]).same_meaning(rain_unit("mm/h"))
    src = get_source("netcdf", path=folder, pattern="rain_*.nc", units="mm/h")
    assert src.issues() and not src.skipped


# ---------------------------------------------------------------------- GRIB
needs_grib = pytest.mark.skipif(importlib.util.find_spec("cfgrib") is None,
                                reason="cfgrib/eccodes (the 'grib' extra) are not installed")


def write_grib(path, values: np.ndarray, *, valid: datetime, param: int, start_step: int = 0,
               end_step: int = 1, lon0=4.0, lat0=51.8, d=0.01) -> None:
    """One total-precipitation message over steps start-end (h) valid at ``valid``, with
    ecCodes. paramId 228 is ECMWF's tp (m), 228228 WMO's total precipitation (kg m-2)."""
    import eccodes

    ny, nx = values.shape
    base = valid - timedelta(hours=end_step)
    gid = eccodes.codes_grib_new_from_samples("regular_ll_sfc_grib2")
    try:
        for key, value in (("Ni", nx), ("Nj", ny), ("latitudeOfFirstGridPointInDegrees", lat0),
                           ("longitudeOfFirstGridPointInDegrees", lon0),
                           ("latitudeOfLastGridPointInDegrees", lat0 - (ny - 1) * d),
                           ("longitudeOfLastGridPointInDegrees", lon0 + (nx - 1) * d),
                           ("iDirectionIncrementInDegrees", d), ("jDirectionIncrementInDegrees", d),
                           ("dataDate", int(f"{base:%Y%m%d}")), ("dataTime", int(f"{base:%H%M}")),
                           ("paramId", param), ("stepType", "accum"), ("startStep", start_step),
                           ("endStep", end_step)):
            eccodes.codes_set(gid, key, value)
        eccodes.codes_set_values(gid, values.astype(np.float64).ravel())
        with open(path, "wb") as fh:
            eccodes.codes_write(gid, fh)
    finally:
        eccodes.codes_release(gid)


GRIB_GRID = {"dx": 250.0, "x0": 600_000.0, "y0": 5_700_000.0, "nx": 40, "ny": 30}  # inside 4.0-4.8 E, 51.2-51.8 N


@needs_grib
def test_ecmwf_grib_tp_in_metres_is_1000_mm(tmp_path):
    valid = datetime(2025, 11, 14, 7, tzinfo=UTC)
    write_grib(tmp_path / "tp.grib2", np.full((60, 80), 0.002), valid=valid, param=228)
    src = get_source("grib", path=tmp_path)
    (issue,) = src.issues()
    da = src.load(issue, site_grid(**GRIB_GRID))
    np.testing.assert_allclose(da.values, 2.0, rtol=1e-5)  # 0.002 m in 1 h = 2 mm/h
    assert da["time"].values[0] == np.datetime64("2025-11-14T06:00", "ns")
    assert da.attrs["interval_s"] == 3600.0 and da.attrs["problems"] == []
    with pytest.raises(IngestError, match=r"tp\.grib2: GRIB variable 'tp' has units 'm'.*but "
                                          r"sources\.forecast\.units is 'mm'"):
        get_source("grib", path=tmp_path, units="mm").load(issue, site_grid(**GRIB_GRID))


@needs_grib
def test_grib_interval_comes_from_the_step_range(tmp_path):
    valid = datetime(2025, 11, 14, 12, tzinfo=UTC)
    write_grib(tmp_path / "tp6.grib2", np.full((60, 80), 6.0), valid=valid, param=228228,
               start_step=0, end_step=6)
    src = get_source("grib", path=tmp_path)
    (issue,) = src.issues()
    da = src.load(issue, site_grid(**GRIB_GRID))
    np.testing.assert_allclose(da.values, 1.0, rtol=1e-5)  # 6 kg m-2 = 6 mm over 6 h
    assert da["time"].values[0] == np.datetime64("2025-11-14T06:00", "ns")
    assert da.attrs["interval_s"] == 6 * 3600.0
    src = get_source("grib", path=tmp_path, interval_minutes=60)
    assert src.issues() == []
    assert "'tp' covers steps 0-6 (360 min, stepType accum), but interval_minutes is 60" \
        in src.skipped[0]


@needs_grib
def test_garbage_grib_is_skipped(tmp_path):
    (tmp_path / "a.grib2").write_text("<html>404 Not Found</html>")
    (tmp_path / "b.grib2").write_bytes(b"")
    src = get_source("grib", path=tmp_path)
    assert src.issues() == [] and len(src.skipped) == 2
    assert all(": not a readable GRIB file" in m for m in src.skipped)


# ---------------------------------------------------------------------- GeoTIFF
def write_tif(path, values: np.ndarray, *, unit: str | None = None, nodata=None):
    ny, nx = values.shape
    with rasterio.open(path, "w", driver="GTiff", width=nx, height=ny, count=1, dtype="float32",
                       crs=UTM31, transform=Affine(DX, 0, X0, 0, -DX, Y0), nodata=nodata) as ds:
        ds.write(values.astype(np.float32), 1)
        if unit is not None:
            ds.set_band_unit(1, unit)


def test_geotiff_band_unit_decides(tmp_path):
    write_tif(tmp_path / "202511140600.tif", field(1)[0], unit="in/h")
    with rasterio.open(tmp_path / "202511140600.tif") as ds:
        assert ds.units == ("in/h",)
    src = get_source("geotiff", path=tmp_path)
    (issue,) = src.issues()
    da = src.load(issue, site_grid())
    np.testing.assert_allclose(da.values[0, 0], 25.4 * field(1)[0], rtol=1e-5)
    with pytest.raises(IngestError, match=r"202511140600\.tif: band 1 has units 'in/h'.*but "
                                          r"sources\.forecast\.units is 'mm/h'"):
        get_source("geotiff", path=tmp_path, units="mm/h").load(issue, site_grid())


def test_geotiff_without_unit_needs_the_config(tmp_path):
    write_tif(tmp_path / "202511140600.tif", field(1)[0])
    src = get_source("geotiff", path=tmp_path)
    (issue,) = src.issues()
    with pytest.raises(IngestError, match=r"202511140600\.tif: band 1 has no unit; .*set "
                                          r"sources\.forecast\.units"):
        src.load(issue, site_grid())
    # the explicit path: depths per interval with the interval's length
    da = get_source("geotiff", path=tmp_path, units="mm", interval_minutes=15).load(issue, site_grid())
    np.testing.assert_allclose(da.values[0, 0], 4.0 * field(1)[0], rtol=1e-5)
    # a band unit that is a depth needs interval_minutes too
    write_tif(tmp_path / "202511140600.tif", field(1)[0], unit="mm")
    with pytest.raises(IngestError, match=r"band 1 is in 'mm', a depth per time step, but the step "
                                          r"length is unknown; set interval_minutes"):
        get_source("geotiff", path=tmp_path).load(issue, site_grid())


def test_geotiff_implausible_values_are_filled_nodata_stays_missing(tmp_path):
    values = field(1)[0].copy()
    values[:, 0] = 9999.0  # a radar artefact along the west edge: filled from one column east
    values[0, 5] = -1.0  # the nodata value: missing, not implausible, not filled
    write_tif(tmp_path / "202511140600.tif", values, unit="mm/h", nodata=-1.0)
    src = get_source("geotiff", path=tmp_path, max_missing=0.05)
    (issue,) = src.issues()
    da = src.load(issue, site_grid())
    np.testing.assert_allclose(da.values[0, 0, :, 0], values[:, 1], rtol=1e-6)
    assert da.values[0, 0, 0, 5] == 0.0  # no data: counts as dry, within max_missing
    np.testing.assert_allclose(da.values[0, 0, 1:, 1:], values[1:, 1:], rtol=1e-6)
    assert da.attrs["qc"] == {"missing": 1, "implausible": NY, "filled": NY, "cells": NY * NX}
    assert da.attrs["problems"] == [
        (f"{tmp_path / '202511140600.tif'}: {NY} of 30 rain values above 400 mm/h (max 1e+04 mm/h) "
         f"were excluded and filled from their nearest neighbours"),
        (f"{tmp_path / '202511140600.tif'}: 1 of 30 site cells have no rain data (outside the "
         f"image or missing there) and count as dry")]


def test_geotiff_that_is_text_or_empty_is_an_ingest_error(tmp_path):
    (tmp_path / "202511140600.tif").write_text("this is not a GeoTIFF\n")
    (tmp_path / "202511140700.tif").write_bytes(b"")
    src = get_source("geotiff", path=tmp_path, units="mm/h")
    issues = src.issues()
    assert len(issues) == 2  # their names are all the catalogue reads
    with pytest.raises(IngestError, match=r"202511140600\.tif: not a readable GeoTIFF \(\d+ bytes, "
                                          r"starting 'this is not a GeoTIFF"):
        src.load(issues[0], site_grid())
    with pytest.raises(IngestError, match=r"202511140700\.tif: not a readable GeoTIFF \(the file "
                                          r"is empty"):
        src.load(issues[1], site_grid())


def test_geotiff_all_implausible_is_refused(tmp_path):
    write_tif(tmp_path / "202511140600.tif", np.full((NY, NX), 1.0e6), unit="mm/h")
    src = get_source("geotiff", path=tmp_path)
    with pytest.raises(IngestError, match=r"202511140600\.tif: 100% of rain values are implausible"):
        src.load(src.issues()[0], site_grid())


# ---------------------------------------------------------------------- KNMI radar
KNMI_DIR = ("data", "storms", "knmi_radar_20100826")
KNMI_SITE = {"dx": 2000.0, "x0": 205_000.0, "y0": 490_000.0, "nx": 10, "ny": 10,
             "crs": CRS.from_epsg(28992)}


def test_knmi_units_setting_must_agree_with_the_quantity(tmp_path):
    real = min(shared_path(*KNMI_DIR).glob("*.h5"))
    src = get_source("odim_h5", path=real, units="mm")
    (issue,) = src.issues()
    da = src.load(issue, site_grid(**KNMI_SITE))
    assert da.attrs["problems"] == [] and da.attrs["qc"]["implausible"] == 0
    assert da.attrs["qc"]["missing"] > 0  # the corners outside the radar image
    with pytest.raises(IngestError, match=rf"{real.name}: the image is "
                                          r"ACCUMULATED_PRECIPITATION_\[MM\].*sources\.forecast\.units "
                                          r"is 'mm/h'"):
        get_source("odim_h5", path=real, units="mm/h").load(issue, site_grid(**KNMI_SITE))
    with pytest.raises(IngestError, match=r"sources\.forecast\.units is 'dBZ'"):
        get_source("odim_h5", path=real, units="dBZ").load(issue, site_grid(**KNMI_SITE))


def test_knmi_implausible_pixels_are_filled(tmp_path):
    """A clutter spike (50 mm in 5 min = 600 mm/h) in a 3 x 3 block of 1 mm / 5 min: the
    file reads exactly like its twin without the spike."""
    from rasterio.warp import transform as warp_transform

    from tests.warning.test_grid_sources import KNMI_CRS, KNMI_TRANSFORM

    real = min(shared_path(*KNMI_DIR).glob("*.h5"))
    grid = site_grid(**{**KNMI_SITE, "dx": 250.0, "nx": 40, "ny": 40})
    sx, sy = warp_transform(grid.crs, KNMI_CRS, [grid.x_coords[20]], [grid.y_coords[20]])
    col, row = (int(v) for v in ~KNMI_TRANSFORM @ (sx[0], sy[0]))
    loaded = {}
    for name, centre in (("clean", 100), ("spike", 5000)):
        (tmp_path / name).mkdir()
        f = tmp_path / name / real.name
        shutil.copy(real, f)
        f.chmod(0o644)
        with h5py.File(f, "r+") as h:
            pv = h["image1/image_data"][...]
            pv[row - 1:row + 2, col - 1:col + 2] = 100
            pv[row, col] = centre
            h["image1/image_data"][...] = pv
        src = get_source("odim_h5", path=f)
        loaded[name] = src.load(src.issues()[0], grid)
    np.testing.assert_array_equal(loaded["spike"].values, loaded["clean"].values)
    assert loaded["clean"].attrs["qc"]["implausible"] == 0
    qc = loaded["spike"].attrs["qc"]
    assert qc["implausible"] == 1 and qc["filled"] == 1
    assert qc["missing"] == loaded["clean"].attrs["qc"]["missing"]
    (problem,) = loaded["spike"].attrs["problems"]
    assert "1 of 535500 rain values above 400 mm/h (max 600 mm/h) were excluded" in problem


def test_empty_knmi_file_is_skipped(tmp_path):
    (tmp_path / "RAD_NL25_RAP_5min_201008260000.h5").write_bytes(b"")
    src = get_source("odim_h5", path=tmp_path)
    assert src.issues() == []
    assert "RAD_NL25_RAP_5min_201008260000.h5: not a readable HDF5 file (the file is empty" in src.skipped[0]
