"""Rain units, plausibility screening and file sniffing, shared by every forecast source.

Units
-----
``rain_unit(text)`` reads a unit string (a NetCDF variable's CF ``units``, cfgrib's
``GRIB_units``, a GeoTIFF band's unit type, or the config's ``sources.forecast.units``)
from one small explicit table, ``RAIN_UNITS``: a *rate* gives its factor to mm/h, a
*depth* (a total over each time step) its factor to mm, to be divided by the step's
length. ``resolve_rain_unit`` decides between what the file says and what the config
says: the file decides, the config only fills in when the file says nothing, and a
config that means something else than the file makes the file refused.

Why a table and not UDUNITS (``cf-units``) or ``pint``: cf-units needs the UDUNITS-2 C
library, which the wheels we install do not bring; neither library knows that a length
(``mm``, ``m``, ``kg m-2`` of water) in a rain file means a total over the time step, so
both would still need this module's rate-or-depth rule on top; and both accept anything
dimensionally sound (``km``, ``furlong fortnight-1``), where a short list of the units
rain data really come in, refused otherwise with the list, is what catches a wrong
variable or a broken file. Normalisation covers the spellings in the wild: case,
whitespace, ``**``/``^`` exponents (GRIB's ``kg m**-2``), ``.`` as a separator.

Screening
---------
``screen_rain`` looks at rates in mm/h on the source grid, before any regridding (one
bad value would otherwise be smeared over its neighbours): NaN is *missing*; +/-inf,
values above ``Limits.rain_max_mm_h`` and below ``Limits.rain_min_mm_h`` are
*implausible*; values in [rain_min_mm_h, 0) are model rounding and become 0. Flagged
values are never used: each is replaced by the nearest good value of the same field
(same member and time step; ``scipy.ndimage.distance_transform_edt``), counted, and
described in a sentence for operators. A file with more than
``Limits.max_flagged_share`` of its values flagged, or a field with values to replace
but no good value, is refused with ``IngestError``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import distance_transform_edt

from ..errors import IngestError
from .limits import Limits

# ---------------------------------------------------------------------- units


@dataclass(frozen=True)
class RainUnit:
    """What a unit string means: ``kind`` "rate" (``factor`` to mm/h) or "depth" (to mm
    over one time step)."""

    text: str
    kind: str
    factor: float

    def same_meaning(self, other: RainUnit) -> bool:
        return self.kind == other.kind and math.isclose(self.factor, other.factor, rel_tol=1e-9)

    def describe(self) -> str:
        if self.kind == "rate":
            return f"{self.text!r}, a rate of {self.factor:g} mm/h per unit"
        return f"{self.text!r}, a depth per time step of {self.factor:g} mm per unit"

    def to_mm_h(self, step_hours: float) -> float:
        """Factor from this unit to mm/h for time steps of ``step_hours``."""
        return self.factor if self.kind == "rate" else self.factor / step_hours


_RATES: dict[float, tuple[str, ...]] = {
    1.0: ("mm/h", "mm h-1", "mm hr-1", "mm/hr", "mm hour-1", "mm/hour", "kg m-2 h-1", "kg/m2/h"),
    60.0: ("mm/min", "mm min-1"),
    3600.0: ("mm s-1", "mm/s", "kg m-2 s-1", "kg/m2/s", "kg m-2/s"),
    1000.0: ("m/h", "m h-1"),
    3.6e6: ("m s-1", "m/s"),
    25.4: ("in/h", "in h-1", "in/hr", "in hr-1"),
    1.0 / 24.0: ("mm/day", "mm day-1", "mm/d", "mm d-1", "kg m-2 day-1", "kg m-2 d-1"),
}
_DEPTHS: dict[float, tuple[str, ...]] = {
    1.0: ("mm", "kg m-2", "kg/m2"),
    10.0: ("cm",),
    1000.0: ("m",),
    25.4: ("in",),
}

#: every unit understood, normalised spelling -> (kind, factor to mm/h or to mm per step)
RAIN_UNITS: dict[str, tuple[str, float]] = {
    **{u: ("rate", k) for k, names in _RATES.items() for u in names},
    **{u: ("depth", k) for k, names in _DEPTHS.items() for u in names},
}

RATE_NAMES = ", ".join(u for names in _RATES.values() for u in names)
DEPTH_NAMES = ", ".join(u for names in _DEPTHS.values() for u in names)
EXPECTED_UNITS = (f"a rate ({RATE_NAMES}) or a depth per time step ({DEPTH_NAMES})")

#: CF standard names of rain variables, by what they hold (a hint; the units decide)
RATE_STANDARD_NAMES = {"lwe_precipitation_rate", "precipitation_flux", "rainfall_rate",
                       "rainfall_flux", "lwe_rainfall_rate", "convective_precipitation_flux",
                       "large_scale_precipitation_flux", "stratiform_precipitation_flux"}
DEPTH_STANDARD_NAMES = {"precipitation_amount", "thickness_of_rainfall_amount",
                        "lwe_thickness_of_precipitation_amount", "rainfall_amount",
                        "lwe_thickness_of_rainfall_amount"}


def _normalise(text: str) -> str:
    s = text.strip().lower().replace("**", "").replace("^", "")
    s = re.sub(r"(?<=[a-z0-9])\.(?=[a-z])", " ", s)  # UDUNITS' "kg.m-2.s-1"
    s = re.sub(r"\s*/\s*", "/", s)
    return re.sub(r"\s+", " ", s)


def rain_unit(text: str | bytes | None) -> RainUnit | None:
    """The meaning of a unit string, or None when it is not a rain rate or depth."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    found = RAIN_UNITS.get(_normalise(str(text)))
    return None if found is None else RainUnit(str(text).strip(), *found)


def check_config_units(units: str | None) -> RainUnit | None:
    """The config's ``sources.forecast.units`` (None: take the file's); ``ValueError`` if unknown."""
    if units is None:
        return None
    unit = rain_unit(units)
    if unit is None:
        raise ValueError(f"unknown rain units {units!r}; use {EXPECTED_UNITS}")
    return unit


def resolve_rain_unit(file_units: str | bytes | None, config: RainUnit | None, f: Path | str,
                      subject: str, *, unit_attr: str = "units attribute",
                      missing_hint: str = "add one") -> RainUnit:
    """The unit the values are in: the file's, checked against the config's.

    ``subject`` names what carries the unit in messages ("variable 'tp'", "band 1"),
    ``unit_attr`` what it would be called, ``missing_hint`` how to add one.
    """
    if isinstance(file_units, bytes):
        file_units = file_units.decode("utf-8", "replace")
    if file_units is None or not str(file_units).strip():
        if config is not None:
            return config
        raise IngestError(f"{f}: {subject} has no {unit_attr}; {missing_hint}, or set "
                          f"sources.forecast.units (e.g. \"mm/h\")")
    unit = rain_unit(file_units)
    if unit is None:
        raise IngestError(f"{f}: {subject} has units {str(file_units)!r}, which is not a rain rate "
                          f"or depth; expected one of {EXPECTED_UNITS}. Check that the right "
                          f"variable is read, or correct the file's units")
    if config is not None and not unit.same_meaning(config):
        raise IngestError(f"{f}: {subject} has units {unit.describe()}, but sources.forecast.units "
                          f"is {config.describe()}; they disagree. Remove sources.forecast.units "
                          f"(the file's units are used) or correct it")
    return unit


# ---------------------------------------------------------------------- files


def sniff(f: Path) -> str:
    """A short description of what a file that failed to open really is, for messages."""
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if size == 0:
        return "the file is empty (0 bytes); the download or copy probably failed"
    low = head.lstrip().lower()
    if low.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return ("it is an HTML or XML page, not data (a server error page saved under this "
                "name?); fetch it again")
    text = head[:32].decode("ascii", "replace")
    shown = "".join(c if c.isprintable() else "." for c in text)
    return f"{size} bytes, starting {shown!r}"


def unreadable(f: Path, what: str, exc: BaseException) -> IngestError:
    """The error for a file its reader could not open: what the file really is, and the
    reader's own complaint unless the file is plainly empty or a web page."""
    seen = sniff(f)
    detail = seen if seen.startswith(("the file is empty", "it is an HTML")) else (
        f"{seen}; {type(exc).__name__}: {exc}")
    return IngestError(f"{f}: not a readable {what} ({detail})")


# ---------------------------------------------------------------------- screening


def _pct(n: int, total: int) -> str:
    if n >= total:
        return "100%"
    return f"{math.floor(1000.0 * n / total) / 10.0:g}%"


@dataclass
class _Counts:
    missing: int
    high: int
    low: int
    vmax: float
    vmin: float

    def parts(self, limits: Limits, with_missing: bool) -> list[tuple[int, str, str]]:
        """(count, "missing"/"implausible", what) for each kind of flagged value present."""
        out = []
        if with_missing and self.missing:
            out.append((self.missing, "missing", "NaN or fill value"))
        if self.high:
            out.append((self.high, "implausible",
                        f"above {limits.rain_max_mm_h:g} mm/h; max {self.vmax:.3g} mm/h"))
        if self.low:
            out.append((self.low, "implausible",
                        f"below {limits.rain_min_mm_h:g} mm/h; min {self.vmin:.3g} mm/h"))
        return out


def screen_rain(rate: np.ndarray, limits: Limits, f: Path | str, *, fill_missing: bool = True,
                field_name: Callable[[int], str] | None = None) -> tuple[np.ndarray, dict, list[str]]:
    """Flag, count and replace implausible (and missing) rain on the source grid.

    Parameters
    ----------
    rate : ndarray (..., y, x), float32, mm/h
        Changed in place where possible; use the returned array.
    limits : the plausibility limits.
    f : the file, named in messages.
    fill_missing : True: NaN counts as flagged and is filled like an implausible value
        (a forecast file should have a value everywhere). False (frame sources): NaN is
        the image's no-data area, stays NaN, and neither counts towards the refused share
        nor is used as a source of fill values; the regridding and the frame's
        ``max_missing`` rule deal with it.
    field_name : index of a field in the flattened leading dims -> words ("member 2, step
        2025-11-14T06:00"), for the message when a field has no good value.

    Returns
    -------
    rate : ndarray, same shape, float32, mm/h, flagged values replaced
    qc : {"missing", "implausible", "filled", "cells"}, counts of source values
    problems : sentences for operators (empty when the data are clean)
    """
    rate = np.ascontiguousarray(rate, dtype=np.float32)
    cells = int(rate.size)
    lo, hi = np.float32(limits.rain_min_mm_h), np.float32(limits.rain_max_mm_h)
    with np.errstate(invalid="ignore"):
        good = rate >= lo  # False for NaN
        good &= rate <= hi
    if cells == 0 or good.all():  # the common case: one more pass, nothing to count
        np.maximum(rate, np.float32(0.0), out=rate)
        return rate, {"missing": 0, "implausible": 0, "filled": 0, "cells": cells}, []

    missing = np.isnan(rate)
    with np.errstate(invalid="ignore"):
        high = rate > hi
        low = rate < lo
    n_high, n_low = int(high.sum()), int(low.sum())
    counts = _Counts(int(missing.sum()), n_high, n_low,
                     float(rate[high].max()) if n_high else math.nan,
                     float(rate[low].min()) if n_low else math.nan)
    implausible = n_high + n_low
    target = ~good if fill_missing else (high | low)
    n_target = int(target.sum()) if fill_missing else implausible
    denominator = cells if fill_missing else cells - counts.missing
    parts = counts.parts(limits, fill_missing)
    if denominator and n_target > limits.max_flagged_share * denominator:
        share = _pct(n_target, denominator)
        if len(parts) == 1:
            _, kind, what = parts[0]
            head = f"{share} of rain values are {kind} ({what})"
        else:
            head = (f"{share} of rain values are missing or implausible ("
                    + "; ".join(f"{n} {kind}: {what}" for n, kind, what in parts) + ")")
        raise IngestError(
            f"{f}: {head}; the file is refused (at most {limits.max_flagged_share:.0%} may be "
            f"flagged, [limits] max_flagged_share). Check the file's variable, its units and "
            f"scale_factor, or ask its provider")

    np.maximum(rate, np.float32(0.0), out=rate, where=good)  # tiny negatives are rounding
    if n_target:
        ny, nx = rate.shape[-2:]
        flat = rate.reshape(-1, ny, nx)
        flat_good = good.reshape(-1, ny, nx)
        flat_target = target.reshape(-1, ny, nx)
        todo = flat_target.reshape(flat.shape[0], -1).any(axis=1)
        empty = todo & ~flat_good.reshape(flat.shape[0], -1).any(axis=1)
        if empty.any():
            k = int(np.flatnonzero(empty)[0])
            where = field_name(k) if field_name is not None else "the field"
            raise IngestError(
                f"{f}: {where} has no valid rain value (every value is missing or implausible), "
                f"so nothing can replace them; the file is refused. Check the file with its "
                f"provider")
        for k in np.flatnonzero(todo):
            rows, cols = distance_transform_edt(~flat_good[k], return_distances=False,
                                                return_indices=True)
            m = flat_target[k]
            flat[k][m] = flat[k][rows[m], cols[m]]

    problems = []
    for n, kind, what in parts:
        if kind == "missing":
            problems.append(f"{f}: {n} of {cells} rain values are missing ({what}) and were "
                            f"filled from their nearest neighbours")
        else:
            what = what.replace("; ", " (") + ")"
            problems.append(f"{f}: {n} of {cells} rain values {what} were excluded and filled "
                            f"from their nearest neighbours")
    qc = {"missing": counts.missing, "implausible": implausible, "filled": n_target,
          "cells": cells}
    return rate, qc, problems
