"""The forecast cycle's models on Dask, one task per group of whole drainage basins:
groups never split a basin, are balanced and deterministic, and a cycle on Dask gives
bit for bit the local cycle's zone metrics, decisions and model arrays."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime

import numpy as np
import pytest
import rasterio

from models import terrain
from tests.conftest import DEMO_CONFIG
from warning.config import Config, load_config
from warning.national.cycle import basin_groups, default_group_count
from warning.pipeline import CycleResult, Inputs, run_cycle, site_domain
from warning.site import Site
from warning.storage import Store

distributed = pytest.importorskip("distributed")

# the storm is rising: levels go up at these cycles; the 12 UTC issue is a 6-member
# ensemble, the 15 UTC one deterministic (one member: locally the routing then splits the
# network over threads, while a one-thread worker sweeps it whole)
ENSEMBLE_AT = datetime(2025, 11, 14, 12, tzinfo=UTC)
SINGLE_AT = datetime(2025, 11, 14, 15, tzinfo=UTC)
# a slanted nodata strip, 3 cells wide, cuts the demo valley: one large basin west of it,
# several east of it, with bounding windows that overlap
CUT = (150.0, 0.25)  # column of the strip's axis at row 0, columns per row


# ----------------------------------------------------------------------------- helpers
def group_labels(groups, shape: tuple[int, int]) -> np.ndarray:
    """(y, x) group index of every cell (-1: in no group); fails if a cell is in two."""
    label = np.full(shape, -1, dtype=np.int64)
    for g in groups:
        window = label[g.rows, g.cols]
        assert (window[g.cells] == -1).all(), "a cell is in two groups"
        window[g.cells] = g.index
    return label


def basin_sizes(fdir: np.ndarray) -> np.ndarray:
    """Cells of every drainage basin (all cells draining to one terminal cell)."""
    down = terrain.downstream_index(fdir).ravel()
    terminal = np.flatnonzero((fdir.ravel() != 255) & (down < 0))
    return np.bincount(terrain.catchments(fdir, terminal).ravel())[1:]


def random_fdir(seed: int, shape=(60, 80)) -> np.ndarray:
    """D8 directions of an unfilled random DEM with a nodata hole: many pits, so many
    basins of very different sizes."""
    rng = np.random.default_rng(seed)
    dem = rng.random(shape).astype(np.float32)
    dem += np.linspace(0.0, 2.0, shape[1], dtype=np.float32)[None]  # some long basins too
    dem[20:30, 35:50] = -9999.0
    return terrain.flow_direction_d8(dem, nodata=-9999.0)


def site_cfg(base: Config, folder, cut: bool) -> Config:
    """The demo config writing into ``folder``; ``cut``: on the demo DEM with the nodata
    strip ``CUT`` across it, as where a national grid meets a coast or a border."""
    update = {"output_dir": folder / "out"}
    if cut:
        with rasterio.open(base.path(base.site.dem)) as src:
            dem, profile = src.read(1).astype(np.float32), src.profile
        r, c = np.indices(dem.shape)
        dem[np.abs(c - (CUT[0] + CUT[1] * r)) <= 1] = np.nan
        profile.update(nodata=np.nan, dtype="float32")
        with rasterio.open(folder / "dem.tif", "w", **profile) as dst:
            dst.write(dem, 1)
        update["dem"] = folder / "dem.tif"
    return base.model_copy(update={"site": base.site.model_copy(update=update)})


def assert_same_cycle(a: CycleResult, b: CycleResult) -> None:
    """Equal to the last bit: metrics (NaN equals NaN), decisions, model arrays."""
    assert a.metrics.keys() == b.metrics.keys()
    for zone, vals in a.metrics.items():
        assert vals.keys() == b.metrics[zone].keys()
        for name, v in vals.items():
            w = b.metrics[zone][name]
            assert v == w or (math.isnan(v) and math.isnan(w)), (zone, name, v, w)
    assert a.decisions == b.decisions
    assert (a.problems, a.messages_queued) == (b.problems, b.messages_queued)
    sa, sb = a.simulation, b.simulation
    for name in ("stage", "peak_depth", "analysis_depth"):
        x, y = getattr(sa, name), getattr(sb, name)
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), name
    assert list(sa.q_gauge) == list(sb.q_gauge)
    for gid, q in sa.q_gauge.items():
        assert np.array_equal(q, sb.q_gauge[gid]), gid
    assert sa.zone_depth.keys() == sb.zone_depth.keys()
    for code, zd in sa.zone_depth.items():
        other = sb.zone_depth[code]
        assert np.array_equal(zd.max_m, other.max_m) and np.array_equal(zd.wet, other.wet)
        assert zd.cells == other.cells


def cycle(site: Site, cfg: Config, inputs: Inputs, at: datetime, db, **kw) -> CycleResult:
    """One cycle at ``at`` on a fresh database (so decisions start from the same state);
    ``inputs`` is shared by the cycles compared, so the forecasts are reprojected once."""
    return run_cycle(site, cfg, Store(f"sqlite:///{db}"), inputs, at, write_depth=False, **kw)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def client():
    # one Numba thread per worker, as dask_client sets it: two workers on the test machine
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None,
                                  env={"NUMBA_NUM_THREADS": "1"}) as cluster, \
            distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def cut_site(tmp_path_factory):
    """The demo site cut by the strip ``CUT`` (its config: the local engine)."""
    cfg = site_cfg(load_config(DEMO_CONFIG), tmp_path_factory.mktemp("cut"), cut=True)
    return Site.load(cfg), cfg


# ----------------------------------------------------------------------------- basin groups
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_groups", [1, 2, 3, 7])
def test_groups_hold_whole_basins_and_are_balanced(seed, n_groups):
    fdir = random_fdir(seed)
    groups = basin_groups(fdir, n_groups)
    sizes = basin_sizes(fdir)
    assert sizes.size > 50 and len(groups) == n_groups
    assert [g.index for g in groups] == list(range(n_groups))
    label = group_labels(groups, fdir.shape)
    valid = fdir != 255
    assert np.array_equal(label >= 0, valid)  # every valid cell in exactly one group
    # no flow crosses groups: every cell drains to a cell of its own group (or out)
    down = terrain.downstream_index(fdir).ravel()
    flows = np.flatnonzero(down >= 0)
    assert np.array_equal(label.ravel()[flows], label.ravel()[down[flows]])
    # each group's window is the bounding box of its cells, its counts are right
    for g in groups:
        r, c = np.nonzero(label == g.index)
        assert (g.rows, g.cols) == (slice(r.min(), r.max() + 1), slice(c.min(), c.max() + 1))
        assert g.n_cells == r.size == g.cells.sum()
        flat = np.sort(g.flat_cells(fdir.shape[1]))
        assert np.array_equal(flat, np.flatnonzero(label == g.index))
    assert sum(g.n_basins for g in groups) == sizes.size
    # greedy largest-first: no group above the mean by more than the largest basin
    assert max(g.n_cells for g in groups) <= valid.sum() / n_groups + sizes.max()
    assert groups[0].n_cells >= sizes.max()  # the largest basin went first, to group 0
    # deterministic
    again = basin_groups(fdir.copy(), n_groups)
    assert [(g.rows, g.cols, g.n_cells, g.n_basins) for g in again] == \
        [(g.rows, g.cols, g.n_cells, g.n_basins) for g in groups]
    assert all(np.array_equal(a.cells, b.cells) for a, b in zip(again, groups, strict=True))


def test_groups_on_a_small_grid_and_edge_cases():
    # A = {0, 1, 2} drains to its outlet at 1; B = {3, 4, 5} runs onto the hole at 6, so 5
    # is a terminal cell; C = {7} flows east off the grid
    fdir = np.array([[1, 0, 16, 1, 1, 1, 255, 1]], dtype=np.uint8)
    two = basin_groups(fdir, 2)
    # A and B are as large: A (lower terminal) first, to group 0; C then ties 3 : 3, to 0
    assert [(g.cols, g.n_cells, g.n_basins) for g in two] == [
        (slice(0, 8), 4, 2), (slice(3, 6), 3, 1)]
    assert two[0].cells.tolist() == [[True] * 3 + [False] * 4 + [True]]
    one = basin_groups(fdir, 1)
    assert len(one) == 1 and one[0].n_cells == 7 and one[0].cols == slice(0, 8)
    assert len(basin_groups(fdir, 10)) == 3  # capped by the number of basins
    assert basin_groups(np.full((3, 3), 255, dtype=np.uint8), 2) == []
    with pytest.raises(ValueError, match="n_groups"):
        basin_groups(fdir, 0)


def test_the_demo_valley_is_one_basin_and_the_cut_one_many(demo_cfg, cut_site):
    demo = Site.load(demo_cfg)
    assert len(basin_groups(demo.terrain.fdir, 4)) == 1
    site, _ = cut_site
    groups = basin_groups(site.terrain.fdir, 4)
    assert len(groups) == 4 and sum(g.n_basins for g in groups) > 4
    assert groups[0].cols == slice(0, 184)  # the valley west of the strip, whole
    label = group_labels(groups, (site.ny, site.nx))
    assert np.array_equal(label >= 0, site.valid)


# ----------------------------------------------------------------------------- the cycle
def test_cycle_on_dask_equals_the_local_cycle(cut_site, client, tmp_path, monkeypatch, caplog):
    """Four groups with overlapping windows, all with reaches; the Town zone has cells in
    every group and the Steep Beck zone in two, so their flooded share and peak depth come
    from partial counts and maxima combined on the client."""
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "k")
    site, cfg = cut_site
    groups = basin_groups(site.terrain.fdir, default_group_count(client))
    domains = [site_domain(site, g.rows, g.cols, g.cells) for g in groups]
    assert len(domains) == 4 and all(d.reaches.size > 0 for d in domains)
    assert sum(d.reaches.size for d in domains) == site.terrain.n_reach
    assert all("MB-TOWN" in d.zones for d in domains)
    assert sum("SB-LANE" in d.zones for d in domains) == 2
    assert groups[0].cols.stop > groups[1].cols.start  # windows overlap: cells of other
    # groups inside a window are nodata to its task
    inputs = Inputs(cfg)
    local = cycle(site, cfg, inputs, ENSEMBLE_AT, tmp_path / "local.db")
    dask_cfg = cfg.model_copy(update={"compute": cfg.compute.model_copy(update={"engine": "dask"})})
    with caplog.at_level(logging.INFO, logger="warning.national.cycle"):
        on_dask = cycle(site, dask_cfg, inputs, ENSEMBLE_AT, tmp_path / "dask.db", client=client)
    assert "models on Dask: 4 groups" in caplog.text
    assert local.simulation.members == 6
    assert {d["action"] for d in local.decisions} >= {"raise"}  # the cycle decided something
    assert_same_cycle(local, on_dask)


def test_demo_cycle_on_a_cluster_from_the_config(demo_cfg, tmp_path, monkeypatch):
    """engine = "dask" without a client: the cycle opens a cluster from [compute]."""
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "k")
    site = Site.load(demo_cfg)
    inputs = Inputs(demo_cfg)
    local = cycle(site, demo_cfg, inputs, SINGLE_AT, tmp_path / "local.db")
    compute = demo_cfg.compute.model_copy(update={"engine": "dask", "workers": 1,
                                                   "memory_per_worker": "1GiB"})
    on_dask = cycle(site, demo_cfg.model_copy(update={"compute": compute}), inputs, SINGLE_AT,
                    tmp_path / "dask.db")
    assert local.simulation.members == 1 and local.decisions
    assert_same_cycle(local, on_dask)
