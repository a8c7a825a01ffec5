"""The site: grids, zones and gauges placed on the terrain, and clear errors for bad grids."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from tests.conftest import shared_path
from warning.errors import IngestError
from warning.site import RATING_STAGES, Site


@pytest.fixture(scope="module")
def site():
    from tests.conftest import DEMO_CONFIG
    from warning.config import load_config

    return Site.load(load_config(DEMO_CONFIG))


def test_terrain_products_are_consistent(site):
    t = site.terrain
    assert t.fdir.dtype == np.uint8 and t.fdir.shape == site.dem.shape
    # every cell drains: the epsilon fill leaves no interior pit
    interior = np.zeros_like(t.drainage)
    interior[1:-1, 1:-1] = True
    assert not ((t.fdir == 0) & interior & site.valid).any()
    # accumulation is conserved: the outlets' counts add up to every valid cell
    outlets = (t.fdir == 0) & site.valid
    leaving = np.zeros_like(outlets)  # edge cells whose direction points off the grid
    ny, nx = t.fdir.shape
    for code, (dr, dc) in {1: (0, 1), 2: (1, 1), 4: (1, 0), 8: (1, -1), 16: (0, -1),
                           32: (-1, -1), 64: (-1, 0), 128: (-1, 1)}.items():
        rr, cc = np.nonzero(t.fdir == code)
        off = (rr + dr < 0) | (rr + dr >= ny) | (cc + dc < 0) | (cc + dc >= nx)
        leaving[rr[off], cc[off]] = True
    assert t.acc[outlets | leaving].sum() == site.valid.sum()
    # HAND is zero on the channel, positive off it
    assert np.all(t.hand[t.drainage] == 0)
    assert np.nanmin(t.hand[~t.drainage & site.valid]) > 0
    # rating curves: zero at zero stage, monotone
    assert RATING_STAGES[0] == 0 and np.all(t.rating_q[1:, 0] == 0)
    assert np.all(np.diff(t.rating_q, axis=1) >= 0)


def test_zones_and_gauges_sit_where_configured(site):
    codes = [z.code for z in site.zones]
    assert codes == ["MB-TOWN", "MB-WESTFORD", "SB-LANE", "HILLTOP"]
    for z in site.zones:
        assert z.mask.any() and not (z.mask & site.terrain.drainage).any()
        ring = z.polygons[0]
        assert ring[0] == ring[-1] and all(51.3 < lat < 51.5 for lat, _ in ring)
    hill = next(z for z in site.zones if z.code == "HILLTOP")
    assert np.nanmin(site.terrain.hand[hill.mask]) > 30  # high and dry
    for g in site.gauges.values():
        assert site.terrain.drainage[g.row, g.col]
        assert g.reach == site.terrain.reach[g.row, g.col] > 0
    town = site.gauges["MB-TOWN"]
    west = site.gauges["MB-WEST"]
    assert site.terrain.acc[town.row, town.col] > site.terrain.acc[west.row, west.col]


def _config_with(tmp_path, **site_values):
    from tests.conftest import DEMO_CONFIG
    from warning.config import load_config

    cfg = load_config(DEMO_CONFIG)
    return cfg.model_copy(update={"site": cfg.site.model_copy(
        update={"output_dir": tmp_path / "out", **site_values})})


def test_geographic_dem_is_refused_with_the_fix(tmp_path):
    dem = shared_path("data", "dem", "fortworth.tif")
    cfg = _config_with(tmp_path, dem=dem, curve_number=None, curve_number_constant=75.0)
    with pytest.raises(IngestError, match=r"fortworth\.tif: the DEM must be in a projected CRS.*gdalwarp"):
        Site.load(cfg)


def test_curve_number_on_another_grid_is_refused(tmp_path):
    bad = tmp_path / "cn.tif"
    with rasterio.open(bad, "w", driver="GTiff", width=10, height=10, count=1, dtype="uint8",
                       crs="EPSG:32631", transform=from_origin(600000, 5700000, 25, 25)) as dst:
        dst.write(np.full((1, 10, 10), 70, np.uint8))
    cfg = _config_with(tmp_path, curve_number=bad)
    with pytest.raises(IngestError, match="must be on the DEM's grid"):
        Site.load(cfg)


def test_unreadable_dem_names_the_file(tmp_path):
    junk = tmp_path / "dem.tif"
    junk.write_bytes(b"II*\x00not really a tiff")
    cfg = _config_with(tmp_path, dem=junk)
    with pytest.raises(IngestError, match=r"dem\.tif: cannot read the DEM grid"):
        Site.load(cfg)
