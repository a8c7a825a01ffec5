"""Ingest at the edge: reprojection, units, issue selection, QC flags and clear errors."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from warning.errors import IngestError
from warning.ingest import get_source, source_names
from warning.ingest.gauge_csv import QC_DUPLICATE, QC_GOOD, QC_RANGE, QC_RATE, latest_good

UTC = timezone.utc


def site_grid(nx=40, ny=30, dx=250.0, x0=600_000.0, y0=5_700_000.0):
    t = Affine(dx, 0, x0, 0, -dx, y0)
    return SimpleNamespace(nx=nx, ny=ny, dx=dx, transform=t, crs=CRS.from_epsg(32631),
                           x_coords=x0 + (np.arange(nx) + 0.5) * dx,
                           y_coords=y0 - (np.arange(ny) + 0.5) * dx)


def write_forecast(path, issue, field, *, members=None, units="mm h-1", var="precipitation_rate",
                   lonlat=True):
    nt = field.shape[-3]
    times = [np.datetime64(issue.replace(tzinfo=None), "ns") + np.timedelta64(h, "h") for h in range(nt)]
    lats = np.linspace(51.45, 51.30, field.shape[-2])
    lons = np.linspace(4.35, 4.60, field.shape[-1])
    dims = ("time", "lat", "lon") if lonlat else ("time", "y", "x")
    coords = {"time": times, dims[1]: lats, dims[2]: lons}
    if members:
        dims = ("member",) + dims
        coords["member"] = np.arange(members)
    ds = xr.Dataset({var: (dims, field.astype(np.float32), {"units": units})}, coords=coords)
    ds["forecast_reference_time"] = np.datetime64(issue.replace(tzinfo=None), "ns")
    ds.to_netcdf(path, engine="h5netcdf")
    return path


def test_registry_lists_valid_names():
    assert {"netcdf", "gauge_csv"} <= set(source_names())
    with pytest.raises(ValueError, match="valid sources: .*gauge_csv.*netcdf"):
        get_source("carrier-pigeon")


def test_uniform_rain_survives_reprojection_and_units(tmp_path):
    issue = datetime(2025, 11, 14, 6, tzinfo=UTC)
    f = write_forecast(tmp_path / "a.nc", issue, np.full((3, 16, 26), 2.0) / 3600.0, units="mm/s")
    src = get_source("netcdf", path=tmp_path, pattern="*.nc", units="mm/s")
    (only,) = src.issues()
    assert only.issued == issue and only.path == f
    da = src.load(only, site_grid())
    assert da.dims == ("member", "time", "y", "x") and da.dtype == np.float32
    np.testing.assert_allclose(da.values, 2.0, rtol=1e-5)  # mm/s -> mm/h, any CRS -> site CRS


def test_gradient_is_interpolated_not_shifted(tmp_path):
    """A west-east rain gradient keeps its areal mean after reprojection (bilinear, finer grid)."""
    issue = datetime(2025, 11, 14, 6, tzinfo=UTC)
    lon = np.linspace(4.35, 4.60, 26)
    field = np.broadcast_to(10.0 * (lon - 4.35) / 0.25, (2, 16, 26)).copy()
    write_forecast(tmp_path / "g.nc", issue, field)
    src = get_source("netcdf", path=tmp_path)
    grid = site_grid()
    da = src.load(src.issues()[0], grid)
    from rasterio.warp import transform
    xs = grid.x_coords
    lons, _ = transform(grid.crs, "EPSG:4326", list(xs), [grid.y_coords[15]] * xs.size)
    expected = 10.0 * (np.asarray(lons) - 4.35) / 0.25
    np.testing.assert_allclose(da.values[0, 0, 15], expected, atol=0.05)


def test_latest_issue_before_time_never_peeks(tmp_path):
    base = datetime(2025, 11, 14, 0, tzinfo=UTC)
    for h in (0, 3, 6):
        write_forecast(tmp_path / f"f{h}.nc", base + timedelta(hours=h), np.ones((2, 4, 5)))
    src = get_source("netcdf", path=tmp_path)
    assert src.latest_before(base + timedelta(hours=5, minutes=59)).issued == base + timedelta(hours=3)
    assert src.latest_before(base + timedelta(hours=6)).issued == base + timedelta(hours=6)
    assert src.latest_before(base - timedelta(minutes=1)) is None


def test_ensemble_members_kept(tmp_path):
    issue = datetime(2025, 11, 14, 0, tzinfo=UTC)
    field = np.stack([np.full((2, 4, 5), float(m)) for m in range(6)])
    write_forecast(tmp_path / "e.nc", issue, field, members=6)
    src = get_source("netcdf", path=tmp_path)
    da = src.load(src.issues()[0], site_grid(nx=8, ny=6, dx=500))
    assert da.sizes["member"] == 6
    np.testing.assert_allclose(da.values[:, 0].mean(axis=(1, 2)), np.arange(6), atol=1e-5)


def test_clear_errors(tmp_path):
    issue = datetime(2025, 11, 14, 0, tzinfo=UTC)
    write_forecast(tmp_path / "v.nc", issue, np.ones((2, 4, 5)), var="rain")
    src = get_source("netcdf", path=tmp_path / "v.nc")
    with pytest.raises(IngestError, match=r"v\.nc: variable 'precipitation_rate' missing; the file has .*rain"):
        src.load(src.issues()[0], site_grid())
    (tmp_path / "corrupt.nc").write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 20)
    bad = get_source("netcdf", path=tmp_path / "corrupt.nc")
    assert bad.issues() == []  # logged and skipped, the service keeps going
    with pytest.raises(IngestError, match=r"corrupt\.nc: not a readable NetCDF file"):
        bad._issue_time(tmp_path / "corrupt.nc")
    write_forecast(tmp_path / "xy.nc", issue, np.ones((2, 4, 5)), lonlat=False)
    xy = get_source("netcdf", path=tmp_path / "xy.nc")
    with pytest.raises(IngestError, match="without a CRS"):
        xy.load(xy.issues()[0], site_grid())
    write_forecast(tmp_path / "far.nc", issue, np.ones((2, 4, 5)))
    far = get_source("netcdf", path=tmp_path / "far.nc")
    with pytest.raises(IngestError, match="does not cover the site"):
        far.load(far.issues()[0], site_grid(x0=700_000.0))


CSV = """station,time,stage_ft
A,2025-11-14T00:00:00Z,3.0
A,2025-11-14T00:15:00Z,3.1
A,2025-11-14T00:30:00Z,9.9
A,2025-11-14T00:45:00Z,3.2
A,2025-11-14T01:00:00Z,3.3
A,2025-11-14T01:00:00Z,3.9
A,2025-11-14T01:15:00Z,99
B,2025-11-14T00:00:00+01:00,1.0
"""


def test_gauge_csv_units_qc_and_timezones(tmp_path):
    f = tmp_path / "g.csv"
    f.write_text(CSV)
    ds = get_source("gauge_csv", path=f, units="ft").read({"A": (0.0, 10.0)})
    assert str(ds["time"].values[0]).startswith("2025-11-13T23:00")  # B's +01:00 reading, in UTC
    a = ds.sel(station="A", time=slice("2025-11-14T00:00", None))
    assert a["stage"].values[0] == pytest.approx(3.0 * 0.3048)
    qc = a["qc"].values
    assert qc[0] == QC_GOOD and qc[1] == QC_GOOD
    # 9.9 ft 15 min after 3.1 ft: (9.9 - 3.1) x 0.3048 = 2.07 m in 0.25 h = 8.3 m/h, more than
    # the 5 m/h any river rises; the rate check runs before the spike check (it must not look
    # ahead), so the reading is set aside as a rate, not a spike
    assert qc[2] == QC_RATE
    assert qc[4] & QC_DUPLICATE  # two different values at 01:00
    assert qc[5] & QC_RANGE  # 99 ft > 10 m
    b = ds.sel(station="B")
    assert b["qc"].values[0] == QC_GOOD and b["stage"].values[0] == pytest.approx(0.3048)


def test_latest_good_reading_and_staleness(tmp_path):
    f = tmp_path / "g.csv"
    f.write_text(CSV)
    ds = get_source("gauge_csv", path=f, units="ft").read({"A": (0.0, 10.0)})
    at = datetime(2025, 11, 14, 1, 20, tzinfo=UTC)
    value, rise, when, problem = latest_good(ds, "A", at, stale_after_minutes=90)
    assert when == datetime(2025, 11, 14, 0, 45, tzinfo=UTC)  # spike, duplicate, range skipped
    assert value == pytest.approx(3.2 * 0.3048)
    assert rise == pytest.approx((3.2 - 3.0) * 0.3048 / 0.75)
    assert problem is None
    value, _, _, problem = latest_good(ds, "A", at + timedelta(hours=3), stale_after_minutes=90)
    assert np.isnan(value) and "stale" in problem


def test_gauge_csv_errors(tmp_path):
    f = tmp_path / "g.csv"
    f.write_text("station,time,stage\nA,2025-11-14 00:00,1.0\n")
    with pytest.raises(IngestError, match=r"g\.csv:2: time .* has no time zone"):
        get_source("gauge_csv", path=f).read()
    f.write_text("when,value\n")
    with pytest.raises(IngestError, match="needs columns station, time"):
        get_source("gauge_csv", path=f).read()
