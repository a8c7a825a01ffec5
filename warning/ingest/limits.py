"""Plausibility limits: values outside them are flagged and never reach the models.

One ``Limits`` per site (``[limits]`` in the config, ``warning.config.LimitsConfig``),
handed to every ingest source as ``limits=``. The defaults are deliberately wide: they
must never flag a real storm, only values no storm can give.

* ``rain_max_mm_h``: 400 mm/h. The greatest rainfall measured anywhere in an hour is
  305 mm (Holt, Missouri, 22 June 1947, WMO world record, in 42 minutes); a rain grid
  averages over cells of hundreds of metres or more, which lowers its peaks further.
* ``rain_min_mm_h``: -0.01 mm/h. Numerical weather models write tiny negative rain
  (rounding in packed GRIB, spectral ringing); values between this and zero are read
  as zero, anything below is flagged.
* ``stage_max_rise_m_per_h``: 5 m/h, the rate of change of river stage between two
  consecutive readings, measured over at least ``stage_rate_min_minutes`` (15 min) so
  that the noise of one-minute readings does not count as a rise. The flash flood of
  Dead Run, Maryland (USGS 01589330, 2018-06-03), among the fastest recorded on an
  urban stream, rose 2.45 m/h at its steepest five minutes.
* ``max_flagged_share``: 0.5. A rain file, or one station's series, with more than
  this share of its values flagged (missing or implausible) is refused as a whole:
  what is left is not a reading of the storm but of a broken instrument or file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    rain_max_mm_h: float = 400.0
    rain_min_mm_h: float = -0.01
    stage_max_rise_m_per_h: float = 5.0
    stage_rate_min_minutes: float = 15.0
    max_flagged_share: float = 0.5


DEFAULT_LIMITS = Limits()
