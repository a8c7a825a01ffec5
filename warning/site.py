"""A site: its grid, land, zones, gauges and terrain products.

``Site.load(cfg)`` reads the DEM and curve-number grids, rasterises the warning zones and
places the gauges on the channel network. ``site.terrain`` holds the terrain products
(filled DEM, D8 directions, accumulation, drainage network, reaches, HAND and the
synthetic rating curve of every reach); they are computed once per site and cached on
disk as NetCDF, keyed by the DEM's content and the terrain parameters.

A gauge site (no ``site.dem`` in its config) has no grid: ``Site.load`` gives a site with
``has_grid`` False, its zones (polygons for the CAP areas, no cell mask) and no terrain;
its cycles run from the gauges (``warning.gauge_cycle``).

Zones are read and checked by :func:`warning.config.read_zones` (the rule
``floodwarn check-config`` applies too) before any terrain work: a zone file that is not
UTF-8 JSON, a zone in metres instead of lon/lat, an invalid polygon, a duplicate code or
a zone outside the DEM is a ``ConfigError`` naming the zone, never a GDAL error later.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import xarray as xr
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.transform import array_bounds
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_geom
from shapely.geometry import MultiPolygon, Polygon, mapping

from models import inundation, terrain

from .config import Config, ZoneShape, read_zones, zone_extent_problems
from .errors import ConfigError, IngestError

log = logging.getLogger(__name__)

TERRAIN_VERSION = 3
#: stages of the synthetic rating curves, m above the channel bed (finer near the bed)
RATING_STAGES = (np.linspace(0.0, 1.0, 41) ** 2 * 12.0).astype(np.float64)


@dataclass(frozen=True)
class Zone:
    code: str
    name: str
    #: the CAP polygons (:func:`cap_polygons`): one closed (lat, lon) ring per outer ring
    polygons: list[list[tuple[float, float]]]
    mask: np.ndarray | None  # (y, x) bool: land cells of the zone (channel cells excluded); None on a gauge site


@dataclass(frozen=True)
class GaugeSite:
    id: str
    name: str
    row: int
    col: int
    reach: int
    datum_m: float


@dataclass(frozen=True)
class Terrain:
    filled: np.ndarray  # (y, x) float32, m, depressions filled (Priority-Flood + epsilon)
    fdir: np.ndarray  # (y, x) uint8, ESRI D8 codes
    acc: np.ndarray  # (y, x) float64, upstream cells including the cell itself
    drainage: np.ndarray  # (y, x) bool, channel cells
    reach: np.ndarray  # (y, x) int32, reach id of channel cells, 0 elsewhere
    reach_of_cell: np.ndarray  # (y, x) int32, reach each cell drains to first, 0 none
    hand: np.ndarray  # (y, x) float32, m above the nearest drainage cell
    slope: np.ndarray  # (y, x) float32, m/m along D8
    reach_outlet: np.ndarray  # (n_reach+1,) int64, flat index of each reach's lowest cell
    rating_q: np.ndarray  # (n_reach+1, n_stage) float64, m3/s at RATING_STAGES
    key: str

    @property
    def n_reach(self) -> int:
        return int(self.reach_outlet.size - 1)


def _read_grid(path: Path, what: str) -> tuple[np.ndarray, rasterio.profiles.Profile]:
    try:
        with rasterio.open(path) as src:
            return src.read(1, masked=False), src.profile
    except rasterio.errors.RasterioIOError as exc:
        raise IngestError(f"{path}: cannot read the {what} grid: {exc}") from None


class Site:
    """The site grid and everything placed on it."""

    #: a grid site (DEM, terrain, forecasts); False for a gauge site (GaugeOnlySite)
    has_grid = True

    def __init__(self, cfg: Config, dem: np.ndarray, profile, cn: np.ndarray):
        self.cfg = cfg
        self.dem = dem
        self.crs: CRS = profile["crs"]
        self.transform: Affine = profile["transform"]
        self.ny, self.nx = dem.shape
        self.dx = float(abs(self.transform.a))
        self.dy = float(abs(self.transform.e))
        self.cell_area = self.dx * self.dy
        self.valid = np.isfinite(dem)
        self.cn = cn
        self.x_coords = self.transform.c + (np.arange(self.nx) + 0.5) * self.transform.a
        self.y_coords = self.transform.f + (np.arange(self.ny) + 0.5) * self.transform.e
        self._terrain: Terrain | None = None
        self.zones: list[Zone] = []
        self.gauges: dict[str, GaugeSite] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, cfg: Config, *, client=None, progress=None, force: bool = False) -> Site:
        """The site of ``cfg``, its terrain prepared (from the cache when there is one).

        The terrain is needed to place zones and gauges; ``client``, ``progress`` and
        ``force`` go to :meth:`prepare` (a Dask client for ``engine = "dask"``, a stage
        callback, recompute even if cached).
        """
        if not cfg.has_grid:
            return GaugeOnlySite(cfg)
        zones = site_zone_shapes(cfg)  # checked before the terrain work, which can take long
        dem_path = cfg.path(cfg.site.dem)
        dem, profile = _read_grid(dem_path, "DEM")
        if profile["crs"] is None or not profile["crs"].is_projected:
            raise IngestError(f"{dem_path}: the DEM must be in a projected CRS with metre cells "
                              f"(found {profile['crs']}); reproject it, e.g. "
                              f"gdalwarp -t_srs EPSG:326NN -tr 20 20")
        dem = dem.astype(np.float32)
        if profile.get("nodata") is not None:
            dem[dem == profile["nodata"]] = np.nan
        if cfg.site.curve_number is not None:
            cn_path = cfg.path(cfg.site.curve_number)
            cn_raw, cn_prof = _read_grid(cn_path, "curve-number")
            if (cn_raw.shape != dem.shape or cn_prof["crs"] != profile["crs"]
                    or not cn_prof["transform"].almost_equals(profile["transform"])):
                raise IngestError(f"{cn_path}: the curve-number grid must be on the DEM's grid "
                                  f"(shape {dem.shape}, CRS {profile['crs']}); resample it first")
            cn = cn_raw.astype(np.float32)
            bad = (cn <= 0) | (cn > 100)
            if (bad & np.isfinite(dem)).any():
                raise IngestError(f"{cn_path}: {int((bad & np.isfinite(dem)).sum())} cells have "
                                  f"a curve number outside (0, 100]")
        else:
            cn = np.full(dem.shape, cfg.site.curve_number_constant, dtype=np.float32)
        site = cls(cfg, dem, profile, cn)
        site._check_zone_extent(zones)
        site._terrain = site.prepare(force=force, client=client, progress=progress)
        site._load_zones(zones)
        return site

    def _check_zone_extent(self, zones: list[ZoneShape]) -> None:
        """ConfigError for zones wholly outside the grid; a warning for those partly outside."""
        bounds = array_bounds(self.ny, self.nx, self.transform)
        problems, partly = zone_extent_problems(zones, self.crs, bounds)
        if problems:
            raise ConfigError(problems, source=str(self.cfg.path(self.cfg.site.zones)))
        for code, share in partly.items():
            log.warning("zone %s: %.0f%% of its area is outside the DEM; only the part inside is "
                        "modelled, but its CAP notices cover the whole zone", code, 100 * share)

    def _load_zones(self, zones: list[ZoneShape]) -> None:
        drainage = self.terrain.drainage
        for z in zones:
            site_geom = transform_geom("EPSG:4326", self.crs, mapping(z.geometry))
            mask = rasterize([(site_geom, 1)], out_shape=(self.ny, self.nx),
                             transform=self.transform, fill=0, dtype="uint8").astype(bool)
            mask &= self.valid & ~drainage
            if not mask.any():
                raise ConfigError(f"site.zones: zone {z.code!r} covers no land cell of the site grid "
                                  f"(only nodata or channel cells); check it against the DEM",
                                  source=str(self.cfg.path(self.cfg.site.zones)))
            self.zones.append(Zone(z.code, z.name, cap_polygons(z.geometry), mask))
        for g in self.cfg.gauges:
            self.gauges[g.id] = self._place_gauge(g.id, g.name, g.lon, g.lat, g.datum_m)

    def _place_gauge(self, gid: str, name: str, lon: float, lat: float, datum: float) -> GaugeSite:
        """Snap a gauge to the nearest channel cell within 3 cells (ties: larger upstream area)."""
        xs, ys = warp_transform("EPSG:4326", self.crs, [lon], [lat])
        col, row = ~self.transform @ (xs[0], ys[0])
        row, col = int(np.floor(row)), int(np.floor(col))
        if not (0 <= row < self.ny and 0 <= col < self.nx):
            raise ConfigError(f"gauges: gauge {gid!r} at {lat:.5f}, {lon:.5f} is outside the site grid")
        t = self.terrain
        r0, r1 = max(row - 3, 0), min(row + 4, self.ny)
        c0, c1 = max(col - 3, 0), min(col + 4, self.nx)
        rr, cc = np.mgrid[r0:r1, c0:c1]
        dist = np.hypot(rr - row, cc - col)
        acc = t.acc[r0:r1, c0:c1]
        score = np.where(t.drainage[r0:r1, c0:c1], dist - acc / (acc.max() + 1.0) * 1e-3, np.inf)
        if not np.isfinite(score).any():
            raise ConfigError(f"gauges: gauge {gid!r} is not within 3 cells of a channel; check its "
                              f"location or lower model.drainage_threshold_km2")
        i, j = np.unravel_index(int(np.argmin(score)), score.shape)
        r, c = r0 + int(i), c0 + int(j)
        return GaugeSite(gid, name, r, c, int(t.reach[r, c]), datum)

    # ------------------------------------------------------------------ terrain
    @property
    def terrain(self) -> Terrain:
        if self._terrain is None:
            self._terrain = self.prepare()
        return self._terrain

    def _terrain_key(self) -> str:
        m = self.cfg.model
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.dem).tobytes())
        h.update(json.dumps([TERRAIN_VERSION, self.transform[:6], m.drainage_threshold_km2,
                             m.reach_max_length_cells, m.manning_rating]).encode())
        return h.hexdigest()[:16]

    def cache_path(self) -> Path:
        return self.cfg.output_dir / "cache" / f"terrain-{self.cfg.site.code}-{self._terrain_key()}.nc"

    def prepare(self, force: bool = False, *, client=None, progress=None) -> Terrain:
        """Terrain products from the cache, or computed and cached when missing.

        With ``[compute] engine = "dask"`` the fill, D8, accumulation, channel and HAND
        steps run tile by tile on Dask (:func:`warning.national.prepare.prepare_tiled`,
        bit-for-bit the local result) on ``client``, or on a cluster opened from the
        config for this call; ``progress`` is passed on to it.
        """
        path = self.cache_path()
        if path.is_file() and not force:
            try:
                return self._read_cache(path)
            except (OSError, KeyError, ValueError) as exc:
                log.warning("terrain cache %s unreadable (%s); recomputing", path, exc)
        t = self._compute_terrain(client=client, progress=progress)
        self._write_cache(t, path)
        return t

    def _grid_products(self, dem: np.ndarray, nodata, threshold_cells: float, client, progress
                       ) -> tuple[np.ndarray, ...]:
        """Filled DEM, D8, accumulation, channel mask and HAND, here or on Dask."""
        if self.cfg.compute.engine != "dask":
            filled = terrain.fill_depressions(dem, nodata=nodata, epsilon=True)
            fdir = terrain.flow_direction_d8(filled, nodata=nodata, dx=self.dx, dy=self.dy)
            acc = terrain.flow_accumulation_d8(fdir)
            drainage = terrain.drainage_network(acc, threshold_cells) & self.valid
            return filled, fdir, acc, drainage, terrain.hand(filled, fdir, drainage)
        from .national.cluster import dask_client
        from .national.prepare import prepare_tiled
        from .national.tiles import to_zarr

        if client is None:
            with dask_client(self.cfg.compute) as own:
                return self._grid_products(dem, nodata, threshold_cells, own, progress)
        c = self.cfg.compute
        root = self.cfg.path(c.store) if c.store else self.cfg.output_dir / "tiles"
        work = root / f"{self.cfg.site.code}-{self._terrain_key()}"
        src = to_zarr(dem, work / "dem.zarr", tile=c.tile, nodata=float(nodata), overwrite=True)
        stores = prepare_tiled(src, work, nodata=nodata, dx=self.dx, dy=self.dy,
                               threshold_cells=threshold_cells, client=client, progress=progress)
        g = stores.read()
        return g["filled"], g["fdir"], g["acc"], g["drainage"].astype(bool), g["hand"]

    def _compute_terrain(self, client=None, progress=None) -> Terrain:
        m = self.cfg.model
        nodata = np.float32(-9999.0)
        dem = np.where(self.valid, self.dem, nodata).astype(np.float32)
        threshold_cells = m.drainage_threshold_km2 * 1e6 / self.cell_area
        filled, fdir, acc, drainage, hand = self._grid_products(dem, nodata, threshold_cells,
                                                                client, progress)
        reach = terrain.label_reaches(fdir, drainage, max_length=m.reach_max_length_cells)
        slope = terrain.d8_slope(filled, fdir, self.dx, self.dy)
        reach_of_cell = terrain.reach_catchments(fdir, reach)
        n_reach = int(reach.max())
        outlet = terrain.reach_outlets(reach, acc)
        # per reach: length and mean bed slope of its channel cells
        flat_reach = reach.ravel()
        idx = np.flatnonzero(flat_reach)
        ids = flat_reach[idx]
        counts = np.bincount(ids, minlength=n_reach + 1).astype(np.float64)
        length = np.maximum(counts, 1.0) * 0.5 * (self.dx + self.dy)
        slope_sum = np.bincount(ids, weights=slope.ravel()[idx], minlength=n_reach + 1)
        reach_slope = np.maximum(slope_sum / np.maximum(counts, 1.0), 1e-4)
        rating = inundation.synthetic_rating_curves(
            np.nan_to_num(hand, nan=np.inf).astype(np.float32), reach_of_cell, length,
            reach_slope, m.manning_rating, self.cell_area, RATING_STAGES)
        # Manning on a reach-averaged section can dip where a flat floodplain wets (the
        # wetted perimeter jumps before the area does); a running maximum keeps Q(stage)
        # monotone so every discharge has one stage, the highest of the dip.
        rating_q = np.maximum.accumulate(np.asarray(rating.discharge, dtype=np.float64), axis=1)
        return Terrain(filled=filled.astype(np.float32), fdir=fdir, acc=acc, drainage=drainage,
                       reach=reach.astype(np.int32), reach_of_cell=reach_of_cell,
                       hand=hand.astype(np.float32), slope=slope.astype(np.float32),
                       reach_outlet=outlet, rating_q=rating_q, key=self._terrain_key())

    def _write_cache(self, t: Terrain, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        grids = {k: (("y", "x"), getattr(t, k)) for k in
                 ("filled", "fdir", "acc", "reach", "reach_of_cell", "hand", "slope")}
        grids["drainage"] = (("y", "x"), t.drainage.astype(np.uint8))
        ds = xr.Dataset({**grids,
                         "reach_outlet": (("reach_id",), t.reach_outlet),
                         "rating_q": (("reach_id", "stage"), t.rating_q)},
                        coords={"x": self.x_coords, "y": self.y_coords, "stage": RATING_STAGES},
                        attrs={"key": t.key, "crs_wkt": self.crs.to_wkt(),
                               "d8_encoding": "ESRI: 1=E 2=SE 4=S 8=SW 16=W 32=NW 64=N 128=NE, 0=outlet, 255=nodata",
                               "title": f"floodwarn terrain products for {self.cfg.site.name}"})
        tmp = path.with_suffix(".tmp")
        ds.to_netcdf(tmp, engine="h5netcdf")
        tmp.replace(path)
        log.info("terrain cached at %s", path)

    def _read_cache(self, path: Path) -> Terrain:
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            if ds.attrs.get("key") != self._terrain_key():
                raise ValueError("cache key mismatch")
            g = {k: ds[k].values for k in ds.data_vars}
        return Terrain(filled=g["filled"], fdir=g["fdir"], acc=g["acc"],
                       drainage=g["drainage"].astype(bool), reach=g["reach"],
                       reach_of_cell=g["reach_of_cell"], hand=g["hand"], slope=g["slope"],
                       reach_outlet=g["reach_outlet"], rating_q=g["rating_q"],
                       key=self._terrain_key())

    # ------------------------------------------------------------------ output
    def write_geotiff(self, path: Path, data: np.ndarray, **tags: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", height=self.ny, width=self.nx, count=1,
                           dtype="float32", crs=self.crs, transform=self.transform,
                           nodata=np.nan, compress="deflate") as dst:
            dst.write(data.astype(np.float32), 1)
            dst.update_tags(**tags)


def site_zone_shapes(cfg: Config) -> list[ZoneShape]:
    """The configured zones of the ``site.zones`` file, in file order, checked by
    :func:`warning.config.read_zones`; a ConfigError lists every problem of the file and
    every configured zone it lacks."""
    path = cfg.path(cfg.site.zones)
    zf = read_zones(path)
    problems = list(zf.problems)
    for i, z in enumerate(cfg.zones):
        if z.code not in zf.codes and (zf.codes or not zf.problems):
            problems.append(f"zones[{i}].code: {z.code!r} is not in {path.name}")
    if problems:
        raise ConfigError(problems, source=str(path))
    configured = {z.code for z in cfg.zones}
    return [z for z in zf.zones if z.code in configured]


def cap_polygons(geometry: Polygon | MultiPolygon) -> list[list[tuple[float, float]]]:
    """A zone's CAP 1.2 polygons: the outer ring of each of its polygons as closed
    ``(lat, lon)`` pairs (latitude first, as CAP writes them; at least four pairs, the first
    repeated last, as every valid ring has).

    CAP 1.2 cannot express holes: a ``<polygon>`` is one ring, and several in one
    ``<area>`` are a union. A zone with holes is therefore published as its outer
    ring(s), which cover the holes too: the notice's area is larger than the zone (the
    safe side for a warning), while the model's cells (``Zone.mask``) leave the holes out.
    """
    polygons = geometry.geoms if isinstance(geometry, MultiPolygon) else [geometry]
    return [[(float(lat), float(lon)) for lon, lat, *_ in p.exterior.coords] for p in polygons]


class GaugeOnlySite(Site):
    """A gauge site: zones (for the CAP areas) and no grid, terrain or placed gauges.

    Its zones have no cell mask; its gauges are only named in the config (there is no
    channel network to snap them to). The cycle reads them (``warning.gauge_cycle``).
    """

    has_grid = False

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self._terrain = None
        self.zones = [Zone(z.code, z.name, cap_polygons(z.geometry), None)
                      for z in site_zone_shapes(cfg)]
        self.gauges: dict[str, GaugeSite] = {}

    @property
    def terrain(self) -> Terrain:
        raise ConfigError(f"site {self.cfg.site.code!r} is a gauge site (no site.dem): it has no "
                          f"terrain; give site.dem to run the grid models")

    def prepare(self, force: bool = False) -> None:  # type: ignore[override]
        """Nothing to prepare: a gauge site has no terrain."""
        log.info("site %s is a gauge site (no DEM): no terrain to prepare", self.cfg.site.code)

    def write_geotiff(self, path: Path, data: np.ndarray, **tags: str) -> None:
        raise ConfigError(f"site {self.cfg.site.code!r} is a gauge site (no site.dem): no grid to "
                          f"write {path.name} on")
