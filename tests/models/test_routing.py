"""Tests of models.routing: steady state, mass balance, analytic kinematic wave, an
independent scipy implementation of the discrete scheme, and the Newton residual."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from models import routing as RT
from models import terrain as T
from models.errors import ModelError

BETA = 0.6


def v_valley(ny=30, nx=21, dx=100.0):
    r, c = np.mgrid[0:ny, 0:nx]
    return 100.0 + 0.01 * dx * (ny - 1 - r) + 0.1 * dx * np.abs(c - nx // 2)


def terrain_for(dem, dx):
    filled = T.fill_depressions(dem, epsilon=True)
    fd = T.flow_direction_d8(filled, dx=dx)
    return filled, fd


def test_steady_state_equals_accumulated_inflow():
    dx = 100.0
    dem = v_valley(dx=dx)
    filled, fd = terrain_for(dem, dx)
    slope = T.d8_slope(filled, fd, dx, dx)
    rate = 10.0  # mm/h
    lateral = np.full((1, 48, *dem.shape), rate, dtype=np.float32)
    res = RT.route_kinematic_d8(fd, lateral, 3600.0, dx, dx, slope, 0.035, 10.0)
    expected = T.flow_accumulation_d8(fd) * dx * dx * rate / 3.6e6  # m3/s, continuity
    np.testing.assert_allclose(res.q_final[0], expected, rtol=5e-3)
    np.testing.assert_allclose(res.q_max[0], expected, rtol=5e-3)
    assert res.q_final.dtype == np.float32 and res.t_max.dtype == np.int32


def test_mass_conservation_with_warm_start_and_members():
    rng = np.random.default_rng(4)
    dx, dy = 50.0, 40.0
    dem = rng.normal(0.0, 1.0, size=(25, 30)) + np.linspace(20.0, 0.0, 30)[None]
    dem[10:13, 12:15] = np.nan  # an interior hole: cells next to it drain into it
    filled, fd = terrain_for(dem, dx)
    slope = T.d8_slope(filled, fd, dx, dy)
    valid = fd != 255
    nm, nt = 3, 12
    lateral = rng.gamma(0.8, 5.0, size=(nm, nt, *dem.shape)).astype(np.float32)
    q0 = rng.uniform(0.0, 2.0, size=dem.shape)
    q0[~valid] = 0.0
    dt = 900.0
    width = rng.uniform(2.0, 20.0, size=dem.shape)
    res = RT.route_kinematic_d8(fd, lateral, dt, dx, dy, slope, 0.04, width, q0=q0, substeps=3)
    inflow = (lateral.astype(np.float64) * valid).sum(axis=(1, 2, 3)) / 3.6e6 * dx * dy * dt
    lhs = inflow + res.storage_initial
    rhs = res.outflow_volume + res.storage_final
    np.testing.assert_allclose(rhs, lhs, rtol=1e-4)
    assert np.all(np.abs(rhs - lhs) / lhs < 1e-9)  # in practice exact to rounding
    assert np.isnan(res.q_final[:, ~valid]).all() and np.all(res.t_max[:, ~valid] == -1)
    # members are independent: member 1 alone gives the same answer
    one = RT.route_kinematic_d8(fd, lateral[1:2], dt, dx, dy, slope, 0.04, width, q0=q0, substeps=3)
    assert one.q_final.shape == (1, *dem.shape)
    np.testing.assert_array_equal(res.q_final[1], one.q_final[0])
    assert one.outflow_volume[0] == res.outflow_volume[1]


def chain(n):
    """One row of n cells flowing east; the last one flows off the grid."""
    return np.ones((1, n), dtype=np.uint8)


def test_chain_matches_analytic_kinematic_wave():
    # Uniform lateral inflow q_l (m2/s) on a dry channel: Q(x, t) = min(q_l x, (q_l t / alpha)^(1/beta))
    n, dx = 40, 100.0
    fd = chain(n)
    slope, manning, width = 0.005, 0.035, 5.0
    alpha = float(RT.kinematic_alpha(slope, manning, width))
    rate = 36.0  # mm/h on a 100 m x 100 m cell
    q_l = rate / 3.6e6 * dx * dx / dx  # m3/s per m of channel
    nt, dt = 120, 60.0
    lateral = np.full((1, nt, 1, n), rate, dtype=np.float32)
    res = RT.route_kinematic_d8(fd, lateral, dt, dx, dx, slope, manning, width, substeps=4,
                                record=np.array([n - 1, n // 2 - 1]))
    t = dt * np.arange(1, nt + 1)
    for k, cell in enumerate((n - 1, n // 2 - 1)):
        x = (cell + 1) * dx
        analytic = np.minimum(q_l * x, (q_l * t / alpha) ** (1.0 / BETA))
        sim = res.q_record[0, :, k].astype(np.float64)
        # first-order upwind smooths the kink where the rising limb meets the plateau
        assert np.abs(sim - analytic).sum() / analytic.sum() < 0.03
        assert sim[-1] == pytest.approx(q_l * x, rel=1e-4)
        t_eq = alpha * (q_l * x) ** BETA / q_l  # time to equilibrium at x
        early = t < 0.5 * t_eq
        np.testing.assert_allclose(sim[early], analytic[early], rtol=1e-3)


def reference_scheme(n, lateral, dt, dx, alpha):
    """The same implicit scheme written plainly: cells visited upstream first, each
    equation solved by scipy's brentq. Chain of cells flowing east, off the last one."""
    q = np.zeros(n)
    out = []
    c = alpha * dx / dt
    for step in range(lateral.shape[0]):
        q_new = np.zeros(n)
        for i in range(n):  # west to east is the topological order of the chain
            upstream = q_new[i - 1] if i > 0 else 0.0
            rhs = upstream + c * q[i] ** BETA + lateral[step, i] / 3.6e6 * dx * dx
            q_new[i] = 0.0 if rhs == 0 else brentq(lambda x, r=rhs: x + c * x**BETA - r, 0.0, rhs,
                                                   xtol=1e-14, rtol=1e-14)
        q = q_new
        out.append(q.copy())
    return np.array(out)


def test_chain_matches_plain_reference_scheme():
    rng = np.random.default_rng(9)
    n, dx, dt = 12, 200.0, 600.0
    fd = chain(n)
    alpha = float(RT.kinematic_alpha(0.002, 0.03, 8.0))
    lateral = rng.gamma(0.7, 10.0, size=(15, n))
    lateral[5:8] = 0.0
    res = RT.route_kinematic_d8(fd, lateral[None, :, None, :].astype(np.float32), dt, dx, dx, 0.002, 0.03, 8.0,
                                record=np.arange(n))
    ref = reference_scheme(n, lateral.astype(np.float32).astype(np.float64), dt, dx, alpha)
    np.testing.assert_allclose(res.q_record[0], ref, rtol=1e-5, atol=1e-9)
    assert np.all(res.t_max[0] == np.argmax(ref, axis=0))


def test_newton_solution_satisfies_the_equation():
    rng = np.random.default_rng(0)
    rhs = 10.0 ** rng.uniform(-9, 5, 4000)
    c = 10.0 ** rng.uniform(-5, 7, 4000)
    guess = np.concatenate([np.zeros(1000), rhs[1000:2000], 10.0 ** rng.uniform(-9, 5, 2000)])
    for r, cc, g in zip(rhs, c, guess):
        q = RT._solve_kinematic_numba(r, cc, g)
        assert q >= 0.0
        assert abs(q + cc * q**BETA - r) <= 1e-10 * r
    assert RT._solve_kinematic_numba(0.0, 5.0, 1.0) == 0.0
    assert RT._solve_kinematic_numba(3.0, 0.0, 1.0) == pytest.approx(3.0, rel=1e-14)
    # the kernel iterates on u = Q**0.2 (u**5 + c u**3 = rhs): recession tails reach
    # discharges far below the double range of Q without trouble
    for r in (1e-30, 1e-150, 1e-199):
        for cc in (1e-6, 1.0, 1e6):
            for u0 in (0.0, 1.0, 1e-70):
                u = RT._solve_kinematic_u_numba(r, cc, u0)
                assert u > 0.0 and abs(u**5 + cc * u**3 - r) <= 1e-10 * r
    # below 1e-200 m3/s the discharge is 0 (the water stays in storage)
    assert RT._solve_kinematic_u_numba(1e-300, 1.0, 1.0) == 0.0
    assert RT._solve_kinematic_u_numba(5e-324, 1.0, 0.0) == 0.0


def test_routing_validation():
    fd = chain(5)
    lat = np.zeros((1, 2, 1, 5), np.float32)
    with pytest.raises(ModelError, match="lateral"):
        RT.route_kinematic_d8(fd, np.zeros((2, 1, 4), np.float32), 60.0, 10.0, 10.0, 0.01, 0.03, 1.0)
    with pytest.raises(ModelError, match="record"):
        RT.route_kinematic_d8(fd, lat, 60.0, 10.0, 10.0, 0.01, 0.03, 1.0, record=[7])
    with pytest.raises(ModelError, match="slope"):
        RT.route_kinematic_d8(fd, lat, 60.0, 10.0, 10.0, 0.0, 0.03, 1.0)
    with pytest.raises(ModelError, match="substeps"):
        RT.route_kinematic_d8(fd, lat, 60.0, 10.0, 10.0, 0.01, 0.03, 1.0, substeps=0)
    bad = lat.copy()
    bad[0, 1, 0, 2] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        RT.route_kinematic_d8(fd, bad, 60.0, 10.0, 10.0, 0.01, 0.03, 1.0)
    res = RT.route_kinematic_d8(fd, lat[0], 60.0, 10.0, 10.0, 0.01, 0.03, 1.0)
    assert res.q_max.shape == (1, 1, 5) and np.all(res.q_max == 0.0)


def fractal_dem(n, seed):
    rng = np.random.default_rng(seed)
    k = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.rfftfreq(n)[None, :])
    k[0, 0] = 1.0
    amp = k ** -1.2
    amp[0, 0] = 0.0
    field = np.fft.irfft2(amp * np.exp(2j * np.pi * rng.random(amp.shape)), s=(n, n))
    yy, xx = np.mgrid[0:n, 0:n]
    return 40.0 * (field - field.min()) / np.ptp(field) + 0.05 * (xx + yy) + rng.normal(0, 0.05, (n, n))


def test_parallel_parts_reproduce_the_serial_sweep_exactly():
    n, dx = 130, 30.0
    dem = fractal_dem(n, 21)
    dem[60:64, 20:30] = np.nan
    filled, fd = terrain_for(dem, dx)
    slope = T.d8_slope(filled, fd, dx, dx)
    valid = fd != 255
    down = T.downstream_index(fd).ravel()
    plan = RT._plan(T.topological_order(fd), down, valid.ravel(), np.zeros(0, np.int64), 2)
    part, part_ptr = plan[0], plan[1]
    assert part_ptr.size - 1 > 5 and np.count_nonzero(valid.ravel() & (part < 0)) > 0  # parts and a trunk
    rng = np.random.default_rng(2)
    lateral = rng.gamma(0.5, 8.0, size=(2, 10, n, n)).astype(np.float32)
    lateral[:, 3:6] = 0.0
    lateral[rng.random(lateral.shape) < 0.3] = 0.0
    q0 = np.where(valid, rng.uniform(0.0, 0.5, size=(n, n)), 0.0)
    rec = np.flatnonzero(valid.ravel())[rng.integers(0, valid.sum(), 40)]
    rec = np.concatenate([rec, rec[:3]])  # duplicates allowed
    args = (fd, lateral, 600.0, dx, dx, slope, 0.04, np.where(valid, 5.0, 1.0))
    par = RT._route(*args, q0=q0, substeps=2, record=rec, kernel="parts")
    ser = RT._route(*args, q0=q0, substeps=2, record=rec, kernel="members")
    one = RT.route_kinematic_d8(*((fd, lateral[1]) + args[2:]), q0=q0, substeps=2, record=rec)  # auto: parts
    np.testing.assert_array_equal(one.q_final[0], ser.q_final[1])
    np.testing.assert_array_equal(one.q_record[0], ser.q_record[1])
    for name in RT.RoutingResult._fields:
        np.testing.assert_array_equal(getattr(par, name), getattr(ser, name), err_msg=name)
    with pytest.raises(ModelError, match="NaN"):
        bad = lateral.copy()
        bad[1, 4, 70, 70] = np.nan
        RT._route(*((fd, bad) + args[2:]), kernel="parts")
