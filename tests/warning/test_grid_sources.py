"""Rain frames from KNMI radar HDF5, GeoTIFF sequences and GRIB2: values, units, volume, errors."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from datetime import datetime, timezone
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from tests.conftest import shared_path
from warning.errors import IngestError
from warning.ingest import get_source, source_names

UTC = timezone.utc
KNMI_DIR = ("data", "storms", "knmi_radar_20100826")
#: KNMI's polar stereographic grid in metres (the files write the ellipsoid axes in km)
KNMI_CRS = CRS.from_proj4("+proj=stere +lat_0=90 +lon_0=0 +lat_ts=60 +a=6378137 +b=6356752 "
                          "+towgs84=0,0,0,0,0,0,0 +units=m")
KNMI_TRANSFORM = Affine(1000.0, 0.0, 0.0, 0.0, -1000.0, -3_650_000.0)
EQUAL_AREA = CRS.from_epsg(3035)  # ETRS89 LAEA: true areas for the volume check


def make_grid(dx: float, x0: float, y0: float, nx: int, ny: int, crs: CRS | int = 28992):
    crs = crs if isinstance(crs, CRS) else CRS.from_epsg(crs)
    return SimpleNamespace(nx=nx, ny=ny, dx=dx, transform=Affine(dx, 0, x0, 0, -dx, y0), crs=crs,
                           x_coords=x0 + (np.arange(nx) + 0.5) * dx,
                           y_coords=y0 - (np.arange(ny) + 0.5) * dx)


def cell_areas(transform: Affine, crs: CRS, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """True area (m2) of grid cells, from their corners projected to an equal-area CRS."""
    corners = [(0, 0), (1, 0), (1, 1), (0, 1)]
    xs, ys = [], []
    for dc, dr in corners:
        x, y = transform @ (cols + dc, rows + dr)
        ex, ey = warp_transform(crs, EQUAL_AREA, np.ravel(x), np.ravel(y))
        xs.append(np.asarray(ex))
        ys.append(np.asarray(ey))
    area = sum(xs[i] * ys[(i + 1) % 4] - xs[(i + 1) % 4] * ys[i] for i in range(4))
    return np.abs(area).reshape(np.shape(rows)) / 2.0


def knmi_mm_h(path) -> np.ndarray:
    """Independent read: mm/h straight from the HDF5 with the provenance's formula."""
    with h5py.File(path, "r") as h:
        pv = h["image1/image_data"][...]
        assert h["image1/calibration"].attrs["calibration_formulas"] == b"GEO=0.01*PV+0.0"
    mm = np.where(pv == 65535, np.nan, pv * 0.01)  # mm per 5 min
    return mm * 12.0


# ---------------------------------------------------------------------- registry
def test_registry_has_the_grid_sources():
    assert {"odim_h5", "geotiff", "grib"} <= set(source_names())


# ---------------------------------------------------------------------- real KNMI frames
@pytest.fixture(scope="module")
def knmi():
    folder = shared_path(*KNMI_DIR)
    return get_source("odim_h5", path=folder)


def test_knmi_catalogue_and_times(knmi):
    issues = knmi.issues()
    assert len(issues) == 92 and not knmi.skipped
    # the file time is the end of the 5-min interval; ``time`` labels its start
    assert issues[0].issued == datetime(2010, 8, 26, 0, 0, tzinfo=UTC)
    assert issues[-1].issued == datetime(2010, 8, 26, 7, 35, tzinfo=UTC)
    at = datetime(2010, 8, 26, 4, 42, tzinfo=UTC)
    assert knmi.latest_before(at).path.name == "RAD_NL25_RAP_5min_201008260440.h5"


def test_knmi_values_match_an_independent_read(knmi):
    """On a window of the radar's own grid the values are the file's, 0.01 PV x 12 mm/h."""
    r0, c0, n = 380, 420, 80  # around Hupsel, inside the radar image
    x0, y0 = KNMI_TRANSFORM @ (c0, r0)
    grid = make_grid(1000.0, x0, y0, n, n, KNMI_CRS)
    for name in ("201008260440", "201008260445", "201008260600"):
        issue = next(i for i in knmi.issues() if name in i.path.name)
        da = knmi.load(issue, grid)
        assert da.dims == ("member", "time", "y", "x") and da.dtype == np.float32
        assert da.attrs["units"] == "mm/h"
        start = np.datetime64(datetime.strptime(name, "%Y%m%d%H%M"), "ns") - np.timedelta64(5, "m")
        assert da["time"].values[0] == start
        want = knmi_mm_h(issue.path)[r0:r0 + n, c0:c0 + n]
        assert np.isfinite(want).all() and want.max() > 1.0
        np.testing.assert_allclose(da.values[0, 0], want, rtol=1e-5, atol=1e-5)


def _source_volume_inside(path, grid) -> float:
    """Rain volume (mm x m2 per h) of the radar inside the site rectangle, by supersampling.

    Each radar pixel is split into 8 x 8 sub-pixels whose centres are tested against the
    site rectangle in the site CRS; the pixel's true area comes from ``cell_areas``.
    """
    rate = knmi_mm_h(path)
    # radar pixels near the site: bounding box of the site corners in radar pixel space
    left, top = grid.transform @ (0, 0)
    right, bottom = grid.transform @ (grid.nx, grid.ny)
    sx, sy = warp_transform(grid.crs, KNMI_CRS, [left, right, right, left], [top, top, bottom, bottom])
    cols, rows = ~KNMI_TRANSFORM @ (np.asarray(sx), np.asarray(sy))
    c0, c1 = int(np.floor(min(cols))) - 2, int(np.ceil(max(cols))) + 2
    r0, r1 = int(np.floor(min(rows))) - 2, int(np.ceil(max(rows))) + 2
    rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
    k = 8
    sub = (np.arange(k) + 0.5) / k
    frac = np.zeros(rr.shape)
    for dr in sub:
        for dc in sub:
            x, y = KNMI_TRANSFORM @ (cc + dc, rr + dr)
            gx, gy = warp_transform(KNMI_CRS, grid.crs, x.ravel(), y.ravel())
            gx, gy = np.asarray(gx).reshape(rr.shape), np.asarray(gy).reshape(rr.shape)
            frac += (gx > left) & (gx < right) & (gy < top) & (gy > bottom)
    frac /= k * k
    block = rate[r0:r1, c0:c1]
    assert np.isfinite(block[frac > 0]).all(), "the check region must lie inside the radar image"
    return float(np.nansum(block * frac * cell_areas(KNMI_TRANSFORM, KNMI_CRS, rr, cc)))


@pytest.mark.parametrize("dx, n, mode", [(2000.0, 35, "average"), (1000.0, 70, "average"),
                                         (250.0, 160, "bilinear")])
def test_knmi_volume_is_conserved_on_the_site_grid(knmi, dx, n, mode):
    """sum(rate x true cell area) over an RD site grid equals the radar's over the same area.

    Tolerance 0.5 %. The reference counts each radar pixel's true area (a nominal 1 km
    stereographic pixel covers only ~0.919 km2 at 52 degN, so ignoring the projection
    would already be off by ~9 %) times the share of it inside the site rectangle, found
    to 1/64 of a pixel. The area average is exact inside the region; what is left is at
    the region's edge, where GDAL approximates a site cell's footprint by a box in radar
    pixels (bilinear: where the interpolant spreads edge pixels across the boundary), plus
    the 1/64 sampling of edge pixels. Measured: 0.01-0.04 % for these frames.
    """
    from warning.ingest.grid_sources import _src_cell_size

    grid = make_grid(dx, 205_000.0, 490_000.0, n, n)  # Achterhoek / Hupsel area, RD New
    assert (_src_cell_size(KNMI_TRANSFORM, KNMI_CRS, (765, 700), grid) <= dx) == (mode == "average")
    rr, cc = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    area = cell_areas(grid.transform, grid.crs, rr, cc)
    for name in ("201008260440", "201008260445"):
        issue = next(i for i in knmi.issues() if name in i.path.name)
        da = knmi.load(issue, grid)
        got = float((da.values[0, 0] * area).sum())
        want = _source_volume_inside(issue.path, grid)
        assert want > 0
        assert got == pytest.approx(want, rel=0.005), (name, got / want - 1)


def test_knmi_load_window_stacks_frames(knmi):
    grid = make_grid(2000.0, 205_000.0, 490_000.0, 20, 20)
    da = knmi.load_window(datetime(2010, 8, 26, 4, 30, tzinfo=UTC),
                          datetime(2010, 8, 26, 5, 0, tzinfo=UTC), grid)
    assert da.dims == ("time", "y", "x") and da.sizes["time"] == 6
    assert np.all(np.diff(da["time"].values) == np.timedelta64(5, "m"))
    assert da["time"].values[0] == np.datetime64("2010-08-26T04:30", "ns")


def test_knmi_site_outside_the_image_is_an_error(knmi):
    grid = make_grid(1000.0, -2_000_000.0, 2_000_000.0, 10, 10, 3035)  # far out in the Atlantic
    with pytest.raises(IngestError, match="RAD_NL25_RAP_5min_201008260000.h5: no rain data"):
        knmi.load(knmi.issues()[0], grid)


# ---------------------------------------------------------------------- broken KNMI files
def test_truncated_hdf5_names_the_file(tmp_path):
    real = sorted(shared_path(*KNMI_DIR).glob("*.h5"))[0]
    data = real.read_bytes()
    bad = tmp_path / "RAD_NL25_RAP_5min_201008260000.h5"
    bad.write_bytes(data[: len(data) // 2])
    src = get_source("odim_h5", path=tmp_path)
    assert src.issues() == [] and str(bad) in src.skipped[0]
    with pytest.raises(IngestError, match=f"{bad}: .*HDF5"):
        src.load(SimpleNamespace(path=bad, issued=datetime(2010, 8, 26, tzinfo=UTC)), make_grid(1000, 0, 0, 2, 2))


def test_missing_attribute_and_unknown_crs_name_the_file(tmp_path):
    real = sorted(shared_path(*KNMI_DIR).glob("*.h5"))[0]
    grid = make_grid(1000.0, 205_000.0, 490_000.0, 5, 5)
    f1 = tmp_path / "RAD_NL25_RAP_5min_201008260000.h5"
    shutil.copy(real, f1)
    f1.chmod(0o644)
    with h5py.File(f1, "r+") as h:
        del h["image1/calibration"].attrs["calibration_formulas"]
    src = get_source("odim_h5", path=tmp_path)
    (issue,) = src.issues()
    with pytest.raises(IngestError, match=f"{f1}: attribute image1/calibration/calibration_formulas missing"):
        src.load(issue, grid)
    with h5py.File(f1, "r+") as h:
        h["image1/calibration"].attrs["calibration_formulas"] = np.bytes_(b"GEO=0.01*PV+0.0")
        h["geographic/map_projection"].attrs["projection_proj4_params"] = np.bytes_(b"+proj=nonsense +a=1")
    with pytest.raises(IngestError, match=f"{f1}: unknown CRS"):
        src.load(issue, grid)


# ---------------------------------------------------------------------- GeoTIFF sequences
def write_tif(path, field, *, lon0=4.0, lat0=52.0, d=0.01, nodata=None):
    ny, nx = field.shape
    with rasterio.open(path, "w", driver="GTiff", width=nx, height=ny, count=1, dtype="float32",
                       crs="EPSG:4326", transform=Affine(d, 0, lon0, 0, -d, lat0), nodata=nodata) as ds:
        ds.write(field.astype(np.float32), 1)


def test_geotiff_sequence_values_times_and_units(tmp_path):
    # 15-min accumulations in mm on a 0.01 deg lon/lat grid, read on a UTM 31N site grid
    for k in range(3):
        field = np.full((100, 100), 0.5 * (k + 1), dtype=np.float32)  # 0.5, 1.0, 1.5 mm / 15 min
        if k == 2:
            field[:, :50] = 0.0  # west of 4.5 degE dry, east 1.5 mm / 15 min
        write_tif(tmp_path / f"rain_20251114{6:02d}{15 * k:02d}.tif", field)
    (tmp_path / "notes.txt").write_text("not a frame")
    src = get_source("geotiff", path=tmp_path, name_format="rain_%Y%m%d%H%M.tif", units="mm",
                     interval_minutes=15)
    issues = src.issues()
    assert [i.issued for i in issues] == [datetime(2025, 11, 14, 6, 15 * (k + 1), tzinfo=UTC) for k in range(3)]
    grid = make_grid(250.0, 600_000.0, 5_700_000.0, 40, 30, 32631)  # about 4.4-4.6 degE, 51.4 degN
    da = src.load_window(datetime(2025, 11, 14, 6, tzinfo=UTC), datetime(2025, 11, 14, 7, tzinfo=UTC), grid)
    assert da.dims == ("time", "y", "x") and da.attrs["units"] == "mm/h"
    assert list(da["time"].values) == [np.datetime64(f"2025-11-14T06:{15 * k:02d}", "ns") for k in range(3)]
    np.testing.assert_allclose(da.values[0], 2.0, rtol=1e-6)  # 0.5 mm per 15 min = 2 mm/h
    np.testing.assert_allclose(da.values[1], 4.0, rtol=1e-6)
    lon, _ = warp_transform(grid.crs, "EPSG:4326", np.tile(grid.x_coords, grid.ny),
                            np.repeat(grid.y_coords, grid.nx))
    lon = np.asarray(lon).reshape(grid.ny, grid.nx)
    assert (lon < 4.49).any() and (lon > 4.51).any()
    np.testing.assert_allclose(da.values[2][lon < 4.49], 0.0, atol=1e-6)
    np.testing.assert_allclose(da.values[2][lon > 4.51], 6.0, rtol=1e-6)
    one = src.load(issues[1], grid)
    assert one.dims == ("member", "time", "y", "x") and one.sizes["time"] == 1
    np.testing.assert_allclose(one.values, 4.0, rtol=1e-6)


def test_geotiff_rates_with_end_labels_and_nodata(tmp_path):
    field = np.full((100, 100), 3.0, dtype=np.float32)
    field[0, 0] = -9999.0  # nodata, far from the site
    write_tif(tmp_path / "202511140700.tif", field, nodata=-9999.0)
    src = get_source("geotiff", path=tmp_path, units="mm/h", interval_minutes=60, time_label="end")
    (issue,) = src.issues()
    assert issue.issued == datetime(2025, 11, 14, 7, tzinfo=UTC)
    da = src.load(issue, make_grid(500.0, 600_000.0, 5_700_000.0, 20, 15, 32631))
    assert da["time"].values[0] == np.datetime64("2025-11-14T06:00", "ns")
    np.testing.assert_allclose(da.values, 3.0, rtol=1e-6)


def test_corrupt_geotiff_names_the_file(tmp_path):
    write_tif(tmp_path / "202511140600.tif", np.ones((100, 100)))
    bad = tmp_path / "202511140615.tif"
    bad.write_bytes(b"II*\x00" + b"\x13" * 500)
    # the tiles carry no band unit: the config must give one (it used to be assumed mm/h)
    src = get_source("geotiff", path=tmp_path, units="mm/h")
    issues = src.issues()
    assert len(issues) == 2
    grid = make_grid(500.0, 600_000.0, 5_700_000.0, 20, 15, 32631)
    src.load(issues[0], grid)
    with pytest.raises(IngestError, match=f"{bad}: not a readable GeoTIFF"):
        src.load(issues[1], grid)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_geotiff_without_crs_is_an_error(tmp_path):
    f = tmp_path / "202511140600.tif"
    with rasterio.open(f, "w", driver="GTiff", width=10, height=10, count=1, dtype="float32") as ds:
        ds.write(np.ones((1, 10, 10), dtype=np.float32))
    src = get_source("geotiff", path=tmp_path)
    with pytest.raises(IngestError, match=f"{f}: the GeoTIFF has no CRS"):
        src.load(src.issues()[0], make_grid(500.0, 600_000.0, 5_700_000.0, 2, 2, 32631))


# ---------------------------------------------------------------------- GRIB2
def _write_grib(path, values: np.ndarray, *, valid: datetime, lon0: float, lat0: float, d: float) -> None:
    """One GRIB2 message of total precipitation (kg m-2 = mm over the step) on a regular
    lat/lon grid, written with ecCodes from its own sample. paramId 228228 is WMO's total
    precipitation in kg m-2; shortName "tp" would give ECMWF's paramId 228, in metres."""
    eccodes = pytest.importorskip("eccodes")
    ny, nx = values.shape
    gid = eccodes.codes_grib_new_from_samples("regular_ll_sfc_grib2")
    try:
        for key, value in (("Ni", nx), ("Nj", ny), ("latitudeOfFirstGridPointInDegrees", lat0),
                           ("longitudeOfFirstGridPointInDegrees", lon0),
                           ("latitudeOfLastGridPointInDegrees", lat0 - (ny - 1) * d),
                           ("longitudeOfLastGridPointInDegrees", lon0 + (nx - 1) * d),
                           ("iDirectionIncrementInDegrees", d), ("jDirectionIncrementInDegrees", d),
                           ("dataDate", int(f"{valid:%Y%m%d}")), ("dataTime", int(f"{valid:%H%M}") - 100),
                           ("paramId", 228228), ("stepType", "accum"), ("startStep", 0), ("endStep", 1)):
            eccodes.codes_set(gid, key, value)
        eccodes.codes_set_values(gid, values.astype(np.float64).ravel())
        with open(path, "wb") as fh:
            eccodes.codes_write(gid, fh)
    finally:
        eccodes.codes_release(gid)


def test_grib_round_trip_onto_a_site_grid(tmp_path):
    """A GRIB2 field written with ecCodes (2 mm in an hour west of 4.5 degE, 5 mm east of
    it) read through cfgrib onto a UTM 31N grid: mm per hour, valid time, orientation."""
    if importlib.util.find_spec("cfgrib") is None:
        pytest.skip("cfgrib/eccodes (the 'grib' extra) are not installed")
    field = np.full((60, 80), 2.0)
    field[:, 50:] = 5.0  # lon >= 4.0 + 50 * 0.01 = 4.5 degE
    _write_grib(tmp_path / "tp_2025111407.grib2", field, valid=datetime(2025, 11, 14, 7, tzinfo=UTC),
                lon0=4.0, lat0=51.8, d=0.01)
    src = get_source("grib", path=tmp_path, units="mm", interval_minutes=60)
    (issue,) = src.issues()
    assert issue.issued == datetime(2025, 11, 14, 7, tzinfo=UTC)
    grid = make_grid(250.0, 600_000.0, 5_700_000.0, 40, 30, 32631)
    da = src.load(issue, grid)
    assert da["time"].values[0] == np.datetime64("2025-11-14T06:00", "ns")
    lon, _ = warp_transform(grid.crs, "EPSG:4326", np.tile(grid.x_coords, grid.ny), np.repeat(grid.y_coords, grid.nx))
    lon = np.asarray(lon).reshape(grid.ny, grid.nx)
    assert (lon < 4.49).any() and (lon > 4.51).any()
    np.testing.assert_allclose(da.values[0, 0][lon < 4.49], 2.0, rtol=1e-5)
    np.testing.assert_allclose(da.values[0, 0][lon > 4.51], 5.0, rtol=1e-5)


def test_grib_without_cfgrib_says_what_to_install(tmp_path, monkeypatch):
    # a machine without the 'grib' extra: None in sys.modules makes `import cfgrib` fail
    monkeypatch.setitem(sys.modules, "cfgrib", None)
    with pytest.raises(IngestError, match=r"needs the optional packages cfgrib and eccodes.*\(ModuleNotFoundError: .*pip install cfgrib eccodes"):
        get_source("grib", path=tmp_path)
