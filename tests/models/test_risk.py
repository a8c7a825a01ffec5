"""Tests of models.risk: FD2320 hazard rating by hand, zone statistics against a plain
loop, ensemble exceedance, and GEV/Gumbel return levels on synthetic records."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from models import risk as K
from models.errors import ModelError


def test_hazard_rating_fd2320_values_by_hand():
    d = np.array([0.0, 0.2, 0.25, 0.5, 0.5, 1.0, 0.3, 1.5, np.nan])
    v = np.array([1.0, 1.0, 0.0, 1.0, 0.5, 1.0, 3.0, 0.5, 1.0])
    hr = K.hazard_rating(d, v)
    # HR = d (v + 0.5) + DF, DF = 0 below 0.25 m, 0.5 from 0.25 m
    expected = [0.0, 0.2 * 1.5, 0.25 * 0.5 + 0.5, 0.5 * 1.5 + 0.5, 0.5 * 1.0 + 0.5, 1.0 * 1.5 + 0.5,
                0.3 * 3.5 + 0.5, 1.5 * 1.0 + 0.5, np.nan]
    np.testing.assert_allclose(hr, expected, rtol=1e-15)
    assert hr[3] == 1.25  # d = 0.5, v = 1: on the boundary "danger for some"/"most"
    cls = K.hazard_class(hr)
    assert cls.dtype == np.uint8
    assert cls.tolist() == [0, 0, 0, 2, 1, 2, 2, 2, 255]  # HR = 2.0 is still class 2
    assert K.hazard_class(K.hazard_rating(1.2, 1.0)) == 3
    # class limits are left-closed; 2.0 belongs to "danger for most"
    assert K.hazard_class([0.7499, 0.75, 1.2499, 1.25, 2.0, 2.0001]).tolist() == [0, 1, 1, 2, 2, 3]
    # conservative debris factor: DF = 1 for v > 2 m/s
    assert K.hazard_rating(0.3, 3.0, conservative_debris=True) == pytest.approx(0.3 * 3.5 + 1.0)
    assert K.hazard_rating(0.2, 3.0, conservative_debris=True) == pytest.approx(0.2 * 3.5)
    # user debris factor, still water lower bound
    assert K.hazard_rating(1.0, 1.0, debris_factor=1.0) == pytest.approx(2.5)
    assert K.hazard_rating(1.0) == pytest.approx(1.0)
    assert K.hazard_rating(0.0, 1.0, debris_factor=1.0) == 0.0
    with pytest.raises(ModelError, match="depth"):
        K.hazard_rating(-0.1, 1.0)
    with pytest.raises(ModelError, match="velocity"):
        K.hazard_rating(0.1, -1.0)


def test_depth_only_classes_match_fd2320_at_one_metre_per_second():
    d = np.linspace(0.0, 3.0, 3001)
    np.testing.assert_array_equal(K.depth_hazard_class(d), K.hazard_class(K.hazard_rating(d, 1.0)))
    assert K.depth_hazard_class([0.29, 0.3, 1.19, 1.2, 1.21, np.nan], (0.3, 0.5, 1.2)).tolist() == [0, 1, 2, 2, 3, 255]
    with pytest.raises(ModelError, match="increasing"):
        K.depth_hazard_class(1.0, (0.5, 0.3, 1.0))


def brute_zone_stats(values, labels, thr, w):
    nz = labels.max() + 1
    mx = np.full(nz, np.nan)
    share = np.full((nz, len(thr)), np.nan)
    expo = np.zeros((nz, len(thr)))
    for z in range(nz):
        sel = labels == z
        vals = values[sel]
        ww = w[sel]
        ok = ~np.isnan(vals)
        if ok.any():
            mx[z] = vals[ok].max()
            for j, t in enumerate(thr):
                share[z, j] = (vals[ok] > t).sum() / ok.sum()
                expo[z, j] = ww[ok & (vals > t)].sum()
    return mx, share, expo


def test_zone_statistics_matches_a_loop():
    rng = np.random.default_rng(3)
    ny, nx = 40, 37
    labels = rng.integers(-1, 6, size=(ny, nx))
    labels[labels == 4] = 5  # zone 4 empty
    vals = rng.gamma(1.0, 0.4, size=(3, ny, nx))
    vals[rng.random(vals.shape) < 0.1] = np.nan
    vals[:, labels == 3] = np.nan  # zone 3 all nodata
    w = rng.integers(0, 5, size=(ny, nx)).astype(float)
    thr = (0.15, 0.3, 0.6)
    st = K.zone_statistics(vals.astype(np.float32), labels, thr, weights=w)
    assert st.maximum.shape == (3, 6) and st.share_above.shape == (3, 6, 3)
    for k in range(3):
        mx, share, expo = brute_zone_stats(vals[k].astype(np.float32).astype(float), labels, thr, w)
        np.testing.assert_allclose(st.maximum[k], mx, rtol=1e-7)
        np.testing.assert_allclose(st.share_above[k], share, rtol=1e-12)
        np.testing.assert_allclose(st.exposure_above[k], expo, rtol=1e-12)
    assert np.isnan(st.maximum[:, 3]).all() and np.isnan(st.maximum[:, 4]).all()
    np.testing.assert_array_equal(st.count, [np.sum(labels == z) for z in range(6)])
    np.testing.assert_allclose(st.exposure_total, [w[labels == z].sum() for z in range(6)])
    one = K.zone_statistics(vals[0], labels, thr)
    assert one.exposure_above is None and one.maximum.shape == (6,)
    with pytest.raises(ModelError, match="increasing"):
        K.zone_statistics(vals[0], labels, (0.3, 0.1))
    with pytest.raises(ModelError, match="grid"):
        K.zone_statistics(vals[0, :5], labels)


def test_exceedance_probability_nan_aware():
    x = np.array([[0.1, np.nan, 2.0], [0.5, np.nan, np.nan], [0.3, np.nan, 1.0], [0.2, np.nan, 0.2]])
    p = K.exceedance_probability(x, 0.3)
    np.testing.assert_allclose(p, [0.5, np.nan, 2 / 3])
    np.testing.assert_allclose(K.exceedance_probability(x.T, 0.3, axis=1), p)
    with pytest.raises(ModelError, match="axis"):
        K.exceedance_probability(x, 0.3, axis=4)


def test_gev_recovers_parameters_on_a_large_sample():
    c, loc, scale = -0.1, 100.0, 20.0  # xi = +0.1 (heavy tail) in scipy's convention c = -xi
    x = stats.genextreme.rvs(c, loc=loc, scale=scale, size=5000, random_state=np.random.default_rng(1))
    res = K.return_levels(x, dist="gev", n_boot=0)
    assert res.params[0] == pytest.approx(c, abs=0.03)
    assert res.params[1] == pytest.approx(loc, rel=0.02)
    assert res.params[2] == pytest.approx(scale, rel=0.04)
    truth = stats.genextreme.ppf(1 - 1 / res.return_periods, c, loc=loc, scale=scale)
    np.testing.assert_allclose(res.level, truth, rtol=0.04)
    assert np.isnan(res.lower).all()


def test_gumbel_closed_form_and_bootstrap_interval():
    mu, beta = 50.0, 12.0
    x = stats.gumbel_r.rvs(loc=mu, scale=beta, size=40, random_state=np.random.default_rng(7))
    res = K.return_levels(x, (2, 10, 100), dist="gumbel", ci=0.9, n_boot=300, seed=11)
    m, b = res.params
    t = np.array([2.0, 10.0, 100.0])
    np.testing.assert_allclose(res.level, m - b * np.log(-np.log(1 - 1 / t)), rtol=1e-12)
    truth = mu - beta * np.log(-np.log(1 - 1 / t))
    assert np.all(res.lower < res.level) and np.all(res.level < res.upper)
    assert np.all((res.lower <= truth) & (truth <= res.upper))
    again = K.return_levels(x, (2, 10, 100), dist="gumbel", ci=0.9, n_boot=300, seed=11)
    np.testing.assert_array_equal(again.upper, res.upper)


def test_gev_bootstrap_interval_contains_truth():
    c, loc, scale = 0.05, 30.0, 8.0
    x = stats.genextreme.rvs(c, loc=loc, scale=scale, size=50, random_state=np.random.default_rng(5))
    res = K.return_levels(x, (10, 50), dist="gev", ci=0.9, n_boot=60, seed=2)
    truth = stats.genextreme.ppf(1 - 1 / np.array([10.0, 50.0]), c, loc=loc, scale=scale)
    assert np.all((res.lower <= truth) & (truth <= res.upper))


def test_return_levels_errors():
    with pytest.raises(ModelError, match="at least 5"):
        K.return_levels([1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ModelError, match="NaN"):
        K.return_levels([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    with pytest.raises(ModelError, match="gumbel"):
        K.return_levels(np.arange(10.0), dist="weibull")
    with pytest.raises(ModelError, match="> 1 year"):
        K.return_levels(np.arange(10.0), return_periods=(1,))
