"""Tests of models.inundation: rating curves against Manning's equation on analytic
cross-sections, stage/discharge round trip and depths."""

from __future__ import annotations

import numpy as np
import pytest

from models import inundation as inun
from models import terrain as T
from models.errors import ModelError


def manning(area, perimeter, slope, n):
    return area * (area / perimeter) ** (2.0 / 3.0) * np.sqrt(slope) / n


def test_wide_rectangular_channel_matches_manning():
    ny, nx, dx = 50, 41, 10.0
    hand = np.full((ny, nx), 100.0)
    hand[:, 10:31] = 0.0  # a flat channel bed 21 cells = 210 m wide, vertical banks
    width = 21 * dx
    reach = np.ones((ny, nx), dtype=np.int32)
    length = np.array([0.0, ny * dx])
    slope, n = 0.001, 0.035
    stages = np.linspace(0.0, 2.0, 41)
    rc = inun.synthetic_rating_curves(hand, reach, length, np.array([0.0, slope]), n, dx * dx, stages)
    assert rc.discharge.shape == (2, 41) and np.all(rc.discharge[0] == 0.0)
    h = stages
    wide = width * h * h ** (2.0 / 3.0) * np.sqrt(slope) / n
    np.testing.assert_allclose(rc.discharge[1], wide, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(rc.area[1], width * h, rtol=1e-12)
    assert np.all(rc.perimeter[1, 1:] == pytest.approx(width))
    # the full rectangular section (perimeter W + 2h) is within 2 % for W >> h
    rect = manning(width * h[1:], width + 2 * h[1:], slope, n)
    np.testing.assert_allclose(rc.discharge[1, 1:], rect, rtol=0.02)


def test_v_valley_from_terrain_matches_triangular_section():
    ny, nx, dx = 20, 121, 10.0
    s_side, s_down = 0.02, 0.001
    r, c = np.mgrid[0:ny, 0:nx]
    c0 = nx // 2
    dem = 50.0 + s_down * dx * (ny - 1 - r) + s_side * dx * np.abs(c - c0)
    filled = T.fill_depressions(dem, epsilon=True)
    fd = T.flow_direction_d8(filled, dx=dx)
    drainage = T.drainage_network(T.flow_accumulation_d8(fd), nx)
    assert drainage[:, c0].all() and drainage.sum() == ny
    reaches = T.label_reaches(fd, drainage)
    assert reaches.max() == 1
    reach_of_cell = T.reach_catchments(fd, reaches)
    assert np.all(reach_of_cell == 1)
    hand = T.hand(filled, fd, drainage)
    np.testing.assert_allclose(hand, s_side * dx * np.abs(c - c0), atol=1e-4)
    length, slope = T.reach_properties(reaches, fd, filled, dx=dx)
    assert length[1] == pytest.approx(ny * dx)
    stages = np.linspace(0.0, 5.0, 51)
    rc = inun.synthetic_rating_curves(hand, reach_of_cell, length, slope, 0.04, dx * dx, stages)
    h = stages[20:]  # 2..5 m: the wetted width spans 20..50 cells
    area = h * h / s_side  # triangle, side slope s_side
    top = 2.0 * h / s_side  # planar bed width
    np.testing.assert_allclose(rc.area[1, 20:], area, rtol=0.01)
    np.testing.assert_allclose(rc.discharge[1, 20:], manning(area, top, slope[1], 0.04), rtol=0.05)
    assert np.all(np.diff(rc.discharge[1]) > 0)


def table():
    stages = np.linspace(0.0, 3.0, 31)
    q1 = 40.0 * stages ** (5.0 / 3.0)
    q2 = 5.0 * stages ** 1.5
    return stages, np.vstack([np.zeros_like(stages), q1, q2])


def test_stage_discharge_round_trip():
    stages, tab = table()
    for k in range(stages.size):
        st = inun.stage_from_discharge(stages, tab, tab[:, k])
        np.testing.assert_allclose(st[1:], stages[k], rtol=1e-12, atol=1e-12)
    # between table points the stage lies between the bracketing stages
    q = 0.5 * (tab[:, 10] + tab[:, 11])
    st = inun.stage_from_discharge(stages, tab, q)
    assert np.all((st[1:] > stages[10]) & (st[1:] < stages[11]))
    # members on a leading axis
    qm = np.stack([tab[:, 5], tab[:, 20]])
    stm = inun.stage_from_discharge(stages, tab, qm)
    assert stm.shape == (2, 3)
    np.testing.assert_allclose(stm[:, 1], [stages[5], stages[20]], rtol=1e-12)


def test_stage_beyond_the_table():
    stages, tab = table()
    q = tab[:, -1] * 1.5
    q[0] = 0.0
    ext = inun.stage_from_discharge(stages, tab, q)
    slope_last = (stages[-1] - stages[-2]) / (tab[1, -1] - tab[1, -2])
    assert ext[1] == pytest.approx(stages[-1] + (q[1] - tab[1, -1]) * slope_last)
    assert np.all(inun.stage_from_discharge(stages, tab, q, beyond="clip")[1:] == stages[-1])
    assert np.isnan(inun.stage_from_discharge(stages, tab, q, beyond="nan")[1:]).all()
    with pytest.raises(ModelError, match="beyond"):
        inun.stage_from_discharge(stages, tab, q, beyond="wrap")
    with pytest.raises(ModelError, match="non-decreasing"):
        inun.stage_from_discharge(stages, tab[:, ::-1], q)
    with pytest.raises(ModelError, match="reach axis"):
        inun.stage_from_discharge(stages, tab, q[:2])


def test_depth_from_stage():
    rng = np.random.default_rng(2)
    hand = rng.uniform(0.0, 4.0, size=(12, 15)).astype(np.float32)
    hand[0, 0] = np.nan
    reach = rng.integers(1, 4, size=hand.shape).astype(np.int32)
    reach[1, 1] = 0
    stage = np.array([0.0, 1.0, 2.5, 0.2])
    depth = inun.depth_from_stage(hand, reach, stage)
    assert depth.dtype == np.float32
    ok = np.isfinite(depth)
    assert not ok[0, 0] and not ok[1, 1] and ok.sum() == hand.size - 2
    assert np.all(depth[ok] >= 0.0)
    s_cell = stage[reach]
    assert np.all(depth[ok & (hand >= s_cell)] == 0.0)
    wet = ok & (hand < s_cell)
    np.testing.assert_allclose(depth[wet], (s_cell - hand)[wet], rtol=1e-6)
    dm = inun.depth_from_stage(hand, reach, np.stack([stage, stage * 2]))
    assert dm.shape == (2, 12, 15)
    np.testing.assert_array_equal(dm[0], depth)
    with pytest.raises(ModelError, match="reach id"):
        inun.depth_from_stage(hand, reach, stage[:2])


def test_rating_curve_validation():
    hand = np.zeros((3, 3))
    reach = np.ones((3, 3), np.int32)
    with pytest.raises(ModelError, match="stages"):
        inun.synthetic_rating_curves(hand, reach, [0, 30.0], [0, 0.01], 0.03, 100.0, [1.0, 0.5])
    with pytest.raises(ModelError, match="reach_length"):
        inun.synthetic_rating_curves(hand, reach * 2, [0, 30.0], [0, 0.01], 0.03, 100.0, [0.0, 1.0])
    with pytest.raises(ModelError, match="reach_slope"):
        inun.synthetic_rating_curves(hand, reach, [0, 30.0], [0, 0.0], 0.03, 100.0, [0.0, 1.0])
