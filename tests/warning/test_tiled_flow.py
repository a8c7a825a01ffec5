"""Tiled D8, flow accumulation and HAND (warning.national.flow) against models.terrain.

Every comparison is bit for bit (np.array_equal, NaN == NaN) with the single-machine
functions, on seeded synthetic DEMs with flats and nodata crossing tile edges, tiles of
a few cells and grid sizes the tiles do not divide.
"""

from __future__ import annotations

import numpy as np
import pytest

from models import terrain
from models.errors import ModelError
from warning.national import flow

ND = np.float32(-9999.0)


def synthetic_dem(ny: int, nx: int, seed: int) -> np.ndarray:
    """A tilted noisy surface with a pit, a plateau, nodata holes and a nodata band."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:ny, 0:nx]
    z = (0.05 * x + 0.03 * y + rng.normal(0.0, 1.0, (ny, nx))).astype(np.float32)
    z[ny // 3:ny // 3 + 5, nx // 4:nx // 4 + 7] = np.float32(3.0)  # plateau: a flat
    z[2 * ny // 3 - 2:2 * ny // 3 + 2, nx // 2 - 3:nx // 2 + 3] = np.float32(-5.0)  # pit -> flat
    z[rng.random((ny, nx)) < 0.03] = ND
    z[ny // 2:ny // 2 + 2, nx // 3:] = ND  # nodata band across tiles
    return z


def products(ny, nx, seed, epsilon, dx=1.0, dy=None):
    z = synthetic_dem(ny, nx, seed)
    filled = terrain.fill_depressions(z, nodata=ND, epsilon=epsilon)
    fdir = terrain.flow_direction_d8(filled, nodata=ND, dx=dx, dy=dy)
    acc = terrain.flow_accumulation_d8(fdir)
    drainage = terrain.drainage_network(acc, 6) & (filled != ND)
    return filled, fdir, acc, drainage


CASES = [  # (ny, nx, tile, seed)
    (13, 17, (3, 3), 1),
    (29, 31, (5, 7), 2),
    (50, 47, (16, 16), 3),
    (7, 13, (1, 4), 4),
    (40, 40, (40, 40), 5),  # one tile
]


@pytest.mark.parametrize("epsilon", [True, False], ids=["epsilon", "flats"])
@pytest.mark.parametrize("ny,nx,tile,seed", CASES)
def test_tiled_flow_is_bit_identical(ny, nx, tile, seed, epsilon):
    filled, fdir, acc, drainage = products(ny, nx, seed, epsilon, dx=2.0, dy=3.0)
    if not epsilon:
        # the flats really are there and cross tile edges
        assert np.count_nonzero(fdir == 0) > 10
    fd2 = flow.flow_direction_d8_array(filled, tile, nodata=ND, dx=2.0, dy=3.0,
                                       scheduler="synchronous")
    assert fd2.dtype == np.uint8
    assert np.array_equal(fd2, fdir)
    acc2 = flow.flow_accumulation_d8_array(fdir, tile, scheduler="synchronous")
    assert np.array_equal(acc2, acc, equal_nan=True)
    hand = terrain.hand(filled, fdir, drainage)
    hand2 = flow.hand_array(filled, fdir, drainage, tile, scheduler="synchronous")
    assert hand2.dtype == np.float32
    assert np.array_equal(hand2, hand, equal_nan=True)
    assert np.isfinite(hand).sum() > ny * nx // 4  # HAND is not trivially NaN


def test_accumulation_with_weights():
    _, fdir, _, _ = products(29, 31, 7, True)
    rng = np.random.default_rng(7)
    # whole-number weights: exact sums in float64, so bit-identical in any order
    w = rng.integers(0, 1000, fdir.shape).astype(np.float64)
    assert np.array_equal(flow.flow_accumulation_d8_array(fdir, (5, 7), weights=w, scheduler="sync"),
                          terrain.flow_accumulation_d8(fdir, weights=w), equal_nan=True)
    # fractional weights: the same sums in another order (equal up to rounding only)
    w = rng.random(fdir.shape)
    np.testing.assert_allclose(flow.flow_accumulation_d8_array(fdir, (5, 7), weights=w,
                                                               scheduler="sync"),
                               terrain.flow_accumulation_d8(fdir, weights=w), rtol=1e-12)


def test_nan_nodata_and_grid_edges():
    z = synthetic_dem(21, 19, 11)
    z[z == ND] = np.nan
    filled = terrain.fill_depressions(z, epsilon=True)
    fdir = terrain.flow_direction_d8(filled)
    assert np.array_equal(flow.flow_direction_d8_array(filled, (4, 6), scheduler="sync"), fdir)
    assert np.array_equal(flow.flow_accumulation_d8_array(fdir, (4, 6), scheduler="sync"),
                          terrain.flow_accumulation_d8(fdir), equal_nan=True)


def test_long_paths_through_many_tiles():
    # a spiral-free serpentine: every cell drains along one path crossing every tile
    ny, nx = 8, 7
    fdir = np.zeros((ny, nx), dtype=np.uint8)
    for r in range(ny):
        fdir[r, :] = 1 if r % 2 == 0 else 16
        fdir[r, nx - 1 if r % 2 == 0 else 0] = 4
    fdir[ny - 1, 0 if (ny - 1) % 2 else nx - 1] = 0
    acc = terrain.flow_accumulation_d8(fdir)
    assert acc.max() == ny * nx
    for tile in [(1, 1), (3, 3), (5, 4)]:  # (1, 1): every cell is a tile
        assert np.array_equal(flow.flow_accumulation_d8_array(fdir, tile, scheduler="sync"), acc)
    z = np.arange(ny * nx, dtype=np.float64).reshape(ny, nx)
    drain = acc >= ny * nx - 3
    assert np.array_equal(flow.hand_array(z, fdir, drain, (3, 3), scheduler="sync"),
                          terrain.hand(z, fdir, drain), equal_nan=True)


def test_errors():
    filled, fdir, _, _ = products(13, 17, 1, True)
    with pytest.raises(ModelError, match="resolve_flats"):
        flow.flow_direction_d8_array(filled, (3, 3), nodata=ND, resolve_flats=True)
    bad = fdir.copy()
    bad[3, 3] = 3
    with pytest.raises(ModelError, match="not ESRI D8 codes"):
        flow.flow_accumulation_d8_array(bad, (3, 3), scheduler="sync")
    cycle = np.array([[1, 4], [64, 16]], dtype=np.uint8)  # E, S / N, W: a 2x2 loop
    for tile in [(1, 1), (2, 2), (1, 2)]:
        with pytest.raises(ModelError, match="cycle"):
            flow.flow_accumulation_d8_array(cycle, tile, scheduler="sync")
        with pytest.raises(ModelError, match="cycle"):
            flow.hand_array(np.zeros((2, 2)), cycle, np.zeros((2, 2), bool), tile, scheduler="sync")
    with pytest.raises(ModelError, match="not ESRI D8 codes"):
        flow.hand_array(filled, bad, np.zeros(bad.shape, bool), (3, 3), scheduler="sync")


def test_on_a_local_cluster_with_two_workers():
    distributed = pytest.importorskip("distributed")
    filled, fdir, acc, drainage = products(45, 38, 21, True)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        fd2 = flow.flow_direction_d8_array(filled, (16, 16), nodata=ND)
        acc2 = flow.flow_accumulation_d8_array(fd2, (16, 16))
        hand2 = flow.hand_array(filled, fd2, drainage, (16, 16))
    assert np.array_equal(fd2, fdir)
    assert np.array_equal(acc2, acc, equal_nan=True)
    assert np.array_equal(hand2, terrain.hand(filled, fdir, drainage), equal_nan=True)
