"""Warning verification against worked examples with known answers."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from warning.verification import Contingency, WarningPeriod, periods_from_levels, scores, verify

T0 = datetime(2025, 11, 14, 0, 0, tzinfo=UTC)
H = timedelta(hours=1)


def test_finley_tornado_forecasts():
    """Finley's 1884 tornado forecasts, the textbook 2x2 example (Wilks, Statistical Methods
    in the Atmospheric Sciences; Jolliffe & Stephenson, Forecast Verification): 28 hits,
    72 false alarms, 23 misses give POD 0.549, FAR 0.720, CSI 0.228."""
    periods, onsets = [], []
    for k in range(28):  # warned, and it happened 2 h into the warning
        t = T0 + k * 10 * H
        periods.append(WarningPeriod(t, t + 4 * H))
        onsets.append(t + 2 * H)
    for k in range(72):  # warned, nothing happened
        t = T0 + (400 + k * 10) * H
        periods.append(WarningPeriod(t, t + 4 * H))
    for k in range(23):  # happened without a warning
        onsets.append(T0 + (1200 + k * 10) * H)
    c = verify(periods, onsets)
    assert (c.hits, c.false_alarms, c.misses) == (28, 72, 23)
    sc = scores(c)
    assert sc["pod"] == pytest.approx(0.549, abs=5e-4)
    assert sc["far"] == pytest.approx(0.720, abs=5e-4)
    assert sc["csi"] == pytest.approx(0.228, abs=5e-4)
    assert sc["median_lead_min"] == 120.0


def test_late_warnings_tolerance_and_lapsed_periods():
    tol = timedelta(minutes=60)
    # warned 40 min after the onset: a late hit (negative lead) within the tolerance
    c = verify([WarningPeriod(T0 + timedelta(minutes=40), T0 + 5 * H)], [T0], tolerance=tol)
    assert (c.hits, c.misses, c.false_alarms) == (1, 0, 0) and c.lead_times == [timedelta(minutes=-40)]
    # 90 min late: a miss, and the warning is a false alarm
    c = verify([WarningPeriod(T0 + timedelta(minutes=90), T0 + 5 * H)], [T0], tolerance=tol)
    assert (c.hits, c.misses, c.false_alarms) == (0, 1, 1)
    # the warning lapsed 30 min before the water came: still its hit
    c = verify([WarningPeriod(T0 - 5 * H, T0 - timedelta(minutes=30))], [T0], tolerance=tol)
    assert (c.hits, c.lead_times) == (1, [5 * H])
    # one long warning over two flood peaks: two hits, no false alarm
    c = verify([WarningPeriod(T0, T0 + 24 * H)], [T0 + 3 * H, T0 + 20 * H], tolerance=tol)
    assert (c.hits, c.misses, c.false_alarms) == (2, 0, 0)
    # still in force (no end)
    assert verify([WarningPeriod(T0)], [T0 + 100 * H]).hits == 1


def test_scores_undefined_without_events_and_contingencies_add_up():
    sc = scores(Contingency())
    assert all(math.isnan(v) for v in sc.values())
    total = Contingency(2, 1, 0, [H, 2 * H]) + Contingency(1, 0, 3, [3 * H])
    assert (total.hits, total.misses, total.false_alarms) == (3, 1, 3)
    assert scores(total)["median_lead_min"] == 120.0
    assert scores(total)["csi"] == pytest.approx(3 / 7)


def test_periods_from_level_changes():
    changes = [(T0, 1), (T0 + H, 2), (T0 + 3 * H, 1), (T0 + 5 * H, 0), (T0 + 8 * H, 2)]
    assert periods_from_levels(changes, 2) == [WarningPeriod(T0 + H, T0 + 3 * H), WarningPeriod(T0 + 8 * H)]
    assert periods_from_levels(changes, 1) == [WarningPeriod(T0, T0 + 5 * H), WarningPeriod(T0 + 8 * H)]
    with pytest.raises(ValueError, match="before it starts"):
        WarningPeriod(T0, T0 - H)
    with pytest.raises(ValueError, match="time-zone-aware"):
        verify([], [datetime(2025, 1, 1)])
