"""Flood risk from model output: hazard to people, zone statistics, ensembles, extremes.

numpy in, numpy out. Four parts:

* **Hazard to people** (Defra/Environment Agency R&D FD2320/FD2321, *Flood Risks to
  People*, HR Wallingford 2005/2006; Ramsbottom, Wade et al.; the 2008 *Supplementary
  Note on Flood Hazard Ratings and Thresholds*)::

      HR = d * (v + 0.5) + DF          d depth (m), v velocity (m/s), DF debris factor

  ====================  ===========  =========================================
  class (``uint8``)     HR           FD2321 wording
  ====================  ===========  =========================================
  0                     < 0.75       very low hazard - caution
  1                     0.75 - 1.25  danger for some (includes children, the elderly, the infirm)
  2                     1.25 - 2.0   danger for most (includes the general public)
  3                     > 2.0        danger for all (includes the emergency services)
  255                   NaN          nodata
  ====================  ===========  =========================================

  Bins are closed on the left (HR = 0.75 is class 1, HR = 1.25 is class 2) and class 2
  includes HR = 2.0 ("> 2.0" is class 3), as the table reads.

  Debris factor, default (``debris_factor=None``): DF = 0 for d < 0.25 m and 0.5 for
  d >= 0.25 m, the simplified rule of the FD2320 supplementary note for a grid without
  land-use detail. With ``conservative_debris=True`` DF = 1.0 where v > 2 m/s (and
  d >= 0.25 m), the conservative variant of FD2321 table 3.1 for fast flow carrying
  debris. A user DF (scalar or grid) replaces both.

  **Velocity unknown** (HAND inundation gives depth only): :func:`depth_hazard_class`
  uses depth thresholds. The defaults ``(0.25, 0.5, 1.0)`` m are exactly the depths at
  which the FD2320 rating with the default DF crosses 0.75, 1.25 and 2.0 for an assumed
  velocity of 1 m/s (``HR = 1.5 d + 0.5``), a typical floodplain velocity; pass
  ``(0.3, 0.5, 1.2)`` for the depth limits of the Australian hazard curves H1/H2/H3
  (AIDR 2017, Handbook 7, Guideline 7-3, table 7).

* **Zone statistics** (:func:`zone_statistics`): per zone maximum, share of cells above
  thresholds and exposure (people, buildings) above thresholds, in one pass.
* **Ensembles** (:func:`exceedance_probability`): share of members at or above a
  threshold.
* **Extremes** (:func:`return_levels`): GEV or Gumbel fitted by maximum likelihood to
  annual maxima, return levels ``x_T = F^-1(1 - 1/T)`` and parametric-bootstrap
  confidence intervals. scipy's ``genextreme`` shape ``c`` is the negative of the
  hydrological/climatological shape: ``c = -xi`` (c > 0: bounded upper tail, Weibull
  type; c < 0: heavy tail, Frechet type).
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from numba import prange

from models.errors import ModelError

__all__ = [
    "DEPTH_ONLY_THRESHOLDS",
    "HAZARD_CLASS_NAMES",
    "HAZARD_THRESHOLDS",
    "ReturnLevels",
    "ZoneStatistics",
    "depth_hazard_class",
    "exceedance_probability",
    "hazard_class",
    "hazard_rating",
    "return_levels",
    "zone_statistics",
]

HAZARD_THRESHOLDS = (0.75, 1.25, 2.0)  # FD2321 class limits of HR
HAZARD_CLASS_NAMES = ("very low - caution", "danger for some", "danger for most", "danger for all")
DEPTH_ONLY_THRESHOLDS = (0.25, 0.5, 1.0)  # m; FD2320 class limits at v = 1 m/s, default DF
NODATA_CLASS = 255
_DF_DEPTH = 0.25  # m, depth from which debris is assumed
_DF_FAST = 2.0  # m/s, velocity above which the conservative DF is 1.0


# ----------------------------------------------------------------------------- hazard
def _float_array(name: str, a) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiu":
        raise ModelError(f"{name} must be numeric (got dtype {arr.dtype}); convert with np.asarray({name}, float).")
    return arr.astype(np.float64, copy=False)


def hazard_rating(depth, velocity=None, debris_factor=None, *, conservative_debris: bool = False) -> np.ndarray:
    """Flood hazard rating HR = d (v + 0.5) + DF (Defra/EA FD2320/FD2321).

    Parameters
    ----------
    depth : float or ndarray, m
        Water depth (>= 0; NaN = nodata).
    velocity : float or ndarray, m/s, optional
        Depth-averaged speed (>= 0), broadcast against ``depth``. None means still
        water (v = 0): the result is then a *lower bound*; for depth-only classes use
        :func:`depth_hazard_class` instead.
    debris_factor : float or ndarray, optional
        User DF (>= 0), replacing the default rule (0 for d < 0.25 m, 0.5 above).
    conservative_debris : bool
        With the default rule, DF = 1.0 where v > 2 m/s (FD2321 conservative variant).

    Returns
    -------
    hr : float64 ndarray (broadcast shape), dimensionless
        NaN where depth or velocity is NaN. Dry cells (d = 0) have HR = 0.

    Raises
    ------
    ModelError
        On negative depth, velocity or debris factor.
    """
    d = _float_array("depth", depth)
    v = np.zeros(()) if velocity is None else _float_array("velocity", velocity)
    if np.any(d < 0.0):
        raise ModelError("depth must be >= 0 m (NaN for nodata); clip small negative depths with np.maximum(depth, 0).")
    if np.any(v < 0.0):
        raise ModelError("velocity must be a speed >= 0 m/s; pass np.hypot(u, v) of the velocity components.")
    if debris_factor is None:
        df = np.where(d >= _DF_DEPTH, 0.5, 0.0)
        if conservative_debris:
            df = np.where((d >= _DF_DEPTH) & (v > _DF_FAST), 1.0, df)
    else:
        df = _float_array("debris_factor", debris_factor)
        if np.any(df < 0.0):
            raise ModelError("debris_factor must be >= 0 (FD2321 uses 0, 0.5 or 1).")
        df = np.where(d > 0.0, df, 0.0)  # no water, no debris
    hr = d * (v + 0.5) + df
    return np.where(np.isnan(d) | np.isnan(v), np.nan, hr)


@numba.njit(cache=True, parallel=True)
def _classify_numba(x, t0, t1, t2, out):
    for i in prange(x.size):
        h = x[i]
        if np.isnan(h):
            out[i] = 255
        elif h < t0:
            out[i] = 0
        elif h < t1:
            out[i] = 1
        elif h <= t2:
            out[i] = 2
        else:
            out[i] = 3


def _classify(name: str, x, thresholds) -> np.ndarray:
    a = _float_array(name, x)
    t = tuple(float(v) for v in thresholds)
    if len(t) != 3 or not all(np.isfinite(t)) or not (t[0] < t[1] < t[2]):
        raise ModelError(f"thresholds must be 3 finite, increasing numbers; got {thresholds!r}.")
    flat = np.ascontiguousarray(a).ravel()
    out = np.empty(flat.size, dtype=np.uint8)
    _classify_numba(flat, t[0], t[1], t[2], out)
    return out.reshape(a.shape)


def hazard_class(hr) -> np.ndarray:
    """FD2321 hazard class of a hazard rating.

    Parameters
    ----------
    hr : float or ndarray, dimensionless
        Hazard rating (:func:`hazard_rating`); NaN = nodata.

    Returns
    -------
    cls : uint8 ndarray (shape of ``hr``)
        0 (HR < 0.75), 1 (0.75 <= HR < 1.25), 2 (1.25 <= HR <= 2.0), 3 (HR > 2.0),
        255 for NaN. Names in ``HAZARD_CLASS_NAMES``.
    """
    return _classify("hr", hr, HAZARD_THRESHOLDS)


def depth_hazard_class(depth, thresholds=DEPTH_ONLY_THRESHOLDS) -> np.ndarray:
    """Hazard class from depth alone, for when velocity is not modelled (HAND).

    Parameters
    ----------
    depth : float or ndarray, m
        Water depth; NaN = nodata.
    thresholds : 3 increasing floats, m
        Class limits. Default ``(0.25, 0.5, 1.0)``: the FD2320 limits at an assumed
        1 m/s (see the module notes); ``(0.3, 0.5, 1.2)`` follows AIDR (2017).

    Returns
    -------
    cls : uint8 ndarray (shape of ``depth``)
        0 below the first limit, 1 and 2 from the first and second (left-closed), 3
        above the third, 255 for NaN; same meaning as :func:`hazard_class`.
    """
    d = _float_array("depth", depth)
    if np.any(d < 0.0):
        raise ModelError("depth must be >= 0 m (NaN for nodata).")
    return _classify("depth", d, thresholds)


# ----------------------------------------------------------------------------- zones
class ZoneStatistics(NamedTuple):
    """Outputs of :func:`zone_statistics` (leading axes of ``values`` kept, then zone).

    Attributes
    ----------
    maximum : ndarray (..., n_zone) float64, units of values
        NaN for zones without a valid (non-NaN) cell.
    count : ndarray (n_zone,) int64
        Cells labelled with the zone (valid or not).
    valid_count : ndarray (..., n_zone) int64
        Cells of the zone with a non-NaN value.
    share_above : ndarray (..., n_zone, n_threshold) float64
        Share of the zone's valid cells with value > threshold (NaN if none valid).
    exposure_above : ndarray (..., n_zone, n_threshold) float64 or None
        Sum of ``weights`` over cells with value > threshold (people, buildings).
    exposure_total : ndarray (n_zone,) float64 or None
        Sum of ``weights`` over the zone.
    thresholds : ndarray (n_threshold,) float64
    """

    maximum: np.ndarray
    count: np.ndarray
    valid_count: np.ndarray
    share_above: np.ndarray
    exposure_above: np.ndarray | None
    exposure_total: np.ndarray | None
    thresholds: np.ndarray


@numba.njit(cache=True, parallel=True)
def _zone_stats_numba(values, labels, thr, weights, use_w, nz, vmax, nvalid, nabove, wabove):
    """values (k, n); labels (n,) int64 (< 0: no zone). Parallel over k (one pass per k)."""
    nk, n = values.shape
    nt = thr.size
    for k in prange(nk):
        for i in range(n):
            z = labels[i]
            if z < 0:
                continue
            v = np.float64(values[k, i])
            if np.isnan(v):
                continue
            nvalid[k, z] += 1
            if not (v <= vmax[k, z]):
                vmax[k, z] = v
            for j in range(nt):
                if v > thr[j]:
                    nabove[k, z, j] += 1
                    if use_w:
                        wabove[k, z, j] += weights[i]
                else:
                    break  # thresholds increase


def zone_statistics(values, zone_labels, thresholds=(0.15, 0.3, 0.6), weights=None,
                    n_zones: int | None = None) -> ZoneStatistics:
    """Per-zone maximum, share above thresholds and exposure above thresholds (one pass).

    Parameters
    ----------
    values : ndarray (..., y, x)
        E.g. depth (m) or hazard rating; NaN = nodata (ignored). Leading axes (member,
        time) are kept in the outputs.
    zone_labels : ndarray (y, x) int
        Zone id per cell, 0..n_zone-1; negative = in no zone.
    thresholds : sequence of float, units of values
        Strictly increasing; "above" is ``value > threshold``.
    weights : ndarray (y, x), optional
        Exposure per cell (people, buildings; >= 0, finite).
    n_zones : int, optional
        Number of zones (default ``max(zone_labels) + 1``).

    Returns
    -------
    ZoneStatistics
    """
    lab = np.asarray(zone_labels)
    if lab.ndim != 2 or lab.dtype.kind not in "iu":
        raise ModelError(f"zone_labels must be a 2-D integer array (y, x); got {lab.dtype} shape {lab.shape}.")
    v = np.asarray(values)
    if v.ndim < 2 or v.shape[-2:] != lab.shape or v.dtype.kind not in "fiu":
        raise ModelError(
            f"values must be numeric (..., y, x) on the zone_labels grid {lab.shape}; got {v.dtype} {v.shape}."
        )
    thr = np.asarray(thresholds, dtype=np.float64).ravel()
    if thr.size == 0 or not np.all(np.isfinite(thr)) or np.any(np.diff(thr) <= 0):
        raise ModelError(f"thresholds must be finite and strictly increasing; got {thresholds!r}.")
    nz = int(lab.max(initial=-1)) + 1 if n_zones is None else int(n_zones)
    if lab.size and lab.max(initial=-1) >= nz:
        raise ModelError(f"zone_labels has ids >= n_zones={nz}; pass n_zones > max(zone_labels).")
    labels = np.ascontiguousarray(lab, dtype=np.int64).ravel()
    use_w = weights is not None
    if use_w:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != lab.shape or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ModelError(f"weights must be a finite, >= 0 (y, x) = {lab.shape} exposure grid; got shape {w.shape}.")
        w = np.ascontiguousarray(w).ravel()
    else:
        w = np.zeros(1)
    lead = v.shape[:-2]
    if v.dtype not in (np.float32, np.float64):
        v = v.astype(np.float64)
    v2 = np.ascontiguousarray(v).reshape(-1, labels.size)
    nk = v2.shape[0]
    vmax = np.full((nk, nz), np.nan)
    nvalid = np.zeros((nk, nz), dtype=np.int64)
    nabove = np.zeros((nk, nz, thr.size), dtype=np.int64)
    wabove = np.zeros((nk, nz, thr.size) if use_w else (1, 1, 1))
    _zone_stats_numba(v2, labels, thr, w, use_w, nz, vmax, nvalid, nabove, wabove)
    count = np.bincount(labels[labels >= 0], minlength=nz).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = nabove / nvalid[..., None]
    share = np.where(nvalid[..., None] > 0, share, np.nan)
    wtot = np.bincount(labels[labels >= 0], weights=w[labels >= 0], minlength=nz) if use_w else None
    return ZoneStatistics(
        maximum=vmax.reshape(lead + (nz,)),
        count=count,
        valid_count=nvalid.reshape(lead + (nz,)),
        share_above=share.reshape(lead + (nz, thr.size)),
        exposure_above=wabove.reshape(lead + (nz, thr.size)) if use_w else None,
        exposure_total=wtot,
        thresholds=thr,
    )


# ----------------------------------------------------------------------------- ensembles
def exceedance_probability(member_values, threshold, axis: int = 0) -> np.ndarray:
    """Share of ensemble members at or above a threshold, ignoring NaN members.

    Parameters
    ----------
    member_values : ndarray
        Ensemble values (e.g. peak depth m) with a member axis.
    threshold : float or ndarray (broadcast against the result)
        Same units as the values; "exceeds" is ``value >= threshold``.
    axis : int
        Member axis.

    Returns
    -------
    p : float64 ndarray (member axis removed), 0..1
        NaN where every member is NaN.
    """
    x = _float_array("member_values", member_values)
    if x.ndim == 0:
        raise ModelError("member_values needs a member axis (at least 1-D).")
    try:
        xm = np.moveaxis(x, axis, 0)
    except np.exceptions.AxisError:
        raise ModelError(f"axis {axis} is out of range for member_values of shape {x.shape}.") from None
    thr = _float_array("threshold", threshold)
    ok = ~np.isnan(xm)
    n = ok.sum(axis=0)
    hits = (ok & (xm >= thr)).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, hits / np.maximum(n, 1), np.nan)


# ----------------------------------------------------------------------------- extremes
class ReturnLevels(NamedTuple):
    """Outputs of :func:`return_levels`.

    Attributes
    ----------
    return_periods : ndarray (n,) float64, years
    level : ndarray (n,) float64, units of the maxima
        Maximum-likelihood return levels ``ppf(1 - 1/T)``.
    lower, upper : ndarray (n,) float64
        Bounds of the central ``ci`` bootstrap interval (NaN when ``n_boot = 0``).
    params : tuple of float
        scipy parameters: ``(c, loc, scale)`` for "gev" (``c = -xi``), ``(loc, scale)``
        for "gumbel".
    dist : str
    """

    return_periods: np.ndarray
    level: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    params: tuple
    dist: str


def _fit(dist: str, x: np.ndarray) -> tuple:
    from scipy import stats

    loc, scale = stats.gumbel_r.fit(x)
    if dist == "gumbel":
        return (float(loc), float(scale))
    # start from the Gumbel fit (c = 0); scipy's default start can stall on short records
    c, loc, scale = stats.genextreme.fit(x, 0.0, loc=loc, scale=scale)
    return (float(c), float(loc), float(scale))


def _ppf(dist: str, params: tuple, p: np.ndarray) -> np.ndarray:
    from scipy import stats

    if dist == "gumbel":
        return stats.gumbel_r.ppf(p, *params)
    return stats.genextreme.ppf(p, *params)


def return_levels(annual_maxima, return_periods=(2, 5, 10, 20, 50, 100), dist: str = "gev",
                  ci: float = 0.9, n_boot: int = 200, seed=0) -> ReturnLevels:
    """Return levels of annual maxima by a GEV or Gumbel fit, with bootstrap intervals.

    Parameters
    ----------
    annual_maxima : 1-D array, any unit (e.g. m3/s or m)
        At least 5 finite values.
    return_periods : sequence of float, years
        Each > 1.
    dist : {"gev", "gumbel"}
        Fitted by maximum likelihood (``scipy.stats.genextreme`` / ``gumbel_r``).
        Gumbel: ``x_T = mu - beta ln(-ln(1 - 1/T))``.
    ci : float
        Central confidence level of the intervals (0 < ci < 1).
    n_boot : int
        Parametric bootstrap samples (same size as the record, drawn from the fit and
        refitted); 0 skips the intervals. GEV refits take ~10-30 ms each.
    seed : int or numpy.random.Generator
        Seeds the bootstrap (reproducible by default).

    Returns
    -------
    ReturnLevels
    """
    x = np.asarray(annual_maxima, dtype=np.float64)
    if x.ndim != 1:
        raise ModelError(f"annual_maxima must be 1-D (one maximum per year); got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ModelError(
            f"annual_maxima has {int((~np.isfinite(x)).sum())} NaN or infinite values; drop incomplete years first."
        )
    if x.size < 5:
        raise ModelError(f"need at least 5 annual maxima to fit {dist!r}; got {x.size} (use a longer record).")
    if np.ptp(x) == 0.0:
        raise ModelError("annual_maxima are all equal; a distribution cannot be fitted.")
    key = str(dist).lower()
    if key not in ("gev", "gumbel"):
        raise ModelError(f"dist must be 'gev' or 'gumbel'; got {dist!r}.")
    t = np.asarray(return_periods, dtype=np.float64).ravel()
    if t.size == 0 or not np.all(np.isfinite(t) & (t > 1.0)):
        raise ModelError(f"return_periods must be > 1 year; got {return_periods!r}.")
    if not (0.0 < float(ci) < 1.0):
        raise ModelError(f"ci must lie strictly between 0 and 1 (e.g. 0.9); got {ci!r}.")
    if int(n_boot) != n_boot or n_boot < 0:
        raise ModelError(f"n_boot must be a whole number >= 0; got {n_boot!r}.")
    p = 1.0 - 1.0 / t
    params = _fit(key, x)
    level = _ppf(key, params, p)
    lower = np.full(t.size, np.nan)
    upper = np.full(t.size, np.nan)
    if n_boot:
        from scipy import stats

        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        frozen = stats.gumbel_r(*params) if key == "gumbel" else stats.genextreme(*params)
        boot = np.empty((int(n_boot), t.size))
        for b in range(int(n_boot)):
            sample = frozen.rvs(size=x.size, random_state=rng)
            boot[b] = _ppf(key, _fit(key, sample), p)
        a = (1.0 - float(ci)) / 2.0
        lower, upper = np.nanquantile(boot, [a, 1.0 - a], axis=0)
    return ReturnLevels(return_periods=t, level=level, lower=lower, upper=upper, params=params, dist=key)
