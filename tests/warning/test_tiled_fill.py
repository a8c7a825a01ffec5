"""Tiled Priority-Flood on Dask is bit-for-bit the single-machine fill.

Synthetic DEMs (seeded) with depressions larger than a tile, nested pits, flats from
quantised elevations, nodata holes and coasts that cross tile edges, on grid sizes
that the tiles do not divide.
"""

from __future__ import annotations

import numpy as np
import pytest

from models import terrain
from models.tiled_fill import fixup_tile, flood_tile, solve_spill_graph
from warning.national.fill import fill_array, fill_tiled
from warning.national.tiles import TileGrid, read_block, to_zarr

dask = pytest.importorskip("dask")
pytest.importorskip("zarr")


def make_dem(seed: int, shape: tuple[int, int], *, dtype=np.float32, nodata=None,
             coast: bool = True, holes: bool = True, step: float = 0.5) -> np.ndarray:
    """Valleys and basins of several sizes, quantised (flats), with a coast and holes."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx].astype(np.float64)
    z = 0.05 * (x + 0.5 * y)
    for _ in range(6):  # broad basins, some nested in others
        cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
        rad = rng.uniform(3, max(4.0, 0.4 * min(ny, nx)))
        z -= rng.uniform(1, 6) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * rad**2))
    z += 2.0 * np.sin(x / rng.uniform(3, 9)) * np.cos(y / rng.uniform(3, 9))
    z += rng.normal(0, 0.4, shape)
    z = np.round(z / step) * step + 20.0  # flats and ties everywhere
    mask = np.zeros(shape, dtype=bool)
    if coast:  # sea along a wavy line from the west edge
        mask |= x < (0.15 * nx + 0.1 * nx * np.sin(y / 5.0))
    if holes:  # interior nodata lakes of a few cells to many
        for _ in range(4):
            cy, cx = rng.uniform(0, ny), rng.uniform(0, nx)
            rad = rng.uniform(0.8, 0.12 * min(ny, nx) + 1)
            mask |= (y - cy) ** 2 + (x - cx) ** 2 < rad**2
    out = z.astype(dtype)
    if nodata is None:
        out[mask] = np.nan
    else:
        out[mask] = nodata
    return out


def assert_bit_identical(out: np.ndarray, ref: np.ndarray) -> None:
    assert out.dtype == ref.dtype
    assert out.shape == ref.shape
    assert np.array_equal(out, ref, equal_nan=out.dtype.kind == "f"), (
        f"{int((out != ref).sum())} cells differ")
    if out.dtype.kind == "f":
        assert np.array_equal(np.isnan(out), np.isnan(ref))


@pytest.fixture(scope="module", autouse=True)
def threads():
    with dask.config.set(scheduler="threads", num_workers=2):
        yield


# --------------------------------------------------------------------------- kernels
def test_one_tile_is_the_whole_grid_fill():
    z = make_dem(0, (41, 57))
    tf = flood_tile(z, (slice(None), slice(None)))
    out = fixup_tile(tf, np.full(tf.n_labels, -np.inf), z)
    assert tf.n_labels == 2  # every seed is on the grid edge or next to nodata: all ocean
    assert_bit_identical(out, terrain.fill_depressions(z))


def test_worked_example_from_priority_flood_note():
    dem = np.array([[9, 9, 9, 9, 9, 9],
                    [9, 5, 5, 5, 5, 9],
                    [9, 5, 2, 3, 5, 9],
                    [9, 5, 3, 1, 5, 9],
                    [9, 5, 5, 5, 6, 4],
                    [9, 9, 9, 9, 9, 9]], float)
    expected = np.where(dem < 5, 5.0, dem)
    expected[4, 5] = 4.0
    for tile in [(1, 1), (2, 2), (3, 3), (4, 5)]:
        assert_bit_identical(fill_array(dem, tile=tile), expected)


def test_spill_graph_is_minimax_from_the_ocean():
    #  ocean(0) -5- 1 -3- 2 ; 2 -9- 3 ; 4 unconnected
    level = solve_spill_graph(5, [0, 1, 2], [1, 2, 3], [5.0, 3.0, 9.0])
    assert level.tolist() == [-np.inf, 5.0, 5.0, 9.0, np.inf]


def test_read_block_halo_clips_at_grid_edge(tmp_path):
    a = np.arange(7 * 8, dtype=np.float32).reshape(7, 8)
    z = to_zarr(a, tmp_path / "a.zarr", tile=(3, 3))
    grid = TileGrid(a.shape, (3, 3))
    assert (grid.n_rows, grid.n_cols, len(grid)) == (3, 3, 9)
    block, core = read_block(z, grid[0, 0])
    assert block.shape == (4, 4) and np.array_equal(block[core], a[:3, :3])
    block, core = read_block(z, grid[1, 1])
    assert np.array_equal(block, a[2:7, 2:7]) and np.array_equal(block[core], a[3:6, 3:6])
    block, core = read_block(z, grid[2, 2])
    assert np.array_equal(block, a[5:, 5:]) and np.array_equal(block[core], a[6:, 6:])


# --------------------------------------------------------------------------- tiled == single
# (grid, tile) pairs: tiles that do not divide the grid, from 3x3 cells (many tiles,
# every depression and flat crosses tile edges) to one tile larger than the grid.
CASES = [((29, 31), (3, 3)), ((40, 37), (3, 3)), ((61, 97), (5, 7)), ((64, 64), (16, 16)),
         ((130, 45), (16, 16)), ((130, 97), (64, 64)), ((50, 60), (64, 64))]


@pytest.mark.parametrize("shape,tile", CASES)
def test_tiled_fill_is_bit_identical(shape, tile):
    for seed in range(2):
        z = make_dem(seed + 10 * shape[0], shape)
        ref = terrain.fill_depressions(z)
        assert (ref != z).sum() > 0.02 * z.size  # the DEM really has depressions to fill
        # seed 0 floods every tile twice (recompute), seed 1 caches f and labels
        assert_bit_identical(fill_array(z, tile=tile, cache=seed == 1), ref)


@pytest.mark.parametrize("shape,tile", [((11, 13), (1, 1)), ((23, 29), (1, 13)),
                                        ((23, 29), (9, 2))])
def test_degenerate_tiles(shape, tile):
    z = make_dem(3, shape)
    assert_bit_identical(fill_array(z, tile=tile), terrain.fill_depressions(z))


@pytest.mark.parametrize("dtype,nodata", [(np.float64, -9999.0), (np.int16, -32768),
                                          (np.int32, None), (np.float32, -9999.0)])
def test_dtypes_and_nodata_values(dtype, nodata):
    z = make_dem(7, (50, 70), dtype=np.float64, nodata=-32768.0 if nodata is not None else None,
                 step=1.0)
    if nodata is None:  # integer DEM without nodata: no coast or holes
        z = make_dem(7, (50, 70), dtype=np.float64, coast=False, holes=False, step=1.0)
    z = np.where(z == -32768.0, nodata if nodata is not None else 0, z).astype(dtype)
    ref = terrain.fill_depressions(z, nodata=nodata)
    for tile in [(4, 6), (16, 16)]:
        assert_bit_identical(fill_array(z, tile=tile, nodata=nodata), ref)


def test_flat_plateau_inf_and_empty_tiles():
    z = np.full((40, 40), 7.0, dtype=np.float32)
    z[5:35, 5:35] = 3.0  # one big pit across many tiles: fills to 7 everywhere
    z[12:28, 12:28] = 5.0  # nested, higher floor
    z[18:22, 18:22] = 1.0
    z[0:10, 20:40] = np.nan  # whole tiles of nodata
    z[30, 30] = np.inf  # inf is nodata too: an interior outlet
    ref = terrain.fill_depressions(z)
    for tile in [(4, 3), (10, 10), (7, 11)]:
        assert_bit_identical(fill_array(z, tile=tile), ref)
        assert_bit_identical(fill_array(z, tile=tile, cache=True), ref)
    everything_missing = np.full((9, 9), np.nan, dtype=np.float32)
    assert_bit_identical(fill_array(everything_missing, tile=(4, 4)), everything_missing)


# --------------------------------------------------------------------------- epsilon
@pytest.mark.parametrize("shape,tile", CASES)
def test_tiled_epsilon_fill_is_bit_identical(shape, tile):
    for seed in range(2):
        z = make_dem(seed + 10 * shape[0], shape, nodata=-9999.0 if seed else None)
        ref = terrain.fill_depressions(z, nodata=-9999.0, epsilon=True)
        plain = terrain.fill_depressions(z, nodata=-9999.0)
        assert ((ref != plain) & np.isfinite(ref)).sum() > 0.02 * z.size  # many ULP staircases
        assert_bit_identical(fill_array(z, tile=tile, nodata=-9999.0, epsilon=True), ref)


@pytest.mark.parametrize("dtype,nodata,tile", [(np.float64, -9999.0, (1, 1)), (np.int16, -32768, (4, 6)),
                                               (np.int32, None, (9, 2)), (np.float32, -9999.0, (16, 16))])
def test_tiled_epsilon_dtypes(dtype, nodata, tile):
    z = make_dem(17, (15, 19) if tile == (1, 1) else (33, 47), dtype=np.float64, nodata=-32768.0,
                 step=1.0)
    z = np.where(z == -32768.0, nodata if nodata is not None else 0, z).astype(dtype)
    ref = terrain.fill_depressions(z, nodata=nodata, epsilon=True)
    assert ref.dtype == (np.float32 if dtype == np.float32 else np.float64)
    assert_bit_identical(fill_array(z, tile=tile, nodata=nodata, epsilon=True), ref)


def test_epsilon_tile_lowered_from_its_previous_solution_equals_a_fresh_solve():
    """When a tile's ring goes down, lowering its stored solution gives what solving it
    from scratch with the new ring gives (the rounds rely on it)."""
    from models.tiled_fill import epsilon_tile

    rng = np.random.default_rng(5)
    mattered = 0
    for trial in range(30):
        core = make_dem(trial, (23, 31), nodata=-9999.0 if trial % 2 else None)
        h, w = core.shape
        high = {k: rng.uniform(18, 30, n).astype(np.float32)
                for k, n in (("top", w + 2), ("bottom", w + 2), ("left", h), ("right", h))}
        high["top"][:] = np.inf if trial % 3 == 0 else high["top"]  # a side not solved yet
        high["left"][rng.random(h) < 0.2] = np.nan  # nodata next to the tile
        low = {k: np.where(rng.random(v.size) < 0.5, v - rng.uniform(0, 8, v.size), v).astype(np.float32)
               for k, v in high.items()}
        low["top"][np.isinf(low["top"])] = rng.uniform(15, 25)
        before = epsilon_tile(core, high, -9999.0)
        fresh = epsilon_tile(core, low, -9999.0)
        mattered += not np.array_equal(before, fresh, equal_nan=True)
        assert_bit_identical(epsilon_tile(core, low, -9999.0, previous=before), fresh)
    assert mattered >= 10  # the lower ring changed the tile in many trials


@pytest.mark.parametrize("n", [48, 144])
def test_tiled_epsilon_staircase_across_many_tiles(n):
    """One flat lake over 8x8 tiles draining at one corner: its ULP staircase climbs
    across every tile. The rounds carry it tile by tile, so their number follows the
    tiles crossed (8 on the diagonal), not the staircase's height (n cells), and the
    result is still the single-machine one."""
    import zarr
    from zarr.storage import MemoryStore

    z = np.full((n, n), 9.0, dtype=np.float32)
    z[1:-1, 1:-1] = 2.0  # a closed basin, lower than its rim
    z[1:-1, 1:-1][::7, ::5] = 1.0  # a few pits in it
    z[-1, -1] = 1.5  # the only way out, at the south-east corner
    ref = terrain.fill_depressions(z, epsilon=True)
    assert np.unique(ref[1:-1, 1:-1]).size > n - 8  # a staircase of ULPs, not a flat
    t = n // 8
    src = to_zarr(z, MemoryStore(), tile=(t, t))
    dst = zarr.open_array(MemoryStore(), mode="w", shape=z.shape, chunks=(t, t), dtype=np.float32)
    out = fill_tiled(src, dst, epsilon=True)
    assert_bit_identical(np.asarray(out[:]), ref)
    assert 8 <= out.attrs["epsilon_rounds"] <= 10


def test_fill_tiled_writes_tile_chunked_zarr(tmp_path):
    z = make_dem(5, (70, 50), nodata=-9999.0)
    to_zarr(z, tmp_path / "dem.zarr", tile=(16, 16), nodata=-9999.0)
    out = fill_tiled(tmp_path / "dem.zarr", tmp_path / "filled.zarr")  # tile and nodata from the store
    assert out.chunks == (16, 16)
    assert_bit_identical(np.asarray(out[:]), terrain.fill_depressions(z, nodata=-9999.0))
    with pytest.raises(ValueError, match="chunks"):
        import zarr
        bad = zarr.open_array(tmp_path / "bad.zarr", mode="w", shape=z.shape, chunks=(10, 10),
                              dtype=z.dtype)
        fill_tiled(tmp_path / "dem.zarr", bad, tile=(16, 16))


def test_geotiff_to_zarr(tmp_path):
    rasterio = pytest.importorskip("rasterio")
    from affine import Affine

    z = make_dem(8, (45, 38), nodata=-9999.0)
    tif = tmp_path / "dem.tif"
    with rasterio.open(tif, "w", driver="GTiff", height=z.shape[0], width=z.shape[1], count=1,
                       dtype="float32", nodata=-9999.0, crs="EPSG:32633",
                       transform=Affine(1.0, 0.0, 0.0, 0.0, -1.0, 45.0)) as dst:
        dst.write(z, 1)
    arr = to_zarr(tif, tmp_path / "dem.zarr", tile=(8, 8))
    assert arr.attrs["nodata"] == -9999.0 and np.array_equal(arr[:], z)
    out = fill_tiled(tmp_path / "dem.zarr", tmp_path / "filled.zarr")
    assert_bit_identical(np.asarray(out[:]), terrain.fill_depressions(z, nodata=-9999.0))


# --------------------------------------------------------------------------- distributed
def test_distributed_local_cluster():
    distributed = pytest.importorskip("distributed")
    z = make_dem(21, (150, 170))
    ref = terrain.fill_depressions(z)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        assert_bit_identical(fill_array(z, tile=(32, 40), client=client), ref)
        assert_bit_identical(fill_array(z, tile=(25, 17), client=client, cache=True), ref)
        assert_bit_identical(fill_array(z, tile=(32, 40), client=client, epsilon=True),
                             terrain.fill_depressions(z, epsilon=True))


@pytest.mark.slow
@pytest.mark.parametrize("epsilon", [False, True])
def test_killed_worker_does_not_change_the_result(tmp_path, epsilon):
    """A worker process killed mid-run: Dask reruns its tasks, the result is the same."""
    import os
    import signal
    import threading
    import time

    distributed = pytest.importorskip("distributed")
    z = make_dem(33, (120, 130))
    ref = terrain.fill_depressions(z, epsilon=epsilon)
    src = to_zarr(z, tmp_path / "dem.zarr", tile=(8, 10))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        client.run(lambda: __import__("warning.national.fill"))  # imports + Numba cache
        pids = client.run(os.getpid)
        box: dict = {}

        def work():
            try:
                box["out"] = fill_tiled(src, tmp_path / "filled.zarr", client=client, epsilon=epsilon)
            except Exception as exc:  # noqa: BLE001 - any failure is reported by the assert below
                box["error"] = exc

        th = threading.Thread(target=work)
        th.start()
        deadline = time.monotonic() + 60
        victim = None
        while victim is None and time.monotonic() < deadline and th.is_alive():
            busy = {w: ks for w, ks in client.processing().items()
                    if any("fill-" in str(k) for k in ks)}
            if busy:
                victim = next(iter(busy))
                os.kill(pids[victim], signal.SIGKILL)  # a process this test started
            else:
                time.sleep(0.01)
        th.join(120)
        assert victim is not None, "the run ended before a worker could be killed"
        assert "error" not in box, box.get("error")
        assert victim not in client.scheduler_info()["workers"]
    assert_bit_identical(np.asarray(box["out"][:]), ref)
