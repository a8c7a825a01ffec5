"""When data become usable (warning.availability): delivery delays and aggregation periods,
checked against times worked out by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from warning.availability import forecast_usable_at, usable_from


def _t(*stamps: str) -> np.ndarray:
    return np.array(stamps, dtype="datetime64[ns]")


def _hours(day: str, first: int, last: int) -> np.ndarray:
    """Hourly stamps ``day`` first:00 .. last:00 (last may be 24: the next midnight)."""
    return np.datetime64(f"{day}T00:00", "ns") + np.arange(first, last + 1) * np.timedelta64(1, "h")


def test_a_daily_mean_in_24_start_labelled_hourly_rows_is_usable_after_its_day():
    rows = _hours("2025-11-14", 0, 23)  # 00:00 .. 23:00, each holding the 14th's mean
    assert rows.size == 24
    got = usable_from(rows, period_minutes=1440, period_label="start")
    assert (got == np.datetime64("2025-11-15T00:00", "ns")).all()
    later = usable_from(rows, delay_minutes=90, period_minutes=1440, period_label="start")
    assert (later == np.datetime64("2025-11-15T01:30", "ns")).all()


def test_a_daily_mean_in_end_labelled_hourly_rows_is_usable_at_the_day_end():
    rows = _hours("2025-11-14", 1, 24)  # 01:00 .. next 00:00: the 14th, labelled by ends
    got = usable_from(rows, period_minutes=1440, period_label="end")
    assert (got == np.datetime64("2025-11-15T00:00", "ns")).all()
    # the 14th's 00:00 ends the 13th: known at once
    assert usable_from(_t("2025-11-14T00:00"), period_minutes=1440, period_label="end")[0] == \
        np.datetime64("2025-11-14T00:00", "ns")


def test_hourly_means():
    stamps = _t("2025-11-14T10:00", "2025-11-14T10:30", "2025-11-14T11:00")
    # label end: 10:00 ends the hour 09-10; 10:30 is inside 10-11; 11:00 ends 10-11
    assert list(usable_from(stamps, period_minutes=60, period_label="end")) == \
        list(_t("2025-11-14T10:00", "2025-11-14T11:00", "2025-11-14T11:00"))
    # label start: 10:00 starts 10-11; 10:30 is inside 10-11; 11:00 starts 11-12
    assert list(usable_from(stamps, period_minutes=60, period_label="start")) == \
        list(_t("2025-11-14T11:00", "2025-11-14T11:00", "2025-11-14T12:00"))
    # and a 5-minute delivery delay on top
    assert list(usable_from(stamps, delay_minutes=5, period_minutes=60, period_label="start")) == \
        list(_t("2025-11-14T11:05", "2025-11-14T11:05", "2025-11-14T12:05"))


def test_a_plain_reading_is_usable_at_its_time_plus_the_delay():
    stamps = _t("2025-11-14T10:07", "2025-11-14T23:59")
    assert list(usable_from(stamps)) == list(stamps)
    assert list(usable_from(stamps, delay_minutes=15)) == list(_t("2025-11-14T10:22", "2025-11-15T00:14"))
    assert usable_from(_t("2025-11-14T10:07"), delay_minutes=0.5)[0] == np.datetime64("2025-11-14T10:07:30", "ns")
    # the label means nothing without a period
    assert list(usable_from(stamps, delay_minutes=15, period_label="start")) == \
        list(_t("2025-11-14T10:22", "2025-11-15T00:14"))


def test_period_boundaries_and_alignment_from_1970():
    midnight = _t("2025-11-14T00:00")
    assert usable_from(midnight, period_minutes=1440, period_label="start")[0] == \
        np.datetime64("2025-11-15T00:00", "ns")
    assert usable_from(midnight, period_minutes=1440, period_label="end")[0] == \
        np.datetime64("2025-11-14T00:00", "ns")
    # one nanosecond past midnight is inside the new day, whichever end labels it
    just_after = midnight + np.timedelta64(1, "ns")
    for label in ("start", "end"):
        assert usable_from(just_after, period_minutes=1440, period_label=label)[0] == \
            np.datetime64("2025-11-15T00:00", "ns")
    # 7-hour periods from 1970-01-01T00Z: 2025-11-14T00Z is 20406 days = 489744 h after it,
    # and 489744 = 7 x 69963 + 3, so the periods around it run 13th 21:00 - 14th 04:00 - 11:00
    stamps = _t("2025-11-14T00:00", "2025-11-14T04:00")
    assert list(usable_from(stamps, period_minutes=420, period_label="end")) == \
        list(_t("2025-11-14T04:00", "2025-11-14T04:00"))
    assert list(usable_from(stamps, period_minutes=420, period_label="start")) == \
        list(_t("2025-11-14T04:00", "2025-11-14T11:00"))
    # before 1970 too (the day of 31 December 1969 ends at the epoch)
    assert usable_from(_t("1969-12-31T12:00"), period_minutes=1440, period_label="start")[0] == \
        np.datetime64("1970-01-01T00:00", "ns")


def test_units_and_missing_times():
    seconds = np.array(["2025-11-14T10:00:00", "NaT"], dtype="datetime64[s]")
    got = usable_from(seconds, delay_minutes=60)
    assert got.dtype == np.dtype("datetime64[ns]")
    assert got[0] == np.datetime64("2025-11-14T11:00", "ns") and np.isnat(got[1])
    assert usable_from(_t(), period_minutes=60).size == 0


@pytest.mark.parametrize("kwargs, match", [({"delay_minutes": -1}, "delay_minutes"),
                                           ({"period_minutes": 0}, "period_minutes"),
                                           ({"period_minutes": 60, "period_label": "middle"}, "period_label")])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        usable_from(_t("2025-11-14T10:00"), **kwargs)


def test_a_forecast_is_usable_at_its_issue_time_plus_the_delay():
    issued = datetime(2025, 11, 14, 12, 0, tzinfo=UTC)
    assert forecast_usable_at(issued, 60) == datetime(2025, 11, 14, 13, 0, tzinfo=UTC)
    assert forecast_usable_at(issued, 0) == issued
    assert forecast_usable_at(issued, 12.5) == datetime(2025, 11, 14, 12, 12, 30, tzinfo=UTC)
    with pytest.raises(ValueError, match="delay_minutes"):
        forecast_usable_at(issued, -5)


def test_observed_at_is_when_persistence_could_first_see_the_water():
    from datetime import UTC, datetime

    from warning.availability import observed_at

    t = datetime(2025, 11, 14, 5, 30, tzinfo=UTC)
    # a plain reading: the delay alone
    assert observed_at(t, delay_minutes=20) == datetime(2025, 11, 14, 5, 50, tzinfo=UTC)
    # a daily mean: not before the day is over, then the delay
    assert observed_at(t, delay_minutes=10, period_minutes=1440) == datetime(2025, 11, 15, 0, 10, tzinfo=UTC)
    # an hourly mean: the hour's end; a moment on a boundary is seen at once
    assert observed_at(t, period_minutes=60) == datetime(2025, 11, 14, 6, 0, tzinfo=UTC)
    assert observed_at(datetime(2025, 11, 14, 6, 0, tzinfo=UTC), period_minutes=60) == datetime(
        2025, 11, 14, 6, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="negative"):
        observed_at(t, delay_minutes=-1)
