"""Tests of models.lumped against analytic oracles: the SCS-CN event equation, the
linear-reservoir and Nash (gamma) unit hydrographs, and the water balance."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from models import runoff as R
from models.errors import ModelError
from models.lumped import (
    LumpedParams,
    LumpedState,
    cascade_coefficients,
    route_cascade,
    run,
    simulate,
)

REPO = Path(__file__).resolve().parents[2]


def params(**kw) -> LumpedParams:
    base = {"s_mm": 120.0, "sa_mm": 40.0, "lp": 0.7, "tau_perc_h": 500.0, "quick_fraction": 0.4, "n_quick": 3,
                "k_quick_h": 4.0, "k_slow_h": 200.0}
    base.update(kw)
    return LumpedParams(**base)


def storm(n, seed=0, wet=0.15, mean=3.0):
    """Intermittent rain, mm/h: gamma amounts on a random share of the steps."""
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < wet, rng.gamma(0.7, mean / 0.7, n), 0.0)


def diurnal_et(n, dt_h=1.0, peak=0.4):
    """Potential evaporation, mm/h: a daytime sine (a daily mean for steps of a day or more)."""
    hours = np.arange(n) * dt_h
    if dt_h >= 24.0:
        return np.full(n, peak / np.pi)
    return np.clip(np.sin((hours % 24.0 - 6.0) / 12.0 * np.pi), 0.0, None) * peak


def scs(p, s, ia):
    """TR-55 event equation for cumulative rain p (mm)."""
    x = np.asarray(p, float) - ia
    return np.where(x > 0.0, x * x / np.where(x > 0.0, x + s, 1.0), 0.0)


# --------------------------------------------------------------------------- production
@pytest.mark.parametrize("s, sa, v0, dt", [
    (108.857, 21.77, 0.0, 1.0),      # TR-55 CN 70, lambda 0.2, dry store
    (50.0, 30.0, 12.5, 1.0),         # store part-filled: Ia = Sa - V0 = 17.5 mm
    (300.0, 0.0, 0.0, 0.25),         # no threshold: Ia = 0
    (80.0, 25.0, 25.0, 3.0),         # at the threshold
    (20.0, 60.0, 5.0, 24.0),         # small S, daily steps
])
def test_dry_store_no_et_follows_scs_event_equation_exactly(s, sa, v0, dt):
    """From V0 <= Sa, with no evaporation and no drainage, the cumulative runoff after every
    step is Q = (P - Ia)^2 / (P - Ia + S) with Ia = Sa - V0, whatever the step (eq. 2 is the
    exact flow of the store equation, so splitting the rain does not change it)."""
    p = params(s_mm=s, sa_mm=sa, tau_perc_h=math.inf, n_quick=2)
    rain = storm(400, seed=3, wet=0.5, mean=4.0 / dt)
    r = run(p, rain, np.zeros_like(rain), dt, LumpedState(v0, (0.0, 0.0), 0.0))
    P = np.cumsum(rain * dt)
    Q = np.cumsum(r.runoff_mm_h * dt)
    expect = scs(P, s, sa - v0)
    np.testing.assert_allclose(Q, expect, rtol=1e-12, atol=1e-12 * P[-1])
    assert P[-1] > sa - v0 + s  # the storm went well past the initial abstraction
    # the store holds what did not run off
    np.testing.assert_allclose(r.soil_mm, v0 + P - Q, rtol=1e-13, atol=1e-10)


def test_tr55_example_2_1_through_the_store():
    """TR-55 example 2-1 (CN 70, P = 6 in in 24 h): Q = 2.805 in, as models.runoff gives."""
    s = 25400.0 / 70.0 - 254.0
    p = params(s_mm=s, sa_mm=0.2 * s, tau_perc_h=math.inf)
    rain = np.zeros(48)
    rain[:24] = 6.0 * 25.4 / 24.0
    r = run(p, rain, np.zeros(48), 1.0, LumpedState(0.0, (0.0,) * 3, 0.0))
    q_in = r.runoff_mm_h.sum() / 25.4
    assert abs(q_in - 2.805) < 1e-3
    assert r.runoff_mm_h.sum() == pytest.approx(float(R.scs_runoff_depth(152.4, 70.0)), rel=1e-12)


def test_wet_store_is_the_scs_curve_shifted():
    """Above the threshold the store starts part-way up the curve: Q = Qscs(x0 + P) - Qscs(x0),
    x0 = W0 S / (S - W0) (a negative initial abstraction)."""
    s, sa, w0 = 90.0, 15.0, 35.0
    p = params(s_mm=s, sa_mm=sa, tau_perc_h=math.inf)
    rain = storm(200, seed=8, wet=0.6)
    r = run(p, rain, np.zeros_like(rain), 1.0, LumpedState(sa + w0, (0.0,) * 3, 0.0))
    x0 = w0 * s / (s - w0)
    expect = scs(x0 + np.cumsum(rain), s, 0.0) - scs(x0, s, 0.0)
    np.testing.assert_allclose(np.cumsum(r.runoff_mm_h), expect, rtol=1e-11, atol=1e-11)


def test_single_step_storm_is_exact_with_drainage_and_evaporation_after_it():
    """Drainage and store evaporation act after production in a step, so a storm that falls in one
    step obeys the event equation even with them switched on."""
    p = params(s_mm=70.0, sa_mm=20.0, tau_perc_h=5.0, lp=0.3)
    rain = np.array([80.0, 0.0, 0.0])
    r = run(p, rain, np.array([0.0, 0.3, 0.3]), 1.0, LumpedState(4.0, (0.0,) * 3, 0.0))
    assert r.runoff_mm_h[0] == pytest.approx(float(scs(80.0, 70.0, 16.0)), rel=1e-13)
    assert r.drain_mm_h[0] > 0.0 and r.et_mm_h[1] > 0.0


def test_production_bounds_and_evaporation_limits():
    p = params()
    rain = storm(5000, seed=2)
    et = diurnal_et(5000)
    r = run(p, rain, et)
    assert np.all(r.runoff_mm_h >= -1e-12) and np.all(r.runoff_mm_h <= rain + 1e-12)
    assert np.all(r.et_mm_h <= et + 1e-12)
    wet = rain >= et
    np.testing.assert_allclose(r.et_mm_h[wet], et[wet])  # rain meets the demand first
    assert np.all((r.soil_mm >= 0.0) & (r.soil_mm <= p.sa_mm + p.s_mm))


def test_full_store_passes_rain_straight_to_the_cascade():
    """A store at capacity (W = S) lets all rain run off; with quick_fraction 1 the model's
    discharge is the Nash cascade of the rain."""
    p = params(tau_perc_h=math.inf, quick_fraction=1.0, n_quick=4, k_quick_h=2.5)
    rain = storm(300, seed=5)
    q, _ = simulate(p, rain, np.zeros_like(rain), 1.0, LumpedState(p.sa_mm + p.s_mm, (0.0,) * 4, 0.0))
    expect, _ = route_cascade(rain, 4, 2.5, 1.0)
    np.testing.assert_allclose(q, expect, rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- routing
def _box_response_volumes(n, k, dt, steps):
    """Exact outflow per step of a Nash cascade fed 1 mm spread evenly over the first step.

    The IUH is the gamma pdf g (shape n, scale k) with cdf G; with H(T) = int_0^T G =
    T G_n(T) - n k G_{n+1}(T), the cumulative outflow is Y(T) = (H(T) - H(T - dt)) / dt.
    """
    def H(T):
        T = np.maximum(T, 0.0)
        return T * stats.gamma.cdf(T, n, scale=k) - n * k * stats.gamma.cdf(T, n + 1, scale=k)

    edges = np.arange(steps + 1) * dt
    Y = (H(edges) - H(edges - dt)) / dt
    return np.diff(Y)


def test_linear_reservoir_unit_pulse_is_the_exponential():
    k, dt = 3.0, 1.0
    inflow = np.zeros(60)
    inflow[0] = 1.0 / dt  # 1 mm in the first step
    out, store = route_cascade(inflow, 1, k, dt)
    x = dt / k
    expect = np.empty(60)
    expect[0] = 1.0 - (k / dt) * (1.0 - math.exp(-x))
    j = np.arange(1, 60)
    expect[1:] = (k / dt) * (1.0 - math.exp(-x)) ** 2 * np.exp(-(j - 1) * x)
    np.testing.assert_allclose(out * dt, expect, rtol=1e-12, atol=1e-16)
    # the gamma formula below (n = 1) loses a few digits to cancellation in the tail: atol
    np.testing.assert_allclose(out * dt, _box_response_volumes(1, k, dt, 60), rtol=1e-10, atol=1e-13)
    assert out.sum() * dt + store.sum() == pytest.approx(1.0, rel=1e-14)


@pytest.mark.parametrize("n, k, dt", [(2, 1.5, 1.0), (3, 4.0, 1.0), (5, 0.7, 0.5), (8, 2.0, 6.0)])
def test_nash_cascade_unit_pulse_is_the_gamma_unit_hydrograph(n, k, dt):
    steps = int(np.ceil(12 * n * k / dt)) + 5
    inflow = np.zeros(steps)
    inflow[0] = 1.0 / dt
    out, store = route_cascade(inflow, n, k, dt)
    np.testing.assert_allclose(out * dt, _box_response_volumes(n, k, dt, steps), rtol=1e-9, atol=1e-13)
    assert out.sum() * dt + store.sum() == pytest.approx(1.0, rel=1e-13)


def test_nash_cascade_fine_steps_approach_the_instantaneous_unit_hydrograph():
    n, k, dt = 3, 2.0, 0.01
    steps = 3000
    inflow = np.zeros(steps)
    inflow[0] = 1.0 / dt
    out, _ = route_cascade(inflow, n, k, dt)
    # a box input of width dt delays the response by dt/2 and the step mean adds dt/2 back:
    # step j's mean outflow is u(j dt) to O(dt**2)
    t = np.arange(steps) * dt
    iuh = t ** (n - 1) * np.exp(-t / k) / (k ** n * math.factorial(n - 1))
    assert np.max(np.abs(out - iuh)) < 1e-4 * iuh.max()
    assert t[np.argmax(out)] == pytest.approx((n - 1) * k, abs=0.02)  # peak of the gamma IUH


def test_cascade_coefficients_conserve_and_decay():
    phi, gam = cascade_coefficients(4, 2.0, 1.0)
    assert np.allclose(np.triu(phi, 1), 0.0)
    assert np.all(phi.sum(axis=0) < 1.0) and np.all(gam > 0.0) and gam.sum() < 1.0


# --------------------------------------------------------------------------- balance and state
@pytest.mark.parametrize("kw, dt", [
    ({}, 1.0),
    ({"n_quick": 1, "quick_fraction": 1.0, "tau_perc_h": math.inf}, 1.0),
    ({"n_quick": 8, "k_quick_h": 0.3, "quick_fraction": 0.0, "tau_perc_h": 20.0, "lp": 0.1}, 0.25),
    ({"s_mm": 8.0, "sa_mm": 0.0, "k_slow_h": 30.0}, 24.0),
])
def test_mass_balance_closes_to_round_off(kw, dt):
    p = params(**kw)
    n = int(3 * 365 * 24 / dt)
    rain = storm(n, seed=11, mean=2.0)
    et = diurnal_et(n, dt)
    st0 = LumpedState.initial(p, soil_fill=0.5, slow_q_mm_h=0.05)
    r = run(p, rain, et, dt, st0)
    p_in = math.fsum(rain * dt)
    et_out = math.fsum(r.et_mm_h * dt)
    q_out = math.fsum(r.q_mm_h * dt)
    d_store = r.final_state.storage_mm - st0.storage_mm
    assert abs(p_in - et_out - q_out - d_store) <= 1e-12 * (p_in + st0.storage_mm)
    assert et_out > 0.1 * p_in and q_out > 0.05 * p_in  # every path carried water
    # the components add up as well
    np.testing.assert_allclose(r.quick_mm_h + r.slow_mm_h, r.q_mm_h, rtol=1e-15)


def test_continuing_from_a_saved_state_equals_one_run():
    p = params()
    rain, et = storm(4000, seed=4), diurnal_et(4000)
    q_all, st_all = simulate(p, rain, et)
    q1, st1 = simulate(p, rain[:1500], et[:1500])
    restored = LumpedState.from_dict(json.loads(json.dumps(st1.to_dict())))
    q2, st2 = simulate(p, rain[1500:], et[1500:], state=restored)
    np.testing.assert_allclose(np.concatenate([q1, q2]), q_all, rtol=1e-13, atol=1e-16)
    assert st2.storage_mm == pytest.approx(st_all.storage_mm, rel=1e-13)


def test_numba_and_pure_python_paths_agree():
    """The kernel run with NUMBA_DISABLE_JIT=1 (plain Python, in a child process) gives the
    same discharge as the compiled kernel."""
    p = params(n_quick=2)
    rain, et = storm(1500, seed=9), diurnal_et(1500)
    q_jit, st_jit = simulate(p, rain, et)
    code = (
        "import json, sys, numpy as np\n"
        "from models.lumped import LumpedParams, simulate\n"
        "d = json.load(sys.stdin)\n"
        "q, st = simulate(LumpedParams(**d['p']), np.array(d['rain']), np.array(d['et']))\n"
        "import numba; assert numba.config.DISABLE_JIT\n"
        "print(json.dumps({'q': q.tolist(), 'storage': st.storage_mm}))\n"
    )
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    out = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, env=env, capture_output=True,
                         text=True,
                         input=json.dumps({"p": p.to_dict(), "rain": rain.tolist(), "et": et.tolist()}),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    np.testing.assert_allclose(res["q"], q_jit, rtol=1e-12, atol=1e-15)
    assert res["storage"] == pytest.approx(st_jit.storage_mm, rel=1e-12)


# --------------------------------------------------------------------------- validation
def test_parameters_are_checked_and_round_trip():
    p = params()
    assert LumpedParams.from_dict(p.to_dict()) == p
    assert p.curve_number == pytest.approx(25400.0 / (120.0 + 254.0))
    with pytest.raises(ModelError) as exc:
        params(s_mm=0.0, lp=1.5, n_quick=2.5, k_slow_h=-1.0)
    msg = str(exc.value)
    assert all(name in msg for name in ("s_mm", "lp", "n_quick", "k_slow_h"))  # every problem at once
    with pytest.raises(ModelError, match="n_quick"):
        params(n_quick=0)
    with pytest.raises(ModelError, match="n_quick"):
        params(n_quick="three")
    with pytest.raises(ModelError, match="unknown keys"):
        LumpedParams.from_dict({**p.to_dict(), "cn": 70})


def test_bad_inputs_raise_model_errors():
    p = params()
    rain = np.ones(10)
    with pytest.raises(ModelError, match="rain_mm_h must be finite"):
        simulate(p, np.array([1.0, -0.1]), np.zeros(2))
    with pytest.raises(ModelError, match="first at index 1"):
        simulate(p, np.array([1.0, np.nan]), np.zeros(2))
    with pytest.raises(ModelError, match="same steps"):
        simulate(p, rain, np.zeros(9))
    with pytest.raises(ModelError, match="1-D"):
        simulate(p, rain.reshape(2, 5), np.zeros((2, 5)))
    with pytest.raises(ModelError, match="dt_h"):
        simulate(p, rain, rain, dt_h=0.0)
    with pytest.raises(ModelError, match="quick reservoirs"):
        simulate(p, rain, rain, state=LumpedState(0.0, (0.0,), 0.0))
    with pytest.raises(ModelError, match="capacity"):
        simulate(p, rain, rain, state=LumpedState(1e6, (0.0,) * 3, 0.0))
    with pytest.raises(ModelError, match=">= 0"):
        LumpedState(-1.0, (0.0,), 0.0)
    with pytest.raises(ModelError, match="soil_fill"):
        LumpedState.initial(p, soil_fill=1.5)
