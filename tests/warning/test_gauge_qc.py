"""Quality control of gauge readings (issue 14): bad content costs as little as it can.

Expectations are worked out here by hand (unit definitions: 1 ft = 0.3048 m, 1 in =
0.0254 m exactly; the rate limit 5 m/h over at least 15 min) or from the raw USGS Dead Run
file read with the csv module, never from the code under test.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from tests.conftest import shared_path
from tests.warning.test_gauge_feeds import ea_doc, ea_item, sta_page, usgs_doc, usgs_series
from warning.errors import IngestError
from warning.ingest import get_source
from warning.ingest.gauge_csv import (
    QC_FLATLINE,
    QC_GOOD,
    QC_MISSING,
    QC_NAMES,
    QC_RATE,
    QC_SPIKE,
    rate_flags,
)
from warning.ingest.gauge_feeds import FEED_QC_NAMES, QC_STALE
from warning.ingest.limits import Limits
from warning.ingest.readings import ARCHIVE_QC_NAMES

FT = 0.3048  # exact, international foot
INCH = 0.0254  # exact
SITE = "01589330"
DEADRUN_CSV = ("data", "storms", "usgs_deadrun_201806", "DeadRun_Instant_01589330_2018-06.csv")
H_COL = f"USGS:{SITE}:00065:00000"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ns(t: datetime) -> np.datetime64:
    return np.datetime64(t.replace(tzinfo=None), "ns")


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def series_csv(values: list[float], step_min: float = 5, station: str = "G") -> str:
    t0 = utc(2025, 11, 14)
    return "station,time,stage\n" + "".join(
        f"{station},{iso(t0 + timedelta(minutes=step_min * k))},{v}\n" for k, v in enumerate(values))


# ============================================================================ the QC bits
def test_rate_is_a_free_bit_named_in_every_table():
    tables = (QC_NAMES, FEED_QC_NAMES, ARCHIVE_QC_NAMES)
    assert QC_RATE == 256 and all(t[QC_RATE] == "rate" for t in tables)
    bits = list(ARCHIVE_QC_NAMES)
    assert len(set(bits)) == len(bits) and all(b & (b - 1) == 0 for b in bits)  # distinct powers of two
    assert QC_STALE not in ARCHIVE_QC_NAMES  # 64 is a station flag, not a reading's
    assert QC_NAMES[QC_FLATLINE] == "flatline"  # the CSV source has the flatline check now


def test_every_gauge_source_takes_the_pipeline_settings(tmp_path):
    """What warning.pipeline.Inputs passes: limits=, units= (always), stale_after_minutes=."""
    csv_file = write(tmp_path / "g.csv", series_csv([1.0, 1.1]))
    iv = write(tmp_path / "iv.json", json.dumps(usgs_doc(usgs_series(
        "00065", "ft", [("2024-01-10T06:00:00Z", "1.0", "A")]))))
    ea = write(tmp_path / "ea.json", json.dumps(ea_doc([ea_item(
        "E1", utc(2024, 1, 10, 6), 1.0, "level-stage-i-15_min-mASD")])))
    sta = write(tmp_path / "sta.json", json.dumps(sta_page([("2024-01-10T06:00:00Z", 1.0)])))
    nwis = write(tmp_path / "nwis.csv", f"datetimeUTC,{H_COL}\n2024-01-10 06:00:00+00:00,1.0\n")
    peq = write(tmp_path / "peq.dat", '"date" "P" "ETpot" "Q"\n2011010100 0 0 0.04\n2011010101 0 0 0.05\n')
    kinds = {"gauge_csv": {"path": csv_file}, "usgs_iv": {"path": iv},
             "ea_flood_monitoring": {"path": ea, "station": "E1"},
             "sensorthings": {"path": sta, "datastream": 1}, "nwis_csv": {"path": nwis},
             "peq": {"path": peq}}
    for kind, settings in kinds.items():
        src = get_source(kind, limits=Limits(), units="m", stale_after_minutes=90, **settings)
        ds = src.read({}) if kind in ("gauge_csv",) else src.read({}, now=utc(2024, 1, 10, 7))
        assert ds["qc"].dtype == np.uint16, kind
        assert ds.attrs["problems"] == [], kind


# ============================================================================ gauge CSV
def test_unit_column_converts_each_row(tmp_path):
    f = write(tmp_path / "g.csv", "station,time,stage,unit\n"
              "A,2025-11-14T00:00Z,10,ft\n"
              "A,2025-11-14T00:15Z,305,cm\n"
              "A,2025-11-14T00:30Z,3.1,m\n"
              "A,2025-11-14T00:45Z,122,in\n"
              "A,2025-11-14T01:00Z,3150,mm\n"
              "A,2025-11-14T01:15Z,10.5,FT\n"
              "A,2025-11-14T01:30Z,3.0,furlong\n")
    # the config said cm: the file's own unit column wins, row by row, and that is no problem
    ds = get_source("gauge_csv", path=f, units="cm").read()
    expect = [10 * FT, 3.05, 3.1, 122 * INCH, 3.15, 10.5 * FT]
    np.testing.assert_allclose(ds.stage.values[0, :6], expect, rtol=1e-12)
    assert np.isnan(ds.stage.values[0, 6]) and ds.qc.values[0, 6] == QC_MISSING
    assert list(ds.qc.values[0, :6]) == [QC_GOOD] * 6
    assert ds.attrs["problems"] == [
        ("g.csv:8: station A: unit 'furlong' at 2025-11-14T01:30Z is not a length unit "
        "(m, cm, mm, ft, in); that reading is flagged missing")]


def test_without_a_unit_column_the_configured_unit_is_used(tmp_path):
    f = write(tmp_path / "g.csv", series_csv([10.0, 10.5]))
    ds = get_source("gauge_csv", path=f, units="ft").read()
    np.testing.assert_allclose(ds.stage.values[0], [10 * FT, 10.5 * FT], rtol=1e-12)


def test_a_byte_order_mark_changes_nothing(tmp_path):
    text = "station,time,stage_m\nMB-TOWN,2025-11-14T00:00Z,1.25\nMB-TOWN,2025-11-14T00:15Z,1.30\n"
    plain = write(tmp_path / "plain.csv", text)
    bom = write(tmp_path / "bom.csv", text, encoding="utf-8-sig")
    assert bom.read_bytes()[:3] == b"\xef\xbb\xbf"
    a, b = get_source("gauge_csv", path=plain).read(), get_source("gauge_csv", path=bom).read()
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    assert list(b.station.values) == ["MB-TOWN"] and b.attrs["problems"] == []


def test_a_latin1_file_is_refused_naming_file_and_line(tmp_path):
    f = write(tmp_path / "latin.csv", "station,time,stage\nA,2025-11-14T00:00Z,1.0\n"
              "Bègles,2025-11-14T00:00Z,1.0\n", encoding="latin-1")
    with pytest.raises(IngestError, match=r"latin\.csv:3: not UTF-8 text \(byte 0xe8\)"):
        get_source("gauge_csv", path=f).read()


def test_a_truncated_last_row_is_ignored_with_a_problem(tmp_path):
    body = series_csv([1.0, 1.1, 1.2], station="MB-TOWN")
    f = write(tmp_path / "readings.csv", body + "MB-TOWN,2025-11-1")
    ds = get_source("gauge_csv", path=f).read()
    np.testing.assert_allclose(ds.stage.values[0], [1.0, 1.1, 1.2])
    assert (ds.qc.values == QC_GOOD).all()
    assert ds.attrs["problems"] == [
        ("readings.csv:5: truncated last row ('MB-TOWN,2025-11-1') ignored; the file was probably "
        "read while being written")]
    # all fields there but the time cut mid-way: the same
    f = write(tmp_path / "readings.csv", body + "MB-TOWN,2025-11-14T00:1,1.3\n")
    assert get_source("gauge_csv", path=f).read().sizes["time"] == 3


def test_malformed_rows_in_the_middle_are_flagged_or_skipped(tmp_path):
    f = write(tmp_path / "g.csv", "station,time,stage\n"
              "A,2025-11-14T00:00Z,1.00\n"
              "A,2025-11-14T00:05Z,abc\n"        # not a number: missing, kept
              "A,yesterday,1.02\n"               # no time: skipped
              "A,2025-11-14T00:15Z,1.03,extra\n"  # four fields, the header has three: missing
              "A,2025-11-14T00:20Z,\n"           # empty: a plain missing reading, no problem
              "A,2025-11-14T00:25Z,1.05\n"
              "A,2025-11-14T00:30Z,1.06\n")
    ds = get_source("gauge_csv", path=f).read()
    a = ds.sel(station="A")
    assert a.sizes["time"] == 6  # 00:00, 00:05, 00:15, 00:20, 00:25, 00:30
    assert list(a.qc.values) == [QC_GOOD, QC_MISSING, QC_MISSING, QC_MISSING, QC_GOOD, QC_GOOD]
    assert ds.attrs["problems"] == [
        ("g.csv:3: station A: value 'abc' at 2025-11-14T00:05Z is not a number; that reading is "
        "flagged missing"),
        "g.csv:4: time 'yesterday' is not ISO 8601; row skipped",
        "g.csv:5: station A: 4 fields where the header has 3; that reading is flagged missing"]


def test_a_file_mostly_bad_is_refused(tmp_path):
    half = "station,time,stage\nA,2025-11-14T00:00Z,1\nA,2025-11-14T00:05Z,x\n" \
           "A,2025-11-14T00:10Z,y\nA,2025-11-14T00:15Z,1\n"
    ds = get_source("gauge_csv", path=write(tmp_path / "half.csv", half)).read()  # 2 of 4: not more than half
    assert int((ds.qc.values == QC_MISSING).sum()) == 2
    worse = half + "A,2025-11-14T00:20Z,z\n"  # 3 of 5
    with pytest.raises(IngestError, match=r"worse\.csv: 3 of 5 rows unreadable or flagged \(more than "
                                          r"50%\); the file is refused\. First: worse\.csv:3: "):
        get_source("gauge_csv", path=write(tmp_path / "worse.csv", worse)).read()
    # the limit is the site's
    strict = get_source("gauge_csv", path=tmp_path / "half.csv", limits=Limits(max_flagged_share=0.25))
    with pytest.raises(IngestError, match="2 of 4 rows"):
        strict.read()


def test_problems_are_capped_per_kind(tmp_path):
    values = ["x" if k % 5 == 0 else "1.0" for k in range(100)]  # 20 bad of 100
    ds = get_source("gauge_csv", path=write(tmp_path / "g.csv", series_csv(values))).read()
    probs = ds.attrs["problems"]
    assert len(probs) == 6 and probs[0].startswith("g.csv:2: station G: value 'x'")
    assert probs[-1] == "g.csv: values that are not numbers: 15 more like this not listed (20 in all)"


def test_columns_are_mapped_by_setting_and_matched_loosely(tmp_path):
    f = write(tmp_path / "g.csv", " Gauge , Timestamp ,Level_ft,Quality\n"
              "A,2025-11-14T00:00Z,10,good\nA,2025-11-14T00:15Z,11,good\n")
    with pytest.raises(IngestError) as err:
        get_source("gauge_csv", path=f).read()
    msg = str(err.value)
    assert "g.csv:1: needs columns station, time and a value" in msg
    assert "no station column 'station' (setting station_column)" in msg
    assert "no time column 'time' (setting time_column)" in msg
    assert "the header has ' Gauge ', ' Timestamp ', 'Level_ft', 'Quality'" in msg
    ds = get_source("gauge_csv", path=f, units="ft", station_column="gauge",
                    time_column="TIMESTAMP", value_column="level_FT").read()
    np.testing.assert_allclose(ds.stage.sel(station="A").values, [10 * FT, 11 * FT], rtol=1e-12)
    with pytest.raises(IngestError, match=r"no unit column 'units' \(setting unit_column\)"):
        get_source("gauge_csv", path=f, station_column="gauge", time_column="timestamp",
                   unit_column="units").read()


def test_csv_flatline_after_12_hours(tmp_path):
    # 30-min readings: 25 equal values span 720 min (not more than the CSV's 720 min limit),
    # 26 span 750 min: all but the first of those are flagged
    twelve_h = [1.0] * 25 + [1.1]
    ds = get_source("gauge_csv", path=write(tmp_path / "a.csv", series_csv(twelve_h, step_min=30))).read()
    assert (ds.qc.values == QC_GOOD).all()
    longer = [1.0] * 26 + [1.1]
    ds = get_source("gauge_csv", path=write(tmp_path / "b.csv", series_csv(longer, step_min=30))).read()
    assert list(ds.qc.values[0]) == [QC_GOOD] + [QC_FLATLINE] * 25 + [QC_GOOD]
    # the feeds' 6 h, when asked for
    six = get_source("gauge_csv", path=tmp_path / "a.csv", flatline_minutes=360).read()
    assert list(six.qc.values[0]) == [QC_GOOD] + [QC_FLATLINE] * 24 + [QC_GOOD]
    off = get_source("gauge_csv", path=tmp_path / "b.csv", flatline_minutes=None).read()
    assert (off.qc.values == QC_GOOD).all()


# ============================================================================ rate of change
def test_a_3_m_jump_in_5_min_is_flagged_alone(tmp_path):
    vals = [1.00, 1.02, 1.04, 4.04, 1.06, 1.08, 1.10]
    ds = get_source("gauge_csv", path=write(tmp_path / "g.csv", series_csv(vals))).read()
    # 3 m in 5 min: more than 5 m/h x 15 min = 1.25 m; the next reading is compared with
    # the last good one (1.04 at 00:10, 0.02 m in 10 min) and is good
    assert list(ds.qc.values[0]) == [QC_GOOD] * 3 + [QC_RATE] + [QC_GOOD] * 3
    assert ds.stage.values[0, 3] == pytest.approx(4.04)  # kept with its flag


def test_a_lasting_step_is_accepted_once_a_real_rise_could_reach_it(tmp_path):
    vals = [1.0] * 6 + [4.0] * 10  # 5-min readings; the step comes at 00:30
    ds = get_source("gauge_csv", path=write(tmp_path / "g.csv", series_csv(vals)),
                    flatline_minutes=None).read()
    # against the last good reading (1.0 at 00:25): 3 m > 5 m/h x max(dt, 15 min) while
    # dt < 36 min, so 00:30 .. 01:00 (dt 5..35 min) are flagged, 01:05 (dt 40 min) is good
    assert list(ds.qc.values[0]) == [QC_GOOD] * 6 + [QC_RATE] * 7 + [QC_GOOD] * 3


def test_rate_floor_and_site_limit():
    t = np.array(["2025-01-01T00:00", "2025-01-01T00:01", "2025-01-01T00:02"], dtype="datetime64[ns]")
    qc = np.zeros(3, dtype=np.uint16)
    # one minute apart: the floor of 15 min allows 5 m/h x 0.25 h = 1.25 m
    assert list(rate_flags(np.array([0.0, 1.2, 0.0]), qc, t)) == [0, 0, 0]
    assert list(rate_flags(np.array([0.0, 1.3, 0.0]), qc, t)) == [0, QC_RATE, 0]
    # a flagged or missing reading is never the reference
    assert list(rate_flags(np.array([0.0, 9.0, 1.3]), np.array([0, QC_MISSING, 0]), t)) == [0, 0, QC_RATE]
    # the site's limits: 0.5 m in 15 min is 2 m/h
    t15 = np.array(["2025-01-01T00:00", "2025-01-01T00:15"], dtype="datetime64[ns]")
    assert list(rate_flags(np.array([1.0, 1.5]), qc[:2], t15)) == [0, 0]
    assert list(rate_flags(np.array([1.0, 1.5]), qc[:2], t15, Limits(stage_max_rise_m_per_h=1.0))) \
        == [0, QC_RATE]


def test_rate_check_comes_before_the_spike_check(tmp_path):
    """A 0.6 m single-reading spike (under the 1.25 m rate floor) is still a spike."""
    vals = [1.0, 1.0, 1.6, 1.0, 1.0]
    ds = get_source("gauge_csv", path=write(tmp_path / "g.csv", series_csv(vals))).read()
    assert list(ds.qc.values[0]) == [QC_GOOD, QC_GOOD, QC_SPIKE, QC_GOOD, QC_GOOD]


def _deadrun_rows() -> list[dict[str, str]]:
    with open(shared_path(*DEADRUN_CSV), newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.requires_shared
def test_the_dead_run_flash_flood_raises_no_rate_flag(tmp_path):
    """The fastest real rise in the record, 0.67 ft (0.204 m) in the 5 min to 22:00Z on
    10 June 2018, is 2.45 m/h: under 5 m/h, and no source may flag any of it."""
    rows = _deadrun_rows()
    times = np.array([datetime.fromisoformat(r["datetimeUTC"]).timestamp() for r in rows]) / 3600.0
    stage = np.array([float(r[H_COL]) for r in rows]) * FT
    rises = np.diff(stage) / np.diff(times)
    assert rises.max() == pytest.approx(2.45, abs=0.005)

    ds = get_source("nwis_csv", path=shared_path(*DEADRUN_CSV)).read()
    assert ds.sizes["time"] == 8928
    assert not (ds.qc.values & QC_RATE).any()

    # the same gage heights as a gauge CSV with a unit column, and as a USGS IV feed
    lines = ["station,time,stage,unit"] + [f"deadrun,{r['datetimeUTC'].replace(' ', 'T')},{r[H_COL]},ft"
                                          for r in rows]
    g = get_source("gauge_csv", path=write(tmp_path / "deadrun.csv", "\n".join(lines) + "\n")).read()
    np.testing.assert_allclose(g.stage.values[0], stage, rtol=1e-12)
    assert not (g.qc.values & QC_RATE).any() and g.attrs["problems"] == []
    doc = usgs_doc(usgs_series("00065", "ft", [(r["datetimeUTC"].replace(" ", "T"), r[H_COL], "A")
                                               for r in rows]))
    iv = get_source("usgs_iv", path=write(tmp_path / "iv.json", json.dumps(doc))).read(now=utc(2018, 7, 1))
    np.testing.assert_allclose(iv.stage.values[0], stage, rtol=1e-12)
    assert not (iv.qc.values & QC_RATE).any() and iv.attrs["problems"] == []


def test_readings_until_keeps_the_rate_flag(tmp_path):
    from warning.gauge_cycle import readings_until

    ds = get_source("gauge_csv", path=write(tmp_path / "g.csv", series_csv([1.0, 1.0, 4.0, 1.0]))).read()
    assert ds.qc.values[0, 2] == QC_RATE
    cut = readings_until(ds, utc(2025, 11, 14, 0, 15))
    assert cut.qc.values[0, 2] == QC_RATE


# ============================================================================ USGS IV
def _site(series: dict, site: str) -> dict:
    series["sourceInfo"]["siteCode"][0]["value"] = site
    return series


def _iv(tmp_path: Path, *series: dict) -> Path:
    return write(tmp_path / "iv.json", json.dumps(usgs_doc(*series)))


ROWS = [("2018-06-03T15:00:00.000-04:00", "1.00", "P"),
        ("2018-06-03T15:05:00.000-04:00", "Eqp", "P"),
        ("2018-06-03T15:10:00.000-04:00", "1.10", "P")]


def test_usgs_one_bad_value_drops_only_that_value(tmp_path):
    f = _iv(tmp_path, usgs_series("00065", "ft", ROWS))
    ds = get_source("usgs_iv", path=f).read(now=utc(2018, 6, 3, 19, 10))
    np.testing.assert_array_equal(ds.time.values, [ns(utc(2018, 6, 3, 19, m)) for m in (0, 5, 10)])
    assert ds.stage.values[0, 0] == pytest.approx(1.00 * FT) and ds.stage.values[0, 2] == pytest.approx(1.10 * FT)
    assert list(ds.qc.values[0]) == [QC_GOOD, QC_MISSING, QC_GOOD]
    assert ds.attrs["problems"] == [(f"usgs_iv feed {f}: station {SITE}: value 'Eqp' at 2018-06-03T19:05Z "
                                    "is not a number; that reading is flagged missing")]


def test_usgs_other_bad_readings(tmp_path):
    rows = ROWS + [("2018-06-03T15:15:00.000-04:00", "1.2", "P"),
                   ("yesterday", "1.3", "P"),
                   ("2018-06-03T15:25:00.000-04:00", "1.4", "P")]
    doc = usgs_series("00065", "ft", rows)
    doc["values"][0]["value"][0]["value"] = {"v": 1}  # a dict where a value should be
    doc["values"][0]["value"][1]["value"] = "1.05"
    f = _iv(tmp_path, doc)
    ds = get_source("usgs_iv", path=f, stations={SITE: "deadrun"}).read(now=utc(2018, 6, 3, 20))
    assert ds.sizes["time"] == 5  # 'yesterday' skipped
    assert list(ds.qc.values[0]) == [QC_MISSING, QC_GOOD, QC_GOOD, QC_GOOD, QC_GOOD]
    label = f"usgs_iv feed {f}: station {SITE} (gauge deadrun)"
    assert ds.attrs["problems"] == [
        f"{label}: value {{'v': 1}} at 2018-06-03T19:00Z is not a number; that reading is flagged missing",
        (f"{label}: value.timeSeries[0].values[0].value[4]: time 'yesterday' is not ISO 8601; that "
        "reading is skipped")]


def test_usgs_series_without_unit_code_is_in_the_parameters_unit(tmp_path):
    stage = usgs_series("00065", "ft", ROWS[:1])
    del stage["variable"]["unit"]
    flow = usgs_series("00060", "", [(ROWS[0][0], "100", "P")])
    # the site config's units (m) must not be used: USGS defines 00065 in feet
    ds = get_source("usgs_iv", path=_iv(tmp_path, stage, flow), units="m").read(now=utc(2018, 6, 3, 19))
    assert ds.stage.values[0, 0] == pytest.approx(1.00 * FT)
    assert ds.discharge.values[0, 0] == pytest.approx(100 * FT ** 3)
    probs = ds.attrs["problems"]
    assert probs[0].endswith(f"station {SITE}: parameter 00065 declares no unit; read in ft, the unit "
                             "USGS defines for it (Gage height, feet)")
    assert probs[1].endswith("parameter 00060 declares no unit; read in ft3/s, the unit USGS defines "
                             "for it (Discharge, cubic feet per second)")


def test_usgs_unit_contradicting_the_parameter_drops_that_series(tmp_path):
    bad = _site(usgs_series("00065", "ft3/s", ROWS[:1]), "01111111")
    good = usgs_series("00065", "ft", ROWS[:1])
    f = _iv(tmp_path, bad, good)
    ds = get_source("usgs_iv", path=f).read(now=utc(2018, 6, 3, 19))
    assert ds.stage.sel(station=SITE).values[0] == pytest.approx(1.00 * FT)
    assert np.isnan(ds.stage.sel(station="01111111").values).all()
    assert ds.attrs["problems"] == [
        (f"usgs_iv feed {f}: station 01111111: parameter 00065 (Gage height, feet) has unit 'ft3/s', "
        "a flow; the unit contradicts the parameter, so that series is dropped")]


def test_usgs_series_without_values(tmp_path):
    empty = _site(usgs_series("00065", "ft", []), "02222222")
    no_block = _site(usgs_series("00065", "ft", []), "03333333")
    del no_block["values"]
    good = usgs_series("00065", "ft", ROWS[:1])
    f = _iv(tmp_path, empty, no_block, good)
    ds = get_source("usgs_iv", path=f).read(now=utc(2018, 6, 3, 19))
    assert list(ds.station.values) == [SITE, "02222222", "03333333"]
    assert (ds.qc.sel(station=["02222222", "03333333"]).values == QC_MISSING).all()
    assert ds.attrs["problems"] == [
        f"usgs_iv feed {f}: station 02222222: parameter 00065 has no values; the station has no stage readings",
        (f"usgs_iv feed {f}: station 03333333: parameter 00065 has no values block; the station has no "
        "stage readings")]
    # nothing but an empty series: refused with the reason, not a numpy error
    only = _iv(tmp_path, usgs_series("00065", "ft", []))
    with pytest.raises(IngestError, match=r"usgs_iv feed .*iv\.json: no usable readings: station 01589330: .*has no values"):
        get_source("usgs_iv", path=only).read()


def test_usgs_structurally_broken_series_is_dropped(tmp_path):
    broken = usgs_series("00065", "ft", ROWS[:1])
    del broken["sourceInfo"]
    f = _iv(tmp_path, broken, _site(usgs_series("00065", "ft", ROWS[:1]), "04444444"))
    ds = get_source("usgs_iv", path=f).read(now=utc(2018, 6, 3, 19))
    assert list(ds.station.values) == ["04444444"]
    assert ds.attrs["problems"] == [(f"usgs_iv feed {f}: value.timeSeries[0]: missing 'sourceInfo' (the "
                                    "station is unknown); that series is dropped")]
    f.write_text(json.dumps({"value": {"queryInfo": {}}}))
    with pytest.raises(IngestError, match=r"iv\.json: value: missing 'timeSeries'"):
        get_source("usgs_iv", path=f).read()


def test_problems_survive_a_not_modified_read(tmp_path):
    f = _iv(tmp_path, usgs_series("00065", "ft", ROWS))
    src = get_source("usgs_iv", path=f)
    first = src.read(now=utc(2018, 6, 3, 19, 10))
    again = src.read(now=utc(2018, 6, 3, 19, 10))
    assert again.attrs["not_modified"] == 1 and again.attrs["problems"] == first.attrs["problems"]
    assert len(first.attrs["problems"]) == 1


# ============================================================================ EA, SensorThings
def test_ea_bad_values_and_times_drop_only_themselves(tmp_path):
    t0 = utc(2025, 1, 1)
    level = "level-stage-i-15_min-mASD"
    items = [ea_item("E1", t0 + timedelta(minutes=15 * k), 1.0 + 0.01 * k, level) for k in reversed(range(4))]
    items[0]["value"] = "n/a"          # 00:45
    items[1]["dateTime"] = "2025-13-01T00:30:00Z"  # skipped
    del items[2]["dateTime"]           # skipped
    f = write(tmp_path / "ea.json", json.dumps(ea_doc(items)))
    ds = get_source("ea_flood_monitoring", station="E1", path=f).read(now=t0 + timedelta(hours=1))
    np.testing.assert_array_equal(ds.time.values, [ns(t0), ns(t0 + timedelta(minutes=45))])
    assert list(ds.qc.values[0]) == [QC_GOOD, QC_MISSING]
    label = f"ea_flood_monitoring feed {f}: station E1"
    assert ds.attrs["problems"] == [
        f"{label}: value 'n/a' at 2025-01-01T00:45Z is not a number; that reading is flagged missing",
        f"{label}: items[1]: time '2025-13-01T00:30:00Z' is not ISO 8601; that reading is skipped",
        f"{label}: items[2]: missing 'dateTime'; that reading is skipped"]
    f.write_text(json.dumps({"meta": {}}))
    with pytest.raises(IngestError, match=r"ea\.json: missing 'items'"):
        get_source("ea_flood_monitoring", station="E1", path=f).read()


def test_sensorthings_bad_observations_drop_only_themselves(tmp_path):
    t0 = utc(2025, 3, 1)
    doc = sta_page([(iso(t0 + timedelta(minutes=10 * k)), 1.0 + 0.01 * k) for k in range(4)])
    doc["value"][1]["result"] = "Eqp"
    del doc["value"][2]["phenomenonTime"]
    doc["value"].append("junk")
    f = write(tmp_path / "obs.json", json.dumps(doc))
    ds = get_source("sensorthings", datastream=7, path=f, units="m").read(now=t0 + timedelta(hours=1))
    assert list(ds.qc.values[0]) == [QC_GOOD, QC_MISSING, QC_GOOD]
    np.testing.assert_allclose(ds.stage.values[0, [0, 2]], [1.00, 1.03])
    label = f"sensorthings feed {f}: datastream 7"
    assert ds.attrs["problems"] == [
        f"{label}: value 'Eqp' at 2025-03-01T00:10Z is not a number; that reading is flagged missing",
        f"{label}: value[2]: missing 'phenomenonTime'; that reading is skipped",
        f"{label}: value[4]: 'junk' is not an observation; skipped"]


def test_feed_rate_check(tmp_path):
    t0 = utc(2025, 3, 1)
    vals = [1.0, 1.02, 4.02, 1.04, 1.06]
    f = write(tmp_path / "obs.json", json.dumps(sta_page(
        [(iso(t0 + timedelta(minutes=5 * k)), v) for k, v in enumerate(vals)])))
    ds = get_source("sensorthings", datastream=1, path=f).read(now=t0)
    assert list(ds.qc.values[0]) == [QC_GOOD, QC_GOOD, QC_RATE, QC_GOOD, QC_GOOD]
