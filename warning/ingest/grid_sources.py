"""Rainfall grids one frame per file: KNMI radar HDF5, GeoTIFF sequences and GRIB2.

Every source here offers the interface of ``NetcdfForecastSource``: ``issues()``,
``latest_before(at)`` and ``load(issue, grid)`` returning a DataArray ``(member, time, y,
x)`` in mm/h on the site grid (one member, one time step per file), plus
``load_window(start, end, grid)`` that stacks consecutive frames into ``(time, y, x)``.

``time`` labels the start of each frame's interval (the repository's convention); the
issue time is when the frame becomes available, i.e. the end of its interval.

Units come from the file where it says them (KNMI's image quantity, cfgrib's
``GRIB_units``, a GeoTIFF band's unit type), checked against the ``units`` setting
(``sources.forecast.units``), which is needed only when the file says nothing; see
:mod:`.rain_qc`. Values are screened on the source grid with the site's ``Limits``
(:func:`.rain_qc.screen_rain`): implausible values are replaced from their nearest good
neighbour, counted in ``attrs["qc"]`` and described in ``attrs["problems"]``. No-data
pixels (outside the radar image, GeoTIFF nodata) stay no-data: a share ``max_missing``
of the site may lie without data and counts as dry, with a sentence in ``problems``.

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
from datetime import UTC, datetime, timedelta
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
from .forecast_netcdf import ForecastIssue, GridSpec, bilinear_regridder
from .limits import DEFAULT_LIMITS, Limits
from .rain_qc import RainUnit, check_config_units, resolve_rain_unit, screen_rain, unreadable

log = logging.getLogger(__name__)

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
    return bilinear_regridder(src_transform, src_crs, data.shape[-2:], grid)(data)


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
    """A folder of files holding one rain frame each; subclasses implement ``_read``/``_times``.

    ``_read`` and ``_times`` raise only ``IngestError`` for anything wrong with a file.
    """

    kind = "frames"

    def __init__(self, path: Path, pattern: str, max_missing: float = 0.02,
                 limits: Limits | None = None):
        if not 0.0 <= max_missing <= 1.0:
            raise ValueError(f"max_missing must be a fraction in [0, 1], got {max_missing}")
        self.path = Path(path)
        self.pattern = pattern
        #: share of site cells allowed without data (set to 0 mm/h with a warning)
        self.max_missing = max_missing
        self.limits = limits or DEFAULT_LIMITS
        #: (file, mtime) -> (start, end) of its interval, or the reason it is unreadable
        self._issue_cache: dict[tuple[Path, int], tuple[datetime, datetime] | str] = {}
        #: problems with the files the last ``issues()`` call skipped
        self.skipped: list[str] = []

    # ------------------------------------------------------------------ catalogue
    def _files(self) -> list[Path]:
        return [self.path] if self.path.is_file() else sorted(self.path.glob(self.pattern))

    def issues(self) -> list[ForecastIssue]:
        """Every readable frame, oldest first; ``issued`` is the end of its interval (UTC).

        Unreadable files are logged and skipped (see ``skipped``); this never raises for a
        bad file.
        """
        out = []
        self.skipped = []
        for f in self._files():
            try:
                key = (f, f.stat().st_mtime_ns)
            except OSError as exc:  # removed while being listed
                self.skipped.append(f"{f}: {exc}")
                continue
            if key not in self._issue_cache:
                try:
                    self._issue_cache[key] = self._times(f)
                except IngestError as exc:
                    # logged once per file version, not on every poll
                    log.warning("skipping rain frame: %s", exc)
                    self._issue_cache[key] = str(exc)
            got = self._issue_cache[key]
            if isinstance(got, str):
                self.skipped.append(got)
                continue
            out.append(ForecastIssue(got[1], f))
        return sorted(out, key=lambda i: i.issued)

    def span(self, issue: ForecastIssue) -> tuple[datetime, datetime]:
        """(start, end) of the interval the frame ``issue`` covers, UTC."""
        try:
            got = self._issue_cache.get((issue.path, issue.path.stat().st_mtime_ns))
        except OSError:
            got = None
        return got if isinstance(got, tuple) else self._times(issue.path)

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

    def _on_grid(self, f: Path, grid: GridSpec) -> tuple[np.ndarray, Frame, dict, list[str]]:
        """The frame screened and on the site grid, with its QC counts and problems."""
        frame = self._read(f)
        data, qc, problems = screen_rain(frame.data, self.limits, f, fill_missing=False)
        try:
            out = regrid(data, frame.transform, frame.crs, grid)
        except Exception as exc:  # noqa: BLE001 - GDAL/PROJ failures on odd georeferencing
            raise IngestError(f"{f}: the frame cannot be put on the site grid "
                              f"({type(exc).__name__}: {exc}); check its CRS and geotransform"
                              ) from None
        bad = ~np.isfinite(out)
        if bad.any():
            frac = float(bad.mean())
            if frac > self.max_missing:
                raise IngestError(f"{f}: no rain data for {frac:.1%} of the site (outside the "
                                  f"image or flagged missing; at most {self.max_missing:.1%} allowed)")
            problems.append(f"{f}: {int(bad.sum())} of {bad.size} site cells have no rain data "
                            f"(outside the image or missing there) and count as dry")
            out[bad] = 0.0
        for p in problems:
            log.warning("%s", p)
        return out, frame, qc, problems

    def load(self, issue: ForecastIssue, grid: GridSpec) -> xr.DataArray:
        """One frame on the site grid: DataArray (member=1, time=1, y, x), float32, mm/h.

        ``time`` is the start of the frame's interval; the value is the mean rate over it.
        attrs: ``interval_s``, ``qc`` (counts of source values) and ``problems``.
        """
        out, frame, qc, problems = self._on_grid(issue.path, grid)
        return xr.DataArray(
            out[None, None], dims=("member", "time", "y", "x"),
            coords={"member": [0], "time": [np.datetime64(frame.start.replace(tzinfo=None), "ns")],
                    "y": grid.y_coords, "x": grid.x_coords},
            name="rain", attrs={"units": "mm/h", "source_file": str(issue.path),
                                "issued": issue.issued.isoformat(),
                                "interval_s": (frame.end - frame.start).total_seconds(),
                                "qc": qc, "problems": problems})

    def load_window(self, start: datetime, end: datetime, grid: GridSpec) -> xr.DataArray:
        """Frames whose interval starts in [start, end), stacked: DataArray (time, y, x), mm/h.

        attrs ``qc`` sums the frames' counts; ``problems`` lists theirs.
        """
        fields, times, files, problems = [], [], [], []
        qc = {"missing": 0, "implausible": 0, "filled": 0, "cells": 0}
        interval = None
        for issue in self.issues():
            t0, _ = self.span(issue)
            if start <= t0 < end:
                out, frame, fqc, fproblems = self._on_grid(issue.path, grid)
                fields.append(out)
                times.append(np.datetime64(frame.start.replace(tzinfo=None), "ns"))
                files.append(issue.path.name)
                problems += fproblems
                qc = {k: qc[k] + fqc[k] for k in qc}
                interval = (frame.end - frame.start).total_seconds()
        if not fields:
            raise IngestError(f"{self.path}: no rain frames start in [{start.isoformat()}, "
                              f"{end.isoformat()})")
        return xr.DataArray(np.stack(fields), dims=("time", "y", "x"),
                            coords={"time": times, "y": grid.y_coords, "x": grid.x_coords},
                            name="rain", attrs={"units": "mm/h", "source_files": files,
                                                "interval_s": interval, "qc": qc,
                                                "problems": problems})


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

    The image quantity decides the unit; a ``units`` setting, when given, must agree with
    it (``"mm"`` or ``"kg m-2"`` for accumulations, ``"dBZ"`` for reflectivity).
    """

    kind = "odim_h5"

    def __init__(self, path: Path, pattern: str = "RAD_NL25_RAP_5min_*.h5", max_missing: float = 0.02,
                 limits: Limits | None = None, units: str | None = None):
        self._config_dbz = units is not None and units.strip().lower() == "dbz"
        self._config_unit = None if units is None or self._config_dbz else check_config_units(units)
        super().__init__(path, pattern, max_missing, limits)
        self.units = units

    @staticmethod
    def _open(f: Path):
        import h5py

        try:
            return h5py.File(f, "r")
        except FileNotFoundError:
            raise IngestError(f"{f}: file not found") from None
        except Exception as exc:  # noqa: BLE001 - h5py raises OSError and more for corrupt files
            raise unreadable(f, "HDF5 file", exc) from None

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
            except Exception as exc:  # noqa: BLE001 - attributes of any type in a broken file
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
            except Exception as exc:  # noqa: BLE001 - truncated files fail only when read
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
            mm = RainUnit("mm", "depth", 1.0)
            if self._config_dbz or (self._config_unit is not None
                                    and not self._config_unit.same_meaning(mm)):
                raise IngestError(
                    f"{f}: the image is {quantity}, mm over each {hours * 60:g}-min interval, but "
                    f"sources.forecast.units is {self.units!r}; remove sources.forecast.units "
                    f"(the file's quantity decides) or set it to \"mm\"")
            rate = geo / np.float32(hours)  # mm per interval -> mm/h
        elif "REFLECTIVITY" in quantity or "DBZ" in quantity:
            if self._config_unit is not None:
                raise IngestError(
                    f"{f}: the image is {quantity}, a radar reflectivity in dBZ, but "
                    f"sources.forecast.units is {self.units!r}; remove sources.forecast.units "
                    f"(the file's quantity decides) or set it to \"dBZ\"")
            with np.errstate(over="ignore"):
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
    units : the rain's unit when the band does not say (GDAL's band unit type, which
        decides when set and must then agree with this): a rate (``"mm/h"``, ``"in/h"``,
        ...) or a depth per interval (``"mm"``, which needs ``interval_minutes``); see
        :data:`.rain_qc.RAIN_UNITS`. None: the band must say.
    interval_minutes : length of each frame's interval, min (default: 60 for rates).
    time_label : whether the file-name time is the ``"start"`` or the ``"end"`` of the interval.
    band : band number to read (1-based).

    The band's scale and offset (GDAL metadata) are applied; its nodata is missing.
    """

    kind = "geotiff"

    def __init__(self, path: Path, name_format: str = "%Y%m%d%H%M.tif", units: str | None = None,
                 interval_minutes: float | None = None, time_label: str = "start", band: int = 1,
                 max_missing: float = 0.02, limits: Limits | None = None):
        self._config_unit = check_config_units(units)
        if self._config_unit is not None and self._config_unit.kind == "depth" and not interval_minutes:
            raise ValueError(f"units {units!r} (depth per interval) need interval_minutes")
        if time_label not in ("start", "end"):
            raise ValueError(f"time_label must be 'start' or 'end', got {time_label!r}")
        pattern = re.sub(r"(?:%[A-Za-z])+", "*", name_format)
        super().__init__(path, pattern, max_missing, limits)
        self.name_format = name_format
        self.units = units
        self.interval_given = interval_minutes is not None
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
                band_unit = ds.units[self.band - 1]
                scale = ds.scales[self.band - 1]
                offset = ds.offsets[self.band - 1]
        except IngestError:
            raise
        except Exception as exc:  # noqa: BLE001 - RasterioIOError, CPLE_* for truncated tiles, ...
            raise unreadable(f, "GeoTIFF", exc) from None
        try:
            crs = CRS.from_user_input(crs)
            crs.to_wkt()
        except CRSError as exc:
            raise IngestError(f"{f}: unknown CRS: {exc}") from None
        if transform.b != 0 or transform.d != 0:
            raise IngestError(f"{f}: rotated GeoTIFFs are not supported")
        unit = resolve_rain_unit(
            band_unit, self._config_unit, f, f"band {self.band}", unit_attr="unit",
            missing_hint="write one (GDAL's band unit type, e.g. gdal_edit.py -units mm/h)")
        if unit.kind == "depth" and not self.interval_given:
            raise IngestError(f"{f}: band {self.band} is in {unit.text!r}, a depth per time step, "
                              f"but the step length is unknown; set interval_minutes in "
                              f"sources.forecast.settings")
        hours = self.interval.total_seconds() / 3600.0
        with np.errstate(over="ignore", invalid="ignore"):
            data = np.ma.filled(raw.astype(np.float32), np.nan)
            if scale not in (None, 1.0) or offset not in (None, 0.0):
                data = data * np.float32(scale or 1.0) + np.float32(offset or 0.0)
            data *= np.float32(unit.to_mm_h(hours))
        return Frame(data, transform, crs, start, end)


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
    precipitation). The unit is the message's own (cfgrib's ``GRIB_units``): ECMWF's
    ``tp`` is in ``m`` (x 1000 mm), WMO's in ``kg m-2`` (= mm); a ``units`` setting
    must agree with it. The interval is the message's step range for accumulations and
    averages (``GRIB_stepType`` accum/avg, ``startStep``-``endStep``; an accumulation from
    the forecast start over several hours is read as a mean over all of them), else
    ``interval_minutes`` (default 60); when both are known they must agree. Constructing
    it without cfgrib raises ``IngestError`` naming the extra to install.
    """

    kind = "grib"
    _ACCUM = ("accum", "diff")
    _RATE = ("avg", "instant")

    def __init__(self, path: Path, pattern: str = "*.grib2", variable: str = "tp",
                 units: str | None = None, interval_minutes: float | None = None,
                 max_missing: float = 0.02, limits: Limits | None = None):
        try:
            import_grib()
        except Exception as exc:  # noqa: BLE001 - ImportError, or RuntimeError without the C library
            raise IngestError(
                f"GRIB2 input ({path}) needs the optional packages cfgrib and eccodes, which are not "
                f"importable here ({type(exc).__name__}: {exc}); install them with "
                f"`pip install cfgrib eccodes` (the 'grib' extra)") from None
        self._config_unit = check_config_units(units)
        super().__init__(path, pattern, max_missing, limits)
        self.variable = variable
        self.units = units
        self.interval_given = interval_minutes is not None
        self.interval = timedelta(minutes=float(interval_minutes or 60.0))

    def _open(self, f: Path) -> xr.Dataset:
        try:
            return xr.open_dataset(f, engine="cfgrib", backend_kwargs={
                "indexpath": "", "read_keys": ["startStep", "endStep"]})
        except Exception as exc:  # noqa: BLE001 - cfgrib/eccodes raise many types
            raise unreadable(f, "GRIB file", exc) from None

    def _times(self, f: Path) -> tuple[datetime, datetime]:
        with self._open(f) as ds:
            try:
                return self._times_ds(ds, f)
            except IngestError:
                raise
            except Exception as exc:  # noqa: BLE001 - odd keys in a broken message
                raise IngestError(f"{f}: unreadable GRIB metadata ({type(exc).__name__}: {exc})"
                                  ) from None

    def _variable(self, ds: xr.Dataset, f: Path) -> xr.DataArray:
        if self.variable not in ds:
            raise IngestError(f"{f}: variable {self.variable!r} missing; the file has "
                              f"{', '.join(map(str, ds.data_vars)) or 'no variables'}")
        return ds[self.variable]

    def _times_ds(self, ds: xr.Dataset, f: Path) -> tuple[datetime, datetime]:
        """(start, end) of the frame: it ends at its valid time."""
        if "valid_time" not in ds.coords:
            raise IngestError(f"{f}: no valid_time in the GRIB messages")
        t = np.atleast_1d(ds["valid_time"].values)[0]
        if np.isnat(t):
            raise IngestError(f"{f}: the GRIB message has no valid time")
        end = datetime.fromtimestamp(t.astype("datetime64[s]").astype(np.int64), tz=UTC)
        da = self._variable(ds, f)
        stype = str(da.attrs.get("GRIB_stepType", ""))
        own = self._step_range(da) if stype in self._ACCUM + self._RATE else None
        if own is not None and self.interval_given and own != self.interval:
            raise IngestError(
                f"{f}: {self.variable!r} covers steps {da.attrs.get('GRIB_startStep')}-"
                f"{da.attrs.get('GRIB_endStep')} ({own.total_seconds() / 60:g} min, stepType "
                f"{stype}), but "
                f"interval_minutes is {self.interval.total_seconds() / 60:g}; remove "
                f"interval_minutes (the file's step range is used) or use files of that step")
        if own is None and stype in self._ACCUM:
            raise IngestError(
                f"{f}: {self.variable!r} is an accumulation over an empty or unreadable step "
                f"range {da.attrs.get('GRIB_startStep')}-{da.attrs.get('GRIB_endStep')}; a step-0 "
                f"total holds no rain, leave such files out of the folder")
        return end - (own or self.interval), end

    @staticmethod
    def _step_range(da: xr.DataArray) -> timedelta | None:
        """endStep - startStep as a duration, from cfgrib's ``step`` (= endStep) coordinate;
        None when unknown or empty."""
        parsed = []
        for key in ("GRIB_startStep", "GRIB_endStep"):
            m = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", str(da.attrs.get(key, "")))
            if not m:
                return None
            parsed.append((int(m.group(1)), m.group(2)))
        (s0, u0), (s1, u1) = parsed
        seconds = {"s": 1, "m": 60, "h": 3600, "d": 86400, "D": 86400}
        if u0 and u1 and u0 in seconds and u1 in seconds:
            length = s1 * seconds[u1] - s0 * seconds[u0]
            return timedelta(seconds=length) if length > 0 else None
        if "step" not in da.coords or u0 != u1 or s1 <= s0:
            return None
        step = np.atleast_1d(da["step"].values)[0] / np.timedelta64(1, "s")
        return timedelta(seconds=float(step) * (s1 - s0) / s1) if step > 0 else None

    def _read(self, f: Path) -> Frame:
        with self._open(f) as ds:
            try:
                start, end = self._times_ds(ds, f)
                da = self._variable(ds, f).squeeze(drop=True).load()
            except IngestError:
                raise
            except Exception as exc:  # noqa: BLE001 - truncated data sections, ...
                raise IngestError(f"{f}: unreadable GRIB content ({type(exc).__name__}: {exc})"
                                  ) from None
        if set(da.dims) != {"latitude", "longitude"}:
            raise IngestError(f"{f}: expected one regular lat/lon field, got dims {da.dims}")
        unit = resolve_rain_unit(da.attrs.get("GRIB_units", da.attrs.get("units")),
                                 self._config_unit, f, f"GRIB variable {self.variable!r}",
                                 unit_attr="GRIB_units", missing_hint="the message defines none")
        stype = str(da.attrs.get("GRIB_stepType", ""))
        if stype and stype not in self._ACCUM + self._RATE:
            raise IngestError(f"{f}: {self.variable!r} has GRIB stepType {stype!r}, which is not an "
                              f"accumulation, a mean or an instantaneous value; the models need "
                              f"rain totals or mean rates")
        if stype in self._ACCUM and unit.kind == "rate":
            raise IngestError(f"{f}: {self.variable!r} is an accumulation (stepType {stype!r}) "
                              f"but its units {unit.text!r} are a rate; the file is inconsistent")
        if stype in self._RATE and unit.kind == "depth":
            raise IngestError(f"{f}: {self.variable!r} is a rate (stepType {stype!r}) but its "
                              f"units {unit.text!r} are a depth; the file is inconsistent")
        da = da.transpose("latitude", "longitude")
        lat, lon = da["latitude"].values, da["longitude"].values
        if lat.size < 2 or lon.size < 2:
            raise IngestError(f"{f}: the GRIB grid needs at least 2 x 2 points")
        dx, dy = float(np.diff(lon).mean()), float(np.diff(lat).mean())
        transform = Affine(dx, 0.0, lon[0] - dx / 2, 0.0, dy, lat[0] - dy / 2)
        hours = (end - start).total_seconds() / 3600.0
        with np.errstate(over="ignore", invalid="ignore"):
            data = np.asarray(da.values, dtype=np.float32) * np.float32(unit.to_mm_h(hours))
        return Frame(data, transform, CRS.from_epsg(4326), start, end)
