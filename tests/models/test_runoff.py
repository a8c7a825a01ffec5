"""Tests of models.runoff against TR-55 and the SCS-CN invariants."""

from __future__ import annotations

import numpy as np
import pytest

from models import runoff as R
from models.errors import ModelError

MM = 25.4


def test_tr55_example_2_1_in_inches():
    s = R.potential_retention(70.0)
    assert s / MM == pytest.approx(1000.0 / 70.0 - 10.0, rel=1e-12)  # 4.286 in
    q_mm = R.scs_runoff_depth(6.0 * MM, 70.0)
    assert abs(q_mm / MM - 2.805) < 1e-3
    assert abs(R.scs_runoff_depth(6.0 * MM, 70.1) / MM - 2.815) < 1e-3
    assert R.scs_runoff_depth(0.5 * MM, 70.0) == 0.0  # P <= Ia


def test_runoff_depth_invariants():
    p = np.linspace(0.0, 500.0, 2001)
    for cn in (30.0, 55.0, 70.0, 85.0, 98.0, 100.0):
        q = R.scs_runoff_depth(p, cn)
        assert np.all(q >= 0.0) and np.all(q <= p + 1e-12)
        assert np.all(np.diff(q) >= 0.0)
        ia = 0.2 * R.potential_retention(cn)
        assert np.all(q[p <= ia] == 0.0)
    np.testing.assert_allclose(R.scs_runoff_depth(p, 100.0), p)
    # broadcasting and NaN curve numbers (nodata)
    out = R.scs_runoff_depth(np.array([[100.0], [200.0]]), np.array([70.0, np.nan]))
    assert out.shape == (2, 2) and np.isnan(out[:, 1]).all()


def test_lambda_005_hawkins_conversion():
    s02_in = 1000.0 / 70.0 - 10.0
    s005 = R.potential_retention(70.0, lam=0.05)
    assert s005 / MM == pytest.approx(1.33 * s02_in**1.15, rel=1e-12)
    q = R.scs_runoff_depth(6.0 * MM, 70.0, lam=0.05) / MM
    ia = 0.05 * s005 / MM
    assert q == pytest.approx((6.0 - ia) ** 2 / (6.0 - ia + s005 / MM), rel=1e-12)
    with pytest.raises(ModelError, match="0.2"):
        R.potential_retention(70.0, lam=0.1)


def test_amc_conversion():
    assert R.amc_convert(70.0, "III") == pytest.approx(23 * 70 / (10 + 0.13 * 70))
    assert R.amc_convert(70.0, "I") == pytest.approx(4.2 * 70 / (10 - 0.058 * 70))
    cn = np.array([40.0, 70.0, 90.0])
    assert np.all(R.amc_convert(cn, "I") < cn) and np.all(R.amc_convert(cn, "III") > cn)
    with pytest.raises(ModelError, match="III"):
        R.amc_convert(70.0, "wet")
    with pytest.raises(ModelError, match=r"\(0, 100\]"):
        R.amc_convert(120.0)


def storm(shape, seed=1):
    rng = np.random.default_rng(seed)
    rain = rng.gamma(0.6, 6.0, size=shape).astype(np.float32)
    rain[rng.random(shape) < 0.3] = 0.0
    return rain


def test_excess_rate_sums_to_depth_and_is_bounded():
    rain = storm((3, 24, 8, 9))  # member, time, y, x in mm/h
    dt = 0.5
    cn = np.random.default_rng(2).uniform(55.0, 95.0, size=(8, 9))
    ex = R.scs_excess_rate(rain, dt, cn)
    assert ex.dtype == np.float32 and ex.shape == rain.shape
    total_p = rain.astype(np.float64).sum(axis=1) * dt
    expected = R.scs_runoff_depth(total_p, cn[None])
    np.testing.assert_allclose(ex.astype(np.float64).sum(axis=1) * dt, expected, rtol=2e-5, atol=1e-5)
    assert np.all(ex >= 0.0) and np.all(ex <= rain)
    # 3-D input, zero rain
    assert np.all(R.scs_excess_rate(np.zeros((5, 4, 4), np.float32), 1.0, 80.0) == 0.0)
    ex3 = R.scs_excess_rate(rain[0], dt, cn)
    np.testing.assert_array_equal(ex3, ex[0])


def test_excess_rate_continues_a_storm_with_p0():
    rain = storm((1, 12, 5, 6), seed=5)
    cn = 75.0
    whole = R.scs_excess_rate(rain, 1.0, cn)
    first = R.scs_excess_rate(rain[:, :5], 1.0, cn)
    p0 = rain[0, :5].astype(np.float64).sum(axis=0) * 1.0
    second = R.scs_excess_rate(rain[:, 5:], 1.0, cn, p0=p0)
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, rtol=1e-5, atol=1e-6)


def test_excess_rate_nodata_and_errors():
    rain = storm((4, 3, 3))
    cn = np.full((3, 3), 80.0)
    cn[1, 1] = np.nan
    ex = R.scs_excess_rate(rain, 1.0, cn)
    assert np.isnan(ex[:, 1, 1]).all() and np.isfinite(np.delete(ex.reshape(4, 9), 4, axis=1)).all()
    bad = rain.copy()
    bad[2, 0, 0] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        R.scs_excess_rate(bad, 1.0, 80.0)
    bad[2, 0, 0] = -1.0
    with pytest.raises(ModelError, match="negative"):
        R.scs_excess_rate(bad, 1.0, 80.0)
    with pytest.raises(ModelError, match="dt_hours"):
        R.scs_excess_rate(rain, 0.0, 80.0)
    with pytest.raises(ModelError, match="cn"):
        R.scs_excess_rate(rain, 1.0, np.full((2, 2), 80.0))
    with pytest.raises(ModelError, match="float32"):
        R.scs_excess_rate(rain.astype(np.int32), 1.0, 80.0)


def test_runoff_registry():
    assert R.get_runoff_method("scs_cn") is R.scs_excess_rate
    with pytest.raises(ModelError, match="scs_cn"):
        R.get_runoff_method("green_ampt")
