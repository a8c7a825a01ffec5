"""Warning verification against worked examples with known answers."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from warning.verification import (
    Contingency,
    WarningPeriod,
    baseline_periods,
    periods_from_levels,
    scores,
    skill_against,
    table_scores,
    time_table,
    verify,
)

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


def test_late_warnings_are_never_hits_and_lapsed_periods_still_count():
    tol = timedelta(minutes=60)
    # warned 40 min after the onset: a late detection within the tolerance, never a hit,
    # and not a false alarm either; POD and CSI count it with the misses
    c = verify([WarningPeriod(T0 + timedelta(minutes=40), T0 + 5 * H)], [T0], tolerance=tol)
    assert (c.hits, c.late, c.misses, c.false_alarms) == (0, 1, 0, 0)
    assert c.lead_times == [] and c.late_by == [timedelta(minutes=40)]
    assert c.outcomes[0].kind == "late" and c.outcomes[0].lead == timedelta(minutes=-40)
    sc = scores(c)
    assert (sc["pod"], sc["csi"], sc["median_late_min"]) == (0.0, 0.0, 40.0)
    # one poll (5 min) after the onset is late too: the Dead Run trap (warning at the
    # flood stage itself) is not a hit with lead -5 min
    c = verify([WarningPeriod(T0 + timedelta(minutes=5), T0 + 5 * H)], [T0], tolerance=tol)
    assert (c.hits, c.late) == (0, 1)
    # raised exactly at the onset: a hit with lead 0
    c = verify([WarningPeriod(T0, T0 + 5 * H)], [T0], tolerance=tol)
    assert (c.hits, c.late, c.lead_times) == (1, 0, [timedelta(0)])
    # 90 min late: a miss, and the warning is a false alarm
    c = verify([WarningPeriod(T0 + timedelta(minutes=90), T0 + 5 * H)], [T0], tolerance=tol)
    assert (c.hits, c.late, c.misses, c.false_alarms) == (0, 0, 1, 1)
    # the warning lapsed 30 min before the water came: still its hit
    c = verify([WarningPeriod(T0 - 5 * H, T0 - timedelta(minutes=30))], [T0], tolerance=tol)
    assert (c.hits, c.lead_times) == (1, [5 * H])
    # one long warning over two flood peaks: two hits, no false alarm
    c = verify([WarningPeriod(T0, T0 + 24 * H)], [T0 + 3 * H, T0 + 20 * H], tolerance=tol)
    assert (c.hits, c.misses, c.false_alarms) == (2, 0, 0)
    # still in force (no end)
    assert verify([WarningPeriod(T0)], [T0 + 100 * H]).hits == 1


def test_a_hit_raised_by_an_observation_is_a_detection_not_a_forecast_lead():
    # the river gauge itself crossed the warning level at the onset: the warning detected
    # the flood, it did not forecast it
    c = verify([WarningPeriod(T0, T0 + 5 * H, "observed")], [T0])
    assert (c.hits, c.detections, c.forecast_hits) == (1, 1, 0)
    assert c.lead_times == [] and c.detection_leads == [timedelta(0)]
    sc = scores(c)
    assert sc["pod"] == 1.0 and sc["forecast_pod"] == 0.0
    assert math.isnan(sc["median_lead_min"]) and sc["median_detection_lead_min"] == 0.0
    # the trigger of a period is that of the change that opened it
    changes = [(T0, 1, "forecast"), (T0 + H, 2, "observed"), (T0 + 3 * H, 0, "none")]
    assert periods_from_levels(changes, 2) == [WarningPeriod(T0 + H, T0 + 3 * H, "observed")]
    assert periods_from_levels(changes, 1) == [WarningPeriod(T0, T0 + 3 * H, "forecast")]


def test_classic_scores_of_finleys_table():
    """Finley's tornado table (a 28, b 72, c 23, d 2680); published values (Wilks; Jolliffe
    & Stephenson): PC 0.966, POD 0.549, FAR 0.720, CSI 0.228, PSS 0.523, HSS 0.355."""
    t = table_scores(28, 72, 23, 2680)
    expected = {"pc": 0.966, "pod": 0.549, "far": 0.720, "csi": 0.228, "pss": 0.523, "hss": 0.355}
    for k, v in expected.items():
        assert t[k] == pytest.approx(v, abs=5e-4), k
    # "never a tornado" is right 96.6 % of the time too (2752 / 2803) but has no skill
    never = table_scores(0, 0, 51, 2752)
    assert never["pc"] == pytest.approx(0.982, abs=5e-4) and never["pss"] == 0.0 and never["hss"] == 0.0


WINDOW = (T0, T0 + 48 * H)
FLOOD = [(T0 + 10 * H, T0 + 16 * H)]


def test_time_table_counts_false_alarm_time_and_spares_the_lead_window():
    # warned 08-18, flooded 10-16, lead window 6 h (04-10): 2 h of lead are neutral,
    # 6 h warned and flooded, 16-18 is false-alarm time; 48 - 6 - 6 - 2 = 34 h quiet
    t = time_table([WarningPeriod(T0 + 8 * H, T0 + 18 * H)], FLOOD, WINDOW, 6 * H)
    assert (t.a, t.b, t.c, t.d) == (6.0, 2.0, 0.0, 34.0)
    # no lead window: the 2 h before the onset are false-alarm time as well
    t = time_table([WarningPeriod(T0 + 8 * H, T0 + 18 * H)], FLOOD, WINDOW)
    assert (t.a, t.b, t.c, t.d) == (6.0, 4.0, 0.0, 38.0)
    # an hour late: that hour is missed time
    t = time_table([WarningPeriod(T0 + 11 * H, T0 + 16 * H)], FLOOD, WINDOW, 6 * H)
    assert (t.a, t.b, t.c, t.d) == (5.0, 0.0, 1.0, 36.0)


def test_an_always_on_warning_scores_badly_in_time_and_baselines_have_no_skill():
    onsets = [FLOOD[0][0]]
    cycles = [T0 + k * timedelta(minutes=15) for k in range(48 * 4 + 1)]
    kw = dict(floods=FLOOD, window=WINDOW, lead_window=6 * H)
    always = verify(baseline_periods("always", FLOOD, WINDOW, cycles), onsets, **kw)
    never = verify(baseline_periods("never", FLOOD, WINDOW, cycles), onsets, **kw)
    # by events alone the always-on warning is perfect (the trap) ...
    assert (always.hits, always.false_alarms, scores(always)["csi"]) == (1, 0, 1.0)
    # ... in time it warned 36 dry hours: POFD 1, no skill
    assert (always.hours.a, always.hours.b, always.hours.c, always.hours.d) == (6.0, 36.0, 0.0, 0.0)
    sa, sn = scores(always), scores(never)
    assert (sa["pofd_time"], sa["pss_time"], sa["hss_time"]) == (1.0, 0.0, 0.0)
    assert (sn["pod_time"], sn["pss_time"], sn["hss_time"]) == (0.0, 0.0, 0.0)
    # a warning from 08 to 17: PSS = 6/6 - 1/(1+35) = 0.9722
    good = verify([WarningPeriod(T0 + 8 * H, T0 + 17 * H)], onsets, **kw)
    assert scores(good)["pss_time"] == pytest.approx(1 - 1 / 36)
    # persistence: the reading arrives 20 min after the water; cycles every 15 min:
    # raised at 10:30 (first cycle >= 10:20), lowered at 16:30: a late detection
    pers = baseline_periods("persistence", FLOOD, WINDOW, cycles, timedelta(minutes=20))
    assert pers == [WarningPeriod(T0 + 10.5 * H, T0 + 16.5 * H, "observed")]
    p = verify(pers, onsets, **kw)
    assert (p.hits, p.late, p.late_by) == (0, 1, [timedelta(minutes=30)])
    assert (p.hours.a, p.hours.b, p.hours.c) == (5.5, 0.5, 0.5)
    gain = skill_against(good, {"never": never, "always": always, "persistence": p})
    # persistence PSS = 5.5/6 - 0.5/36; the good warning's gain over it
    assert gain["pss_time_best_baseline"] == "persistence"
    assert gain["pss_time_gain"] == pytest.approx((1 - 1 / 36) - (5.5 / 6 - 0.5 / 36))
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_periods("climatology", FLOOD, WINDOW, cycles)


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
