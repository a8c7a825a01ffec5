"""Rainfall excess by the SCS / NRCS curve-number method (TR-55).

Formulas (USDA-SCS 1986, TR-55 ch. 2; SI form)::

    S  = 25400 / CN - 254          potential maximum retention, mm      (lambda = 0.2)
    Ia = lambda * S                initial abstraction, mm
    Q  = (P - Ia)**2 / (P - Ia + S)   for P > Ia, else 0             (P, Q cumulative, mm)

With ``lambda = 0.05`` the retention of a lambda = 0.2 curve number is converted with
Hawkins et al. (2002): ``S_0.05 = 1.33 * S_0.2**1.15`` with S in inches. Other lambda
values are refused: CN tables are made for lambda = 0.2 and only this conversion is
published.

Antecedent moisture (Chow, Maidment & Mays 1988; Hawkins): ``CN_I = 4.2 CN / (10 -
0.058 CN)``, ``CN_III = 23 CN / (10 + 0.13 CN)`` from the average condition CN_II.

Green-Ampt infiltration (Green & Ampt 1911; ponding time of Mein & Larson 1973; the
time-stepping algorithm of Chow, Maidment & Mays 1988, sec. 5.4) in
:func:`green_ampt_excess_rate`. With ``S = psi * dtheta`` (mm) and cumulative
infiltration ``F`` (mm) the infiltration capacity is ``f = Ks (1 + S / F)``; under
ponding ``F`` follows the implicit equation (from ``F0`` at ``t0``)::

    F - F0 - S ln((S + F) / (S + F0)) = Ks (t - t0)

For a constant rain rate ``i > Ks`` on a dry start, ponding begins when
``F_p = Ks S / (i - Ks)``, at ``t_p = Ks S / (i (i - Ks))``; rain at or below ``Ks``
never ponds.

Methods are chosen by name with :func:`get_runoff_method` (``"scs_cn"``,
``"green_ampt"``).
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
from numba import prange

from models._xarray import grid_function
from models.errors import ModelError, positive_scalar

__all__ = [
    "RUNOFF_METHODS",
    "amc_convert",
    "get_runoff_method",
    "green_ampt_excess_rate",
    "potential_retention",
    "scs_excess_rate",
    "scs_runoff_depth",
]

_MM_PER_INCH = 25.4
_LAMBDAS = (0.2, 0.05)


def _check_lambda(lam) -> float:
    lv = float(lam)
    for ok in _LAMBDAS:
        if abs(lv - ok) < 1e-12:
            return ok
    raise ModelError(
        f"lam must be 0.2 (TR-55) or 0.05 (Hawkins et al. 2002 conversion); got {lam!r}. "
        "Curve-number tables are made for 0.2: do not mix other initial-abstraction ratios with them."
    )


def _check_cn(cn) -> np.ndarray:
    c = np.asarray(cn, dtype=np.float64)
    finite = np.isfinite(c)
    if np.any(finite & ((c <= 0.0) | (c > 100.0))):
        bad = c[finite & ((c <= 0.0) | (c > 100.0))]
        raise ModelError(
            f"curve numbers must lie in (0, 100]; got values such as {bad.ravel()[:3].tolist()}. "
            "Check the land-cover/soil lookup (NaN marks nodata cells)."
        )
    return c


def potential_retention(cn, lam: float = 0.2) -> np.ndarray:
    """Potential maximum retention S for a curve number.

    Parameters
    ----------
    cn : float or ndarray, dimensionless (0, 100]
        Curve number for lambda = 0.2 tables (TR-55). NaN passes through (nodata).
    lam : float
        Initial-abstraction ratio, 0.2 or 0.05 (Hawkins conversion of S).

    Returns
    -------
    s : float64 ndarray (shape of ``cn``), mm
    """
    lv = _check_lambda(lam)
    c = _check_cn(cn)
    s_mm = 25400.0 / c - 254.0
    if lv == 0.05:
        s_in = s_mm / _MM_PER_INCH
        s_mm = 1.33 * s_in**1.15 * _MM_PER_INCH
    return s_mm


def amc_convert(cn, to: str = "III") -> np.ndarray:
    """Convert an average-condition (AMC II) curve number to dry (I) or wet (III).

    Parameters
    ----------
    cn : float or ndarray, dimensionless (0, 100]
        AMC II curve number.
    to : {"I", "III"}
        Target antecedent moisture condition.

    Returns
    -------
    cn_amc : float64 ndarray (shape of ``cn``), dimensionless
    """
    c = _check_cn(cn)
    key = str(to).upper()
    if key == "III":
        return 23.0 * c / (10.0 + 0.13 * c)
    if key == "I":
        return 4.2 * c / (10.0 - 0.058 * c)
    if key == "II":
        return c.copy()
    raise ModelError(f"to must be 'I', 'II' or 'III' (antecedent moisture condition); got {to!r}.")


def scs_runoff_depth(p, cn, lam: float = 0.2) -> np.ndarray:
    """Cumulative direct runoff Q for cumulative rainfall P (TR-55 eq. 2-3).

    Parameters
    ----------
    p : float or ndarray, mm
        Cumulative rainfall depth (>= 0).
    cn : float or ndarray, dimensionless (0, 100]
        Curve number, broadcast against ``p``.
    lam : float
        Initial-abstraction ratio, 0.2 or 0.05.

    Returns
    -------
    q : float64 ndarray (broadcast shape), mm
        0 where P <= Ia; always 0 <= Q <= P and non-decreasing in P.
    """
    pv = np.asarray(p, dtype=np.float64)
    if np.any(pv < 0.0):
        raise ModelError("rainfall depth p must be >= 0 mm; clip negative values at ingest.")
    s = potential_retention(cn, lam)
    ia = _check_lambda(lam) * s
    excess = pv - ia
    with np.errstate(invalid="ignore", divide="ignore"):
        q = np.where(excess > 0.0, excess * excess / (excess + s), 0.0)
    return np.where(np.isnan(s) | np.isnan(pv), np.nan, q)


@numba.njit(cache=True, error_model="numpy")
def _scs_q(p, s, ia):
    e = p - ia
    if e > 0.0:
        return e * e / (e + s)
    return 0.0


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _scs_excess_numba(rain, dt_h, s, ia, p0, out):
    """Incremental SCS excess (mm/h) for rain (member, time, y, x) in mm/h.

    ``s``, ``ia``, ``p0`` are (y, x) float64 (NaN s = nodata cell). Writes ``out`` in
    place; returns the number of rain values that were negative or not finite on
    valid cells. Parallel over (member, row); per-row state only.
    """
    nm, nt, ny, nx = rain.shape
    bad = np.zeros(nm * ny, dtype=np.int64)
    for k in prange(nm * ny):
        m = k // ny
        y = k - m * ny
        pcum = np.empty(nx, dtype=np.float64)
        qcum = np.empty(nx, dtype=np.float64)
        for x in range(nx):
            pcum[x] = p0[y, x]
            qcum[x] = _scs_q(p0[y, x], s[y, x], ia[y, x])
        for t in range(nt):
            for x in range(nx):
                sx = s[y, x]
                if np.isnan(sx):
                    out[m, t, y, x] = np.nan
                    continue
                r = np.float64(rain[m, t, y, x])
                if not (r >= 0.0 and r < np.inf):
                    bad[k] += 1
                    out[m, t, y, x] = np.nan
                    continue
                p = pcum[x] + r * dt_h
                q = _scs_q(p, sx, ia[y, x])
                e = (q - qcum[x]) / dt_h
                if e > r:
                    e = r
                elif e < 0.0:
                    e = 0.0
                out[m, t, y, x] = e
                pcum[x] = p
                qcum[x] = q
    return bad.sum()


@grid_function(units="mm/h")
def scs_excess_rate(rain, dt_hours: float, cn, lam: float = 0.2, p0=None) -> np.ndarray:
    """Rainfall excess rate per cell and step by the SCS-CN method.

    Rain is accumulated per cell from ``p0``; the cumulative excess is
    ``scs_runoff_depth(P, cn)`` and each step's excess is its increment divided by the
    step length. So the excess of a storm split over several forecast cycles adds up to
    the excess of the whole storm when each cycle passes the rain already fallen as
    ``p0``.

    Parameters
    ----------
    rain : ndarray (member, time, y, x) or (time, y, x), mm/h
        Rain rate during each step (float32 or float64, >= 0). An
        ``xarray.DataArray`` comes back as a DataArray with its coordinates.
    dt_hours : float, h
        Length of one step.
    cn : float or ndarray (y, x), dimensionless (0, 100]
        Curve number (already adjusted for antecedent moisture); NaN marks nodata cells.
    lam : float
        Initial-abstraction ratio, 0.2 or 0.05.
    p0 : ndarray (y, x), mm, optional
        Rain that fell on each cell before the first step (continues a storm).

    Returns
    -------
    excess : ndarray (shape of ``rain``) float32, mm/h
        0 <= excess <= rain in every step; NaN where ``cn`` is NaN.

    Raises
    ------
    ModelError
        On bad shapes, curve numbers outside (0, 100], or rain that is negative or not
        finite on a valid cell.
    """
    r = np.asarray(rain)
    if r.ndim not in (3, 4):
        raise ModelError(
            f"rain must be (time, y, x) or (member, time, y, x) in mm/h; got shape {r.shape}."
        )
    if r.dtype not in (np.float32, np.float64):
        raise ModelError(f"rain must be float32 or float64 mm/h; got {r.dtype} (use rain.astype(np.float32)).")
    r4 = r[None] if r.ndim == 3 else r
    r4 = np.ascontiguousarray(r4)
    ny, nx = r4.shape[2:]
    dt = positive_scalar("dt_hours", dt_hours)
    c = _check_cn(cn)
    if c.ndim == 0:
        c = np.full((ny, nx), float(c))
    elif c.shape != (ny, nx):
        raise ModelError(f"cn must be a scalar or (y, x) = {(ny, nx)}; got shape {c.shape}.")
    lv = _check_lambda(lam)
    s = np.ascontiguousarray(potential_retention(c, lv))
    ia = lv * s
    if p0 is None:
        p0a = np.zeros((ny, nx))
    else:
        p0a = np.asarray(p0, dtype=np.float64)
        if p0a.ndim == 0:
            p0a = np.full((ny, nx), float(p0a))
        if p0a.shape != (ny, nx):
            raise ModelError(f"p0 must be (y, x) = {(ny, nx)} mm; got shape {p0a.shape}.")
        okv = ~np.isnan(s)
        if np.any(okv & ~(np.isfinite(p0a) & (p0a >= 0.0))):
            raise ModelError("p0 must be finite and >= 0 mm on every cell with a curve number.")
        p0a = np.ascontiguousarray(np.where(okv, p0a, 0.0))
    out = np.empty(r4.shape, dtype=np.float32)
    nbad = _scs_excess_numba(r4, dt, s, ia, p0a, out)
    if nbad:
        raise ModelError(
            f"rain has {nbad} negative, NaN or infinite values on cells with a curve number; "
            "fill gaps and clip negatives at ingest (or set cn to NaN on nodata cells)."
        )
    return out[0] if r.ndim == 3 else out


@numba.njit(cache=True, error_model="numpy")
def _ga_ponded_numba(f0, s, ks, dt):
    """Solve ``F - f0 - s ln((s + F) / (s + f0)) = ks dt`` for F > f0 (Newton).

    The left side is increasing and convex in F (derivative ``F / (s + F)``), so from
    the lower bound ``f0 + ks dt`` the first Newton step lands right of the root and
    the iterates then fall monotonically to it.
    """
    rhs = ks * dt
    if rhs <= 0.0:
        return f0
    if s <= 0.0:
        return f0 + rhs
    a = s + f0
    f = f0 + rhs
    for _ in range(60):
        g = f - f0 - s * np.log((s + f) / a) - rhs
        fn = f - g * (s + f) / f
        if abs(fn - f) <= 1e-12 * fn:
            return fn
        f = fn
    return f


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _green_ampt_numba(rain, dt_h, ks, s, f0, out):
    """Green-Ampt excess (mm/h) for rain (member, time, y, x) in mm/h.

    ``ks`` (mm/h), ``s = psi * dtheta`` (mm), ``f0`` (mm) are (y, x) float64 (NaN ks =
    nodata). Rain is constant within a step; ponding may start inside a step. Writes
    ``out`` in place and returns the count of bad rain values on valid cells.
    """
    nm, nt, ny, nx = rain.shape
    bad = np.zeros(nm * ny, dtype=np.int64)
    for k in prange(nm * ny):
        m = k // ny
        y = k - m * ny
        fcum = np.empty(nx, dtype=np.float64)
        for x in range(nx):
            fcum[x] = f0[y, x]
        for t in range(nt):
            for x in range(nx):
                kx = ks[y, x]
                if np.isnan(kx):
                    out[m, t, y, x] = np.nan
                    continue
                r = np.float64(rain[m, t, y, x])
                if not (r >= 0.0 and r < np.inf):
                    bad[k] += 1
                    out[m, t, y, x] = np.nan
                    continue
                if r == 0.0:
                    out[m, t, y, x] = 0.0
                    continue
                sx = s[y, x]
                f = fcum[x]
                p = r * dt_h
                if r <= kx:
                    df = p  # never ponds
                else:
                    fp = kx * sx / (r - kx)  # F at which capacity falls to r
                    if f >= fp:  # ponded throughout the step
                        df = _ga_ponded_numba(f, sx, kx, dt_h) - f
                        df = min(df, p)
                    elif f + p <= fp:  # all rain infiltrates
                        df = p
                    else:  # ponding starts inside the step (Mein & Larson)
                        tp = (fp - f) / r
                        df = _ga_ponded_numba(fp, sx, kx, dt_h - tp) - f
                        df = min(df, p)
                fcum[x] = f + df
                out[m, t, y, x] = (p - df) / dt_h
    return bad.sum()


@grid_function(units="mm/h")
def green_ampt_excess_rate(rain, dt_hours: float, ks=None, psi=None, delta_theta=None, *, f0=None,
                           lam=None) -> np.ndarray:
    """Rainfall excess rate per cell and step by Green-Ampt infiltration.

    Differs from :func:`scs_excess_rate` in its parameters (soil hydraulics instead of
    a curve number) and its state: a storm is continued with ``f0``, the infiltration
    so far (``f0 + sum((rain - excess) * dt_hours)`` of the previous cycle), not with
    the rain so far. Call it with keywords: ``method(rain, dt, ks=..., psi=...,
    delta_theta=...)``. Infiltration capacity is not recovered during dry spells (no
    redistribution): suited to single storms, conservative (more runoff) after a pause.

    Parameters
    ----------
    rain : ndarray (member, time, y, x) or (time, y, x), mm/h
        Rain rate during each step (float32 or float64, >= 0), constant in the step.
        An ``xarray.DataArray`` comes back as a DataArray with its coordinates.
    dt_hours : float, h
        Length of one step.
    ks : float or ndarray (y, x), mm/h
        Saturated (effective) hydraulic conductivity, > 0; NaN marks nodata cells.
    psi : float or ndarray (y, x), mm
        Wetting-front suction head, > 0 (e.g. Rawls et al. 1983 table by texture).
    delta_theta : float or ndarray (y, x), dimensionless (0, 1)
        Moisture deficit, effective porosity minus initial water content.
    f0 : ndarray (y, x) or float, mm, optional
        Cumulative infiltration before the first step (0: dry start).
    lam : None
        Accepted and ignored so that the registry's common call shape works.

    Returns
    -------
    excess : ndarray (shape of ``rain``) float32, mm/h
        ``0 <= excess <= rain``; ``rain - excess`` infiltrates. NaN where ``ks`` is NaN.

    Raises
    ------
    ModelError
        On missing or non-positive parameters, bad shapes, or bad rain values.
    """
    r = np.asarray(rain)
    if r.ndim not in (3, 4):
        raise ModelError(
            f"rain must be (time, y, x) or (member, time, y, x) in mm/h; got shape {r.shape}."
        )
    if r.dtype not in (np.float32, np.float64):
        raise ModelError(f"rain must be float32 or float64 mm/h; got {r.dtype} (use rain.astype(np.float32)).")
    r4 = np.ascontiguousarray(r[None] if r.ndim == 3 else r)
    ny, nx = r4.shape[2:]
    dt = positive_scalar("dt_hours", dt_hours)
    grids = {}
    for name, value, unit, upper in (("ks", ks, "mm/h", np.inf), ("psi", psi, "mm", np.inf),
                                     ("delta_theta", delta_theta, "(fraction)", 1.0)):
        if value is None:
            raise ModelError(
                f"green_ampt needs {name} ({unit}); call it as method(rain, dt_hours, ks=..., psi=..., "
                "delta_theta=...), e.g. a loam: ks=3.4, psi=88.9, delta_theta=0.4 (Rawls et al. 1983)."
            )
        a = np.asarray(value, dtype=np.float64)
        if a.ndim == 0:
            a = np.full((ny, nx), float(a))
        if a.shape != (ny, nx):
            raise ModelError(f"{name} must be a scalar or (y, x) = {(ny, nx)} {unit}; got shape {a.shape}.")
        grids[name] = a
    valid = ~np.isnan(grids["ks"])
    for name, a in grids.items():
        lim = 1.0 if name == "delta_theta" else np.inf
        badp = valid & ~((a > 0.0) & (a <= lim) & np.isfinite(a))
        if badp.any():
            rr, cc = np.argwhere(badp)[0]
            rng = "in (0, 1]" if name == "delta_theta" else "finite and > 0"
            raise ModelError(
                f"{name} must be {rng} on every cell with a ks; {int(badp.sum())} cells are not "
                f"(first at row {rr}, col {cc}: {a[rr, cc]!r}). Set ks to NaN on nodata cells."
            )
    s = np.ascontiguousarray(np.where(valid, grids["psi"] * grids["delta_theta"], 0.0))
    ksa = np.ascontiguousarray(grids["ks"])
    if f0 is None:
        f0a = np.zeros((ny, nx))
    else:
        f0a = np.asarray(f0, dtype=np.float64)
        if f0a.ndim == 0:
            f0a = np.full((ny, nx), float(f0a))
        if f0a.shape != (ny, nx):
            raise ModelError(f"f0 must be (y, x) = {(ny, nx)} mm; got shape {f0a.shape}.")
        if np.any(valid & ~(np.isfinite(f0a) & (f0a >= 0.0))):
            raise ModelError("f0 must be finite and >= 0 mm on every cell with a ks.")
        f0a = np.ascontiguousarray(np.where(valid, f0a, 0.0))
    out = np.empty(r4.shape, dtype=np.float32)
    nbad = _green_ampt_numba(r4, dt, ksa, s, f0a, out)
    if nbad:
        raise ModelError(
            f"rain has {nbad} negative, NaN or infinite values on cells with a ks; "
            "fill gaps and clip negatives at ingest (or set ks to NaN on nodata cells)."
        )
    return out[0] if r.ndim == 3 else out


RUNOFF_METHODS: dict[str, Callable[..., np.ndarray]] = {
    "scs_cn": scs_excess_rate,
    "green_ampt": green_ampt_excess_rate,
}


def get_runoff_method(name: str) -> Callable[..., np.ndarray]:
    """Return a runoff method by name.

    Parameters
    ----------
    name : str
        One of ``RUNOFF_METHODS``: ``"scs_cn"`` or ``"green_ampt"`` (case-insensitive).

    Returns
    -------
    method : callable
        ``method(rain, dt_hours, ...) -> excess`` (mm/h, shape of ``rain``).
        ``"scs_cn"``: ``(rain, dt_hours, cn, lam=0.2, p0=None)``
        (:func:`scs_excess_rate`); ``"green_ampt"``: ``(rain, dt_hours, ks=, psi=,
        delta_theta=, f0=None)`` (:func:`green_ampt_excess_rate`, parameters by
        keyword; its state is the infiltration so far, not the rain so far).

    Raises
    ------
    ModelError
        For an unknown name; the message lists the valid ones.
    """
    try:
        return RUNOFF_METHODS[str(name).lower()]
    except KeyError:
        valid = ", ".join(sorted(RUNOFF_METHODS))
        raise ModelError(f"unknown runoff method {name!r}; valid names: {valid}.") from None
