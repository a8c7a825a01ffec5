"""River inundation from discharge with HAND and synthetic rating curves.

Method of the NOAA OWP inundation mapping (Zheng, Tarboton, Maidment, Liu & Passalacqua
2018, JAWRA 54(4), 785-806; TauDEM ``catchhydrogeo``): for every reach and stage ``h``
the cells of the reach's catchment with ``HAND < h`` are under water, and

    V(h) = sum (h - HAND) * cell_area         water volume, m3
    B(h) = sum cell_area                      bed (wetted planar) area, m2
    A = V / L,  P = B / L,  R = A / P         mean cross-section, wetted perimeter, radius
    Q = A * R**(2/3) * sqrt(S) / n            Manning

with ``L`` the reach length and ``S`` its slope. A discharge per reach is turned back
into a stage by interpolating the curve, and the stage into a depth per cell,
``max(stage - HAND, 0)``.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from models.errors import ModelError, as_2d

__all__ = ["RatingCurves", "depth_from_stage", "stage_from_discharge", "synthetic_rating_curves"]


class RatingCurves(NamedTuple):
    """Synthetic rating curves, one row per reach id (row 0 unused, all zeros).

    Attributes
    ----------
    discharge : ndarray (n_reach + 1, n_stage) float64, m3/s
    area : ndarray (n_reach + 1, n_stage) float64, m2
        Mean wetted cross-section V / L.
    perimeter : ndarray (n_reach + 1, n_stage) float64, m
        Mean wetted perimeter B / L.
    radius : ndarray (n_reach + 1, n_stage) float64, m
        Hydraulic radius A / P (0 where nothing is wet).
    volume : ndarray (n_reach + 1, n_stage) float64, m3
    bed_area : ndarray (n_reach + 1, n_stage) float64, m2
    stages : ndarray (n_stage,) float64, m
        The stages of the columns.
    """

    discharge: np.ndarray
    area: np.ndarray
    perimeter: np.ndarray
    radius: np.ndarray
    volume: np.ndarray
    bed_area: np.ndarray
    stages: np.ndarray


@numba.njit(cache=True)
def _rating_accumulate_numba(hand, reach, cell_area, scalar_area, stages, volume, bed):
    """One pass over cells adding (h - HAND) * a and a to every stage h > HAND of the reach."""
    nst = stages.size
    for i in range(hand.size):
        r = reach[i]
        h = np.float64(hand[i])
        if r <= 0 or not np.isfinite(h):
            continue
        a = cell_area[0] if scalar_area else cell_area[i]
        k = nst - 1
        while k >= 0 and stages[k] > h:
            volume[r, k] += (stages[k] - h) * a
            bed[r, k] += a
            k -= 1


def _check_per_reach(name: str, value, nreach1: int, unit: str) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64)
    if v.ndim == 0:
        v = np.full(nreach1, float(v))
    if v.shape != (nreach1,):
        raise ModelError(
            f"{name} must be a scalar or a (n_reach + 1,) = ({nreach1},) array indexed by reach id "
            f"({unit}); got shape {v.shape}."
        )
    if not np.all(np.isfinite(v[1:]) & (v[1:] > 0.0)):
        raise ModelError(f"{name} must be finite and > 0 {unit} for every reach 1..{nreach1 - 1}.")
    return v


def synthetic_rating_curves(hand, reach_of_cell, reach_length, reach_slope, manning_n, cell_area,
                            stages) -> RatingCurves:
    """Stage-discharge curves for every reach from HAND (one pass over the cells).

    Parameters
    ----------
    hand : ndarray (y, x), m
        Height above nearest drainage (NaN = not covered).
    reach_of_cell : ndarray (y, x) int
        Reach id of the drainage cell each cell drains to, 0 = none
        (:func:`models.terrain.reach_catchments`).
    reach_length : ndarray (n_reach + 1,), m
        Channel length per reach id ([0] ignored), e.g. from
        :func:`models.terrain.reach_properties`.
    reach_slope : ndarray (n_reach + 1,), m/m
        Channel slope per reach id ([0] ignored).
    manning_n : float or ndarray (n_reach + 1,), s m^(-1/3)
        Roughness of the channel and floodplain.
    cell_area : float or ndarray (y, x), m2
        Planar area of each cell.
    stages : ndarray (n_stage,), m
        Increasing stages above the drainage cells, the first usually 0.

    Returns
    -------
    RatingCurves
        ``discharge`` etc. of shape (n_reach + 1, n_stage); row r is reach r.

    Notes
    -----
    Where a flat floodplain starts to wet, the bed area (perimeter) jumps before the
    volume does and Manning's discharge can dip with rising stage. Make the curve
    monotone (``np.maximum.accumulate(discharge, axis=1)``) before
    :func:`stage_from_discharge`, which requires non-decreasing curves.
    """
    h = as_2d("hand", hand, kinds="fiu")
    rc = as_2d("reach_of_cell", reach_of_cell, kinds="iu")
    if rc.shape != h.shape:
        raise ModelError(f"reach_of_cell has shape {rc.shape} but hand has {h.shape}; use the same grid.")
    length = np.asarray(reach_length, dtype=np.float64)
    if length.ndim != 1 or length.size < 1:
        raise ModelError("reach_length must be a 1-D array indexed by reach id (entry 0 unused).")
    nreach1 = length.size
    if rc.size and (rc.min() < 0 or rc.max() >= nreach1):
        raise ModelError(
            f"reach_of_cell has ids outside 0..{nreach1 - 1}; reach_length must have an entry for every "
            "reach id (length n_reach + 1, index = id)."
        )
    length = _check_per_reach("reach_length", length, nreach1, "m")
    slope = _check_per_reach("reach_slope", reach_slope, nreach1, "m/m")
    nman = _check_per_reach("manning_n", manning_n, nreach1, "s m^(-1/3)")
    st = np.asarray(stages, dtype=np.float64)
    if st.ndim != 1 or st.size < 2 or not np.all(np.isfinite(st)) or np.any(np.diff(st) <= 0) or st[0] < 0:
        raise ModelError("stages must be a 1-D array of at least 2 finite, strictly increasing values >= 0 m.")
    ca = np.asarray(cell_area, dtype=np.float64)
    if ca.ndim == 0:
        if not (np.isfinite(ca) and ca > 0):
            raise ModelError(f"cell_area must be > 0 m2; got {float(ca)!r}.")
        area_arr, scalar = ca.reshape(1), True
    else:
        if ca.shape != h.shape:
            raise ModelError(f"cell_area must be a scalar or (y, x) = {h.shape} m2; got {ca.shape}.")
        area_arr, scalar = np.ascontiguousarray(ca).ravel(), False
    volume = np.zeros((nreach1, st.size))
    bed = np.zeros((nreach1, st.size))
    _rating_accumulate_numba(np.ascontiguousarray(h).ravel(), np.ascontiguousarray(rc).ravel().astype(np.int64),
                             area_arr, scalar, st, volume, bed)
    safe_length = np.where(length > 0.0, length, 1.0)[:, None]  # row 0 is unused
    area = volume / safe_length
    perim = bed / safe_length
    with np.errstate(invalid="ignore", divide="ignore"):
        radius = np.where(perim > 0.0, area / perim, 0.0)
    q = area * radius ** (2.0 / 3.0) * np.sqrt(slope)[:, None] / nman[:, None]
    for a in (area, perim, q):
        a[0] = 0.0
    radius[0] = 0.0
    volume[0] = 0.0
    bed[0] = 0.0
    return RatingCurves(discharge=q, area=area, perimeter=perim, radius=radius, volume=volume,
                        bed_area=bed, stages=st)


@numba.njit(cache=True, error_model="numpy")
def _stage_from_discharge_numba(stages, table, q, mode, out):
    """Interpolate stage from discharge; q (k, n_reach+1), table (n_reach+1, n_stage)."""
    nk, nr = q.shape
    nst = stages.size
    for k in range(nk):
        for r in range(nr):
            qq = q[k, r]
            if not (qq >= 0.0):
                out[k, r] = np.nan
                continue
            top = table[r, nst - 1]
            if qq > top:
                if mode == 1:  # clip
                    out[k, r] = stages[nst - 1]
                    continue
                if mode == 2:  # nan
                    out[k, r] = np.nan
                    continue
                # extrapolate with the slope of the last rising segment
                j = nst - 1
                while j > 0 and table[r, j - 1] >= top:
                    j -= 1
                if j == 0:
                    out[k, r] = stages[nst - 1]
                    continue
                dq = table[r, j] - table[r, j - 1]
                out[k, r] = stages[nst - 1] + (qq - top) * (stages[j] - stages[j - 1]) / dq
                continue
            # first index with table >= qq (binary search on the non-decreasing curve)
            lo = 0
            hi = nst - 1
            while lo < hi:
                mid = (lo + hi) >> 1
                if table[r, mid] >= qq:
                    hi = mid
                else:
                    lo = mid + 1
            if lo == 0:
                out[k, r] = stages[0]
            else:
                q0 = table[r, lo - 1]
                q1 = table[r, lo]
                out[k, r] = stages[lo - 1] + (qq - q0) * (stages[lo] - stages[lo - 1]) / (q1 - q0)


_BEYOND = {"extrapolate": 0, "clip": 1, "nan": 2}


def stage_from_discharge(stages, discharge_table, q_reach, beyond: str = "extrapolate") -> np.ndarray:
    """Stage of every reach for given discharges, by interpolating the rating curves.

    Linear interpolation of stage against discharge between table points; the curves
    must be non-decreasing in stage. A discharge of 0 (or below the first non-zero
    point) gives the lowest stage with that discharge.

    Parameters
    ----------
    stages : ndarray (n_stage,), m
        Increasing stages of the table.
    discharge_table : ndarray (n_reach + 1, n_stage), m3/s
        ``RatingCurves.discharge``.
    q_reach : ndarray (..., n_reach + 1), m3/s
        Discharge per reach id, with any leading axes (e.g. members).
    beyond : {"extrapolate", "clip", "nan"}
        Discharge above the table's last point: "extrapolate" continues the last rising
        segment linearly (default), "clip" returns the top stage, "nan" returns NaN.
        Callers can flag such reaches with ``q_reach > discharge_table[:, -1]``.

    Returns
    -------
    stage : ndarray (shape of ``q_reach``) float64, m
        NaN where ``q_reach`` is NaN or negative.
    """
    st = np.asarray(stages, dtype=np.float64)
    tab = np.asarray(discharge_table, dtype=np.float64)
    if st.ndim != 1 or st.size < 2 or np.any(np.diff(st) <= 0):
        raise ModelError("stages must be a 1-D strictly increasing array with at least 2 values (m).")
    if tab.ndim != 2 or tab.shape[1] != st.size:
        raise ModelError(
            f"discharge_table must be (n_reach + 1, n_stage={st.size}); got shape {tab.shape}."
        )
    if not np.all(np.isfinite(tab)) or np.any(np.diff(tab, axis=1) < 0):
        raise ModelError("discharge_table must be finite and non-decreasing along the stage axis (m3/s).")
    if beyond not in _BEYOND:
        raise ModelError(f"beyond must be one of {sorted(_BEYOND)}; got {beyond!r}.")
    q = np.asarray(q_reach, dtype=np.float64)
    if q.ndim < 1 or q.shape[-1] != tab.shape[0]:
        raise ModelError(
            f"q_reach must end with the reach axis of length {tab.shape[0]} (n_reach + 1, index = id); "
            f"got shape {q.shape}."
        )
    q2 = np.ascontiguousarray(q.reshape(-1, tab.shape[0]))
    out = np.empty_like(q2)
    _stage_from_discharge_numba(st, np.ascontiguousarray(tab), q2, _BEYOND[beyond], out)
    return out.reshape(q.shape)


@numba.njit(cache=True, parallel=True)
def _depth_from_stage_numba(hand, reach, stage, out):
    """depth[k, y, x] = max(stage[k, reach] - HAND, 0); NaN where no reach or no HAND."""
    nk = stage.shape[0]
    ny, nx = hand.shape
    for row in prange(nk * ny):
        k = row // ny
        y = row - k * ny
        for x in range(nx):
            r = reach[y, x]
            h = np.float64(hand[y, x])
            if r <= 0 or not np.isfinite(h):
                out[k, y, x] = np.nan
                continue
            d = stage[k, r] - h
            out[k, y, x] = max(0.0, d)


def depth_from_stage(hand, reach_of_cell, stage) -> np.ndarray:
    """Water depth per cell from the stage of the reach it drains to.

    Parameters
    ----------
    hand : ndarray (y, x), m
        Height above nearest drainage.
    reach_of_cell : ndarray (y, x) int
        Reach id per cell, 0 = none.
    stage : ndarray (n_reach + 1,) or (member, n_reach + 1), m
        Stage per reach id (from :func:`stage_from_discharge`).

    Returns
    -------
    depth : ndarray (y, x) or (member, y, x) float32, m
        ``max(stage[reach] - HAND, 0)``: 0 where HAND >= stage, NaN where the cell has
        no reach or no HAND (outside the river model) or the stage is NaN.
    """
    h = as_2d("hand", hand, kinds="fiu")
    rc = as_2d("reach_of_cell", reach_of_cell, kinds="iu")
    if rc.shape != h.shape:
        raise ModelError(f"reach_of_cell has shape {rc.shape} but hand has {h.shape}; use the same grid.")
    s = np.asarray(stage, dtype=np.float64)
    if s.ndim not in (1, 2):
        raise ModelError(f"stage must be (n_reach + 1,) or (member, n_reach + 1); got shape {s.shape}.")
    s2 = np.ascontiguousarray(s.reshape(-1, s.shape[-1]))
    if rc.size and (rc.min() < 0 or rc.max() >= s2.shape[1]):
        raise ModelError(
            f"reach_of_cell has ids outside 0..{s2.shape[1] - 1}; stage needs one entry per reach id "
            "(length n_reach + 1, index = id)."
        )
    if h.dtype not in (np.float32, np.float64):
        h = h.astype(np.float64)
    out = np.empty((s2.shape[0],) + h.shape, dtype=np.float32)
    _depth_from_stage_numba(np.ascontiguousarray(h), np.ascontiguousarray(rc).astype(np.int64), s2, out)
    return out[0] if s.ndim == 1 else out
