"""Rainfall grids one frame per file: KNMI radar HDF5, GeoTIFF sequences and GRIB2.

Every source here offers the interface of ``NetcdfForecastSource``: ``issues()``,
``latest_before(at)`` and ``load(issue, grid)`` returning a DataArray ``(member, time, y,
x)`` in mm/h on the site grid (one member, one time step per file), plus
``load_window(start, end, grid)`` that stacks consecutive frames into ``(time, y, x)``.

``time`` labels the start of each frame's interval (the repository's convention); the
issue time is when the frame becomes available, i.e. the end of its interval.

Regridding reuses the helpers of :mod:`.forecast_netcdf`: GDAL's area ``average`` when
the site grid is at least as coarse as the source cells (it conserves accumulations),
the cached bilinear regridder when it is finer. The comparison uses the size of a source
cell measured in the site CRS at the site, not the nominal resolution in the source's
own units (a "1 km" KNMI stereographic pixel is only about 0.96 km wide at 52 degN).
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import Resampling, reproject
from rasterio.warp import transform as warp_transform

from ..errors import IngestError
from .forecast_netcdf import _TO_MM_H, ForecastIssue, GridSpec, _bilinear_regridder

log = logging.getLogger(__name__)

UTC = timezone.utc
_MONTHS = {m: i + 1 for i, m in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"])}


@dataclass
class Frame:
    """One rain field on its own grid.

    ``data`` is float32 mm/h with NaN where the source has no value; ``start``/``end``
    bound the interval the rate is the mean over (UTC).
    """

    data: np.ndarray
    transform: Affine
    crs: CRS
    start: datetime
    end: datetime


def regrid(data: np.ndarray, src_transform: Affine, src_crs: CRS, grid: GridSpec) -> np.ndarray:
    """Put a (..., ny, nx) field onto the site grid; NaN marks site cells without data.

    Area average when the site cells are at least as large as the source cells (conserves
    accumulations: sum(depth x cell area) is kept), bilinear otherwise.
    """
    data = np.asarray(data, dtype=np.float32)
    if grid.dx >= 0.999 * _src_cell_size(src_transform, src_crs, data.shape[-2:], grid):
        lead = data.shape[:-2]
        flat = data.reshape((-1,) + data.shape[-2:])
        out = np.full((flat.shape[0], grid.ny, grid.nx), np.nan, dtype=np.float32)
        for i in range(flat.shape[0]):
            reproject(flat[i], out[i], src_transform=src_transform, src_crs=src_crs,
                      dst_transform=grid.transform, dst_crs=grid.crs, src_nodata=np.nan,
                      dst_nodata=np.nan, resampling=Resampling.average)
        return out.reshape(lead + (grid.ny, grid.nx))
    return _bilinear_regridder(src_transform, src_crs, data.shape[-2:], grid)(data)


def _src_cell_size(src_transform: Affine, src_crs: CRS, shape: tuple[int, ...], grid: GridSpec) -> float:
    """Side (site-CRS units, i.e. m) of the source cell under the site's centre: sqrt of its area."""
    xc = float(np.mean(grid.x_coords))
    yc = float(np.mean(grid.y_coords))
    sx, sy = warp_transform(grid.crs, src_crs, [xc], [yc])
    col, row = ~src_transform @ (sx[0], sy[0])
    col = float(np.clip(np.floor(col), 0, shape[1] - 1))
    row = float(np.clip(np.floor(row), 0, shape[0] - 1))
    px, py = zip(*(src_transform @ (col + dc, row + dr) for dc, dr in ((0, 0), (1, 0), (0, 1))))
    gx, gy = warp_transform(src_crs, grid.crs, list(px), list(py))
    ax, ay = gx[1] - gx[0], gy[1] - gy[0]
    bx, by = gx[2] - gx[0], gy[2] - gy[0]
    return float(np.sqrt(abs(ax * by - ay * bx)))


class _FrameSequenceSource(ABC):
    """A folder of files holding one rain frame each; subclasses implement ``_read``/``_times``."""

    kind = "frames"

    def __init__(self, path: Path, pattern: str, max_missing: float = 0.02):
        if not 0.0 <= max_missing <= 1.0:
            raise ValueError(f"max_missing must be a fraction in [0, 1], got {max_missing}")
        self.path = Path(path)
        self.pattern = pattern
        #: share of site cells allowed without data (set to 0 mm/h with a warning)
        self.max_missing = max_missing
        self._issue_cache: dict[tuple[Path, int], datetime] = {}
        #: problems with the files the last ``issues()`` call skipped
        self.skipped: list[str] = []

    # ------------------------------------------------------------------ catalogue
    def _files(self) -> list[Path]:
        return [self.path] if self.path.is_file() else sorted(self.path.glob(self.pattern))

    def issues(self) -> list[ForecastIssue]:
        """Every readable frame, oldest first; ``issued`` is the end of its interval (UTC).

        Unreadable files are logged and skipped (see ``skipped``).
        """
        out = []
        self.skipped = []
        for f in self._files():
            key = (f, f.stat().st_mtime_ns)
            if key not in self._issue_cache:
                try:
                    self._issue_cache[key] = self._times(f)[1]
                except IngestError as exc:
                    log.warning("skipping rain frame: %s", exc)
                    self.skipped.append(str(exc))
                    continue
            out.append(ForecastIssue(self._issue_cache[key], f))
        return sorted(out, key=lambda i: i.issued)

    def latest_before(self, at: datetime) -> ForecastIssue | None:
        """The newest frame available at or before ``at`` (no peeking ahead)."""
        cands = [i for i in self.issues() if i.issued <= at]
        return cands[-1] if cands else None

    # ------------------------------------------------------------------ reading
    @abstractmethod
    def _times(self, f: Path) -> tuple[datetime, datetime]:
        ...

    @abstractmethod
    def _read(self, f: Path) -> Frame:
        ...

    def _on_grid(self, f: Path, grid: GridSpec) -> tuple[np.ndarray, Frame]:
        frame = self._read(f)
        if (frame.data < 0).any():
            raise IngestError(f"{f}: negative rain rates (min {np.nanmin(frame.data):.3g} mm/h); "
                              f"check the calibration and units")
        out = regrid(frame.data, frame.transform, frame.crs, grid)
        bad = ~np.isfinite(out)
        if bad.any():
            frac = float(bad.mean())
            if frac > self.max_missing:
                raise IngestError(f"{f}: no rain data for {frac:.1%} of the site (outside the "
                                  f"image or flagged missing; at most {self.max_missing:.1%} allowed)")
            log.warning("%s: %d site cells without rain data set to 0 mm/h", f, int(bad.sum()))
            out[bad] = 0.0
        return out, frame

    def load(self, issue: ForecastIssue, grid: GridSpec) -> xr.DataArray:
        """One frame on the site grid: DataArray (member=1, time=1, y, x), float32, mm/h.

        ``time`` is the start of the frame's interval; the value is the mean rate over it.
        """
        out, frame = self._on_grid(issue.path, grid)
        return xr.DataArray(
            out[None, None], dims=("member", "time", "y", "x"),
            coords={"member": [0], "time": [np.datetime64(frame.start.replace(tzinfo=None), "ns")],
                    "y": grid.y_coords, "x": grid.x_coords},
            name="rain", attrs={"units": "mm/h", "source_file": str(issue.path),
                                "issued": issue.issued.isoformat(),
                                "interval_s": (frame.end - frame.start).total_seconds()})

    def load_window(self, start: datetime, end: datetime, grid: GridSpec) -> xr.DataArray:
        """Frames whose interval starts in [start, end), stacked: DataArray (time, y, x), mm/h."""
        fields, times, files = [], [], []
        for issue in self.issues():
            t0, _ = self._times(issue.path)
            if start <= t0 < end:
                out, frame = self._on_grid(issue.path, grid)
                fields.append(out)
                times.append(np.datetime64(frame.start.replace(tzinfo=None), "ns"))
                files.append(issue.path.name)
        if not fields:
            raise IngestError(f"{self.path}: no rain frames start in [{start.isoformat()}, "
                              f"{end.isoformat()})")
        return xr.DataArray(np.stack(fields), dims=("time", "y", "x"),
                            coords={"time": times, "y": grid.y_coords, "x": grid.x_coords},
                            name="rain", attrs={"units": "mm/h", "source_files": files})


# ---------------------------------------------------------------------- KNMI HDF5
def _text(v: Any) -> str:
    v = np.asarray(v).ravel()[0] if isinstance(v, np.ndarray) else v
    return v.decode("ascii", "replace").strip() if isinstance(v, (bytes, np.bytes_)) else str(v).strip()


def _num(v: Any) -> float:
    return float(np.asarray(v).ravel()[0])


class KnmiRadarSource(_FrameSequenceSource):
    """KNMI radar composites (``RAD_NL25_RAP_5min_*.h5``, KNMI HDF5 "hdftag" layout).

    Reads ``image1/image_data`` (uint16 PV), calibrates it with
    ``image1/calibration.calibration_formulas`` (``GEO=a*PV+b``), sets
    ``calibration_missing_data`` / ``calibration_out_of_image`` to NaN, and converts:
    ``ACCUMULATED_PRECIPITATION_[MM]`` is mm per interval (``overview.product_datetime_start``
    to ``..._end``, 5 min) and becomes mm/h; a ``REFLECTIVITY_[DBZ]`` image becomes mm/h
    via Marshall-Palmer (Z = 200 R^1.6). The grid comes from ``geographic`` (pixel size and
    offsets in km, ``LU`` = upper-left pixel corners) and its polar stereographic
    ``projection_proj4_params``, whose ellipsoid axes KNMI writes in km: they are converted
    to metres, and the datum is taken as WGS 84. The grid is checked against
    ``geo_product_corners`` (to within half a pixel).
    """

    kind = "odim_h5"

    def __init__(self, path: Path, pattern: str = "RAD_NL25_RAP_5min_*.h5", max_missing: float = 0.02):
        super().__init__(path, pattern, max_missing)

    @staticmethod
    def _open(f: Path):
        import h5py

        try:
            return h5py.File(f, "r")
        except FileNotFoundError:
            raise IngestError(f"{f}: file not found") from None
        except Exception as exc:  # h5py raises OSError with varied messages for corrupt files
            raise IngestError(f"{f}: not a readable HDF5 file ({type(exc).__name__}: {exc})") from None

    @staticmethod
    def _attr(h: Any, f: Path, group: str, name: str) -> Any:
        if group not in h:
            if "what" in h and "dataset1" in h:
                raise IngestError(f"{f}: this is an ODIM_H5 (OPERA) file; only the KNMI layout "
                                  f"(image1/, geographic/, overview/) is supported")
            raise IngestError(f"{f}: HDF5 group {group!r} missing")
        attrs = h[group].attrs
        if name not in attrs:
            raise IngestError(f"{f}: attribute {group}/{name} missing")
        return attrs[name]

    def _times(self, f: Path) -> tuple[datetime, datetime]:
        with self._open(f) as h:
            try:
                return self._times_h(h, f)
            except IngestError:
                raise
            except Exception as exc:
                raise IngestError(f"{f}: unreadable HDF5 metadata ({type(exc).__name__}: {exc})") from None

    def _times_h(self, h: Any, f: Path) -> tuple[datetime, datetime]:
        start = self._parse_time(_text(self._attr(h, f, "overview", "product_datetime_start")), f)
        end = self._parse_time(_text(self._attr(h, f, "overview", "product_datetime_end")), f)
        if end <= start:
            raise IngestError(f"{f}: product end {end} is not after its start {start}")
        return start, end

    @staticmethod
    def _parse_time(s: str, f: Path) -> datetime:
        """KNMI time stamps: ``26-AUG-2010;02:00:00.000`` (UTC)."""
        m = re.fullmatch(r"(\d{1,2})-([A-Za-z]{3})-(\d{4});(\d{2}):(\d{2}):(\d{2})(?:\.\d+)?", s)
        if not m or m.group(2).upper() not in _MONTHS:
            raise IngestError(f"{f}: unreadable time stamp {s!r} (expected like 26-AUG-2010;02:00:00.000)")
        d, mon, y, hh, mm, ss = m.groups()
        return datetime(int(y), _MONTHS[mon.upper()], int(d), int(hh), int(mm), int(ss), tzinfo=UTC)

    def _read(self, f: Path) -> Frame:
        with self._open(f) as h:
            try:
                return self._read_h(h, f)
            except IngestError:
                raise
            except Exception as exc:  # truncated files fail only when the data are read
                raise IngestError(f"{f}: unreadable HDF5 content ({type(exc).__name__}: {exc})") from None

    def _read_h(self, h: Any, f: Path) -> Frame:
        start, end = self._times_h(h, f)
        if "image1/image_data" not in h:
            self._attr(h, f, "image1", "image_geo_parameter")  # ODIM hint / group check
            raise IngestError(f"{f}: HDF5 dataset image1/image_data missing")
        pv = np.asarray(h["image1/image_data"][...])
        formula = _text(self._attr(h, f, "image1/calibration", "calibration_formulas"))
        m = re.fullmatch(r"\s*GEO\s*=\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?)\s*\*\s*PV\s*"
                         r"(?:([-+])\s*([\d.]+(?:[eE][-+]?\d+)?))?\s*", formula)
        if not m:
            raise IngestError(f"{f}: unsupported calibration formula {formula!r} (expected GEO=a*PV+b)")
        gain = float(m.group(1))
        offset = float(m.group(3) or 0.0) * (-1.0 if m.group(2) == "-" else 1.0)
        geo = (gain * pv.astype(np.float64) + offset).astype(np.float32)
        cal = h["image1/calibration"].attrs
        for key in ("calibration_missing_data", "calibration_out_of_image"):
            if key in cal:
                geo[pv == int(_num(cal[key]))] = np.nan
        quantity = _text(self._attr(h, f, "image1", "image_geo_parameter")).upper()
        hours = (end - start).total_seconds() / 3600.0
        if "PRECIPITATION" in quantity and "[MM]" in quantity:
            rate = geo / np.float32(hours)  # mm per interval -> mm/h
        elif "REFLECTIVITY" in quantity or "DBZ" in quantity:
            rate = ((10.0 ** (geo / 10.0)) / 200.0) ** (1.0 / 1.6)  # Marshall-Palmer, mm/h
            rate = rate.astype(np.float32)
        else:
            raise IngestError(f"{f}: unsupported image quantity {quantity!r} (expected "
                              f"ACCUMULATED_PRECIPITATION_[MM] or REFLECTIVITY_[DBZ])")
        transform, crs = self._georef(h, f, pv.shape)
        return Frame(rate, transform, crs, start, end)

    def _georef(self, h: Any, f: Path, shape: tuple[int, ...]) -> tuple[Affine, CRS]:
        g = "geographic"
        ncol = int(_num(self._attr(h, f, g, "geo_number_columns")))
        nrow = int(_num(self._attr(h, f, g, "geo_number_rows")))
        if (nrow, ncol) != tuple(shape):
            raise IngestError(f"{f}: image is {shape} but geographic says {nrow} rows x {ncol} columns")
        dims = _text(self._attr(h, f, g, "geo_dim_pixel")).upper().replace(" ", "")
        unit = {"KM,KM": 1000.0, "M,M": 1.0}.get(dims)
        if unit is None:
            raise IngestError(f"{f}: unsupported pixel units geo_dim_pixel={dims!r} (expected KM,KM or M,M)")
        psx = _num(self._attr(h, f, g, "geo_pixel_size_x")) * unit
        psy = _num(self._attr(h, f, g, "geo_pixel_size_y")) * unit
        col_off = _num(self._attr(h, f, g, "geo_column_offset"))
        row_off = _num(self._attr(h, f, g, "geo_row_offset"))
        pixel_def = _text(h[g].attrs.get("geo_pixel_def", b"LU")).upper()
        shift = {"LU": 0.0, "CC": -0.5}.get(pixel_def)
        if shift is None:
            raise IngestError(f"{f}: unsupported geo_pixel_def {pixel_def!r} (expected LU or CC)")
        # x = (col + col_off) * psx, y = (row + row_off) * psy at the pixel's upper-left corner
        transform = Affine(psx, 0.0, (col_off + shift) * psx, 0.0, psy, (row_off + shift) * psy)
        crs = self._crs(_text(self._attr(h, f, f"{g}/map_projection", "projection_proj4_params")), f)
        if "geo_product_corners" in h[g].attrs:
            self._check_corners(np.asarray(h[g].attrs["geo_product_corners"], dtype=float),
                                transform, crs, nrow, ncol, f)
        return transform, crs

    @staticmethod
    def _crs(proj4: str, f: Path) -> CRS:
        """The file's proj4 string with its km ellipsoid in metres (PROJ would take 6.4 km)."""
        params: dict[str, str | None] = {}
        for tok in proj4.split():
            k, _, v = tok.lstrip("+").partition("=")
            params[k] = v or None
        try:
            if "a" in params and float(params["a"]) < 1.0e5:  # axes in km
                for k in ("a", "b", "x_0", "y_0"):
                    if params.get(k) is not None:
                        params[k] = repr(float(params[k]) * 1000.0)
            params["units"] = "m"
            if not {"datum", "towgs84", "nadgrids"} & set(params):  # KNMI gives none: WGS 84
                params["towgs84"] = "0,0,0,0,0,0,0"
            text = " ".join(f"+{k}" if v is None else f"+{k}={v}" for k, v in params.items())
            crs = CRS.from_proj4(text)
        except (CRSError, ValueError, TypeError) as exc:
            raise IngestError(f"{f}: unknown CRS in projection_proj4_params {proj4!r}: {exc}") from None
        if not crs.is_projected:
            raise IngestError(f"{f}: projection_proj4_params {proj4!r} is not a projected CRS")
        return crs

    @staticmethod
    def _check_corners(corners: np.ndarray, transform: Affine, crs: CRS, nrow: int, ncol: int,
                       f: Path) -> None:
        """``geo_product_corners``: lon/lat of the LL, UL, UR, LR image corners."""
        if corners.size != 8:
            return
        lon, lat = corners[0::2], corners[1::2]
        x, y = warp_transform(CRS.from_epsg(4326), crs, list(lon), list(lat))
        col, row = ~transform @ (np.asarray(x), np.asarray(y))
        want_col = np.array([0, 0, ncol, ncol])
        want_row = np.array([nrow, 0, 0, nrow])
        err = float(np.max(np.hypot(np.asarray(col) - want_col, np.asarray(row) - want_row)))
        if not err < 0.5:
            raise IngestError(f"{f}: the grid attributes disagree with geo_product_corners by "
                              f"{err:.2f} pixels; the projection or offsets are not understood")


# ---------------------------------------------------------------------- GeoTIFF
class GeotiffSequenceSource(_FrameSequenceSource):
    """A folder of single-band GeoTIFFs, one per time step, in any CRS.

    Parameters
    ----------
    path : folder (or one file)
    name_format : strftime pattern of the whole file name, e.g. ``"rain_%Y%m%d%H%M.tif"``;
        the time it gives is UTC. Files that do not match are skipped.
    units : ``"mm"`` (depth per interval, needs ``interval_minutes``) or a rate unit of
        ``forecast_netcdf`` (``"mm/h"``, ``"mm/s"``, ``"kg m-2 s-1"``, ``"m/s"``).
    interval_minutes : length of each frame's interval, min (default: 60 for rates).
    time_label : whether the file-name time is the ``"start"`` or the ``"end"`` of the interval.
    band : band number to read (1-based).
    """

    kind = "geotiff"

    def __init__(self, path: Path, name_format: str = "%Y%m%d%H%M.tif", units: str = "mm/h",
                 interval_minutes: float | None = None, time_label: str = "start", band: int = 1,
                 max_missing: float = 0.02):
        if units not in _TO_MM_H and units != "mm":
            raise ValueError(f"unknown rain units {units!r}; use one of {', '.join([*_TO_MM_H, 'mm'])}")
        if units == "mm" and not interval_minutes:
            raise ValueError("units 'mm' (depth per interval) need interval_minutes")
        if time_label not in ("start", "end"):
            raise ValueError(f"time_label must be 'start' or 'end', got {time_label!r}")
        pattern = re.sub(r"(?:%[A-Za-z])+", "*", name_format)
        super().__init__(path, pattern, max_missing)
        self.name_format = name_format
        self.units = units
        self.interval = timedelta(minutes=float(interval_minutes or 60.0))
        self.time_label = time_label
        self.band = band

    def _files(self) -> list[Path]:
        out = []
        for f in super()._files():
            try:
                datetime.strptime(f.name, self.name_format)
                out.append(f)
            except ValueError:
                log.debug("%s does not match %s; ignored", f, self.name_format)
        return out

    def _times(self, f: Path) -> tuple[datetime, datetime]:
        try:
            t = datetime.strptime(f.name, self.name_format).replace(tzinfo=UTC)
        except ValueError:
            raise IngestError(f"{f}: file name does not match {self.name_format!r}") from None
        return (t, t + self.interval) if self.time_label == "start" else (t - self.interval, t)

    def _read(self, f: Path) -> Frame:
        import rasterio

        start, end = self._times(f)
        try:
            with rasterio.open(f) as ds:
                if ds.crs is None:
                    raise IngestError(f"{f}: the GeoTIFF has no CRS")
                if not 1 <= self.band <= ds.count:
                    raise IngestError(f"{f}: band {self.band} missing (the file has {ds.count})")
                raw = ds.read(self.band, masked=True)
                crs, transform = ds.crs, ds.transform
        except IngestError:
            raise
        except Exception as exc:  # RasterioIOError, CPLE_* for truncated tiles, ...
            raise IngestError(f"{f}: not a readable GeoTIFF ({type(exc).__name__}: {exc})") from None
        try:
            crs = CRS.from_user_input(crs)
            crs.to_wkt()
        except CRSError as exc:
            raise IngestError(f"{f}: unknown CRS: {exc}") from None
        if transform.b != 0 or transform.d != 0:
            raise IngestError(f"{f}: rotated GeoTIFFs are not supported")
        data = np.ma.filled(raw.astype(np.float32), np.nan)
        hours = self.interval.total_seconds() / 3600.0
        factor = 1.0 / hours if self.units == "mm" else _TO_MM_H[self.units]
        return Frame(data * np.float32(factor), transform, crs, start, end)


# ---------------------------------------------------------------------- GRIB2

def import_grib() -> None:
    """Import cfgrib and eccodes, the GRIB reader's optional packages.

    The wheels of psycopg (binary) and of eccodes each bundle their own OpenLDAP and
    SASL libraries (2.6 and 2.4). When eccodes' copies are loaded first and a PostgreSQL
    connection is then made, the process crashes at exit: a library destructor frees
    memory through the other copy's symbols. Loading psycopg's first avoids that, so it
    is imported here when it is installed.
    """
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pass
    import cfgrib  # noqa: F401

class Grib2Source(_FrameSequenceSource):
    """GRIB2 rain grids on a regular lat/lon grid, read with cfgrib + eccodes (optional).

    Each file is one frame: its first step of ``variable`` (default ``tp``, total
    precipitation). ``units`` as for GeoTIFF: ``"mm"`` = depth per ``interval_minutes``
    (``kg m-2`` is the same), or a rate unit. Constructing it without cfgrib raises
    ``IngestError`` naming the extra to install.
    """

    kind = "grib"

    def __init__(self, path: Path, pattern: str = "*.grib2", variable: str = "tp", units: str = "mm",
                 interval_minutes: float | None = 60.0, max_missing: float = 0.02):
        try:
            import_grib()
        except Exception as exc:  # ImportError, or RuntimeError when the eccodes library is absent
            raise IngestError(
                f"GRIB2 input ({path}) needs the optional packages cfgrib and eccodes, which are not "
                f"importable here ({type(exc).__name__}: {exc}); install them with "
                f"`pip install cfgrib eccodes` (the 'grib' extra)") from None
        if units == "kg m-2":
            units = "mm"
        if units not in _TO_MM_H and units != "mm":
            raise ValueError(f"unknown rain units {units!r}; use one of {', '.join([*_TO_MM_H, 'mm'])}")
        super().__init__(path, pattern, max_missing)
        self.variable = variable
        self.units = units
        self.interval = timedelta(minutes=float(interval_minutes or 60.0))

    def _open(self, f: Path) -> xr.Dataset:
        try:
            return xr.open_dataset(f, engine="cfgrib", backend_kwargs={"indexpath": ""})
        except Exception as exc:
            raise IngestError(f"{f}: not a readable GRIB file ({type(exc).__name__}: {exc})") from None

    def _times(self, f: Path) -> tuple[datetime, datetime]:
        with self._open(f) as ds:
            if "valid_time" not in ds.coords:
                raise IngestError(f"{f}: no valid_time in the GRIB messages")
            t = np.atleast_1d(ds["valid_time"].values)[0]
        end = datetime.fromtimestamp(t.astype("datetime64[s]").astype(np.int64), tz=UTC)
        return end - self.interval, end

    def _read(self, f: Path) -> Frame:
        start, end = self._times(f)
        with self._open(f) as ds:
            if self.variable not in ds:
                raise IngestError(f"{f}: variable {self.variable!r} missing; the file has "
                                  f"{', '.join(map(str, ds.data_vars)) or 'no variables'}")
            da = ds[self.variable].squeeze(drop=True).load()
        if set(da.dims) != {"latitude", "longitude"}:
            raise IngestError(f"{f}: expected one regular lat/lon field, got dims {da.dims}")
        da = da.transpose("latitude", "longitude")
        lat, lon = da["latitude"].values, da["longitude"].values
        dx, dy = float(np.diff(lon).mean()), float(np.diff(lat).mean())
        transform = Affine(dx, 0.0, lon[0] - dx / 2, 0.0, dy, lat[0] - dy / 2)
        hours = self.interval.total_seconds() / 3600.0
        factor = 1.0 / hours if self.units == "mm" else _TO_MM_H[self.units]
        data = np.asarray(da.values, dtype=np.float32) * np.float32(factor)
        return Frame(data, transform, CRS.from_epsg(4326), start, end)
