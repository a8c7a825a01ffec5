"""Kinematic-wave routing of runoff along the D8 network (LISFLOOD style).

Each valid cell is a channel element of length ``L`` (the D8 distance to its receiver:
``dx``, ``dy`` or ``sqrt(dx**2 + dy**2)``; ``(dx + dy) / 2`` for outlets) that receives
the discharge of the cells draining into it plus its own lateral inflow (runoff on its
area ``dx * dy``). Cross-sectional area and discharge are tied by Manning's equation
for a wide channel (wetted perimeter ``P`` ~ channel width)::

    A = alpha * Q**beta,   beta = 0.6,   alpha = (n * P**(2/3) / sqrt(S))**0.6

The continuity equation is discretised implicitly and backward in space, as in
LISFLOOD-OS and Chow, Maidment & Mays (1988, sec. 9.6), and solved per cell with
Newton's method (on ``u = Q**0.2``, where it is the polynomial ``u**5 + c u**3``)::

    Q_new + (alpha L / dt) Q_new**beta = Q_up_new + (alpha L / dt) Q_old**beta + q_lat L

``Q_up_new`` (sum of the inflows at the new time) is known because cells are visited in
topological order. The scheme is unconditionally stable and conserves mass: per step
``dt * (inflow - outflow) = L * (A_new - A_old)`` for every cell (``A_new`` is taken
from this balance, so it holds to rounding), hence the water that entered equals the
water that left through outlets plus the change in storage ``sum(A * L)``.

Outlets (code 0: grid-edge outlets, pits and flats) pass their discharge out of the
model, so route on directions from an epsilon-filled DEM where only true outlets are 0.

Parallel scheme (one member on several cores): the network is cut into *parts*, the
sub-catchments of at most ``max(2000, n_cells / 256)`` cells whose root drains into a
"trunk" cell (upstream area above that size) or out of the model. Parts do not
exchange water, so phase 1 routes every part over the whole run in parallel (parts
balanced over the threads by cell count) and stores each root's outflow per sub-step;
phase 2 routes the trunk, a few per cent of the cells, with the roots' stored outflows
as inflows. Every cell still sums its inflows in the global topological order, so the
results are bit-for-bit those of the plain sweep. An ensemble with at least as many
members as threads is routed with the plain sweep, members in parallel (as before).
Inside a part cells go by level (longest path from a source), so consecutive cells rarely
depend on each other, and pull their donors' new discharge. A part's state lives in arrays
by position in that order (gathered before phase 1, scattered back after), so its sweeps
stream through memory. Dry cells (right-hand side 0) skip the solver.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from models import terrain
from models.errors import ModelError, grid_parameter, positive_scalar

__all__ = ["BETA", "RoutingResult", "kinematic_alpha", "route_kinematic_d8"]

BETA = 0.6  # Manning, wide channel; the solver below is written for beta = 3/5
# right-hand sides below this (m3/s) give Q = 0: the water stays in the cell's storage
# (mass is still conserved exactly) and the solver never meets subnormal numbers
_RHS_FLOOR = 1e-200
_MMH_TO_MS = 1.0 / 3.6e6  # mm/h -> m/s


class RoutingResult(NamedTuple):
    """Outputs of :func:`route_kinematic_d8` (nodata cells: NaN discharge, t_max -1).

    Attributes
    ----------
    q_max : ndarray (member, y, x) float32, m3/s
        Peak discharge over the run (end of every routing sub-step).
    t_max : ndarray (member, y, x) int32
        Index of the input step in which the peak occurred.
    q_record : ndarray (member, time, n_record) float32, m3/s
        Discharge at the end of each input step at the requested flat indices.
    q_final : ndarray (member, y, x) float32, m3/s
        Discharge at the end of the run (``q0`` of the next cycle).
    outflow_volume : ndarray (member,) float64, m3
        Water that left the model through outlets during the run.
    storage_final : ndarray (member,) float64, m3
        Water held in the cells at the end, ``sum(A * L)`` (``A = alpha * Q**beta`` to
        the solver's precision).
    storage_initial : ndarray (member,) float64, m3
        Water held in the cells at the start (from ``q0``).
    """

    q_max: np.ndarray
    t_max: np.ndarray
    q_record: np.ndarray
    q_final: np.ndarray
    outflow_volume: np.ndarray
    storage_final: np.ndarray
    storage_initial: np.ndarray


@numba.njit(cache=True, error_model="numpy")
def _u_upper_bound(rhs, c):
    """Upper bound of u = Q**0.2: both Q <= rhs and c * Q**0.6 <= rhs."""
    a = rhs**0.2
    b = np.cbrt(rhs / c)
    return min(b, a)


@numba.njit(cache=True, error_model="numpy")
def _solve_kinematic_u_numba(rhs, c, u0):
    """Solve ``u**5 + c * u**3 = rhs`` for ``u = Q**0.2 >= 0`` (Newton/Halley).

    With beta = 0.6 = 3/5 the kinematic equation ``Q + c Q**beta = rhs`` becomes a
    polynomial in ``u = Q**(1/5)``: no powers inside the iteration. The polynomial is
    increasing and convex for u > 0, so Newton iterates right of the root decrease
    monotonically to it and an iterate left of it jumps to the right. Long jumps and
    slow starts restart from the upper bound ``min(rhs**0.2, (rhs/c)**(1/3))``, which is
    within a factor 2**(1/3) of the root. Halley's step (cubic convergence) is used
    where its denominator is safe, Newton's otherwise; stops when the step is below
    1e-4 of u: with cubic convergence the error left is then of order (1e-4)**3 of u,
    below float64 rounding of Q = u**5 (the mass balance does not depend on it: storage
    comes from the continuity equation).
    """
    if not (rhs > _RHS_FLOOR):
        return 0.0
    if c <= 0.0:
        return rhs**0.2
    u = u0
    if not (u > 0.0 and u < np.inf):
        u = _u_upper_bound(rhs, c)
    clamped = False
    for it in range(200):
        u2 = u * u
        u3 = u2 * u
        f = u3 * u2 + c * u3 - rhs
        if f == 0.0:
            return u
        fp = 5.0 * u2 * u2 + 3.0 * c * u2
        fpp = 20.0 * u3 + 6.0 * c * u
        # Halley's step (cubic convergence). Left of the root (f < 0) its denominator
        # exceeds 2 f'^2; far right of it the denominator can vanish: Newton's step then
        den = 2.0 * fp * fp - f * fpp
        if den > fp * fp:
            un = u - 2.0 * f * (fp / den)  # grouped against underflow at tiny u
        else:
            un = u - f / fp
        if not clamped and ((f < 0.0 and un > 1.5 * u) or it == 6):
            # far from the root (a long jump up, or slow progress down): restart from
            # the upper bound, from where the iterates fall monotonically and fast
            clamped = True
            ub = _u_upper_bound(rhs, c)
            if f < 0.0 or un > ub:
                u = ub
                continue
        if abs(un - u) <= 1e-4 * un:
            return un
        u = un
    return u


@numba.njit(cache=True, error_model="numpy")
def _solve_kinematic_numba(rhs, c, guess):
    """Solve ``Q + c * Q**BETA = rhs`` for Q >= 0 (c >= 0, rhs >= 0), from a guess of Q."""
    u0 = guess**0.2 if guess > 0.0 else 0.0
    u = _solve_kinematic_u_numba(rhs, c, u0)
    return u * u * u * u * u


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _route_kinematic_serial_numba(order, down, alpha, length, cfac, lateral, cell_area, dt_s, substeps,
                                  q0, record, q_max, t_max, q_record, q_final, outflow, storage_final,
                                  storage_initial):
    """Route (member, time, cell) lateral inflow (mm/h) through the D8 graph (plain sweep).

    The reference for :func:`_route_kinematic_numba` (used by tests and benchmarks).
    ``order``/``down`` are the topological order and receivers (flat, -1 = leaves);
    ``alpha``/``length``/``cfac`` (``alpha * length / dt``) per cell; ``q0`` (member,
    cell) initial discharge. Outputs are written in place. Returns the count of bad
    lateral values (all members). Parallel over members; each member keeps three
    cell-sized state vectors: ``u = Q**0.2`` (the solver's variable), the storage term
    ``A L / dt`` (m3/s) and the inflow sum.
    """
    nm, nt, n = lateral.shape
    ncell = order.size
    nrec = record.size
    dt = dt_s / substeps
    conv = cell_area * _MMH_TO_MS
    bad = np.zeros(nm, dtype=np.int64)
    for m in prange(nm):
        u = np.zeros(n, dtype=np.float64)
        store = np.zeros(n, dtype=np.float64)
        qin = np.zeros(n, dtype=np.float64)
        storage_initial[m] = _initial_state(order, alpha, length, dt, q0[m], u, store, qin, q_max[m])
        vol_out = 0.0
        for t in range(nt):
            for _ in range(substeps):
                step_out = 0.0
                for t_ in range(ncell):
                    i = order[t_]
                    rate = np.float64(lateral[m, t, i])
                    if not (rate >= 0.0 and rate < np.inf):
                        bad[m] += 1
                        rate = 0.0
                    qn = _cell_update(i, rate * conv, qin, u, store, cfac)
                    d = down[i]
                    if d >= 0:
                        qin[d] += qn
                    else:
                        step_out += qn
                    if qn > q_max[m, i]:
                        q_max[m, i] = qn
                        t_max[m, i] = t
                vol_out += step_out * dt
            for r in range(nrec):
                ur = u[record[r]]
                q_record[m, t, r] = ur * ur * ur * ur * ur
        outflow[m] = vol_out
        storage_final[m] = _final_state(order, dt, u, store, q_final[m])
    return bad.sum()


@numba.njit(cache=True)
def _initial_state(order, alpha, length, dt, q0, u, store, qin, q_max):
    """State of one member from its initial discharge; returns the storage sum(A L) (m3)."""
    s0 = 0.0
    for t_ in range(order.size):
        i = order[t_]
        ui = q0[i] ** 0.2
        u[i] = ui
        a = alpha[i] * ui * ui * ui * length[i]  # A L, m3
        s0 += a
        store[i] = a / dt
        qin[i] = 0.0
        q_max[i] = -1.0
    return s0


@numba.njit(cache=True)
def _final_state(order, dt, u, store, q_final):
    """Final discharge of one member (in place); returns the storage sum(A L) (m3)."""
    sf = 0.0
    for t_ in range(order.size):
        i = order[t_]
        ui = u[i]
        q_final[i] = ui * ui * ui * ui * ui
        sf += store[i] * dt
    return sf


@numba.njit(cache=True)
def _partition_numba(order, down, acc, max_part):
    """Cut the D8 graph into parts (sub-catchments of <= max_part cells) and a trunk.

    Returns ``part`` (cell -> part id, -1 trunk/nodata), ``part_ptr``/``part_cells``
    (cells of each part by level, then topological order; the root last), the phase-2
    sweep ``p2_cell``/``p2_part`` (trunk cells and part roots in topological order;
    ``p2_part`` = -1 for trunk cells, else the root's part id) and the donors of every
    cell ``up_ptr``/``up_idx`` (CSR, in topological order).
    """
    n = down.size
    ncell = order.size
    part = np.full(n, -1, dtype=np.int64)
    npart = 0
    for k in range(ncell - 1, -1, -1):  # receivers before their donors
        i = order[k]
        if acc[i] > max_part:
            continue
        d = down[i]
        if d < 0 or part[d] < 0:
            part[i] = npart
            npart += 1
        else:
            part[i] = part[d]
    size = np.zeros(npart + 1, dtype=np.int64)
    ntrunk = 0
    for k in range(ncell):
        p = part[order[k]]
        if p >= 0:
            size[p + 1] += 1
        else:
            ntrunk += 1
    part_ptr = np.cumsum(size)
    fill = part_ptr[:-1].copy()
    part_cells = np.empty(ncell - ntrunk, dtype=np.int64)
    p2_cell = np.empty(ntrunk + npart, dtype=np.int64)
    p2_part = np.empty(ntrunk + npart, dtype=np.int64)
    j = 0
    for k in range(ncell):
        i = order[k]
        p = part[i]
        if p >= 0:
            part_cells[fill[p]] = i
            fill[p] += 1
            d = down[i]
            if d < 0 or part[d] < 0:  # the root
                p2_cell[j] = i
                p2_part[j] = p
                j += 1
        else:
            p2_cell[j] = i
            p2_part[j] = -1
            j += 1
    # inside each part: by level (longest path from a source), then topological order,
    # so consecutive cells rarely depend on each other and their solves overlap in the CPU
    level = np.zeros(n, dtype=np.int64)
    for k in range(ncell):
        i = order[k]
        d = down[i]
        if d >= 0 and level[i] + 1 > level[d]:
            level[d] = level[i] + 1
    hist = np.zeros(ncell + 2, dtype=np.int64)
    for p in range(npart):  # stable counting sort by level (levels < part size)
        a0 = part_ptr[p]
        a1 = part_ptr[p + 1]
        seg = part_cells[a0:a1].copy()
        top = 0
        for a in range(seg.size):
            lv = level[seg[a]]
            hist[lv + 1] += 1
            top = max(top, lv + 1)
        for lv in range(top):
            hist[lv + 1] += hist[lv]
        for a in range(seg.size):
            lv = level[seg[a]]
            part_cells[a0 + hist[lv]] = seg[a]
            hist[lv] += 1
        hist[:top + 1] = 0
    # donors of every cell, in topological order (so sums add up as in the serial sweep)
    up_ptr = np.zeros(n + 1, dtype=np.int64)
    for k in range(ncell):
        d = down[order[k]]
        if d >= 0:
            up_ptr[d + 1] += 1
    for i in range(n):
        up_ptr[i + 1] += up_ptr[i]
    upfill = up_ptr[:-1].copy()
    up_idx = np.empty(max(up_ptr[n], 1), dtype=np.int64)
    for k in range(ncell):
        i = order[k]
        d = down[i]
        if d >= 0:
            up_idx[upfill[d]] = i
            upfill[d] += 1
    return part, part_ptr, part_cells, p2_cell, p2_part, up_ptr, up_idx


@numba.njit(cache=True, error_model="numpy", inline="always")
def _cell_step(rhs, k, u, store, cfac):
    """One implicit step of the cell at index k of ``u``/``store``/``cfac`` with the
    right-hand side ``rhs`` (m3/s); returns the new discharge (state updated in place).

    ``store`` is the storage term ``A L / dt`` (m3/s), ``cfac`` = ``alpha L / dt``. The
    new storage comes from the continuity equation itself (``rhs - Q``), so mass
    balances to rounding.
    """
    if not (rhs > _RHS_FLOOR):  # dry: no solver, the water (if any) stays in storage
        u[k] = 0.0
        store[k] = rhs
        return 0.0
    un = _solve_kinematic_u_numba(rhs, cfac[k], u[k])
    qn = min(un * un * un * un * un, rhs)
    u[k] = un
    store[k] = rhs - qn
    return qn


@numba.njit(cache=True, error_model="numpy", inline="always")
def _cell_update(i, lat, qin, u, store, cfac):
    """One implicit step of cell i from its pushed inflow ``qin[i]`` (reset to 0) and
    lateral inflow ``lat`` (m3/s); returns the new discharge."""
    rhs = qin[i] + lat + store[i]
    qin[i] = 0.0
    return _cell_step(rhs, i, u, store, cfac)


@numba.njit(cache=True, parallel=True, error_model="numpy")
def _route_kinematic_numba(order, down, alpha, length, cfac, lateral, cell_area, dt_s, substeps, q0, record,
                           part, part_ptr, part_cells, pup_ptr, pup_idx, bin_ptr, bin_parts, p2_cell, p2_part,
                           rec_ptr, rec_idx, rec_pos,
                           q_max, t_max, q_record, q_final, outflow, storage_final, storage_initial):
    """Route (member, time, cell) lateral inflow (mm/h) through the D8 graph, in parallel.

    Same equations and outputs as :func:`_route_kinematic_serial_numba`; see the module
    notes for the two phases. ``bin_ptr``/``bin_parts`` give each thread its parts;
    ``rec_ptr``/``rec_idx`` list the record slots of every part (last group: trunk) and
    ``rec_pos`` their positions. In phase 1 a part's state lives in arrays indexed by
    *position* (``part_cells`` order) rather than by cell, so every sweep streams through
    memory; donors are positions too (``pup_ptr``/``pup_idx``). The state is gathered
    from and scattered back to the cell-indexed arrays around phase 1.
    Members are routed one after the other. Returns the count of bad lateral values.
    """
    nm, nt, n = lateral.shape
    npos = part_cells.size
    npart = part_ptr.size - 1
    nbin = bin_ptr.size - 1
    nsub = nt * substeps
    dt = dt_s / substeps
    conv = cell_area * _MMH_TO_MS
    bad = np.zeros(nbin + 1, dtype=np.int64)
    u = np.zeros(n, dtype=np.float64)
    store = np.zeros(n, dtype=np.float64)
    qin = np.zeros(n, dtype=np.float64)
    rootq = np.zeros((npart, nsub), dtype=np.float64)
    max_part = 1
    for p in range(npart):
        max_part = max(max_part, part_ptr[p + 1] - part_ptr[p])
    pu = np.empty(npos, dtype=np.float64)
    pstore = np.empty(npos, dtype=np.float64)
    pc = np.empty(npos, dtype=np.float64)
    pq = np.zeros(npos, dtype=np.float64)
    pqmax = np.empty(npos, dtype=np.float32)
    ptmax = np.empty(npos, dtype=np.int32)
    for a in prange(npos):
        pc[a] = cfac[part_cells[a]]
    for m in range(nm):
        storage_initial[m] = _initial_state(order, alpha, length, dt, q0[m], u, store, qin, q_max[m])
        for a in prange(npos):
            i = part_cells[a]
            pu[a] = u[i]
            pstore[a] = store[i]
            pqmax[a] = -1.0
            ptmax[a] = -1
        # phase 1: parts, each over the whole run
        for b in prange(nbin):
            lat = np.empty(max_part, dtype=np.float64)
            for kp in range(bin_ptr[b], bin_ptr[b + 1]):
                p = bin_parts[kp]
                a0 = part_ptr[p]
                a1 = part_ptr[p + 1]
                for t in range(nt):
                    # gather the part's lateral inflow first, in a loop of independent
                    # loads (the sweep's solver chains would otherwise stall on them)
                    lat_t = lateral[m, t]
                    for a in range(a0, a1):
                        rate = np.float64(lat_t[part_cells[a]])
                        if not (rate >= 0.0 and rate < np.inf):
                            bad[b] += 1
                            rate = 0.0
                        lat[a - a0] = rate * conv
                    for sb in range(substeps):
                        for a in range(a0, a1):
                            acc_in = 0.0  # pull the donors' new discharge (same sum order as a push)
                            for e in range(pup_ptr[a], pup_ptr[a + 1]):
                                acc_in += pq[pup_idx[e]]
                            qn = _cell_step(acc_in + lat[a - a0] + pstore[a], a, pu, pstore, pc)
                            pq[a] = qn
                            if qn > pqmax[a]:
                                pqmax[a] = qn
                                ptmax[a] = t
                        rootq[p, t * substeps + sb] = pq[a1 - 1]  # the root is the part's last cell
                    for r in range(rec_ptr[p], rec_ptr[p + 1]):
                        ur = pu[rec_pos[r]]
                        q_record[m, t, rec_idx[r]] = ur * ur * ur * ur * ur
        for a in prange(npos):
            i = part_cells[a]
            u[i] = pu[a]
            store[i] = pstore[a]
            q_max[m, i] = pqmax[a]
            t_max[m, i] = ptmax[a]
        # phase 2: the trunk, with the roots' outflows, in global topological order
        vol_out = 0.0
        n2 = p2_cell.size
        for t in range(nt):
            for sb in range(substeps):
                step_out = 0.0
                for j in range(n2):
                    i = p2_cell[j]
                    p = p2_part[j]
                    if p >= 0:
                        qn = rootq[p, t * substeps + sb]
                    else:
                        rate = np.float64(lateral[m, t, i])
                        if not (rate >= 0.0 and rate < np.inf):
                            bad[nbin] += 1
                            rate = 0.0
                        qn = _cell_update(i, rate * conv, qin, u, store, cfac)
                        if qn > q_max[m, i]:
                            q_max[m, i] = qn
                            t_max[m, i] = t
                    d = down[i]
                    if d >= 0:
                        qin[d] += qn
                    else:
                        step_out += qn
                vol_out += step_out * dt
            for r in range(rec_ptr[npart], rec_ptr[npart + 1]):
                ur = u[record[rec_idx[r]]]
                q_record[m, t, rec_idx[r]] = ur * ur * ur * ur * ur
        outflow[m] = vol_out
        storage_final[m] = _final_state(order, dt, u, store, q_final[m])
    return bad.sum()


@numba.njit(cache=True)
def _balance_numba(sizes, by_size, nbin):
    """Longest-processing-time first: each part, biggest first, to the least loaded bin."""
    load = np.zeros(nbin, dtype=np.int64)
    owner = np.empty(sizes.size, dtype=np.int64)
    for p in by_size:
        b = np.argmin(load)
        owner[p] = b
        load[b] += sizes[p]
    return owner


def _plan(order: np.ndarray, down: np.ndarray, valid: np.ndarray, record: np.ndarray, nbin: int):
    """Parts, their balanced assignment to ``nbin`` threads, and record slots per part."""
    ncell = order.size
    acc = valid.astype(np.float64)
    terrain._accumulate_numba(down, valid, acc)
    max_part = max(2000, ncell // 256)
    part, part_ptr, part_cells, p2_cell, p2_part, up_ptr, up_idx = _partition_numba(order, down, acc,
                                                                                    float(max_part))
    npart = part_ptr.size - 1
    sizes = np.diff(part_ptr)
    owner = _balance_numba(sizes, np.argsort(-sizes, kind="stable"), nbin)
    bin_parts = np.argsort(owner, kind="stable").astype(np.int64)
    bin_ptr = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=nbin))]).astype(np.int64)
    rp = np.where(part[record] >= 0, part[record], npart) if record.size else np.zeros(0, np.int64)
    rec_idx = np.argsort(rp, kind="stable").astype(np.int64)
    rec_ptr = np.concatenate([[0], np.cumsum(np.bincount(rp, minlength=npart + 1))]).astype(np.int64)
    pos_of = np.full(down.size, -1, dtype=np.int64)
    pos_of[part_cells] = np.arange(part_cells.size)
    rec_pos = pos_of[record[rec_idx]] if record.size else np.zeros(0, np.int64)
    # donors by position: a part cell's donors are cells of the same part
    counts = up_ptr[part_cells + 1] - up_ptr[part_cells]
    pup_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    take = np.repeat(up_ptr[part_cells] - pup_ptr[:-1], counts) + np.arange(pup_ptr[-1])
    pup_idx = pos_of[up_idx[take]] if take.size else np.zeros(1, np.int64)
    return (part, part_ptr, part_cells, pup_ptr, pup_idx, bin_ptr, bin_parts, p2_cell, p2_part, rec_ptr, rec_idx,
            rec_pos)


def kinematic_alpha(slope, manning_n, width) -> np.ndarray:
    """Kinematic-wave coefficient alpha of ``A = alpha * Q**0.6`` (Manning, wide channel).

    Parameters
    ----------
    slope : float or ndarray (y, x), m/m
        Bed slope (> 0).
    manning_n : float or ndarray (y, x), s m^(-1/3)
        Manning's roughness.
    width : float or ndarray (y, x), m
        Channel width, used as the wetted perimeter.

    Returns
    -------
    alpha : float64 ndarray (broadcast shape), s^0.6 m^0.2
        ``(n * width**(2/3) / sqrt(slope))**0.6``.
    """
    s = np.asarray(slope, dtype=np.float64)
    n = np.asarray(manning_n, dtype=np.float64)
    w = np.asarray(width, dtype=np.float64)
    return (n * w ** (2.0 / 3.0) / np.sqrt(s)) ** BETA


def route_kinematic_d8(fdir, lateral, dt_s: float, dx: float, dy: float, slope, manning_n, width,
                       q0=None, substeps: int = 1, record=None) -> RoutingResult:
    """Route runoff through the D8 network with the implicit kinematic wave.

    Parameters
    ----------
    fdir : ndarray (y, x) uint8
        ESRI D8 codes (see :mod:`models.terrain`); 0 = outlet, 255 = nodata.
    lateral : ndarray (member, time, y, x) or (time, y, x), mm/h
        Runoff generated on each cell's own area ``dx * dy`` during each input step
        (float32 or float64, >= 0 on valid cells). A 3-D array is one member.
    dt_s : float, s
        Length of one input step.
    dx, dy : float, m
        Cell sizes (metric: reproject geographic grids first).
    slope : float or ndarray (y, x), m/m
        Bed slope, e.g. ``terrain.d8_slope``; > 0.
    manning_n : float or ndarray (y, x), s m^(-1/3)
        Manning's roughness; > 0.
    width : float or ndarray (y, x), m
        Channel width (wetted perimeter of the wide channel); > 0.
    q0 : ndarray (member, y, x) or (y, x), m3/s, optional
        Initial discharge (``q_final`` of the previous cycle); zero (dry) by default.
    substeps : int
        Routing steps per input step (``dt = dt_s / substeps``).
    record : array-like of int, optional
        Flat indices ``y * nx + x`` of valid cells whose discharge is recorded at the
        end of every input step (gauges, zone outlets).

    Returns
    -------
    RoutingResult
        ``q_max``, ``t_max``, ``q_record``, ``q_final``, ``outflow_volume``,
        ``storage_final``, ``storage_initial`` (see :class:`RoutingResult`).

    Raises
    ------
    ModelError
        On shape mismatches, non-positive parameters, bad record indices, flow cycles in
        ``fdir`` or negative/non-finite lateral inflow on valid cells.
    """
    return _route(fdir, lateral, dt_s, dx, dy, slope, manning_n, width, q0=q0, substeps=substeps,
                  record=record)


def _route(fdir, lateral, dt_s, dx, dy, slope, manning_n, width, q0=None, substeps=1, record=None,
           kernel: str = "auto") -> RoutingResult:
    """Validate, then run a kernel: "members" (plain sweep per member, members in
    parallel), "parts" (members in turn, each split into parts in parallel) or "auto"
    ("parts" when there are fewer members than threads). Results are bit-for-bit equal."""
    fd = terrain._check_fdir(fdir)
    ny, nx = fd.shape
    ncells = ny * nx
    lat = np.asarray(lateral)
    if lat.ndim == 3:
        lat = lat[None]
    if lat.ndim != 4 or lat.shape[2:] != (ny, nx):
        raise ModelError(
            f"lateral must be (member, time, y, x) or (time, y, x) on the fdir grid {(ny, nx)} "
            f"in mm/h; got shape {np.shape(lateral)}."
        )
    if lat.dtype not in (np.float32, np.float64):
        raise ModelError(f"lateral must be float32 or float64 mm/h; got {lat.dtype}.")
    nm, nt = lat.shape[:2]
    lat = np.ascontiguousarray(lat).reshape(nm, nt, ncells)
    dt = positive_scalar("dt_s", dt_s)
    dxv = positive_scalar("dx", dx)
    dyv = positive_scalar("dy", dy)
    if int(substeps) != substeps or substeps < 1:
        raise ModelError(f"substeps must be a whole number >= 1; got {substeps!r}.")
    valid = fd != 255
    s = grid_parameter("slope", slope, (ny, nx), valid, "m/m")
    n = grid_parameter("manning_n", manning_n, (ny, nx), valid, "s m^(-1/3)")
    w = grid_parameter("width", width, (ny, nx), valid, "m")
    alpha = np.where(valid, kinematic_alpha(np.where(valid, s, 1.0), n, w), 0.0).ravel()
    length = terrain._flow_length_numba(fd, dxv, dyv)
    cfac = alpha * length / (dt / int(substeps))  # alpha L / dt of a routing sub-step
    down = terrain._downstream(fd)
    order = terrain._order(fd, down)

    if q0 is None:
        q0a = np.zeros((nm, ncells))
    else:
        q0a = np.asarray(q0, dtype=np.float64)
        if q0a.shape == (ny, nx):
            q0a = np.broadcast_to(q0a, (nm, ny, nx))
        if q0a.shape != (nm, ny, nx):
            raise ModelError(f"q0 must be (y, x) or (member, y, x) = {(nm, ny, nx)} m3/s; got {q0a.shape}.")
        if np.any(valid[None] & ~(np.isfinite(q0a) & (q0a >= 0.0))):
            raise ModelError("q0 must be finite and >= 0 m3/s on valid cells (use q_final of the last run).")
        q0a = np.ascontiguousarray(q0a.reshape(nm, ncells))

    if record is None:
        rec = np.zeros(0, dtype=np.int64)
    else:
        rec = np.atleast_1d(np.asarray(record))
        if rec.ndim != 1 or (rec.size and rec.dtype.kind not in "iu"):
            raise ModelError("record must be a 1-D array of integer flat indices y * nx + x.")
        rec = rec.astype(np.int64)
        if rec.size and (rec.min() < 0 or rec.max() >= ncells or not valid.ravel()[rec].all()):
            raise ModelError(
                f"record indices must be valid cells in 0..{ncells - 1} (flat y * nx + x, not nodata); "
                "use np.ravel_multi_index((rows, cols), fdir.shape)."
            )

    q_max = np.full((nm, ncells), np.nan, dtype=np.float32)
    t_max = np.full((nm, ncells), -1, dtype=np.int32)
    q_final = np.full((nm, ncells), np.nan, dtype=np.float32)
    q_record = np.zeros((nm, nt, rec.size), dtype=np.float32)
    outflow = np.zeros(nm)
    storage_final = np.zeros(nm)
    storage_initial = np.zeros(nm)
    nthreads = max(1, numba.get_num_threads())
    if kernel not in ("auto", "parts", "members"):
        raise ModelError(f"kernel must be 'auto', 'parts' or 'members'; got {kernel!r}.")
    if kernel == "members" or (kernel == "auto" and nm >= nthreads):
        nbad = _route_kinematic_serial_numba(order, down, alpha, length, cfac, lat, dxv * dyv, dt, int(substeps), q0a,
                                             rec, q_max, t_max, q_record, q_final, outflow, storage_final,
                                             storage_initial)
    else:
        plan = _plan(order, down, valid.ravel(), rec, nthreads)
        nbad = _route_kinematic_numba(order, down, alpha, length, cfac, lat, dxv * dyv, dt, int(substeps), q0a, rec,
                                      *plan, q_max, t_max, q_record, q_final, outflow, storage_final,
                                      storage_initial)
    if nbad:
        raise ModelError(
            f"lateral has {nbad} negative, NaN or infinite values on valid cells; "
            "fill gaps and clip negatives before routing."
        )
    if nt == 0:
        q_max[:] = np.nan
    return RoutingResult(
        q_max=q_max.reshape(nm, ny, nx),
        t_max=t_max.reshape(nm, ny, nx),
        q_record=q_record,
        q_final=q_final.reshape(nm, ny, nx),
        outflow_volume=outflow,
        storage_final=storage_final,
        storage_initial=storage_initial,
    )
