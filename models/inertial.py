"""2-D local-inertial surface-water model (LISFLOOD-FP "ACC", Landlab ``OverlandFlow``).

Bates, Horritt & Fewtrell (2010, J. Hydrol. 387, 33-45) with the theta-weighting of
de Almeida, Bates, Freer & Souvignet (2012, WRR 48, W05528), on a staggered grid:

- depth ``h`` and bed ``z`` at cell centres ``(y, x)``; row 0 is the north edge;
- unit-width discharge ``qx`` on vertical faces ``(y, x + 1)`` (face ``f`` lies between
  cells ``f - 1`` and ``f``; positive eastwards) and ``qy`` on horizontal faces
  ``(y + 1, x)`` (face ``r`` lies between rows ``r - 1`` and ``r``; positive southwards,
  i.e. towards increasing row), in m2/s.

Per face, with ``eta = h + z`` and ``h_flow = max(eta_i, eta_j) - max(z_i, z_j)``
(``q = 0`` where ``h_flow <= h_threshold``)::

    q_new = [theta q + (1 - theta)/2 (q_prev + q_next) - g h_flow dt (eta_j - eta_i)/dx]
            / [1 + g dt n**2 |q| / h_flow**(7/3)]

Continuity per cell: ``h += dt/dx (qx_in - qx_out) + dt/dy (qy_in - qy_out) + rain dt -
infiltration dt``; infiltration is limited to the water the cell holds. Before the depth
update the outgoing fluxes of any cell that would lose more than it holds (its depth plus
this step's rain) are scaled down to exactly that amount (Landlab's ``steep_slopes``
idea, done exactly), so ``h >= 0`` and the mass balance holds to round-off. The time step
is ``dt = alpha min(dx, dy) / (sqrt(g h_max) + u_max)``, capped by ``max_dt_s``, by
output times, by rain-step boundaries and by the end of the run. ``u_max`` (the largest
cell-centre speed of the last step, cells deeper than 1 cm) is an addition to Bates et
al. (2010), whose step ``alpha dx / sqrt(g h_max)`` it equals for still water: without
it fast supercritical fronts (a dam break on a dry bed) get Courant numbers above 1 and
oscillate at theta near 1 (Landlab caps the Froude number instead).

Boundaries per side (``"north"`` = row 0, ``"south"`` = last row, ``"west"`` = column 0,
``"east"`` = last column):

- closed (default): ``q = 0`` on the edge faces;
- open (``open_boundaries``): free outflow. The edge face carries the inertial update
  with ``h_flow`` = the edge cell's depth and an outward slope that continues the
  interior (the larger of the water-surface and the bed slope between the edge cell and
  its inward neighbour, at least 0); water only leaves;
- fixed depth (``boundary_depth``): a ghost cell outside the edge with the edge cell's
  bed and the given depth (a constant or a callable of the time in s, evaluated at the
  start of every step); the face uses the ordinary update, so water may enter or leave.

Nodata cells are walls. Water that leaves or enters through the edges is counted in
``volume_out`` / ``volume_in``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import prange
from numba.core import types
from numba.extending import intrinsic

from models.errors import ModelError, as_2d, positive_scalar

__all__ = ["G", "InertialResult", "inertial_face_flux", "simulate_inertial"]

G = 9.81  # m/s2 (the value of the reference notes; Landlab uses scipy's 9.80665)
_MMH_TO_MS = 1.0 / 3.6e6  # mm/h -> m/s
# speeds (outputs and the u_max of the time step) only where h > 1 cm: q / h of thinner
# films, e.g. a cell that passes on all it receives, is not a meaningful velocity
_SPEED_MIN_DEPTH = 0.01  # m
_DRY_DT_S = 60.0  # longest step while no water is on the grid or at its edges (max_dt_s=None)
_SIDES = ("north", "south", "west", "east")
_CLOSED, _OPEN, _FIXED = 0, 1, 2
# columns of the per-row accumulator
_R_RAIN, _R_INF, _R_BIN, _R_BOUT, _R_HMAX, _R_UMAX = 0, 1, 2, 3, 4, 5


class InertialResult(NamedTuple):
    """Outputs of :func:`simulate_inertial` (nodata cells hold 0).

    Attributes
    ----------
    depth : ndarray (y, x) float64, m
        Water depth at the end of the run (``h0`` of the next run).
    max_depth : ndarray (y, x) float32, m
        Largest depth over the run (end of every step, and the initial depth).
    max_speed : ndarray (y, x) float32, m/s
        Largest cell-centre speed over the run (end of every step), ``|q_c| / h`` with
        ``q_c`` the mean of the two face discharges in each direction; only cells deeper
        than 1 cm count (0 elsewhere).
    velocity_x, velocity_y : ndarray (y, x) float32, m/s
        Cell-centre velocity at the end (x eastwards, y towards increasing row); 0 where
        the depth is 1 cm or less.
    snapshots : ndarray (n_out, y, x) float32, m
        Depth at ``times_s`` (empty when ``output_every_s`` is None).
    times_s : ndarray (n_out,) float64, s
        Output times.
    volume_in : float, m3
        Rain on valid cells plus water that entered through fixed-depth edges.
    volume_out : float, m3
        Water that left through open and fixed-depth edges.
    volume_infiltrated : float, m3
        Water removed by infiltration.
    volume_initial : float, m3
        Water held at the start (``sum(h0) dx dy``).
    volume_final : float, m3
        Water held at the end; ``volume_initial + volume_in - volume_out -
        volume_infiltrated`` to round-off.
    steps : int
        Number of time steps taken.
    """

    depth: np.ndarray
    max_depth: np.ndarray
    max_speed: np.ndarray
    velocity_x: np.ndarray
    velocity_y: np.ndarray
    snapshots: np.ndarray
    times_s: np.ndarray
    volume_in: float
    volume_out: float
    volume_infiltrated: float
    volume_initial: float
    volume_final: float
    steps: int


@intrinsic
def _f64_bits(typingctx, x):
    """Reinterpret a float64 as uint64 (no conversion)."""
    sig = types.uint64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@intrinsic
def _bits_f64(typingctx, i):
    """Reinterpret a uint64 as float64 (no conversion)."""
    sig = types.float64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@numba.njit(cache=True, error_model="numpy", inline="always")
def _cbrt_numba(x):
    """Cube root of x > 0 within a few ulp (max 8.9e-16 relative), ~10x faster than libm.

    fdlibm's first guess (a third of the exponent, ~5 bits, from the high word) and three
    Halley steps (cubic convergence: 5 -> 15 -> 45 -> 53 bits), which LLVM can inline
    and vectorise; libm's ``cbrt`` was most of the cost of a step. x outside
    [1e-150, 1e150] (where the Halley products would underflow or overflow) goes to
    ``np.cbrt``.
    """
    if not (1e-150 < x < 1e150):
        return np.cbrt(x)
    hi = _f64_bits(x) >> np.uint64(32)
    y = _bits_f64((hi // np.uint64(3) + np.uint64(715094163)) << np.uint64(32))
    for _ in range(3):
        y3 = y * y * y
        y = y * (y3 + 2.0 * x) / (2.0 * y3 + x)
    return y


if numba.config.DISABLE_JIT:  # bit casts are compiler intrinsics: libm's cbrt in pure Python
    _cbrt_numba = np.cbrt


@numba.njit(cache=True, error_model="numpy", inline="always")
def _face_flux_numba(q, q_prev, q_next, h_i, h_j, z_i, z_j, d, dt, n2, theta, g, h_thr):
    """New unit discharge (m2/s, positive i -> j) on the face between cells i and j."""
    eta_i = h_i + z_i
    eta_j = h_j + z_j
    hf = max(eta_i, eta_j) - max(z_i, z_j)
    if not (hf > h_thr):
        return 0.0
    qa = theta * q + 0.5 * (1.0 - theta) * (q_prev + q_next)
    num = qa - g * hf * dt * (eta_j - eta_i) / d
    if q == 0.0:
        return num
    # num / (1 + g dt n2 |q| / hf**(7/3)) with one division
    h73 = hf * hf * _cbrt_numba(hf)
    return num * h73 / (h73 + g * dt * n2 * abs(q))


@numba.njit(cache=True, error_model="numpy", inline="always")
def _free_outflow_numba(q_out, h_e, z_e, h_in, z_in, has_in, d, dt, n2, g, h_thr):
    """Outward unit discharge (>= 0, m2/s) on an open edge face of edge cell e."""
    if not (h_e > h_thr):
        return 0.0
    s = 0.0
    if has_in:
        s = max((h_in + z_in - h_e - z_e) / d, (z_in - z_e) / d, 0.0)
    qo = max(q_out, 0.0)
    num = qo + g * h_e * dt * s
    den = 1.0 + g * dt * n2 * qo / (h_e * h_e * _cbrt_numba(h_e))
    return num / den


@numba.njit(cache=True, error_model="numpy", inline="always")
def _edge_flux_numba(mode, hb, q, q_in_side, h_e, z_e, h_in, z_in, v_in, d, dt, n2, theta, g,
                     h_thr, outward_sign):
    """Flux on an edge face; ``outward_sign`` +1 if positive q leaves (east/south)."""
    if mode == _OPEN:
        return outward_sign * _free_outflow_numba(outward_sign * q, h_e, z_e, h_in, z_in, v_in, d,
                                                  dt, n2, g, h_thr)
    if mode == _FIXED:
        if outward_sign > 0.0:  # ghost is cell j
            return _face_flux_numba(q, q_in_side, q, h_e, hb, z_e, z_e, d, dt, n2, theta, g, h_thr)
        return _face_flux_numba(q, q, q_in_side, hb, h_e, z_e, z_e, d, dt, n2, theta, g, h_thr)
    return 0.0


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _step_numba(z, valid, n2, h, qx, qy, qxt, qyt, fac, rain, rain_scale, infil, modes, hbound,
                dx, dy, dt, theta, g, h_thr, h_speed, max_depth, max_speed, rows):
    """Advance the state by one step ``dt`` in place; per-row sums go to ``rows``.

    ``rain`` (y, x) is multiplied by ``rain_scale`` to get m/s; ``infil`` (y, x) is in
    m/s; ``modes``/``hbound`` (4,) are the side modes and ghost depths in the order
    north, south, west, east. Returns (rain in, infiltrated, boundary in, boundary out,
    h_max, u_max**2) over the grid (volumes in m3, largest depth m, largest squared
    speed m2/s2 over cells deeper than ``h_speed``). ``max_speed`` holds squared speeds.
    """
    ny, nx = h.shape
    # 1. momentum: new fluxes into qxt/qyt from the old qx/qy (row y owns qx[y] and qy[y];
    #    the last iteration does the south edge qy[ny])
    for y in prange(ny + 1):
        if y < ny:
            for f in range(nx + 1):
                qn = 0.0
                if f == 0:
                    if modes[2] != _CLOSED and valid[y, 0]:
                        vin = nx > 1 and valid[y, 1]
                        qn = _edge_flux_numba(modes[2], hbound[2], qx[y, 0], qx[y, 1], h[y, 0],
                                              z[y, 0], h[y, min(1, nx - 1)], z[y, min(1, nx - 1)],
                                              vin, dx, dt, n2[y, 0], theta, g, h_thr, -1.0)
                elif f == nx:
                    if modes[3] != _CLOSED and valid[y, nx - 1]:
                        vin = nx > 1 and valid[y, max(nx - 2, 0)]
                        qn = _edge_flux_numba(modes[3], hbound[3], qx[y, nx], qx[y, nx - 1],
                                              h[y, nx - 1], z[y, nx - 1], h[y, max(nx - 2, 0)],
                                              z[y, max(nx - 2, 0)], vin, dx, dt, n2[y, nx - 1],
                                              theta, g, h_thr, 1.0)
                elif valid[y, f - 1] and valid[y, f]:
                    qn = _face_flux_numba(qx[y, f], qx[y, f - 1], qx[y, f + 1], h[y, f - 1],
                                          h[y, f], z[y, f - 1], z[y, f], dx, dt,
                                          0.5 * (n2[y, f - 1] + n2[y, f]), theta, g, h_thr)
                qxt[y, f] = qn
        if y == 0:
            for x in range(nx):
                qn = 0.0
                if modes[0] != _CLOSED and valid[0, x]:
                    vin = ny > 1 and valid[min(1, ny - 1), x]
                    qn = _edge_flux_numba(modes[0], hbound[0], qy[0, x], qy[1, x], h[0, x],
                                          z[0, x], h[min(1, ny - 1), x], z[min(1, ny - 1), x], vin,
                                          dy, dt, n2[0, x], theta, g, h_thr, -1.0)
                qyt[0, x] = qn
        elif y == ny:
            for x in range(nx):
                qn = 0.0
                if modes[1] != _CLOSED and valid[ny - 1, x]:
                    yi = max(ny - 2, 0)
                    vin = ny > 1 and valid[yi, x]
                    qn = _edge_flux_numba(modes[1], hbound[1], qy[ny, x], qy[ny - 1, x],
                                          h[ny - 1, x], z[ny - 1, x], h[yi, x], z[yi, x], vin, dy,
                                          dt, n2[ny - 1, x], theta, g, h_thr, 1.0)
                qyt[ny, x] = qn
        else:
            for x in range(nx):
                qn = 0.0
                if valid[y - 1, x] and valid[y, x]:
                    qn = _face_flux_numba(qy[y, x], qy[y - 1, x], qy[y + 1, x], h[y - 1, x],
                                          h[y, x], z[y - 1, x], z[y, x], dy, dt,
                                          0.5 * (n2[y - 1, x] + n2[y, x]), theta, g, h_thr)
                qyt[y, x] = qn
    # 2. outflow limiter: factor <= 1 so no cell sends out more than it holds
    rdx = dt / dx
    rdy = dt / dy
    for y in prange(ny):
        for x in range(nx):
            out = (rdx * (max(qxt[y, x + 1], 0.0) - min(qxt[y, x], 0.0))
                   + rdy * (max(qyt[y + 1, x], 0.0) - min(qyt[y, x], 0.0)))
            avail = h[y, x] + np.float64(rain[y, x]) * rain_scale * dt
            fac[y, x] = avail / out if out > avail else 1.0
    # 3. limited fluxes back into qx/qy, continuity, maxima and per-row volumes
    area = dx * dy
    for y in prange(ny):
        s_rain = 0.0
        s_inf = 0.0
        s_bin = 0.0
        s_bout = 0.0
        hmax = 0.0
        umax = 0.0
        for x in range(nx):
            qw = qxt[y, x]
            if qw < 0.0:
                qw *= fac[y, x]
            elif x > 0:
                qw *= fac[y, x - 1]
            qe = qxt[y, x + 1]
            if qe > 0.0:
                qe *= fac[y, x]
            elif x < nx - 1:
                qe *= fac[y, x + 1]
            qn = qyt[y, x]
            if qn < 0.0:
                qn *= fac[y, x]
            elif y > 0:
                qn *= fac[y - 1, x]
            qs = qyt[y + 1, x]
            if qs > 0.0:
                qs *= fac[y, x]
            elif y < ny - 1:
                qs *= fac[y + 1, x]
            qx[y, x] = qw
            qy[y, x] = qn
            if x == nx - 1:
                qx[y, nx] = qe
            if y == ny - 1:
                qy[ny, x] = qs
            if not valid[y, x]:
                continue
            r = np.float64(rain[y, x]) * rain_scale * dt
            hn = h[y, x] + (rdx * (qw - qe) + rdy * (qn - qs)) + r
            inf = infil[y, x] * dt
            if inf > hn:
                inf = max(hn, 0.0)
            hn -= inf
            hn = max(hn, 0.0)  # round-off of the limiter only (|hn| ~ 1e-17 m)
            h[y, x] = hn
            s_rain += r
            s_inf += inf
            hmax = max(hmax, hn)
            max_depth[y, x] = max(max_depth[y, x], hn)
            if hn > h_speed:
                # squared speed: one sqrt per run, not per cell and step
                ux = 0.5 * (qw + qe)
                uy = 0.5 * (qn + qs)
                sp2 = (ux * ux + uy * uy) / (hn * hn)
                umax = max(umax, sp2)
                max_speed[y, x] = max(max_speed[y, x], sp2)
            # edge flows (volume per unit width and time)
            if x == 0:
                if qw > 0.0:
                    s_bin += qw * dt * dy
                else:
                    s_bout -= qw * dt * dy
            if x == nx - 1:
                if qe < 0.0:
                    s_bin -= qe * dt * dy
                else:
                    s_bout += qe * dt * dy
            if y == 0:
                if qn > 0.0:
                    s_bin += qn * dt * dx
                else:
                    s_bout -= qn * dt * dx
            if y == ny - 1:
                if qs < 0.0:
                    s_bin -= qs * dt * dx
                else:
                    s_bout += qs * dt * dx
        rows[y, _R_RAIN] = s_rain * area
        rows[y, _R_INF] = s_inf * area
        rows[y, _R_BIN] = s_bin
        rows[y, _R_BOUT] = s_bout
        rows[y, _R_HMAX] = hmax
        rows[y, _R_UMAX] = umax
    tot_rain = 0.0
    tot_inf = 0.0
    tot_bin = 0.0
    tot_bout = 0.0
    hm = 0.0
    um = 0.0
    for y in range(ny):
        tot_rain += rows[y, _R_RAIN]
        tot_inf += rows[y, _R_INF]
        tot_bin += rows[y, _R_BIN]
        tot_bout += rows[y, _R_BOUT]
        hm = max(hm, rows[y, _R_HMAX])
        um = max(um, rows[y, _R_UMAX])
    return tot_rain, tot_inf, tot_bin, tot_bout, hm, um


@numba.njit(cache=True, error_model="numpy")
def _cell_velocity_numba(h, qx, qy, h_speed, vx, vy):
    """Cell-centre velocity (m/s) from the mean face discharges, 0 where h <= h_speed.

    Runs once per simulation: serial (compiles much faster than a parallel loop).
    """
    ny, nx = h.shape
    for y in range(ny):
        for x in range(nx):
            if h[y, x] > h_speed:
                vx[y, x] = 0.5 * (qx[y, x] + qx[y, x + 1]) / h[y, x]
                vy[y, x] = 0.5 * (qy[y, x] + qy[y + 1, x]) / h[y, x]
            else:
                vx[y, x] = 0.0
                vy[y, x] = 0.0


def inertial_face_flux(q, q_left, q_right, h_i, h_j, z_i, z_j, dx, dt, n, theta=1.0, *,
                       h_threshold=1e-4, g=G) -> float:
    """One local-inertial update of the unit discharge on the face between cells i and j.

    Parameters
    ----------
    q : float, m2/s
        Discharge on this face at time t (positive from i to j).
    q_left, q_right : float, m2/s
        Discharge at time t on the previous and next parallel faces (used when theta < 1).
    h_i, h_j : float, m
        Depths of the two cells.
    z_i, z_j : float, m
        Bed elevations of the two cells.
    dx : float, m
        Distance between the cell centres.
    dt : float, s
        Time step.
    n : float, s m^(-1/3)
        Manning's roughness.
    theta : float
        de Almeida et al. (2012) weight in [0, 1]; 1 gives Bates et al. (2010).
    h_threshold : float, m
        Flow depths at or below this give q = 0.
    g : float, m/s2
        Gravity.

    Returns
    -------
    q_new : float, m2/s
        Discharge at time t + dt.
    """
    return float(_face_flux_numba(float(q), float(q_left), float(q_right), float(h_i), float(h_j),
                                  float(z_i), float(z_j), float(dx), float(dt), float(n) ** 2,
                                  float(theta), float(g), float(h_threshold)))


def _rate_grid(name, value, shape, valid) -> np.ndarray:
    """Scalar or (y, x) rate >= 0 in mm/h -> float64 grid in m/s (0 on nodata)."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(shape, float(arr))
    elif arr.shape != shape:
        raise ModelError(f"{name} must be a scalar or a (y, x) array of shape {shape} in mm/h; "
                         f"got shape {arr.shape}.")
    if np.any(valid & ~(np.isfinite(arr) & (arr >= 0.0))):
        raise ModelError(f"{name} must be finite and >= 0 mm/h on valid cells; fill gaps and clip "
                         "negatives.")
    return np.ascontiguousarray(np.where(valid, arr, 0.0) * _MMH_TO_MS)


def _depth_fn(side, value) -> Callable[[float], float]:
    if callable(value):
        return value
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ModelError(f"boundary_depth[{side!r}] must be a depth in m (>= 0) or a callable "
                         f"of time in s; got {value!r}.") from None
    if not (np.isfinite(v) and v >= 0.0):
        raise ModelError(f"boundary_depth[{side!r}] must be a finite depth >= 0 m; got {value!r}.")
    return lambda t: v


def simulate_inertial(dem, *, dx, dy=None, duration_s, rain=None, rain_dt_s=None, h0=None,
                      manning_n=0.03, theta=0.8, alpha=0.7, infiltration_mm_h=0.0,
                      open_boundaries=(), boundary_depth=None, nodata=None, output_every_s=None,
                      max_dt_s=None, h_threshold=1e-4) -> InertialResult:
    """Run the 2-D local-inertial model on a DEM.

    Parameters
    ----------
    dem : ndarray (y, x), m
        Bed elevation (float32 or float64); row 0 is the north edge.
    dx : float, m
        Cell size along x (metric: reproject geographic grids first).
    dy : float, m, optional
        Cell size along y; ``dx`` by default.
    duration_s : float, s
        Simulated time.
    rain : ndarray (y, x) or (time, y, x), mm/h, optional
        Rain rate: constant over the run (2-D) or piecewise constant over steps of
        ``rain_dt_s`` (3-D; no rain after the last step). >= 0 on valid cells.
    rain_dt_s : float, s
        Length of one rain step; required with 3-D ``rain``.
    h0 : ndarray (y, x), m, optional
        Initial depth (>= 0); dry by default.
    manning_n : float or ndarray (y, x), s m^(-1/3)
        Manning's roughness (> 0); faces use the mean of their cells' n**2.
    theta : float
        de Almeida et al. (2012) weight in [0.7, 1]; 1 gives Bates et al. (2010).
    alpha : float
        Courant factor in (0, 1]: ``dt = alpha min(dx, dy) / (sqrt(g h_max) + u_max)``.
    infiltration_mm_h : float or ndarray (y, x), mm/h
        Infiltration capacity (>= 0), limited to the water a cell holds.
    open_boundaries : iterable of str
        Sides with free outflow: any of ``"north"``, ``"south"``, ``"west"``, ``"east"``.
    boundary_depth : dict {side: float or callable(t_s) -> float}, m, optional
        Sides held at a given depth (ghost cell with the edge cell's bed), e.g. an inflow
        hydrograph; evaluated at the start of every step.
    nodata : float, optional
        DEM value of cells outside the domain (walls); NaN cells are always nodata.
    output_every_s : float, s, optional
        Store depth snapshots every this many seconds (steps end exactly on them).
    max_dt_s : float, s, optional
        Upper limit of the time step. By default there is none while water is present;
        while the grid and its fixed-depth edges are dry, steps are at most 60 s.
    h_threshold : float, m
        Face flow depth at or below which the face carries no flow.

    Returns
    -------
    InertialResult
        Final and maximum depth, maximum speed, final velocity, snapshots and the
        volume balance (see :class:`InertialResult`).

    Raises
    ------
    ModelError
        On bad shapes, dtypes, negative rates or depths, unknown side names, theta out of
        [0.7, 1] or alpha out of (0, 1].
    """
    z_in = as_2d("dem", dem, kinds="fiu")
    shape = z_in.shape
    ny, nx = shape
    dxv = positive_scalar("dx", dx)
    dyv = dxv if dy is None else positive_scalar("dy", dy)
    duration = positive_scalar("duration_s", duration_s)
    th = float(theta)
    if not 0.7 <= th <= 1.0:
        raise ModelError(f"theta must be in [0.7, 1] (de Almeida et al. 2012); got {theta!r}.")
    al = float(alpha)
    if not 0.0 < al <= 1.0:
        raise ModelError(f"alpha must be in (0, 1] (0.7 is usual, lower it if a run is unstable); "
                         f"got {alpha!r}.")
    h_thr = float(h_threshold)
    if not (np.isfinite(h_thr) and h_thr >= 0.0):
        raise ModelError(f"h_threshold must be a finite depth >= 0 m; got {h_threshold!r}.")
    dt_cap = np.inf if max_dt_s is None else positive_scalar("max_dt_s", max_dt_s)
    dry_cap = min(_DRY_DT_S, dt_cap)

    valid = np.isfinite(z_in)
    if nodata is not None:
        valid &= z_in != nodata
    z = np.ascontiguousarray(np.where(valid, z_in, 0.0), dtype=np.float64)

    nn = np.asarray(manning_n, dtype=np.float64)
    if nn.ndim == 0:
        nn = np.full(shape, float(nn))
    if nn.shape != shape:
        raise ModelError(f"manning_n must be a scalar or a (y, x) array of shape {shape}; "
                         f"got shape {nn.shape}.")
    if np.any(valid & ~(np.isfinite(nn) & (nn > 0.0))):
        raise ModelError("manning_n must be finite and > 0 s m^(-1/3) on valid cells.")
    n2 = np.ascontiguousarray(np.where(valid, nn, 0.0) ** 2)
    infil = _rate_grid("infiltration_mm_h", infiltration_mm_h, shape, valid)

    if h0 is None:
        h = np.zeros(shape)
    else:
        h = np.array(as_2d("h0", h0, kinds="fiu"), dtype=np.float64)
        if h.shape != shape:
            raise ModelError(f"h0 has shape {h.shape} but dem has shape {shape}; both must be on "
                             "the same grid.")
        if np.any(valid & ~(np.isfinite(h) & (h >= 0.0))):
            raise ModelError("h0 must be finite and >= 0 m on valid cells (use depth of the last "
                             "run).")
        h = np.ascontiguousarray(np.where(valid, h, 0.0))

    # rain as (time, y, x) mm/h slices; one zero grid (same dtype) for dry spells
    if rain is None:
        rain3 = None
    else:
        ra = np.asarray(rain)
        if ra.dtype not in (np.float32, np.float64):
            raise ModelError(f"rain must be float32 or float64 mm/h; got {ra.dtype}.")
        if ra.ndim == 2:
            ra = ra[None]
            rdt = np.inf
        elif ra.ndim == 3:
            if rain_dt_s is None:
                raise ModelError("rain is (time, y, x): give rain_dt_s, the length of one rain "
                                 "step in s.")
            rdt = positive_scalar("rain_dt_s", rain_dt_s)
        else:
            raise ModelError(f"rain must be (y, x) or (time, y, x) mm/h; got shape {ra.shape}.")
        if ra.shape[1:] != shape:
            raise ModelError(f"rain has grid shape {ra.shape[1:]} but dem has shape {shape}; put "
                             "them on the same grid.")
        if np.any(valid[None] & ~(np.isfinite(ra) & (ra >= 0.0))):
            raise ModelError("rain must be finite and >= 0 mm/h on valid cells; fill gaps and clip "
                             "negatives.")
        if not valid.all():
            ra = np.where(valid[None], ra, 0)
        rain3 = np.ascontiguousarray(ra, dtype=np.float32)  # one kernel signature
    zero_rain = np.zeros(shape, dtype=np.float32)

    modes = np.zeros(4, dtype=np.int64)
    for side in open_boundaries if not isinstance(open_boundaries, str) else (open_boundaries,):
        if side not in _SIDES:
            raise ModelError(f"open_boundaries: unknown side {side!r}; use any of {_SIDES}.")
        modes[_SIDES.index(side)] = _OPEN
    depth_fns: dict[int, Callable[[float], float]] = {}
    for side, value in (boundary_depth or {}).items():
        if side not in _SIDES:
            raise ModelError(f"boundary_depth: unknown side {side!r}; use any of {_SIDES}.")
        k = _SIDES.index(side)
        if modes[k] == _OPEN:
            raise ModelError(f"side {side!r} is both open and fixed-depth; choose one.")
        modes[k] = _FIXED
        depth_fns[k] = _depth_fn(side, value)

    if output_every_s is None:
        times = np.zeros(0)
    else:
        every = positive_scalar("output_every_s", output_every_s)
        k = int(np.floor(duration / every * (1 + 1e-12)))
        times = every * np.arange(1, k + 1, dtype=np.float64)
    snaps = np.zeros((times.size, ny, nx), dtype=np.float32)

    qx = np.zeros((ny, nx + 1))
    qy = np.zeros((ny + 1, nx))
    qxt = np.empty_like(qx)
    qyt = np.empty_like(qy)
    fac = np.empty(shape)
    rows = np.zeros((ny, 6))
    max_depth = h.copy()
    max_speed = np.zeros(shape)
    hbound = np.zeros(4)
    area = dxv * dyv
    vol_initial = float(h.sum() * area)
    vol_in = vol_out = vol_inf = 0.0
    hmax = float(h.max())
    umax = 0.0
    dmin = min(dxv, dyv)
    t = 0.0
    steps = 0
    i_out = 0
    if rain3 is None:
        rain_slice, rscale = zero_rain, 0.0
    while t < duration * (1.0 - 1e-14):
        hb_max = 0.0
        for k, fn in depth_fns.items():
            v = float(fn(t))
            if not (np.isfinite(v) and v >= 0.0):
                raise ModelError(f"boundary_depth[{_SIDES[k]!r}] gave {v!r} m at t = {t} s; it "
                                 "must return a finite depth >= 0.")
            hbound[k] = v
            hb_max = max(hb_max, v)
        hm = max(hmax, hb_max)
        dt = min(al * dmin / (math.sqrt(G * hm) + umax) if hm > 0.0 else dry_cap, dt_cap,
                 duration - t)
        if i_out < times.size:
            dt = min(dt, times[i_out] - t)
        if rain3 is not None:
            j = int(t // rdt) if np.isfinite(rdt) else 0
            # guard against t sitting a hair below a step boundary
            if np.isfinite(rdt) and (j + 1) * rdt - t <= 1e-9 * max(rdt, 1.0):
                j += 1
            if j < rain3.shape[0]:
                rain_slice, rscale = rain3[j], _MMH_TO_MS
                if np.isfinite(rdt):
                    dt = min(dt, (j + 1) * rdt - t)
            else:
                rain_slice, rscale = zero_rain, 0.0
        r_in, r_inf, b_in, b_out, hmax, umax = _step_numba(
            z, valid, n2, h, qx, qy, qxt, qyt, fac, rain_slice, rscale, infil, modes, hbound,
            dxv, dyv, dt, th, G, h_thr, _SPEED_MIN_DEPTH, max_depth, max_speed, rows)
        umax = math.sqrt(umax)
        vol_in += r_in + b_in
        vol_out += b_out
        vol_inf += r_inf
        t_new = t + dt
        steps += 1
        while i_out < times.size and t_new >= times[i_out] * (1.0 - 1e-12):
            snaps[i_out] = h
            t_new = max(t_new, times[i_out])
            i_out += 1
        t = t_new

    vx = np.empty(shape)
    vy = np.empty(shape)
    _cell_velocity_numba(h, qx, qy, _SPEED_MIN_DEPTH, vx, vy)
    return InertialResult(
        depth=h,
        max_depth=max_depth.astype(np.float32),
        max_speed=np.sqrt(max_speed).astype(np.float32),
        velocity_x=vx.astype(np.float32),
        velocity_y=vy.astype(np.float32),
        snapshots=snaps,
        times_s=times,
        volume_in=float(vol_in),
        volume_out=float(vol_out),
        volume_infiltrated=float(vol_inf),
        volume_initial=vol_initial,
        volume_final=float(h.sum() * area),
        steps=steps,
    )
