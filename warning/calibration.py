"""Calibration of the lumped continuous SCS-CN model on a gauged catchment.

The record is a whitespace-separated table of hourly rain ``P``, potential evaporation
``ETpot`` and specific discharge ``Q`` (all mm/h), as in the Hupsel Brook file of the
WALRUS repository (``"date" "P" "ETpot" "Q"``, date ``YYYYmmddHH``, ``NA`` for a missing
value; Brauer et al. 2014, HESS 18:4007). The file does not state a time zone: times are
read as UTC, and each row is taken as the hour that *starts* at its time stamp. (The
mean daily cycle of ``ETpot`` in the Hupsel file is centred near 11:30 on that reading,
in winter and in summer alike, close to solar noon at 6.65 deg E in UTC; this supports,
but does not prove, the reading.)

The procedure (:func:`calibrate`):

1. The model runs continuously from the first hour of the calibration period. It starts
   with the soil store at its threshold ``Sa``, empty quick reservoirs and the slow
   reservoir holding the first observed discharge in steady state.
2. The first ``warmup_days`` (default 90: for 2011 that is January to March) only warm
   the stores up; the objective is the Nash-Sutcliffe efficiency (NSE) of hourly
   discharge from the end of the warm-up to the end of the calibration period. Hours
   with a missing observation are left out of every score.
3. ``scipy.optimize.differential_evolution`` maximises that NSE over the bounds of
   :data:`DEFAULT_BOUNDS` (searched on a log scale where marked), with a fixed seed and
   ``updating="deferred"``, so the result is the same for any ``workers``. The
   optimiser never sees the validation period.
4. With the best parameters the model runs once, continuously, from the start of the
   calibration period to the end of the validation period (the validation period starts
   from the warm state of the calibration run), and NSE and KGE are reported for both
   periods.

Scores: NSE (Nash & Sutcliffe 1970) ``1 - sum((s - o)**2) / sum((o - mean(o))**2)``;
KGE (Gupta et al. 2009) ``1 - sqrt((r - 1)**2 + (alpha - 1)**2 + (beta - 1)**2)`` with
``r`` the linear correlation, ``alpha = std(s) / std(o)`` and ``beta = mean(s) /
mean(o)`` (population standard deviations; the form hydroeval calls ``kge``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import ModelError
from models.lumped import LumpedParams, LumpedState, simulate

from .errors import ConfigError, IngestError

__all__ = [
    "DEFAULT_BOUNDS",
    "Bound",
    "CalibrationResult",
    "Period",
    "Record",
    "Scores",
    "calibrate",
    "evaluate",
    "initial_state",
    "kge",
    "kge_components",
    "nse",
    "read_params",
    "read_peq",
    "write_params",
]

log = logging.getLogger(__name__)

_HOUR = np.timedelta64(1, "h")


# --------------------------------------------------------------------------- the record
@dataclass(frozen=True)
class Record:
    """An hourly rain, evaporation and discharge record of one catchment.

    Attributes
    ----------
    time : ndarray (time,) datetime64[h]
        Start of each hour, UTC (naive values), consecutive without gaps.
    rain_mm_h : ndarray (time,) float64, mm/h
        Catchment rain during the hour.
    etpot_mm_h : ndarray (time,) float64, mm/h
        Potential evaporation during the hour.
    q_mm_h : ndarray (time,) float64, mm/h
        Observed specific discharge; NaN where missing.
    source : str
        Where the record came from (the file path).
    """

    time: np.ndarray
    rain_mm_h: np.ndarray
    etpot_mm_h: np.ndarray
    q_mm_h: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return int(self.time.size)

    @property
    def start(self) -> datetime:
        """First hour, UTC."""
        return _to_datetime(self.time[0])

    @property
    def end(self) -> datetime:
        """Last hour (its start), UTC."""
        return _to_datetime(self.time[-1])

    def index(self, when: datetime | np.datetime64) -> int:
        """Position of the hour that starts at ``when`` (UTC); IndexError when outside."""
        t = _to_h(when)
        i = int((t - self.time[0]) // _HOUR)
        if not 0 <= i < self.time.size:
            raise IndexError(f"{when} is outside the record ({self.start:%Y-%m-%d %H:%M} to "
                             f"{self.end:%Y-%m-%d %H:%M} UTC)")
        return i


def _to_h(when: datetime | date | np.datetime64) -> np.datetime64:
    if isinstance(when, datetime) and when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return np.datetime64(when, "h")


def _to_datetime(t: np.datetime64) -> datetime:
    return datetime.fromisoformat(str(np.datetime64(t, "h")) + ":00").replace(tzinfo=UTC)


_HEADER = ["date", "P", "ETpot", "Q"]


def read_peq(path: str | Path) -> Record:
    """Read an hourly ``date P ETpot Q`` file (WALRUS ``PEQ_*.dat`` layout).

    Parameters
    ----------
    path : str or Path
        Whitespace-separated text: a header ``"date" "P" "ETpot" "Q"`` (quotes
        optional), then one row per hour, date ``YYYYmmddHH`` (read as UTC), values in
        mm/h, ``NA`` for a missing value.

    Returns
    -------
    Record
        Missing discharge becomes NaN.

    Raises
    ------
    IngestError
        When the file is missing or unreadable, the header is not the expected one, a
        row has the wrong number of fields, a date or number cannot be read, a value is
        negative, rain or evaporation is missing, or the hours are not consecutive. The
        message names the file and the line (1-based).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise IngestError(f"{p}: file not found. Give the path of the hourly P/ETpot/Q record "
                          "(e.g. ../shared/data/storms/hupsel_hourly/PEQ_Hupsel.dat).") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IngestError(f"{p}: cannot read the file ({exc}).") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise IngestError(f"{p}:1: empty file or empty header; expected the header "
                          '"date" "P" "ETpot" "Q".')
    header = [h.strip('"\'') for h in lines[0].split()]
    if header != _HEADER:
        raise IngestError(f"{p}:1: header is {lines[0].strip()!r}; expected \"date\" \"P\" \"ETpot\" \"Q\" "
                          "(hourly rows: date YYYYmmddHH, then P, ETpot, Q in mm/h).")
    n = len(lines) - 1
    times = np.empty(n, dtype="datetime64[h]")
    vals = np.empty((n, 3), dtype=np.float64)
    k = 0
    for lineno, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            raise IngestError(f"{p}:{lineno}: expected 4 fields (date P ETpot Q), found {len(parts)}: "
                              f"{line.strip()[:80]!r}.")
        d = parts[0].strip('"')
        try:
            if len(d) != 10 or not d.isdigit():
                raise ValueError
            t = datetime(int(d[:4]), int(d[4:6]), int(d[6:8]), int(d[8:10]))
        except ValueError:
            raise IngestError(f"{p}:{lineno}: date {parts[0]!r} is not a valid YYYYmmddHH time.") from None
        times[k] = np.datetime64(t, "h")
        for j, (name, tok) in enumerate(zip(_HEADER[1:], parts[1:])):
            if tok == "NA":
                if name != "Q":
                    raise IngestError(f"{p}:{lineno}: {name} is missing (NA); the model needs complete "
                                      "rain and evaporation series. Fill the gap before calibrating.")
                vals[k, j] = np.nan
                continue
            try:
                v = float(tok)
            except ValueError:
                raise IngestError(f"{p}:{lineno}: {name} value {tok!r} is not a number "
                                  "(use NA for a missing value).") from None
            if not math.isfinite(v) or v < 0.0:
                raise IngestError(f"{p}:{lineno}: {name} = {tok} mm/h; values must be finite and >= 0.")
            vals[k, j] = v
        if k > 0 and times[k] - times[k - 1] != _HOUR:
            raise IngestError(f"{p}:{lineno}: time {d} does not follow the previous row "
                              f"({times[k - 1]!s}) by one hour; the record must be hourly without gaps "
                              "or repeats (use NA for missing discharge).")
        k += 1
    if k < 2:
        raise IngestError(f"{p}: fewer than two data rows; nothing to calibrate on.")
    log.info("read %d hourly rows from %s (%s to %s, times taken as UTC)", k, p, times[0], times[k - 1])
    return Record(times[:k].copy(), vals[:k, 0].copy(), vals[:k, 1].copy(), vals[:k, 2].copy(), str(p))


# --------------------------------------------------------------------------- periods
@dataclass(frozen=True)
class Period:
    """A span of whole hours, both ends included (UTC).

    Attributes
    ----------
    start : datetime
        First hour (its start), UTC.
    end : datetime
        Last hour (its start), UTC.
    """

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            v = getattr(self, name)
            if v.tzinfo is None:
                object.__setattr__(self, name, v.replace(tzinfo=UTC))
        if self.end < self.start:
            raise ConfigError(f"period ends ({self.end:%Y-%m-%d %H:%M}) before it starts "
                              f"({self.start:%Y-%m-%d %H:%M})")

    @classmethod
    def parse(cls, text: str) -> Period:
        """Parse ``START:END`` (or ``START..END``) with dates ``YYYY-mm-dd``.

        The end date is included whole (through its 23:00 hour). ``START..END`` also
        takes hours, ``2013-01-01T06..2013-01-02T18``.
        """
        s = text.strip()
        m = re.fullmatch(r"(\d{4}-\d{2}-\d{2})\s*(?::|\.\.)\s*(\d{4}-\d{2}-\d{2})", s)
        try:
            if m:
                a = datetime.fromisoformat(m.group(1))
                b = datetime.fromisoformat(m.group(2)) + timedelta(hours=23)
            elif ".." in s:
                left, right = (x.strip() for x in s.split("..", 1))
                a = _parse_when(left, end=False)
                b = _parse_when(right, end=True)
            else:
                raise ValueError
        except ValueError:
            raise ConfigError(f"period {text!r} is not START:END with dates like 2011-01-01:2012-12-31 "
                              "(or START..END with hours, 2013-01-01T06..2013-01-02T18)") from None
        return cls(a, b)

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC"


def _parse_when(text: str, *, end: bool) -> datetime:
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        d = datetime.fromisoformat(text)
        return d + timedelta(hours=23) if end else d
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}", text):
        text += ":00"
    return datetime.fromisoformat(text)


# --------------------------------------------------------------------------- scores
def _pairs(sim, obs) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(sim, dtype=np.float64).ravel()
    o = np.asarray(obs, dtype=np.float64).ravel()
    if s.shape != o.shape:
        raise ValueError(f"sim has {s.size} values but obs has {o.size}; score paired series.")
    ok = np.isfinite(s) & np.isfinite(o)
    if ok.sum() < 2:
        raise ValueError("fewer than two hours with both a simulated and an observed value.")
    return s[ok], o[ok]


def nse(sim, obs) -> float:
    """Nash-Sutcliffe efficiency of ``sim`` against ``obs``, dimensionless.

    Parameters
    ----------
    sim, obs : array_like (time,), same units
        Paired series; pairs where either is NaN are left out.

    Returns
    -------
    float
        ``1 - sum((sim - obs)**2) / sum((obs - mean(obs))**2)``; 1 is perfect, 0 is as
        good as the observed mean, ``-inf`` for constant observations unless matched.
    """
    s, o = _pairs(sim, obs)
    den = float(np.sum((o - o.mean()) ** 2))
    num = float(np.sum((s - o) ** 2))
    if den == 0.0:
        return 1.0 if num == 0.0 else -math.inf
    return 1.0 - num / den


def kge_components(sim, obs) -> tuple[float, float, float, float]:
    """Kling-Gupta efficiency (Gupta et al. 2009) and its three components.

    Parameters
    ----------
    sim, obs : array_like (time,), same units
        Paired series; pairs where either is NaN are left out.

    Returns
    -------
    kge, r, alpha, beta : float, dimensionless
        ``r`` linear correlation, ``alpha = std(sim) / std(obs)``, ``beta = mean(sim) /
        mean(obs)``; ``kge = 1 - sqrt((r-1)**2 + (alpha-1)**2 + (beta-1)**2)``.
    """
    s, o = _pairs(sim, obs)
    so, ss = float(o.std()), float(s.std())
    r = float(np.corrcoef(s, o)[0, 1]) if so > 0.0 and ss > 0.0 else math.nan
    alpha = ss / so if so > 0.0 else math.nan
    beta = float(s.mean()) / float(o.mean()) if o.mean() != 0.0 else math.nan
    k = 1.0 - math.sqrt((r - 1.0) ** 2 + (alpha - 1.0) ** 2 + (beta - 1.0) ** 2)
    return k, r, alpha, beta


def kge(sim, obs) -> float:
    """Kling-Gupta efficiency (Gupta et al. 2009), dimensionless; see :func:`kge_components`."""
    return kge_components(sim, obs)[0]


# --------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class Bound:
    """Search range of one parameter.

    Attributes
    ----------
    low, high : float
        Range in the parameter's units (see :class:`models.lumped.LumpedParams`).
    log : bool
        Search on ``log10`` of the value (for scale parameters spanning decades).
    integer : bool
        Whole numbers only.
    """

    low: float
    high: float
    log: bool = False
    integer: bool = False


DEFAULT_BOUNDS: dict[str, Bound] = {
    "s_mm": Bound(5.0, 1000.0, log=True),  # CN 97.8 to 20.3
    "sa_mm": Bound(0.0, 600.0),
    "lp": Bound(0.1, 1.0),
    "tau_perc_h": Bound(5.0, 20000.0, log=True),
    "quick_fraction": Bound(0.0, 1.0),
    "n_quick": Bound(1, 8, integer=True),
    "k_quick_h": Bound(0.2, 24.0, log=True),
    "k_slow_h": Bound(24.0, 10000.0, log=True),
}
"""Search ranges of the calibration (units of :class:`models.lumped.LumpedParams`)."""

_NAMES = tuple(DEFAULT_BOUNDS)


def _decode(x: Sequence[float], bounds: dict[str, Bound]) -> LumpedParams:
    vals: dict[str, Any] = {}
    for name, xi in zip(_NAMES, x):
        b = bounds[name]
        v = 10.0 ** float(xi) if b.log else float(xi)
        vals[name] = round(v) if b.integer else min(max(v, b.low), b.high)
    return LumpedParams(**vals)


def _search_bounds(bounds: dict[str, Bound]) -> list[tuple[float, float]]:
    out = []
    for name in _NAMES:
        b = bounds[name]
        if b.log:
            if b.low <= 0.0:
                raise ConfigError(f"bounds.{name}: a log-scale range must start above 0; got {b.low}")
            out.append((math.log10(b.low), math.log10(b.high)))
        else:
            out.append((float(b.low), float(b.high)))
    return out


def initial_state(params: LumpedParams, q0_mm_h: float) -> LumpedState:
    """The start of every calibration run: soil at its threshold, base flow ``q0_mm_h``.

    Parameters
    ----------
    params : LumpedParams
    q0_mm_h : float, mm/h
        Discharge carried by the slow reservoir at the start (the first observation;
        0 when it is missing).
    """
    q0 = q0_mm_h if math.isfinite(q0_mm_h) and q0_mm_h >= 0.0 else 0.0
    return LumpedState.initial(params, slow_q_mm_h=q0)


class _Objective:
    """``1 - NSE`` of one parameter vector on the objective window (picklable for workers)."""

    def __init__(self, rain, etpot, q_obs, i_score, bounds, q0):
        self.rain = rain
        self.etpot = etpot
        self.q_obs = q_obs
        self.i_score = i_score
        self.bounds = bounds
        self.q0 = q0
        ok = np.isfinite(q_obs[i_score:])
        self.o = q_obs[i_score:][ok]
        self.ok = ok
        self.den = float(np.sum((self.o - self.o.mean()) ** 2))

    def __call__(self, x) -> float:
        p = _decode(x, self.bounds)
        q, _ = simulate(p, self.rain, self.etpot, 1.0, initial_state(p, self.q0))
        s = q[self.i_score:][self.ok]
        val = float(np.sum((s - self.o) ** 2)) / self.den
        return val if math.isfinite(val) else 1e6


@dataclass(frozen=True)
class Scores:
    """NSE and KGE (with its components) of one period, dimensionless."""

    nse: float
    kge: float
    r: float
    alpha: float
    beta: float
    n_hours: int

    @classmethod
    def of(cls, sim, obs) -> Scores:
        k, r, a, b = kge_components(sim, obs)
        n = int(np.sum(np.isfinite(np.asarray(sim, float)) & np.isfinite(np.asarray(obs, float))))
        return cls(nse(sim, obs), k, r, a, b, n)


@dataclass(frozen=True)
class CalibrationResult:
    """Outcome of :func:`calibrate`.

    Attributes
    ----------
    params : LumpedParams
        The best parameters found.
    calibration : Scores
        Scores on the objective window (calibration period after the warm-up).
    validation : Scores or None
        Scores on the validation period (None when no validation period was given).
    calibration_period, validation_period : Period
        As asked (validation may be None).
    objective_start : datetime
        First hour scored in calibration (end of the warm-up), UTC.
    seed : int
        Seed of the optimiser.
    n_evaluations, n_generations : int
        Model runs and generations of the differential evolution.
    optimiser_message : str
        Why the optimiser stopped.
    seconds_optimisation, seconds_total : float, s
        Wall time of the search, and of everything (reading excluded).
    q_sim_mm_h : ndarray, mm/h
        Simulated discharge from the start of the calibration period to the end of the
        last scored period (one continuous run).
    time : ndarray datetime64[h]
        Hours of ``q_sim_mm_h``.
    final_state : LumpedState
        Model state at the end of that run (to continue into a forecast).
    source : str
        The record's file.
    """

    params: LumpedParams
    calibration: Scores
    validation: Scores | None
    calibration_period: Period
    validation_period: Period | None
    objective_start: datetime
    seed: int
    n_evaluations: int
    n_generations: int
    optimiser_message: str
    seconds_optimisation: float
    seconds_total: float
    q_sim_mm_h: np.ndarray = field(repr=False)
    time: np.ndarray = field(repr=False)
    final_state: LumpedState = field(repr=False)
    source: str = ""


def _window(data: Record, period: Period, what: str) -> tuple[int, int]:
    try:
        i0 = data.index(period.start)
        i1 = data.index(period.end)
    except IndexError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    return i0, i1


def evaluate(params: LumpedParams, data: Record, calibration_period: Period,
             validation_period: Period | None = None, *, warmup_days: float = 90.0
             ) -> tuple[Scores, Scores | None, np.ndarray, LumpedState, datetime]:
    """Run ``params`` continuously over the periods and score them.

    Parameters
    ----------
    params : LumpedParams
    data : Record
    calibration_period : Period
        The run starts at its first hour; it is scored after ``warmup_days``.
    validation_period : Period, optional
        Must start after the calibration period; scored whole, from the warm state of
        the continuous run.
    warmup_days : float, d
        Days at the start of the calibration period left out of its score.

    Returns
    -------
    calibration_scores, validation_scores, q_sim_mm_h, final_state, objective_start
    """
    i0, i1 = _window(data, calibration_period, "calibration period")
    i_obj = i0 + round(warmup_days * 24)
    if i_obj > i1 - 24:
        raise ConfigError(f"warm-up of {warmup_days} days leaves less than a day of the calibration "
                          f"period ({calibration_period}) to score")
    end = i1
    if validation_period is not None:
        v0, v1 = _window(data, validation_period, "validation period")
        if v0 <= i1:
            raise ConfigError(f"validation period ({validation_period}) must start after the "
                              f"calibration period ({calibration_period}) ends")
        end = v1
    q, state = simulate(params, data.rain_mm_h[i0:end + 1], data.etpot_mm_h[i0:end + 1], 1.0,
                        initial_state(params, float(data.q_mm_h[i0])))
    obs = data.q_mm_h[i0:end + 1]
    cal = Scores.of(q[i_obj - i0:i1 - i0 + 1], obs[i_obj - i0:i1 - i0 + 1])
    val = None
    if validation_period is not None:
        val = Scores.of(q[v0 - i0:v1 - i0 + 1], obs[v0 - i0:v1 - i0 + 1])
    return cal, val, q, state, _to_datetime(data.time[i_obj])


def calibrate(data: Record, period: Period | str = "2011-01-01:2012-12-31",
              validation: Period | str | None = "2013-01-01:2013-09-10", *,
              warmup_days: float = 90.0, seed: int = 1, workers: int = 1, popsize: int = 15,
              maxiter: int = 300, tol: float = 1e-3, polish: bool = True,
              bounds: dict[str, Bound] | None = None,
              progress: Callable[[int, float], None] | None = None) -> CalibrationResult:
    """Calibrate the lumped model's runoff and routing parameters by NSE on hourly Q.

    Parameters
    ----------
    data : Record
        The hourly record (:func:`read_peq`); must be hourly (``dt = 1 h``).
    period : Period or str
        Calibration period, e.g. ``"2011-01-01:2012-12-31"`` (end day included).
    validation : Period or str or None
        Validation period, scored with the calibrated parameters only.
    warmup_days : float, d
        Start of the calibration period that only warms the stores up (not scored).
    seed : int
        Seed of the differential evolution: the same seed gives the same result, for any
        ``workers``.
    workers : int
        Processes evaluating the population (``-1``: all cores).
    popsize : int
        Population per parameter (scipy's ``popsize``; 8 parameters).
    maxiter : int
        Most generations.
    tol : float
        Relative convergence tolerance of the population's ``1 - NSE``.
    polish : bool
        Finish with L-BFGS-B on the continuous parameters (``n_quick`` stays fixed).
    bounds : dict of Bound, optional
        Replaces :data:`DEFAULT_BOUNDS` entries by name.
    progress : callable, optional
        Called after every generation with ``(generation, best_nse)``.

    Returns
    -------
    CalibrationResult

    Raises
    ------
    ConfigError
        On periods outside the record or in the wrong order, or unknown bound names.

    Notes
    -----
    ``workers > 1`` evaluates the population in a ``multiprocessing`` pool that scipy
    starts with the "forkserver" method (Python < 3.14, unless the start method was
    set): the worker processes import the ``__main__`` module, so a script that calls
    this function must do so under ``if __name__ == "__main__":``.
    """
    from scipy.optimize import differential_evolution

    t_all = time.perf_counter()
    cal_p = Period.parse(period) if isinstance(period, str) else period
    val_p = Period.parse(validation) if isinstance(validation, str) else validation
    bnd = dict(DEFAULT_BOUNDS)
    if bounds:
        unknown = sorted(set(bounds) - set(bnd))
        if unknown:
            raise ConfigError([f"bounds.{u}: unknown parameter; known: {', '.join(_NAMES)}" for u in unknown])
        bnd.update(bounds)
    i0, i1 = _window(data, cal_p, "calibration period")
    i_obj = i0 + round(warmup_days * 24)
    if i_obj > i1 - 24:
        raise ConfigError(f"warm-up of {warmup_days} days leaves less than a day of the calibration "
                          f"period ({cal_p}) to score")
    if val_p is not None:
        v0, _ = _window(data, val_p, "validation period")
        if v0 <= i1:
            raise ConfigError(f"validation period ({val_p}) must start after the calibration period "
                              f"({cal_p}) ends")
    obj = _Objective(data.rain_mm_h[i0:i1 + 1].copy(), data.etpot_mm_h[i0:i1 + 1].copy(),
                     data.q_mm_h[i0:i1 + 1].copy(), i_obj - i0, bnd, float(data.q_mm_h[i0]))
    if obj.o.size < 2 or obj.den == 0.0:
        raise ConfigError(f"calibration period {cal_p}: too few or constant discharge observations after "
                          "the warm-up to compute NSE")
    search = _search_bounds(bnd)
    integrality = [bnd[n].integer for n in _NAMES]
    log.info("calibrating on %s (scored from %s), %d parameters, popsize %d, maxiter %d, seed %d, "
             "workers %d", cal_p, data.time[i_obj], len(search), popsize, maxiter, seed, workers)
    generation = 0

    def callback(intermediate_result) -> None:
        nonlocal generation
        generation += 1
        best = 1.0 - float(intermediate_result.fun)
        log.debug("generation %d: best NSE %.4f", generation, best)
        if progress is not None:
            progress(generation, best)

    t_opt = time.perf_counter()
    try:
        res = differential_evolution(obj, search, rng=seed, popsize=popsize, maxiter=maxiter, tol=tol,
                                     polish=polish, updating="deferred", workers=workers,
                                     integrality=integrality, init="latinhypercube", callback=callback)
    except ModelError as exc:  # pragma: no cover - bounds are validated by LumpedParams
        raise ConfigError(f"bounds: {exc}") from None
    sec_opt = time.perf_counter() - t_opt
    best = _decode(res.x, bnd)
    cal, val, q, state, t_obj = evaluate(best, data, cal_p, val_p, warmup_days=warmup_days)
    end = i1 if val_p is None else data.index(val_p.end)
    log.info("calibration done in %.1f s (%d runs): NSE %.3f on calibration%s", sec_opt, res.nfev,
             cal.nse, "" if val is None else f", {val.nse:.3f} on validation")
    return CalibrationResult(best, cal, val, cal_p, val_p, t_obj, seed, int(res.nfev), int(res.nit),
                             str(res.message), sec_opt, time.perf_counter() - t_all, q,
                             data.time[i0:end + 1].copy(), state, data.source)


# --------------------------------------------------------------------------- saving
def _sha256(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    return json.dumps(str(v))


def write_params(path: str | Path, result: CalibrationResult) -> Path:
    """Write the calibrated parameters, their scores and provenance to TOML or JSON.

    Parameters
    ----------
    path : str or Path
        ``*.toml`` or ``*.json``.
    result : CalibrationResult

    Returns
    -------
    Path
        The file written. Read it back with :func:`read_params`.
    """
    p = Path(path)
    meta: dict[str, Any] = {
        "model": "models.lumped (continuous SCS-CN store, Nash cascade + linear reservoir)",
        "data": Path(result.source).name,  # the file, not the machine's path; the hash pins it
        "data_sha256": _sha256(result.source) or "",
        "time_zone": "UTC (assumed; not stated in the data)",
        "calibration_period": str(result.calibration_period),
        "objective_start": f"{result.objective_start:%Y-%m-%d %H:%M} UTC",
        "validation_period": str(result.validation_period) if result.validation_period else "",
        "seed": result.seed,
        "n_evaluations": result.n_evaluations,
        "seconds_optimisation": round(result.seconds_optimisation, 2),
        "written": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    scores: dict[str, Any] = {"nse_calibration": result.calibration.nse, "kge_calibration": result.calibration.kge}
    if result.validation is not None:
        scores |= {"nse_validation": result.validation.nse, "kge_validation": result.validation.kge}
    params = result.params.to_dict()
    suffix = p.suffix.lower()
    if suffix == ".json":
        text = json.dumps({"params": params, "scores": scores, "meta": meta}, indent=2,
                          allow_nan=True) + "\n"
    elif suffix == ".toml":
        out = ["# lumped continuous SCS-CN model: calibrated parameters (floodwarn calibrate)"]
        for name, table in (("params", params), ("scores", scores), ("meta", meta)):
            out.append(f"\n[{name}]")
            out.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
        text = "\n".join(out) + "\n"
    else:
        raise ConfigError(f"{p}: write the parameters to a .toml or .json file")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    log.info("wrote calibrated parameters to %s", p)
    return p


def read_params(path: str | Path) -> LumpedParams:
    """Read parameters written by :func:`write_params` (TOML or JSON).

    Raises
    ------
    IngestError
        When the file is missing or unreadable or has no valid ``params`` table.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        raw = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
        return LumpedParams.from_dict(raw["params"])
    except FileNotFoundError:
        raise IngestError(f"{p}: file not found.") from None
    except (OSError, ValueError, KeyError, TypeError, tomllib.TOMLDecodeError) as exc:
        raise IngestError(f"{p}: not a lumped-model parameter file ({exc}).") from None
