"""Tests of models.terrain against worked examples, hand-made cases, a plain reference
Priority-Flood and pysheds 0.5 on the Fort Worth DEM."""

from __future__ import annotations

import heapq
import warnings
from pathlib import Path

import numpy as np
import pytest

from models import terrain as T
from models.errors import ModelError

FORTWORTH = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dem" / "fortworth.tif"

# ESRI code -> (drow, dcol), row 0 = north
OFFSETS = {1: (0, 1), 2: (1, 1), 4: (1, 0), 8: (1, -1), 16: (0, -1), 32: (-1, -1), 64: (-1, 0), 128: (-1, 1)}

WORKED_INPUT = np.array(
    [[9, 9, 9, 9, 9, 9],
     [9, 5, 5, 5, 5, 9],
     [9, 5, 2, 3, 5, 9],
     [9, 5, 3, 1, 5, 9],
     [9, 5, 5, 5, 6, 4],
     [9, 9, 9, 9, 9, 9]], dtype=np.float64)
WORKED_FILLED = np.array(
    [[9, 9, 9, 9, 9, 9],
     [9, 5, 5, 5, 5, 9],
     [9, 5, 5, 5, 5, 9],
     [9, 5, 5, 5, 5, 9],
     [9, 5, 5, 5, 6, 4],
     [9, 9, 9, 9, 9, 9]], dtype=np.float64)


def reference_priority_flood(dem: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Plain Priority-Flood (Barnes 2014 Alg. 1) with heapq; seeds: edge and nodata-adjacent cells."""
    z = dem.astype(np.float64).copy()
    ny, nx = z.shape
    closed = ~valid.copy()
    heap = []
    count = 0
    for r in range(ny):
        for c in range(nx):
            if not valid[r, c]:
                continue
            seed = r in (0, ny - 1) or c in (0, nx - 1)
            for dr, dc in OFFSETS.values():
                rr, cc = r + dr, c + dc
                if 0 <= rr < ny and 0 <= cc < nx and not valid[rr, cc]:
                    seed = True
            if seed:
                heapq.heappush(heap, (z[r, c], count, r, c))
                count += 1
                closed[r, c] = True
    while heap:
        zc, _, r, c = heapq.heappop(heap)
        for dr, dc in OFFSETS.values():
            rr, cc = r + dr, c + dc
            if 0 <= rr < ny and 0 <= cc < nx and not closed[rr, cc]:
                closed[rr, cc] = True
                z[rr, cc] = max(z[rr, cc], zc)
                heapq.heappush(heap, (z[rr, cc], count, rr, cc))
                count += 1
    return z


def neighbour_min(z: np.ndarray) -> np.ndarray:
    """Lowest of the 8 neighbours (inf outside the grid)."""
    ny, nx = z.shape
    p = np.full((ny + 2, nx + 2), np.inf)
    p[1:-1, 1:-1] = z
    return np.min([p[1 + dr:1 + dr + ny, 1 + dc:1 + dc + nx] for dr, dc in OFFSETS.values()], axis=0)


def v_valley(ny=30, nx=21, dx=100.0, s_down=0.01, s_side=0.1):
    """Tilted V-valley: floor in column nx//2 falling southwards, sides rising east and west."""
    r, c = np.mgrid[0:ny, 0:nx]
    c0 = nx // 2
    dem = 100.0 + s_down * dx * (ny - 1 - r) + s_side * dx * np.abs(c - c0)
    return dem, c0


# --------------------------------------------------------------------------- fill
def test_fill_worked_example_exact():
    out = T.fill_depressions(WORKED_INPUT)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, WORKED_FILLED)
    # the input is not modified
    assert WORKED_INPUT[3, 3] == 1


def test_fill_epsilon_strictly_drains():
    plain = T.fill_depressions(WORKED_INPUT)
    eps = T.fill_depressions(WORKED_INPUT, epsilon=True)
    assert eps.dtype == np.float64
    inner = (slice(1, -1), slice(1, -1))
    assert np.all(neighbour_min(eps)[inner] < eps[inner])
    diff = eps - plain
    assert np.all(diff >= 0)
    assert diff.max() <= 10 * np.spacing(5.0)
    # D8 on the epsilon-filled DEM: no interior pits or flats
    assert np.all(T.flow_direction_d8(eps)[inner] != 0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fill_epsilon_random_dem_has_no_interior_flats(dtype):
    rng = np.random.default_rng(3)
    dem = rng.integers(0, 6, size=(40, 50)).astype(dtype)  # many ties, pits and flats
    eps = T.fill_depressions(dem, epsilon=True)
    assert eps.dtype == dtype
    inner = (slice(1, -1), slice(1, -1))
    assert np.all(neighbour_min(eps)[inner] < eps[inner])
    plain = T.fill_depressions(dem)
    np.testing.assert_array_equal(plain, reference_priority_flood(dem, np.ones(dem.shape, bool)).astype(dtype))
    assert np.all(eps >= plain)


def reference_epsilon_fill(dem: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The epsilon fill by its definition, solved by plain fixed-point iteration:
    ``f = dem`` on outlets (edge and nodata-adjacent cells), elsewhere
    ``f = max(dem, nextafter(min of f over the valid neighbours))``; from +inf down."""
    ny, nx = dem.shape
    inf = dem.dtype.type(np.inf)
    p = np.full((ny + 2, nx + 2), inf, dtype=dem.dtype)
    pv = np.zeros((ny + 2, nx + 2), dtype=bool)
    pv[1:-1, 1:-1] = valid
    outlet = np.zeros((ny, nx), dtype=bool)
    outlet[[0, -1], :] = outlet[:, [0, -1]] = True
    for dr, dc in OFFSETS.values():
        outlet |= ~pv[1 + dr:1 + dr + ny, 1 + dc:1 + dc + nx]
    outlet &= valid
    f = np.where(outlet, dem, inf)
    while True:
        p[1:-1, 1:-1] = np.where(valid, f, inf)
        low = np.min([p[1 + dr:1 + dr + ny, 1 + dc:1 + dc + nx] for dr, dc in OFFSETS.values()], axis=0)
        new = np.where(outlet | ~valid, f, np.maximum(dem, np.nextafter(low, inf)))
        if np.array_equal(new, f):
            return np.where(valid, f, dem)
        f = new


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fill_epsilon_is_the_fixed_point_whatever_the_tie_order(dtype):
    """Epsilon fill = its defining fixed point (an independent iterative solver), and the
    same on the flipped and transposed grid (a different tie order in the queues)."""
    rng = np.random.default_rng(11)
    for trial in range(40):
        ny, nx = (int(v) for v in rng.integers(4, 30, size=2))
        dem = rng.integers(0, 5, size=(ny, nx)).astype(dtype)  # plateaus, pits and ties
        if trial % 2:
            dem[rng.random(dem.shape) < 0.12] = -9999
        valid = dem != -9999
        eps = T.fill_depressions(dem, nodata=-9999, epsilon=True)
        np.testing.assert_array_equal(eps, reference_epsilon_fill(dem, valid))
        for view in (lambda a: a[::-1], lambda a: a[:, ::-1], lambda a: a.T):
            again = view(T.fill_depressions(np.ascontiguousarray(view(dem)), nodata=-9999, epsilon=True))
            np.testing.assert_array_equal(again, eps)


def test_fill_matches_reference_random():
    rng = np.random.default_rng(0)
    dem = rng.normal(100.0, 5.0, size=(25, 31))
    out = T.fill_depressions(dem)
    np.testing.assert_array_equal(out, reference_priority_flood(dem, np.ones(dem.shape, bool)))


def test_fill_interior_nodata_hole_is_an_outlet():
    # a bowl whose lowest point is a nodata hole: nothing is filled
    r, c = np.mgrid[0:11, 0:11]
    dem = 10.0 + np.hypot(r - 5, c - 5)
    dem[5, 5] = -9999.0
    out = T.fill_depressions(dem, nodata=-9999.0)
    np.testing.assert_array_equal(out, dem)
    # random DEM with holes, compared with the plain reference
    rng = np.random.default_rng(7)
    dem = rng.normal(50.0, 3.0, size=(18, 20))
    dem[6:8, 9:12] = -9999.0
    dem[13, 4] = -9999.0
    valid = dem != -9999.0
    out = T.fill_depressions(dem, nodata=-9999.0)
    ref = reference_priority_flood(dem, valid)
    np.testing.assert_array_equal(out[valid], ref[valid])
    assert np.all(out[~valid] == -9999.0)


def test_fill_nan_is_nodata_for_floats():
    dem = WORKED_INPUT.copy()
    dem[3, 3] = np.nan  # the bottom of the pit becomes a hole: an outlet
    out = T.fill_depressions(dem)
    assert np.isnan(out[3, 3])
    assert out[2, 2] == 2.0  # drains into the hole, not filled


def test_fill_integer_and_float32_dtypes():
    dem_i = WORKED_INPUT.astype(np.int16)
    out = T.fill_depressions(dem_i)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out, WORKED_FILLED.astype(np.int16))
    out_eps = T.fill_depressions(dem_i, epsilon=True)
    assert out_eps.dtype == np.float64
    dem_nd = dem_i.copy()
    dem_nd[0, 0] = -32768
    out_nd = T.fill_depressions(dem_nd, nodata=-32768)
    assert out_nd.dtype == np.int16 and out_nd[0, 0] == -32768
    out32 = T.fill_depressions(WORKED_INPUT.astype(np.float32))
    assert out32.dtype == np.float32
    np.testing.assert_array_equal(out32, WORKED_FILLED.astype(np.float32))


def test_fill_rejects_bad_input():
    with pytest.raises(ModelError, match="2-D"):
        T.fill_depressions(np.zeros(5))
    with pytest.raises(ModelError, match="dtype"):
        T.fill_depressions(np.array([["a", "b"]]))


# --------------------------------------------------------------------------- D8
def test_d8_steepest_ties_and_edges():
    z = np.array([[9.0, 9.0, 9.0],
                  [9.0, 5.0, 4.0],
                  [9.0, 4.0, 9.0]])
    fd = T.flow_direction_d8(z)
    assert fd.dtype == np.uint8
    assert fd[1, 1] == 1  # E and S tie: E comes first
    assert fd[1, 2] == 0  # edge cell without a lower neighbour: outlet
    # anisotropic cells: dy < dx makes south steeper
    assert T.flow_direction_d8(z, dx=2.0, dy=1.0)[1, 1] == 4
    # diagonals at sqrt(dx^2 + dy^2): drop 3 diagonal vs drop 2 east
    z2 = np.array([[9.0, 9.0, 9.0], [9.0, 5.0, 3.0], [9.0, 9.0, 2.0]])
    assert T.flow_direction_d8(z2)[1, 1] == 2  # 3/sqrt2 = 2.12 > 2


def test_d8_nodata_neighbour_is_not_a_receiver():
    z = np.array([[9.0, 9.0, 9.0, 9.0],
                  [9.0, 3.0, -1.0, 9.0],
                  [9.0, 8.0, 9.0, 9.0],
                  [9.0, 9.0, 9.0, 9.0]])
    fd = T.flow_direction_d8(z, nodata=-1.0)
    assert fd[1, 2] == 255
    assert fd[1, 1] == 0  # lowest valid cell next to nodata: an outlet, not into the hole
    assert fd[2, 1] == 64  # flows north to the 3.0 cell
    fdn = T.flow_direction_d8(np.where(z == -1.0, np.nan, z))
    np.testing.assert_array_equal(fdn, fd)


# --------------------------------------------------------------------------- accumulation / order
FDIR_3X3 = np.array([[2, 4, 8],
                     [1, 4, 16],
                     [1, 0, 16]], dtype=np.uint8)


def test_accumulation_by_hand():
    acc = T.flow_accumulation_d8(FDIR_3X3)
    expected = np.array([[1, 1, 1], [1, 6, 1], [1, 9, 1]], dtype=np.float64)
    np.testing.assert_array_equal(acc, expected)
    w = np.arange(9, dtype=np.float64).reshape(3, 3)
    accw = T.flow_accumulation_d8(FDIR_3X3, weights=w)
    assert accw[1, 1] == 0 + 1 + 2 + 3 + 4 + 5
    assert accw[2, 1] == w.sum()


def test_accumulation_5x5_off_grid_and_nodata():
    fd = np.full((5, 5), 4, dtype=np.uint8)  # everything flows south, leaves at the bottom
    fd[2, 2] = 255  # nodata: (1, 2) flows onto it and leaves; (3, 2) starts again
    acc = T.flow_accumulation_d8(fd)
    assert np.isnan(acc[2, 2])
    np.testing.assert_array_equal(acc[:, 0], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(acc[[0, 1, 3, 4], 2], [1, 2, 1, 2])
    down = T.downstream_index(fd)
    assert down[1, 2] == -1 and down[4, 0] == -1 and down[0, 0] == 5
    assert down.dtype == np.int64


def test_accumulation_conserves_cells_and_order_is_topological():
    rng = np.random.default_rng(11)
    dem = rng.normal(100.0, 10.0, size=(60, 70))
    dem[20:24, 30:33] = np.nan
    filled = T.fill_depressions(dem, epsilon=True)
    fd = T.flow_direction_d8(filled)
    acc = T.flow_accumulation_d8(fd)
    down = T.downstream_index(fd).ravel()
    valid = (fd != 255).ravel()
    outlets = valid & (down < 0)
    assert acc.ravel()[outlets].sum() == valid.sum()
    order = T.topological_order(fd)
    assert order.dtype == np.int64 and order.size == valid.sum()
    pos = np.full(fd.size, -1)
    pos[order] = np.arange(order.size)
    has = down >= 0
    assert np.all(pos[np.flatnonzero(has)] < pos[down[has]])


def test_accumulation_rejects_cycles_and_bad_codes():
    fd = np.array([[1, 16]], dtype=np.uint8)  # two cells pointing at each other
    with pytest.raises(ModelError, match="cycle"):
        T.flow_accumulation_d8(fd)
    with pytest.raises(ModelError, match="ESRI"):
        T.flow_accumulation_d8(np.array([[3, 0]], dtype=np.uint8))
    with pytest.raises(ModelError, match="0..255"):
        T.flow_accumulation_d8(np.array([[-1, 0]]))


# --------------------------------------------------------------------------- HAND / network
def test_hand_tilted_v_valley_is_analytic():
    dx = 100.0
    dem, c0 = v_valley(dx=dx)
    ny, nx = dem.shape
    filled = T.fill_depressions(dem, epsilon=True)
    np.testing.assert_array_equal(filled, dem)  # nothing to fill
    fd = T.flow_direction_d8(filled, dx=dx)
    acc = T.flow_accumulation_d8(fd)
    drainage = T.drainage_network(acc, nx)
    assert drainage[:, c0].all() and drainage.sum() == ny
    h = T.hand(filled, fd, drainage)
    assert h.dtype == np.float32
    cols = np.arange(nx)
    expected = np.broadcast_to(0.1 * dx * np.abs(cols - c0), (ny, nx))
    np.testing.assert_allclose(h, expected, atol=1e-4)
    # drainage only in the lower half: upper cells measure to the first channel cell below
    lower = drainage.copy()
    lower[:15] = False
    h2 = T.hand(filled, fd, lower)
    rows = np.arange(ny)[:, None]
    expected2 = 0.1 * dx * np.abs(cols - c0)[None] + 0.01 * dx * np.maximum(15 - rows, 0)
    np.testing.assert_allclose(h2, expected2, atol=1e-4)
    # no drainage reached: NaN
    assert np.isnan(T.hand(filled, fd, np.zeros_like(drainage))).all()
    near = T.nearest_drainage(fd, lower)
    assert near[0, 0] == 15 * nx + c0 and near[20, c0] == 20 * nx + c0


def test_hand_nan_on_nodata_and_slope():
    dem, c0 = v_valley(ny=10, nx=9, dx=10.0)
    dem[0, 0] = np.nan
    filled = T.fill_depressions(dem)
    fd = T.flow_direction_d8(filled, dx=10.0)
    drainage = T.drainage_network(T.flow_accumulation_d8(fd), 9)
    h = T.hand(filled, fd, drainage)
    assert np.isnan(h[0, 0]) and fd[0, 0] == 255
    s = T.d8_slope(filled, fd, 10.0, 10.0)
    assert s.dtype == np.float32
    np.testing.assert_allclose(s[3, 0], 0.1, rtol=1e-6)  # across the valley side
    np.testing.assert_allclose(s[3, c0], 0.01, rtol=1e-6)  # down the valley floor
    assert s[-1, c0] == pytest.approx(0.1, rel=1e-6)  # outlet: steepest inflow
    assert np.isnan(s[0, 0])
    flat = T.d8_slope(np.zeros((3, 3)), np.zeros((3, 3), np.uint8), 1.0, 1.0, min_slope=1e-3)
    assert np.all(flat == np.float32(1e-3))


def y_network():
    """7x7 fdir with two branches joining at (2, 3) and a trunk down column 3."""
    fd = np.zeros((7, 7), dtype=np.uint8)
    drain = np.zeros((7, 7), dtype=bool)
    for (r, c), code in {(0, 1): 2, (1, 2): 2, (0, 5): 8, (1, 4): 8,
                         (2, 3): 4, (3, 3): 4, (4, 3): 4, (5, 3): 4, (6, 3): 0}.items():
        fd[r, c] = code
        drain[r, c] = True
    return fd, drain


def test_label_reaches_y_network():
    fd, drain = y_network()
    lab = T.label_reaches(fd, drain)
    assert lab.dtype == np.int32
    assert set(np.unique(lab[drain])) == {1, 2, 3}
    assert np.all(lab[~drain] == 0)
    assert lab[0, 1] == lab[1, 2] and lab[0, 5] == lab[1, 4]
    trunk = lab[2:, 3]
    assert np.all(trunk == trunk[0]) and trunk[0] not in (lab[0, 1], lab[0, 5])
    split = T.label_reaches(fd, drain, max_length=2)
    trunk = split[2:, 3]
    assert len(np.unique(split[drain])) == 5
    assert trunk[0] == trunk[1] and trunk[2] == trunk[3] and len(set(trunk.tolist())) == 3
    # reach catchments and geometry
    rc = T.reach_catchments(fd, lab)
    np.testing.assert_array_equal(rc[drain], lab[drain])
    assert rc[6, 0] == 0
    z = np.zeros((7, 7))
    z[2:, 3] = [4.0, 3.0, 2.0, 1.0, 0.5]
    length, slope = T.reach_properties(lab, fd, z, dx=10.0)
    assert length.shape == (4,)
    assert length[lab[2, 3]] == pytest.approx(50.0)
    assert slope[lab[2, 3]] == pytest.approx((4.0 - 0.5) / 50.0)
    assert length[lab[0, 1]] == pytest.approx(2 * 10.0 * np.sqrt(2))


def test_label_reaches_rejects_bad_max_length():
    fd, drain = y_network()
    with pytest.raises(ModelError, match="max_length"):
        T.label_reaches(fd, drain, max_length=0)


# --------------------------------------------------------------------------- pysheds
@pytest.fixture(scope="module")
def pysheds_run():
    if not FORTWORTH.exists():
        pytest.skip(f"Fort Worth DEM not found at {FORTWORTH} (needs the sibling ../shared checkout)")
    pytest.importorskip("pysheds")
    if not hasattr(np, "in1d"):  # pysheds 0.5 calls np.in1d, removed in NumPy 2.4
        np.in1d = np.isin
    from pysheds.grid import Grid

    grid = Grid.from_raster(str(FORTWORTH))
    dem = grid.read_raster(str(FORTWORTH)).astype(np.float64)
    filled = grid.fill_depressions(dem)
    inflated = grid.resolve_flats(filled)
    dirmap = (64, 128, 1, 2, 4, 8, 16, 32)
    fdir = grid.flowdir(inflated, dirmap=dirmap)
    acc = grid.accumulation(fdir, dirmap=dirmap)
    # pysheds' flowdir uses the affine cell size as is (degrees on this geographic grid)
    dx, dy = abs(dem.affine.a), abs(dem.affine.e)
    return {"dem": np.asarray(dem), "filled": np.asarray(filled), "inflated": np.asarray(inflated),
            "fdir": np.asarray(fdir), "acc": np.asarray(acc), "dx": dx, "dy": dy}


@pytest.mark.requires_shared
def test_pysheds_fill_identical(pysheds_run):
    ours = T.fill_depressions(pysheds_run["dem"])
    np.testing.assert_array_equal(ours, pysheds_run["filled"])


@pytest.mark.requires_shared
def test_pysheds_d8_identical_up_to_ties(pysheds_run):
    z = pysheds_run["inflated"]
    dx, dy = pysheds_run["dx"], pysheds_run["dy"]
    ours = T.flow_direction_d8(z, dx=dx, dy=dy)
    ref = pysheds_run["fdir"].copy()
    ref[ref < 0] = 0  # pysheds: -1 flat, -2 pit
    ny, nx = z.shape
    interior = np.zeros(z.shape, bool)
    interior[1:-1, 1:-1] = True
    # slope of each cell towards every neighbour, pysheds' arithmetic
    dd = np.sqrt(dx * dx + dy * dy)
    slopes = {}
    for code, (dr, dc) in OFFSETS.items():
        dist = dd if dr and dc else (dx if dc else dy)
        p = np.full((ny + 2, nx + 2), np.inf)
        p[1:-1, 1:-1] = z
        slopes[code] = (z - p[1 + dr:1 + dr + ny, 1 + dc:1 + dc + nx]) / dist
    stack = np.stack(list(slopes.values()))
    best = stack.max(axis=0)
    unique = (stack == best).sum(axis=0) == 1
    both = interior & unique
    assert both.sum() > 0.9 * interior.sum()
    np.testing.assert_array_equal(ours[both], ref[both])
    # where two neighbours tie, the two libraries only differ in tie order (pysheds: N first)
    tie = interior & ~unique & (ref > 0)
    chosen = np.zeros(z.shape)
    for code, s in slopes.items():
        chosen[ref == code] = s[ref == code]
    np.testing.assert_array_equal(chosen[tie], best[tie])
    np.testing.assert_array_equal(ours[interior & (ref == 0)], 0)


@pytest.mark.requires_shared
def test_pysheds_accumulation_identical(pysheds_run):
    fd = pysheds_run["fdir"].copy()
    fd[fd < 0] = 0
    ours = T.flow_accumulation_d8(fd.astype(np.uint8))
    np.testing.assert_array_equal(ours, pysheds_run["acc"])


# --------------------------------------------------------------------------- flats (no epsilon)
def _assert_all_drain(fd, filled, nodata=None):
    """No interior 0 except next to nodata, and no cycles (every valid cell is ordered)."""
    valid = fd != 255
    ny, nx = fd.shape
    outlet_ok = np.zeros(fd.shape, bool)
    outlet_ok[[0, -1], :] = True
    outlet_ok[:, [0, -1]] = True
    p = np.zeros((ny + 2, nx + 2), bool)
    p[1:-1, 1:-1] = ~valid
    for dr, dc in OFFSETS.values():
        outlet_ok |= p[1 + dr:1 + dr + ny, 1 + dc:1 + dc + nx]
    assert not np.any(valid & ~outlet_ok & (fd == 0))
    order = T.topological_order(fd)  # raises on cycles
    assert order.size == valid.sum()


def _flat_directions_follow_mask(fd, filled, mask):
    """On flat cells: the receiver has the same elevation and a lower mask (0 = low edge)."""
    rows, cols = np.nonzero(mask > 0)
    for code, (dr, dc) in OFFSETS.items():
        sel = fd[rows, cols] == code
        r, c = rows[sel], cols[sel]
        assert np.all(filled[r + dr, c + dc] == filled[r, c])
        assert np.all(mask[r + dr, c + dc] < mask[r, c])
    assert np.all(fd[rows, cols] != 0)


def test_resolve_flats_plateau_drains_to_its_outlet():
    # a 7x9 flat at 5 inside a rim at 9, with one gap (edge cell (3, 8) at 5 -> outlet)
    dem = np.full((7, 9), 9.0)
    dem[1:-1, 1:-1] = 5.0
    dem[3, 8] = 5.0
    dem[2, 3] = 3.0  # a pit inside: filled to 5
    filled = T.fill_depressions(dem)
    assert np.all(T.flow_direction_d8(filled)[1:-1, 1:-1] == 0)
    mask = T.resolve_flats(filled)
    assert mask.dtype == np.int32
    assert np.all(mask[1:-1, 1:-1] > 0) and mask[3, 8] == 0 and np.all(mask[0] == 0)
    fd = T.flow_direction_d8(filled, resolve_flats=True)
    _assert_all_drain(fd, filled)
    _flat_directions_follow_mask(fd, filled, mask)
    assert fd[3, 7] == 1  # next to the outlet: straight east
    acc = T.flow_accumulation_d8(fd)
    assert acc[3, 8] == dem.size  # the flat (and the rim, which falls into it) drains through the gap
    # the towards-lower gradient dominates: the mask rises going west, row by row
    assert np.all(np.diff(mask[3, 1:8]) < 0)
    # non-flat cells keep their plain D8 code; the default stays as before
    plain = T.flow_direction_d8(filled)
    np.testing.assert_array_equal(fd[mask == 0], plain[mask == 0])


def test_resolve_flats_random_integer_dems_drain_everywhere():
    rng = np.random.default_rng(5)
    for shape in [(30, 40), (61, 17)]:
        dem = rng.integers(0, 4, size=shape).astype(np.float64)  # large flats and pits
        dem[rng.random(shape) < 0.02] = -9999.0  # nodata cells are outlets too
        filled = T.fill_depressions(dem, nodata=-9999.0)
        fd = T.flow_direction_d8(filled, nodata=-9999.0, resolve_flats=True)
        _assert_all_drain(fd, filled)
        _flat_directions_follow_mask(fd, filled, T.resolve_flats(filled, nodata=-9999.0))


def test_resolve_flats_unfilled_pit_stays_zero():
    dem = np.full((5, 5), 9.0)
    dem[1:4, 1:4] = 2.0  # a closed flat: no outlet
    assert np.all(T.resolve_flats(dem) == 0)
    assert np.all(T.flow_direction_d8(dem, resolve_flats=True)[1:4, 1:4] == 0)


@pytest.mark.requires_shared
def test_fortworth_flats_drain_and_agree_with_pysheds(pysheds_run):
    dx, dy = pysheds_run["dx"], pysheds_run["dy"]
    filled = T.fill_depressions(pysheds_run["dem"])
    mask = T.resolve_flats(filled)
    fd = T.flow_direction_d8(filled, dx=dx, dy=dy, resolve_flats=True)
    _assert_all_drain(fd, filled)
    _flat_directions_follow_mask(fd, filled, mask)
    flats = mask > 0
    assert flats.sum() > 10000
    # pysheds resolve_flats + flowdir on the same flats: same gradients, other tie rules
    # (it tilts the DEM by tiny increments and runs its D8); measured 0.961
    agree = np.mean(fd[flats] == pysheds_run["fdir"][flats])
    assert agree > 0.9, agree


# --------------------------------------------------------------------------- catchments
def _brute_catchments(fd, flat_points):
    down = T.downstream_index(fd).ravel()
    pid = {}
    for k, p in enumerate(flat_points):
        pid.setdefault(int(p), k + 1)
    out = np.zeros(fd.size, np.int32)
    for i in range(fd.size):
        if fd.flat[i] == 255:
            continue
        j = i
        while j >= 0:
            if j in pid:
                out[i] = pid[j]
                break
            j = down[j]
    return out.reshape(fd.shape)


def test_catchments_match_brute_force_walk():
    rng = np.random.default_rng(21)
    dem = rng.normal(0.0, 1.0, size=(48, 55)).cumsum(axis=0).cumsum(axis=1) * 0.1
    dem += rng.normal(0.0, 0.5, size=dem.shape)
    dem[10:13, 20:24] = np.nan
    filled = T.fill_depressions(dem)
    fd = T.flow_direction_d8(filled, resolve_flats=True)
    acc = T.flow_accumulation_d8(fd)
    # nested points: the 12 largest-accumulation cells lie on shared paths
    flat_pts = np.argsort(np.nan_to_num(acc.ravel(), nan=-1))[::-1][:12]
    flat_pts = np.concatenate([flat_pts, rng.choice(np.flatnonzero(fd.ravel() != 255), 20), flat_pts[:2]])
    lab = T.catchments(fd, flat_pts)
    assert lab.dtype == np.int32
    np.testing.assert_array_equal(lab, _brute_catchments(fd, flat_pts))
    rc = np.column_stack(np.unravel_index(flat_pts, fd.shape))
    np.testing.assert_array_equal(T.catchments(fd, rc), lab)
    # area of the most downstream point's label = its accumulation minus nested parts
    assert np.all(lab[fd == 255] == 0)


def test_catchments_rejects_bad_points():
    fd = np.full((3, 3), 4, dtype=np.uint8)
    fd[1, 1] = 255
    with pytest.raises(ModelError, match="outside"):
        T.catchments(fd, [9])
    with pytest.raises(ModelError, match="outside"):
        T.catchments(fd, [[0, 3]])
    with pytest.raises(ModelError, match="nodata"):
        T.catchments(fd, [4])
    with pytest.raises(ModelError, match="integer"):
        T.catchments(fd, [1.5])
    np.testing.assert_array_equal(T.catchments(fd, [[2, 0]])[:, 0], [1, 1, 1])


# --------------------------------------------------------------------------- oracles
def _synthetic_with_edge_nodata(seed, n=120, margins_only=False):
    """Rough terrain with pits and nodata regions that touch the grid edge.

    ``margins_only``: nodata only as full-width bands along the edges (a clipped raster),
    the case where pysheds' seeding (first valid cell seen from each edge along every row
    and column) equals ours (every valid cell next to nodata).
    """
    rng = np.random.default_rng(seed)
    dem = rng.normal(0.0, 1.0, size=(n, n + 7)).cumsum(axis=0).cumsum(axis=1) * 0.05
    dem += rng.normal(0.0, 1.0, size=dem.shape)
    dem = np.round(dem, 1)  # ties and flats
    if margins_only:
        dem[:3] = -9999.0
        dem[:, -4:] = -9999.0
        return dem
    yy, xx = np.mgrid[0:dem.shape[0], 0:dem.shape[1]]
    cy, cx, r = rng.integers(0, n), 0, rng.integers(10, 30)
    dem[np.hypot(yy - cy, xx - cx) < r] = -9999.0  # a disc cut by the west edge
    dem[-5:, n // 2:n // 2 + 9] = -9999.0  # a notch from the south edge
    return dem


def _richdem_fill(dem, nodata):
    rd = pytest.importorskip("richdem")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # FillDepressions -> fill_depressions
        out = rd.FillDepressions(rd.rdarray(dem.copy(), no_data=nodata), epsilon=False, in_place=False)
    return np.asarray(out)


def _pysheds_fill(dem, nodata):
    pytest.importorskip("pysheds")
    from affine import Affine
    from pysheds.grid import Grid
    from pysheds.sview import Raster, ViewFinder

    vf = ViewFinder(affine=Affine(30.0, 0.0, 0.0, 0.0, -30.0, 0.0), shape=dem.shape, nodata=np.float64(nodata))
    return np.asarray(Grid(viewfinder=vf).fill_depressions(Raster(dem.copy(), viewfinder=vf)))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fill_identical_to_richdem_and_pysheds_edge_nodata(seed):
    dem = _synthetic_with_edge_nodata(seed)
    valid = dem != -9999.0
    ours = T.fill_depressions(dem, nodata=-9999.0)
    assert (ours != dem)[valid].sum() > 50  # there is something to fill
    assert np.abs(ours - _richdem_fill(dem, -9999.0))[valid].max() == 0.0
    np.testing.assert_array_equal(ours[valid], reference_priority_flood(dem, valid)[valid])
    # pysheds seeds only the first valid cell seen from each edge along rows and columns,
    # not the walls of a notch of nodata: compare it on nodata margins
    dem = _synthetic_with_edge_nodata(seed, margins_only=True)
    valid = dem != -9999.0
    ours = T.fill_depressions(dem, nodata=-9999.0)
    assert (ours != dem)[valid].sum() > 50
    assert np.abs(ours - _pysheds_fill(dem, -9999.0))[valid].max() == 0.0
    assert np.abs(ours - _richdem_fill(dem, -9999.0))[valid].max() == 0.0


@pytest.mark.requires_shared
def test_fortworth_fill_identical_to_richdem(pysheds_run):
    dem = pysheds_run["dem"]
    ours = T.fill_depressions(dem)
    assert np.abs(ours - _richdem_fill(dem, -32768.0)).max() == 0.0


def _pyflwdir_acc(fd):
    pyflwdir = pytest.importorskip("pyflwdir")
    # pyflwdir d8: ESRI codes, pits 0 (and 255 as pit), nodata 247
    d8 = fd.copy()
    d8[fd == 255] = 247
    return pyflwdir.from_array(d8, ftype="d8", check_ftype=False).upstream_area(unit="cell")


@pytest.mark.parametrize("seed", [1, 2])
def test_accumulation_identical_to_pyflwdir(seed):
    dem = _synthetic_with_edge_nodata(seed)
    filled = T.fill_depressions(dem, nodata=-9999.0)
    for fd in (T.flow_direction_d8(filled, nodata=-9999.0),
               T.flow_direction_d8(filled, nodata=-9999.0, resolve_flats=True)):
        ours = T.flow_accumulation_d8(fd)
        ref = _pyflwdir_acc(fd).astype(np.float64)
        valid = fd != 255
        np.testing.assert_array_equal(ours[valid], ref[valid])


@pytest.mark.parametrize("nband", [1, 2, 5])
def test_weighted_accumulation_in_row_bands_identical_to_pyflwdir(nband):
    """The banded parallel walk (flow crossing band edges set aside and finished after)
    gives pyflwdir's accumulated flux for any number of bands; integer weights keep the
    sums exact whatever the order of addition."""
    pyflwdir = pytest.importorskip("pyflwdir")
    dem = _synthetic_with_edge_nodata(7, n=330)
    fd = T.flow_direction_d8(T.fill_depressions(dem, nodata=-9999.0), nodata=-9999.0, resolve_flats=True)
    valid = fd != 255
    w = np.random.default_rng(3).integers(0, 50, size=fd.shape).astype(np.float64)
    acc = np.where(valid, w, 0.0).ravel()
    m, nvalid, nbad = T._accumulate_fdir_numba(fd, acc, False, nband)
    assert (m, nvalid, nbad) == (valid.sum(), valid.sum(), 0)
    d8 = fd.copy()
    d8[fd == 255] = 247
    ref = pyflwdir.from_array(d8, ftype="d8", check_ftype=False).accuflux(np.where(valid, w, 0.0))
    np.testing.assert_array_equal(acc.reshape(fd.shape)[valid], ref[valid])
    np.testing.assert_array_equal(T.flow_accumulation_d8(fd, weights=w)[valid], ref[valid])


@pytest.mark.requires_shared
def test_fortworth_accumulation_identical_to_pyflwdir(pysheds_run):
    filled = T.fill_depressions(pysheds_run["dem"])
    fd = T.flow_direction_d8(filled, dx=pysheds_run["dx"], dy=pysheds_run["dy"], resolve_flats=True)
    np.testing.assert_array_equal(T.flow_accumulation_d8(fd), _pyflwdir_acc(fd).astype(np.float64))


def _brute_d8_check(z, valid, fd, dx, dy):
    """On cells with a unique steepest strictly-lower valid neighbour, fd must point there."""
    ny, nx = z.shape
    zz = np.where(valid, z, np.nan)
    p = np.full((ny + 2, nx + 2), np.nan)
    p[1:-1, 1:-1] = zz
    codes = list(OFFSETS)
    slopes = []
    for code in codes:
        dr, dc = OFFSETS[code]
        dist = np.hypot(dx, dy) if dr and dc else (dx if dc else dy)
        s = (zz - p[1 + dr:1 + dr + ny, 1 + dc:1 + dc + nx]) / dist
        slopes.append(np.where(np.isnan(s), -np.inf, s))
    s = np.stack(slopes)
    best = s.max(axis=0)
    unique = (s == best).sum(axis=0) == 1
    check = valid & unique & (best > 0)
    expect = np.asarray(codes, dtype=np.uint8)[s.argmax(axis=0)]
    assert check.sum() > 0.5 * valid.sum()
    np.testing.assert_array_equal(fd[check], expect[check])
    np.testing.assert_array_equal(fd[valid & (best <= 0)] == 0, True)


@pytest.mark.parametrize("seed", [1, 4])
def test_d8_equals_brute_force_steepest(seed):
    dem = _synthetic_with_edge_nodata(seed)
    valid = dem != -9999.0
    filled = T.fill_depressions(dem, nodata=-9999.0, epsilon=True)
    for dx, dy in [(1.0, 1.0), (30.0, 20.0)]:
        fd = T.flow_direction_d8(filled, nodata=-9999.0, dx=dx, dy=dy)
        _brute_d8_check(filled, valid, fd, dx, dy)
    raw = T.flow_direction_d8(dem, nodata=-9999.0, dx=30.0, dy=30.0)
    _brute_d8_check(dem, valid, raw, 30.0, 30.0)


@pytest.mark.requires_shared
def test_fortworth_d8_equals_brute_force(pysheds_run):
    filled = T.fill_depressions(pysheds_run["dem"], epsilon=True)
    fd = T.flow_direction_d8(filled, dx=pysheds_run["dx"], dy=pysheds_run["dy"])
    _brute_d8_check(filled, np.ones(filled.shape, bool), fd, pysheds_run["dx"], pysheds_run["dy"])


def test_reach_outlets_are_each_reachs_lowest_cell():
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:60, 0:70]
    dem = (0.05 * xx + 0.03 * np.abs(yy - 30) + rng.random((60, 70))).astype(np.float64)
    fd = T.flow_direction_d8(T.fill_depressions(dem, epsilon=True))
    acc = T.flow_accumulation_d8(fd)
    reaches = T.label_reaches(fd, T.drainage_network(acc, 25), max_length=8)
    outlet = T.reach_outlets(reaches, acc)
    assert outlet[0] == -1 and outlet.size == reaches.max() + 1
    down = T.downstream_index(fd).ravel()
    for r in range(1, reaches.max() + 1):
        cells = np.flatnonzero(reaches.ravel() == r)
        best = cells[np.argmax(acc.ravel()[cells])]
        assert outlet[r] == best
        # brute force: the outlet's receiver leaves the reach (or the grid)
        assert down[best] < 0 or reaches.ravel()[down[best]] != r
