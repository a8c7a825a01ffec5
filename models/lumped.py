"""A lumped, continuous rainfall-runoff model built on the SCS curve number.

One soil-moisture store for the whole catchment turns rain into runoff with the SCS-CN
production function written as a function of the store's level, loses water to
evaporation and to drainage between storms (so it runs for years, not one event), and
routes the runoff through linear reservoirs: a Nash cascade for quick flow and one
reservoir for slow flow. Inputs are catchment-mean rates in mm/h on a regular time
step; the output is specific discharge in mm/h (multiply by the area in km2 and divide
by 3.6 for m3/s).

Soil store (production)
-----------------------
The store holds ``V`` mm. Below a threshold ``Sa`` (mm) every drop of rain is held
(this is the initial abstraction); above it, with ``W = V - Sa`` in ``[0, S)`` mm, rain
splits into infiltration ``dW`` and runoff ``dQ`` by::

    dW/dP = (1 - W/S)**2          dQ/dP = 1 - (1 - W/S)**2               (1)

Why (1): in the TR-55 event equation ``Q = (P - Ia)**2 / (P - Ia + S)`` (P > Ia) the
water retained after the initial abstraction is ``F = P - Ia - Q = S (P - Ia) / (P -
Ia + S)``, whose derivative is ``dF/dP = S**2 / (P - Ia + S)**2 = (1 - F/S)**2``. So
the SCS-CN curve is the solution of (1) for a store that starts ``Ia = Sa - V0`` mm below
its threshold, with ``W = F``. Written as (1), the runoff depends only on the current
store level and not on the rain since some "start of the event", which is the soil
moisture accounting that Michel, Andreassian & Perrin (2005, WRR 41, W02011) argue the
SCS-CN method needs: a store with a level ``V``, a threshold ``Sa`` below which rain
does not run off, and a capacity ``S`` above it. The production function (1) is derived
here from TR-55; it was not checked line by line against the equations of that paper.

Integrated exactly over a step with net rain ``p`` (mm) from ``W0``::

    dW = (S - W0)**2 p / (S**2 + (S - W0) p),        runoff = p - dW           (2)

(rain first fills the store up to ``Sa`` if it is below). Because (2) is the exact flow
of the autonomous equation (1), splitting rain over several steps gives the same result
as one step. Hence, **exactly** (to round-off) and for any time step: from a store at or
below the threshold (``V0 <= Sa``), with no evaporation and no drainage while it rains,
the cumulative runoff after cumulative rain ``P`` is the SCS-CN event equation with
``Ia = Sa - V0`` and the model's ``S``. A store above its threshold (``V0 > Sa``) gives
the same curve shifted: ``Q = Qscs(x0 + P) - Qscs(x0)`` with ``x0 = W0 S / (S - W0)``
and ``Qscs(x) = x**2 / (x + S)`` (a negative initial abstraction). The usual curve
number follows from ``S`` as ``CN = 25400 / (S + 254)`` (TR-55, SI).

Evaporation and drainage (the accounting between storms)
--------------------------------------------------------
Potential evaporation ``Ep`` is first met by the step's rain (as in GR4J: interception
and evaporation of wet surfaces); what is left evaporates from the store at
``Ep_left * min(1, V / (lp * Vmax))`` with ``Vmax = Sa + S`` (HBV's ``LP`` reduction:
no stress above ``lp * Vmax``). Water above the threshold drains to the slow reservoir,
``drain = (V - Sa) (1 - exp(-dt / tau_perc))`` per step (``tau_perc = inf``: no
drainage). Per step the order is: rain meets evaporation, production (2), evaporation
from the store, drainage.

Routing
-------
A fraction ``quick_fraction`` of the runoff goes to the quick path, a Nash cascade of
``n_quick`` linear reservoirs with constant ``k_quick`` (h); the rest of the runoff and
all drainage go to one slow linear reservoir with constant ``k_slow`` (h). A linear
reservoir holds ``k * outflow``. Inflow is constant within a step and the reservoirs
are integrated exactly over it (matrix exponential of the cascade), so the response to a
pulse is the gamma (Nash) unit hydrograph ``u(t) = t**(n-1) exp(-t/k) / (k**n (n-1)!)``
integrated over each step, for any ``dt``. Discharge is the mean rate over each step.

Mass balance: every flux is computed from the change of the store it leaves, so per run
``sum(P) dt = sum(ET) dt + sum(Q) dt + (storage_end - storage_start)`` to float
round-off, storage being the soil store plus all reservoirs (all in mm).

The kernel (:func:`_lumped_numba`) runs on plain float64 arrays; :func:`simulate` and
:func:`run` validate the inputs and wrap parameters and states in dataclasses, so a
forecast can continue from the state saved at the end of the previous run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numba
import numpy as np
from scipy.special import gammainc, gammaln

from models.errors import ModelError, positive_scalar

__all__ = [
    "MAX_N_QUICK",
    "LumpedParams",
    "LumpedRun",
    "LumpedState",
    "cascade_coefficients",
    "route_cascade",
    "run",
    "simulate",
]

MAX_N_QUICK = 20
"""Largest number of reservoirs allowed in the quick-flow Nash cascade."""


@dataclass(frozen=True)
class LumpedParams:
    """Parameters of the lumped continuous SCS-CN model (catchment means).

    Attributes
    ----------
    s_mm : float, mm
        SCS potential maximum retention ``S``: capacity of the soil store above its
        threshold (> 0). ``CN = 25400 / (S + 254)``.
    sa_mm : float, mm
        Threshold level ``Sa`` of the soil store below which rain does not run off and
        the store does not drain (>= 0). From a store at level ``V0 <= Sa`` the
        initial abstraction of the next storm is ``Ia = Sa - V0``.
    lp : float, dimensionless (0, 1]
        Evaporation from the store is at the potential rate while ``V >= lp * (Sa +
        S)`` and falls linearly to zero below (HBV's ``LP``).
    tau_perc_h : float, h
        Time constant of the drainage of the water above ``Sa`` to the slow
        reservoir (> 0; ``math.inf`` for none).
    quick_fraction : float, dimensionless [0, 1]
        Share of the runoff routed through the quick Nash cascade; the rest joins the
        slow reservoir.
    n_quick : int, dimensionless
        Number of linear reservoirs in the quick Nash cascade, 1 to ``MAX_N_QUICK``.
    k_quick_h : float, h
        Storage constant of each quick reservoir (> 0); the quick unit hydrograph has
        its mean at ``n_quick * k_quick_h`` and its peak at ``(n_quick - 1) * k_quick_h``.
    k_slow_h : float, h
        Storage constant of the slow reservoir (> 0).
    """

    s_mm: float
    sa_mm: float
    lp: float
    tau_perc_h: float
    quick_fraction: float
    n_quick: int
    k_quick_h: float
    k_slow_h: float

    def __post_init__(self) -> None:
        problems = []
        for name in ("s_mm", "sa_mm", "lp", "tau_perc_h", "quick_fraction", "k_quick_h", "k_slow_h"):
            v = getattr(self, name)
            try:
                object.__setattr__(self, name, float(v))
            except (TypeError, ValueError):
                problems.append(f"{name} must be a number; got {v!r}")
        if problems:
            raise ModelError("invalid lumped-model parameters: " + "; ".join(problems) + ".")

        def bad(name: str, ok: bool, need: str) -> None:
            if not ok:
                problems.append(f"{name} must be {need}; got {getattr(self, name)!r}")

        bad("s_mm", math.isfinite(self.s_mm) and self.s_mm > 0.0, "a finite number > 0 mm")
        bad("sa_mm", math.isfinite(self.sa_mm) and self.sa_mm >= 0.0, "a finite number >= 0 mm")
        bad("lp", 0.0 < self.lp <= 1.0, "in (0, 1]")
        bad("tau_perc_h", self.tau_perc_h > 0.0, "> 0 h (math.inf for no drainage)")
        bad("quick_fraction", 0.0 <= self.quick_fraction <= 1.0, "in [0, 1]")
        bad("k_quick_h", math.isfinite(self.k_quick_h) and self.k_quick_h > 0.0, "a finite number > 0 h")
        bad("k_slow_h", math.isfinite(self.k_slow_h) and self.k_slow_h > 0.0, "a finite number > 0 h")
        n = self.n_quick
        try:
            whole = not isinstance(n, (bool, np.bool_)) and float(n).is_integer()
        except (TypeError, ValueError):
            whole = False
        if not whole:
            problems.append(f"n_quick must be a whole number of reservoirs; got {n!r}")
        else:
            object.__setattr__(self, "n_quick", int(n))
            bad("n_quick", 1 <= self.n_quick <= MAX_N_QUICK, f"between 1 and {MAX_N_QUICK}")
        if problems:
            raise ModelError("invalid lumped-model parameters: " + "; ".join(problems) + ".")

    @property
    def curve_number(self) -> float:
        """The SCS curve number of ``s_mm`` (TR-55, SI: ``25400 / (S + 254)``), dimensionless."""
        return 25400.0 / (self.s_mm + 254.0)

    def to_dict(self) -> dict[str, float | int]:
        """The parameters as a plain dict (JSON/TOML-ready; ``tau_perc_h`` may be ``inf``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LumpedParams:
        """Build from a dict with exactly the field names (unknown or missing keys raise)."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        missing = sorted(names - set(d))
        if unknown or missing:
            raise ModelError(f"lumped-model parameters: unknown keys {unknown}, missing keys {missing}; "
                             f"expected {sorted(names)}.")
        return cls(**d)


@dataclass(frozen=True)
class LumpedState:
    """Storages of the lumped model at one instant (all mm over the catchment).

    Attributes
    ----------
    soil_mm : float, mm
        Level ``V`` of the soil store, ``0 <= V <= Sa + S``.
    quick_mm : tuple of float, mm
        Storage of each reservoir of the quick Nash cascade, upstream first
        (length ``n_quick``).
    slow_mm : float, mm
        Storage of the slow reservoir (its outflow is ``slow_mm / k_slow_h`` mm/h).
    """

    soil_mm: float
    quick_mm: tuple[float, ...]
    slow_mm: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "soil_mm", float(self.soil_mm))
        object.__setattr__(self, "slow_mm", float(self.slow_mm))
        object.__setattr__(self, "quick_mm", tuple(float(x) for x in np.ravel(self.quick_mm)))
        vals = (self.soil_mm, self.slow_mm, *self.quick_mm)
        if not all(math.isfinite(v) and v >= 0.0 for v in vals):
            raise ModelError(f"state storages must be finite and >= 0 mm; got {self!r}.")
        if not self.quick_mm:
            raise ModelError("state quick_mm must hold one storage per quick reservoir (n_quick >= 1).")

    @property
    def storage_mm(self) -> float:
        """Total water held, soil store plus every reservoir, mm."""
        return self.soil_mm + math.fsum(self.quick_mm) + self.slow_mm

    @classmethod
    def initial(cls, params: LumpedParams, *, soil_fill: float | None = None,
                slow_q_mm_h: float = 0.0) -> LumpedState:
        """A starting state: empty quick reservoirs, a chosen soil level and base flow.

        Parameters
        ----------
        params : LumpedParams
        soil_fill : float, dimensionless [0, 1], optional
            Soil level as a fraction of ``Sa + S``; default: at the threshold ``Sa``
            (no initial abstraction left, no drainage yet).
        slow_q_mm_h : float, mm/h
            Outflow of the slow reservoir at the start (its storage is
            ``k_slow_h * slow_q_mm_h``), e.g. the first observed discharge.
        """
        vmax = params.sa_mm + params.s_mm
        if soil_fill is None:
            soil = params.sa_mm
        else:
            if not 0.0 <= float(soil_fill) <= 1.0:
                raise ModelError(f"soil_fill must be in [0, 1] (fraction of Sa + S); got {soil_fill!r}.")
            soil = float(soil_fill) * vmax
        if not (math.isfinite(float(slow_q_mm_h)) and float(slow_q_mm_h) >= 0.0):
            raise ModelError(f"slow_q_mm_h must be finite and >= 0 mm/h; got {slow_q_mm_h!r}.")
        return cls(soil, (0.0,) * params.n_quick, params.k_slow_h * float(slow_q_mm_h))

    def to_dict(self) -> dict[str, Any]:
        """The state as a plain dict (JSON-ready), for saving between forecast runs."""
        return {"soil_mm": self.soil_mm, "quick_mm": list(self.quick_mm), "slow_mm": self.slow_mm}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LumpedState:
        """Rebuild a state saved with :meth:`to_dict`."""
        try:
            return cls(d["soil_mm"], tuple(d["quick_mm"]), d["slow_mm"])
        except KeyError as exc:
            raise ModelError(f"lumped-model state is missing {exc}; expected soil_mm, quick_mm, slow_mm.") from None


@dataclass(frozen=True)
class LumpedRun:
    """Every flux of one run of the lumped model (arrays of the input's length, mm/h).

    Attributes
    ----------
    q_mm_h : ndarray, mm/h
        Discharge at the outlet, mean over each step (``quick_mm_h + slow_mm_h``).
    quick_mm_h, slow_mm_h : ndarray, mm/h
        Outflow of the quick cascade and of the slow reservoir.
    et_mm_h : ndarray, mm/h
        Actual evaporation (from rain in the step plus from the soil store).
    runoff_mm_h : ndarray, mm/h
        Rainfall excess of the production function (before routing).
    drain_mm_h : ndarray, mm/h
        Drainage from the soil store to the slow reservoir.
    soil_mm : ndarray, mm
        Soil store level at the end of each step.
    initial_state, final_state : LumpedState
        Storages before the first and after the last step.
    dt_h : float, h
        Step length.
    """

    q_mm_h: np.ndarray
    quick_mm_h: np.ndarray
    slow_mm_h: np.ndarray
    et_mm_h: np.ndarray
    runoff_mm_h: np.ndarray
    drain_mm_h: np.ndarray
    soil_mm: np.ndarray
    initial_state: LumpedState
    final_state: LumpedState
    dt_h: float


# --------------------------------------------------------------------------- kernels
def cascade_coefficients(n: int, k_h: float, dt_h: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact one-step update of a cascade of ``n`` equal linear reservoirs.

    With storages ``s`` (mm) and an inflow depth ``d`` (mm) spread evenly over the step,
    ``s_new = phi @ s + gam * d`` exactly (the matrix exponential of the cascade).

    Parameters
    ----------
    n : int
        Number of reservoirs (>= 1).
    k_h : float, h
        Storage constant of each reservoir.
    dt_h : float, h
        Step length.

    Returns
    -------
    phi : ndarray (n, n) float64, dimensionless
        ``phi[i, j] = exp(-x) x**(i-j) / (i-j)!`` for ``i >= j`` (0 above the diagonal),
        ``x = dt / k``: the share of water in reservoir ``j`` found in ``i`` a step later.
    gam : ndarray (n,) float64, dimensionless
        ``gam[i] = P(i + 1, x) / x`` (regularized lower incomplete gamma function): the
        share of the step's inflow held in reservoir ``i`` at the end of the step.
    """
    x = dt_h / k_h
    m = np.arange(n, dtype=np.float64)
    pmf = np.exp(m * np.log(x) - x - gammaln(m + 1.0)) if x > 0 else (m == 0).astype(np.float64)
    phi = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        phi[i, : i + 1] = pmf[i::-1]
    gam = gammainc(m + 1.0, x) / x
    return phi, gam


@numba.njit(cache=True, error_model="numpy")
def _cascade_step(store, phi, gam, inflow):
    """Advance a cascade one step in place; return the depth (mm) that left its last reservoir."""
    n = store.shape[0]
    old = 0.0
    for i in range(n):
        old += store[i]
    new = 0.0
    for i in range(n - 1, -1, -1):  # from the bottom, so store[j < i] are still the old values
        s = gam[i] * inflow
        for j in range(i + 1):
            s += phi[i, j] * store[j]
        store[i] = s
        new += s
    return inflow + old - new


@numba.njit(cache=True, error_model="numpy")
def _route_numba(inflow, phi, gam, store, out):
    """Route inflow depths (mm per step) through a cascade; outflow depths into ``out``."""
    for t in range(inflow.shape[0]):
        out[t] = _cascade_step(store, phi, gam, inflow[t])


@numba.njit(cache=True, error_model="numpy")
def _lumped_numba(rain, etpot, dt, s, sa, lp, drain_frac, alpha, phi_q, gam_q, phi_s, gam_s,
                  soil0, quick, slow, q_out, quick_out, slow_out, et_out, runoff_out, drain_out,
                  soil_out):
    """The lumped model over a series; rates in mm/h, storages in mm.

    ``quick`` (n,) and ``slow`` (1,) are the reservoir storages, updated in place;
    returns the final soil level. ``drain_frac = 1 - exp(-dt / tau_perc)``.
    """
    vmax = sa + s
    v = soil0
    for t in range(rain.shape[0]):
        p = rain[t] * dt
        e = etpot[t] * dt
        # potential evaporation is met first by the step's rain
        ei = min(e, p)
        pn = p - ei
        en = e - ei
        # production: fill the threshold, then the SCS-CN store form (exact over the step)
        v_start = v
        runoff = 0.0
        if pn > 0.0:
            pr = pn
            if v < sa:
                fill = sa - v
                if fill >= pn:
                    v = v + pn
                    pr = 0.0
                else:
                    v = sa
                    pr = pn - fill
            if pr > 0.0:
                w = max(v - sa, 0.0)
                d = max(s - w, 0.0)
                dw = d * d * pr / (s * s + d * pr)
                v = v + dw
            runoff = pn - (v - v_start)  # whatever did not enter the store
        # evaporation from the store (HBV LP reduction), never more than it holds
        es = 0.0
        if en > 0.0 and v > 0.0:
            es = min(en * min(v / (lp * vmax), 1.0), v)
            v = v - es
        # drainage of the water above the threshold
        drain = 0.0
        if v > sa and drain_frac > 0.0:
            v_before = v
            v = v - (v - sa) * drain_frac
            drain = v_before - v
        # routing
        qq = _cascade_step(quick, phi_q, gam_q, alpha * runoff)
        qs = _cascade_step(slow, phi_s, gam_s, runoff - alpha * runoff + drain)
        quick_out[t] = qq / dt
        slow_out[t] = qs / dt
        q_out[t] = (qq + qs) / dt
        et_out[t] = (ei + es) / dt
        runoff_out[t] = runoff / dt
        drain_out[t] = drain / dt
        soil_out[t] = v
    return v


# --------------------------------------------------------------------------- wrappers
def _series(name: str, a) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ModelError(f"{name} must be a 1-D series (time,) in mm/h; got shape {arr.shape}.")
    if arr.dtype.kind not in "fiu":
        raise ModelError(f"{name} must be numeric mm/h; got dtype {arr.dtype}.")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    bad = ~(np.isfinite(arr) & (arr >= 0.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ModelError(f"{name} must be finite and >= 0 mm/h; {int(bad.sum())} values are not "
                         f"(first at index {i}: {arr[i]!r}). Fill gaps and clip negatives before "
                         "running the model.")
    return arr


def run(params: LumpedParams, rain_mm_h, etpot_mm_h, dt_h: float = 1.0,
        state: LumpedState | None = None) -> LumpedRun:
    """Run the lumped model and return every flux and the final state.

    Parameters
    ----------
    params : LumpedParams
    rain_mm_h : array_like (time,), mm/h
        Catchment-mean rain rate during each step (finite, >= 0).
    etpot_mm_h : array_like (time,), mm/h
        Potential evaporation rate during each step (finite, >= 0).
    dt_h : float, h
        Step length.
    state : LumpedState, optional
        Storages at the start (e.g. the ``final_state`` of a previous run); default
        :meth:`LumpedState.initial` (soil at its threshold, empty reservoirs).

    Returns
    -------
    LumpedRun

    Raises
    ------
    ModelError
        On bad series, a non-positive step, or a state that does not fit ``params``.
    """
    if not isinstance(params, LumpedParams):
        raise ModelError(f"params must be a LumpedParams; got {type(params).__name__}.")
    rain = _series("rain_mm_h", rain_mm_h)
    etp = _series("etpot_mm_h", etpot_mm_h)
    if rain.shape != etp.shape:
        raise ModelError(f"rain_mm_h has {rain.size} steps but etpot_mm_h has {etp.size}; "
                         "both must cover the same steps.")
    dt = positive_scalar("dt_h", dt_h)
    st0 = LumpedState.initial(params) if state is None else state
    if not isinstance(st0, LumpedState):
        raise ModelError(f"state must be a LumpedState; got {type(st0).__name__}.")
    if len(st0.quick_mm) != params.n_quick:
        raise ModelError(f"state has {len(st0.quick_mm)} quick reservoirs but params.n_quick is "
                         f"{params.n_quick}; start from LumpedState.initial(params) instead.")
    vmax = params.sa_mm + params.s_mm
    if st0.soil_mm > vmax * (1.0 + 1e-12):
        raise ModelError(f"state soil_mm = {st0.soil_mm} exceeds the store's capacity Sa + S = {vmax} mm.")
    phi_q, gam_q = cascade_coefficients(params.n_quick, params.k_quick_h, dt)
    phi_s, gam_s = cascade_coefficients(1, params.k_slow_h, dt)
    drain_frac = -math.expm1(-dt / params.tau_perc_h)
    quick = np.array(st0.quick_mm, dtype=np.float64)
    slow = np.array([st0.slow_mm], dtype=np.float64)
    n = rain.size
    q, qq, qs, et, ro, dr, soil = (np.empty(n) for _ in range(7))
    v_end = _lumped_numba(rain, etp, dt, params.s_mm, params.sa_mm, params.lp, drain_frac,
                          params.quick_fraction, phi_q, gam_q, phi_s, gam_s,
                          min(st0.soil_mm, vmax), quick, slow, q, qq, qs, et, ro, dr, soil)
    final = LumpedState(v_end, tuple(np.maximum(quick, 0.0)), max(float(slow[0]), 0.0))
    return LumpedRun(q, qq, qs, et, ro, dr, soil, st0, final, dt)


def simulate(params: LumpedParams, rain_mm_h, etpot_mm_h, dt_h: float = 1.0,
             state: LumpedState | None = None) -> tuple[np.ndarray, LumpedState]:
    """Discharge of the lumped model for a rain and evaporation series.

    Parameters
    ----------
    params : LumpedParams
    rain_mm_h : array_like (time,), mm/h
        Catchment-mean rain rate during each step.
    etpot_mm_h : array_like (time,), mm/h
        Potential evaporation rate during each step.
    dt_h : float, h
        Step length.
    state : LumpedState, optional
        Storages at the start; pass the returned state of the previous run to continue
        it (a forecast from the analysis state).

    Returns
    -------
    q_mm_h : ndarray (time,) float64, mm/h
        Specific discharge at the outlet, mean over each step.
    final_state : LumpedState
        Storages after the last step.
    """
    r = run(params, rain_mm_h, etpot_mm_h, dt_h, state)
    return r.q_mm_h, r.final_state


def route_cascade(inflow_mm_h, n: int, k_h: float, dt_h: float = 1.0,
                  storage_mm=None) -> tuple[np.ndarray, np.ndarray]:
    """Route an inflow series through ``n`` equal linear reservoirs (a Nash cascade).

    The same exact step update as the model's quick and slow paths: inflow constant in
    each step, outflow the mean rate over each step.

    Parameters
    ----------
    inflow_mm_h : array_like (time,), mm/h
        Inflow rate during each step.
    n : int
        Number of reservoirs (1 = a single linear reservoir).
    k_h : float, h
        Storage constant of each reservoir.
    dt_h : float, h
        Step length.
    storage_mm : array_like (n,), mm, optional
        Initial storages (default empty).

    Returns
    -------
    outflow_mm_h : ndarray (time,) float64, mm/h
    storage_mm : ndarray (n,) float64, mm
        Storages after the last step.
    """
    inflow = _series("inflow_mm_h", inflow_mm_h)
    try:
        ok = float(n).is_integer() and 1 <= int(n) <= MAX_N_QUICK
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ModelError(f"n must be a whole number between 1 and {MAX_N_QUICK}; got {n!r}.")
    n = int(n)
    k = positive_scalar("k_h", k_h)
    dt = positive_scalar("dt_h", dt_h)
    store = np.zeros(n) if storage_mm is None else np.array(storage_mm, dtype=np.float64).ravel()
    if store.shape != (n,) or not np.all(np.isfinite(store) & (store >= 0.0)):
        raise ModelError(f"storage_mm must be {n} finite values >= 0 mm; got {storage_mm!r}.")
    phi, gam = cascade_coefficients(n, k, dt)
    out = np.empty(inflow.size)
    _route_numba(inflow * dt, phi, gam, store, out)
    return out / dt, store
