"""Gauge sites (no DEM): the nwis_csv and peq sources, the gauge cycle, and the two real
records replayable as sites (sites/deadrun, sites/hupsel).

Tests on the real records read ../shared and skip, saying why, when it is absent.
Expectations are worked out here from the raw files (the csv module and plain
arithmetic), not from the code under test.
"""

from __future__ import annotations

import csv
import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from typer.testing import CliRunner

from tests.conftest import REPO, shared_path
from warning.cli import app
from warning.config import load_config
from warning.errors import ConfigError, IngestError
from warning.ingest import get_source, source_names
from warning.ingest.gauge_csv import QC_GOOD, QC_MISSING, QC_SPIKE
from warning.ingest.readings import QC_QUALIFIER

UTC = timezone.utc
DEADRUN_CSV = ("data", "storms", "usgs_deadrun_201806", "DeadRun_Instant_01589330_2018-06.csv")
HUPSEL_PEQ = ("data", "storms", "hupsel_hourly", "PEQ_Hupsel.dat")
Q_COL, H_COL = "USGS:01589330:00060:00000", "USGS:01589330:00065:00000"
needs_shared = pytest.mark.requires_shared


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _raw_nwis() -> dict[datetime, tuple[float, float]]:
    """time -> (discharge ft3/s, gage height ft), straight from the CSV."""
    with open(shared_path(*DEADRUN_CSV), newline="") as fh:
        return {_utc(r["datetimeUTC"]): (float(r[Q_COL]), float(r[H_COL])) for r in csv.DictReader(fh)}


def _raw_peq() -> list[tuple[str, float, float, float]]:
    """(stamp, P, ETpot, Q) rows, Q NaN where NA."""
    rows = []
    for line in shared_path(*HUPSEL_PEQ).read_text().splitlines()[1:]:
        d, p, e, q = line.split()
        rows.append((d, float(p), float(e), math.nan if q == "NA" else float(q)))
    return rows


def _stamp_end(stamp: str) -> datetime:
    """A PEQ row's reading time: the end of the hour its stamp starts."""
    return datetime(int(stamp[:4]), int(stamp[4:6]), int(stamp[6:8]), int(stamp[8:10]), tzinfo=UTC) \
        + timedelta(hours=1)


def _site_config(tmp_path: Path, name: str, edit=lambda t: t, gauge_file: Path | None = None) -> Path:
    """sites/<name>/site.toml copied to tmp with absolute paths and outputs in tmp."""
    folder = REPO / "sites" / name
    text = (folder / "site.toml").read_text()
    text = re.sub(r'path = "\.\./\.\./\.\./shared/([^"]+)"',
                  lambda m: f'path = "{gauge_file or shared_path(*m.group(1).split("/"))}"', text)
    text = text.replace('zones = "zones.geojson"', f'zones = "{folder / "zones.geojson"}"')
    text = text.replace('params_file = "lumped_params.toml"', f'params_file = "{folder / "lumped_params.toml"}"')
    text = text.replace(f'output_dir = "../../out/{name}"', f'output_dir = "{tmp_path / "out"}"')
    p = tmp_path / f"{name}.toml"
    p.write_text(edit(text))
    return p


# ============================================================================ registry
def test_archive_sources_are_registered():
    assert {"nwis_csv", "peq"} <= set(source_names())


# ============================================================================ nwis_csv
@needs_shared
def test_nwis_units_match_the_raw_file():
    """1360 cfs -> 38.51 m3/s and 6.17 ft -> 1.8806 m at 2018-06-03 22:05Z (PROVENANCE.md)."""
    raw = _raw_nwis()
    t = _utc("2018-06-03T22:05Z")
    assert raw[t] == (1360.0, 6.17)
    ds = get_source("nwis_csv", path=shared_path(*DEADRUN_CSV)).read()
    at = ds.sel(station="01589330", time=np.datetime64("2018-06-03T22:05", "ns"))
    assert float(at["discharge"]) == pytest.approx(1360.0 * 0.028316846592, rel=1e-12)
    assert round(float(at["discharge"]), 2) == 38.51
    assert float(at["stage"]) == pytest.approx(6.17 * 0.3048, rel=1e-12)
    assert round(float(at["stage"]), 4) == 1.8806
    assert ds["discharge"].attrs["units"] == "m3 s-1" and ds["stage"].attrs["units"] == "m"
    # every reading in the file, converted with the exact factors; all approved, all good
    times = np.array([np.datetime64(k.replace(tzinfo=None), "ns") for k in raw])
    q = np.array([v[0] for v in raw.values()]) * 0.028316846592
    h = np.array([v[1] for v in raw.values()]) * 0.3048
    sub = ds.sel(station="01589330", time=times)
    np.testing.assert_allclose(sub["discharge"].values, q, rtol=1e-12)
    np.testing.assert_allclose(sub["stage"].values, h, rtol=1e-12)
    assert ds.sizes["time"] == 8928 and (ds["qc"].values == QC_GOOD).all()
    assert (ds["discharge_qc"].values == QC_GOOD).all()


def test_nwis_qualifiers_other_than_approved_or_provisional_are_flagged(tmp_path):
    f = tmp_path / "iv.csv"
    f.write_text(
        "datetimeUTC,USGS:0001:00060:00000_qualifiers,USGS:0001:00060:00000,"
        "USGS:0001:00065:00000_qualifiers,USGS:0001:00065:00000\n"
        "2020-01-01 00:00:00+00:00,A,10.0,A,1.00\n"
        "2020-01-01 00:05:00+00:00,P,11.0,P,1.01\n"
        "2020-01-01 00:10:00+00:00,\"P,e\",12.0,\"P,Ice\",1.02\n"
        "2020-01-01 00:15:00+00:00,hf.missing,,hf.upsampled,1.03\n"
        "2020-01-01 00:20:00+00:00,A,13.0,A,1.04\n")
    ds = get_source("nwis_csv", path=f, stations={"0001": "G1"}).read({"G1": (0.0, 5.0)})
    assert list(ds["station"].values) == ["G1"]
    qc, qqc = ds["qc"].values[0], ds["discharge_qc"].values[0]
    assert list(qc) == [QC_GOOD, QC_GOOD, QC_QUALIFIER, QC_QUALIFIER, QC_GOOD]
    assert list(qqc) == [QC_GOOD, QC_GOOD, QC_QUALIFIER, QC_QUALIFIER | QC_MISSING, QC_GOOD]
    assert ds["stage_qualifiers"].values[0, 2] == "P,Ice"
    assert ds["stage"].values[0, 1] == pytest.approx(1.01 * 0.3048)


@pytest.mark.parametrize("body, line, what", [
    ("2020-01-01 00:00:00+00:00,A,10.0,A,1.00\n2020-01-01 00:05:00+00:00,A,10.0\n", 3, "fields"),
    ("2020-01-01 00:00:00+00:00,A,10.0,A,1.00\nyesterday,A,10.0,A,1.00\n", 3, "not ISO 8601"),
    ("2020-01-01 00:00:00+00:00,A,10.0,A,1.00\n2020-01-01 00:05:00+00:00,A,lots,A,1.0\n", 3, "not a number"),
])
def test_corrupt_nwis_csv_names_the_line(tmp_path, body, line, what):
    f = tmp_path / "bad.csv"
    f.write_text("datetimeUTC,USGS:0001:00060:00000_qualifiers,USGS:0001:00060:00000,"
                 "USGS:0001:00065:00000_qualifiers,USGS:0001:00065:00000\n" + body)
    with pytest.raises(IngestError, match=rf"bad\.csv:{line}: .*{what}"):
        get_source("nwis_csv", path=f).read()


def test_nwis_csv_with_binary_junk_or_no_usgs_columns_is_refused(tmp_path):
    junk = tmp_path / "junk.csv"
    junk.write_bytes(b"datetimeUTC,USGS:0001:00065:00000\n2020-01-01 00:00:00+00:00,1.0\n\xff\xfe\x00\x01\n")
    with pytest.raises(IngestError, match=r"junk\.csv:3: not UTF-8"):
        get_source("nwis_csv", path=junk).read()
    other = tmp_path / "other.csv"
    other.write_text("datetimeUTC,flow\n2020-01-01 00:00:00+00:00,1.0\n")
    with pytest.raises(IngestError, match=r"other\.csv:1: no USGS value column"):
        get_source("nwis_csv", path=other).read()


@needs_shared
def test_nwis_csv_cut_short_in_the_real_file_names_the_line(tmp_path):
    lines = shared_path(*DEADRUN_CSV).read_text().splitlines()
    lines[800] = lines[800][:25]  # a line cut off mid-way, as a partial download leaves it
    f = tmp_path / "cut.csv"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(IngestError, match=r"cut\.csv:801: 1 fields where the header has 5"):
        get_source("nwis_csv", path=f).read()


# ============================================================================ peq
@needs_shared
def test_peq_discharge_is_specific_discharge_times_area():
    rows = _raw_peq()
    ds = get_source("peq", path=shared_path(*HUPSEL_PEQ)).read()
    big = get_source("peq", path=shared_path(*HUPSEL_PEQ), area_km2=13.0).read()
    peak = next(r for r in rows if r[0] == "2011011312")
    assert peak[3] == 0.6811
    t = np.datetime64("2011-01-13T13:00", "ns")  # the hour stamped 12 ends at 13:00
    q = float(ds["discharge"].sel(station="HUPSEL", time=t))
    assert q == pytest.approx(0.6811 * 6.5e6 * 1e-3 / 3600.0, rel=1e-12)  # mm/h x m2 -> m3/s
    assert q == pytest.approx(1.2298, abs=1e-4)
    assert float(big["discharge"].sel(station="HUPSEL", time=t)) == pytest.approx(2 * q, rel=1e-12)
    # rain and evaporation stay in mm/h, at the end of their hour; the record has no stage
    ends = np.array([np.datetime64(_stamp_end(r[0]).replace(tzinfo=None), "ns") for r in rows])
    np.testing.assert_array_equal(ds["time"].values, ends)
    np.testing.assert_allclose(ds["rain"].values[0], [r[1] for r in rows])
    np.testing.assert_allclose(ds["etpot"].values[0], [r[2] for r in rows])
    assert ds["rain"].attrs["units"] == "mm h-1"
    assert np.isnan(ds["stage"].values).all() and (ds["qc"].values == QC_MISSING).all()
    missing = np.isnan([r[3] for r in rows])
    assert missing.sum() == 105
    assert ((ds["discharge_qc"].values[0] & QC_MISSING) > 0).tolist() == missing.tolist()
    assert ds.attrs["measured"] == ["discharge", "rain", "etpot"]


@pytest.mark.parametrize("body, line, what", [
    ('"date" "P" "ETpot" "Q"\n2011010100 0 0 0.04\n2011010101 0 0\n', 3, "2 fields|3 fields"),
    ('"date" "P" "ETpot" "Q"\n2011010100 0 0 0.04\n2011013199 0 0 0.04\n', 3, "not YYYYmmddHH"),
    ('"date" "P" "ETpot" "Q"\n2011010100 0 0 0.04\n2011010101 0 wet 0.04\n', 3, "not a number"),
    ('"date" "P" "Q"\n2011010100 0 0.04\n', 1, "must name date, P, ETpot and Q"),
])
def test_corrupt_peq_names_the_line(tmp_path, body, line, what):
    f = tmp_path / "bad.dat"
    f.write_text(body)
    with pytest.raises(IngestError, match=rf"bad\.dat:{line}: .*({what})"):
        get_source("peq", path=f).read()


# ============================================================================ no peeking
def test_spike_flag_never_looks_past_the_cycle_time():
    """A reading judged a spike only because of the reading after it is good at its own time."""
    from warning.gauge_cycle import readings_until

    src_times = np.array(["2020-01-01T00:00", "2020-01-01T00:05", "2020-01-01T00:10", "2020-01-01T00:15"],
                         dtype="datetime64[ns]")
    stage = np.array([[1.0, 2.0, 1.0, 1.0]])
    qc = np.array([[QC_GOOD, QC_SPIKE, QC_GOOD, QC_GOOD]], dtype=np.uint8)
    ds = xr.Dataset({"stage": (("station", "time"), stage), "qc": (("station", "time"), qc)},
                    coords={"station": ["G"], "time": src_times})
    at_spike = readings_until(ds, _utc("2020-01-01T00:05Z"), 0.5)
    assert at_spike.sizes["time"] == 2 and at_spike["qc"].values[0, 1] == QC_GOOD
    later = readings_until(ds, _utc("2020-01-01T00:15Z"), 0.5)
    assert later["qc"].values[0, 1] == QC_SPIKE
    assert ds["qc"].values[0, 1] == QC_SPIKE  # the source's own Dataset is left alone


def _metrics(cfg_path: Path, at: datetime):
    from warning.gauge_cycle import gauge_metrics
    from warning.pipeline import Inputs
    from warning.site import Site

    cfg = load_config(cfg_path)
    g = gauge_metrics(Site.load(cfg), cfg, Inputs(cfg), at)
    return g.metrics, g.details


@needs_shared
def test_deadrun_cycle_uses_nothing_after_its_time(tmp_path):
    at = _utc("2018-06-03T21:30Z")  # on the steep rise before the peak
    lines = shared_path(*DEADRUN_CSV).read_text().splitlines()
    later = [i for i, line in enumerate(lines[1:], start=1) if _utc(line.split(",")[0]) > at]
    assert later and later[0] > 1
    altered = list(lines)
    for i in later:  # every reading after the cycle time: far higher, and a spike right after it
        t, _, q, _, h = altered[i].split(",")
        altered[i] = ",".join([t, "e", f"{float(q) * 7:.1f}", "e", f"{float(h) + 9:.2f}"])
    cut = lines[: later[0]]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    (tmp_path / "altered.csv").write_text("\n".join(altered) + "\n")
    (tmp_path / "cut.csv").write_text("\n".join(cut) + "\n")
    base = _metrics(_site_config(tmp_path / "a", "deadrun"), at)
    for name, f in (("b", tmp_path / "altered.csv"), ("c", tmp_path / "cut.csv")):
        assert _metrics(_site_config(tmp_path / name, "deadrun", gauge_file=f), at) == base
    m = base[0]["DR-FRANKLINTOWN"]
    raw = _raw_nwis()
    assert m["observed_stage_m"] == pytest.approx(raw[at][1] * 0.3048)
    assert m["observed_discharge_m3s"] == pytest.approx(raw[at][0] * 0.028316846592)
    assert base[1]["DR-FRANKLINTOWN"]["observed_times"][-1] == at.isoformat()


@needs_shared
def test_hupsel_cycle_and_its_forecast_use_nothing_after_its_time(tmp_path):
    at = _utc("2013-09-10T20:00Z")  # the storm is under way
    lines = shared_path(*HUPSEL_PEQ).read_text().splitlines()
    later = [i for i, line in enumerate(lines[1:], start=1) if _stamp_end(line.split()[0]) > at]
    altered = list(lines)
    for i in later:  # torrential rain and a brook ten times higher after the cycle time
        d, _, e, q = altered[i].split()
        altered[i] = f"{d} 60 {e} {float(q) * 10 if q != 'NA' else 'NA'}"
    for name in "abc":
        (tmp_path / name).mkdir()
    (tmp_path / "altered.dat").write_text("\n".join(altered) + "\n")
    (tmp_path / "cut.dat").write_text("\n".join(lines[: later[0]]) + "\n")
    base = _metrics(_site_config(tmp_path / "a", "hupsel"), at)
    for name, f in (("b", tmp_path / "altered.dat"), ("c", tmp_path / "cut.dat")):
        assert _metrics(_site_config(tmp_path / name, "hupsel", gauge_file=f), at) == base
    m = base[0]["HUPSEL"]
    assert math.isfinite(m["forecast_peak_discharge_m3s"])
    raw = {_stamp_end(r[0]): r for r in _raw_peq()}
    assert m["observed_discharge_m3s"] == pytest.approx(raw[at][3] * 6.5 / 3.6)


@needs_shared
def test_hupsel_forecast_is_the_lumped_model_with_no_rain_after_the_cycle(tmp_path):
    """Recomputed here from the raw rows: 90 days of observed forcing up to the cycle time,
    then 24 dry hours with the last day's evaporation repeated."""
    from models.lumped import LumpedState, simulate
    from warning.calibration import read_params

    at = _utc("2012-01-05T02:00Z")
    cfg_path = _site_config(tmp_path, "hupsel")
    metrics, details = _metrics(cfg_path, at)
    rows = [r for r in _raw_peq() if at - timedelta(days=90) < _stamp_end(r[0]) <= at]
    assert _stamp_end(rows[-1][0]) == at and len(rows) == 90 * 24
    params = read_params(REPO / "sites" / "hupsel" / "lumped_params.toml")
    rain = np.array([r[1] for r in rows])
    et = np.array([r[2] for r in rows])
    q0 = next(r[3] for r in rows if not math.isnan(r[3]))
    q, state = simulate(params, rain, et, 1.0, LumpedState.initial(params, slow_q_mm_h=q0))
    q_fc, _ = simulate(params, np.zeros(24), et[-24:], 1.0, state)
    expected = q_fc * 6.5 / 3.6
    det = details["HUPSEL"]
    np.testing.assert_allclose(det["gauge_forecast_discharge_m3s"], np.round(expected, 4), atol=1e-4)
    assert metrics["HUPSEL"]["forecast_peak_discharge_m3s"] == pytest.approx(expected.max(), rel=1e-9)
    assert det["gauge_forecast_times"][0] == (at + timedelta(hours=1)).isoformat()
    assert len(det["gauge_forecast_times"]) == 24
    assert "no rain after the cycle time" in det["forecast_note"]
    assert det["model_discharge_m3s"][-1] == pytest.approx(q[-1] * 6.5 / 3.6, abs=1e-4)


# ============================================================================ config
def _gauge_site_text(tmp_path: Path) -> str:
    zones = tmp_path / "zones.geojson"
    zones.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", '
                     '"properties": {"code": "Z1", "name": "Zone one"}, "geometry": {"type": "Polygon", '
                     '"coordinates": [[[0, 0], [0.01, 0], [0.01, 0.01], [0, 0]]]}}]}')
    readings = tmp_path / "readings.csv"
    readings.write_text("station,time,stage\nG1,2025-01-01T00:00Z,1.0\n")
    return f'''
[site]
name = "Gauge test site"
code = "GT"
zones = "{zones}"
output_dir = "{tmp_path / 'out'}"

[[gauges]]
id = "G1"
name = "Gauge one"
lon = 0.005
lat = 0.005
flood_stages = {{ minor = 2.0 }}

[sources.gauges]
kind = "gauge_csv"
path = "{readings}"

[[levels]]
name = "warning"
title = "Flood Warning"
colour = "#e8770e"
severity = "Severe"
urgency = "Immediate"
certainty = "Observed"
response_type = "Avoid"
instruction = "Keep away from the brook."

[[zones]]
code = "Z1"
gauge = "G1"
[zones.thresholds]
warning = {{ any = ["observed_stage_m >= 2.0"] }}

[notices]
sender = "test@example.org"
sender_name = "Test"
web_base = "https://example.org"
'''


def test_a_gauge_site_without_dem_or_forecast_is_valid(tmp_path):
    p = tmp_path / "site.toml"
    p.write_text(_gauge_site_text(tmp_path))
    cfg = load_config(p)
    assert not cfg.has_grid and cfg.sources.forecast is None
    from warning.pipeline import Inputs
    from warning.site import Site

    site = Site.load(cfg)
    assert not site.has_grid and [z.code for z in site.zones] == ["Z1"]
    assert site.zones[0].mask is None and site.zones[0].polygons[0][1] == (0.0, 0.01)
    assert Inputs(cfg).forecast is None and site.prepare() is None
    with pytest.raises(ConfigError, match="gauge site"):
        _ = site.terrain


def test_check_config_reports_gauge_site_problems_with_key_paths(tmp_path):
    text = _gauge_site_text(tmp_path).replace('code = "Z1"\ngauge = "G1"', 'code = "Z1"')
    text = text.replace('warning = { any = ["observed_stage_m >= 2.0"] }',
                        'warning = { any = ["forecast_peak_depth_m >= 0.3", '
                        '"forecast_peak_discharge_m3s >= 4"] }')
    p = tmp_path / "site.toml"
    p.write_text(text)
    res = CliRunner().invoke(app, ["check-config", str(p)])
    assert res.exit_code == 1
    out = " ".join(res.output.split())
    assert "zones[0].gauge: zone 'Z1' needs a gauge" in out
    assert "zones[0].thresholds.warning: forecast_peak_depth_m needs the grid models" in out
    assert "zones[0].thresholds.warning: forecast_peak_discharge_m3s needs a lumped model" in out
    assert "Traceback" not in res.output


def test_gauge_site_refuses_curve_numbers(tmp_path):
    text = _gauge_site_text(tmp_path).replace('code = "GT"', 'code = "GT"\ncurve_number_constant = 70')
    p = tmp_path / "site.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    joined = "\n".join(exc.value.problems)
    assert "site: curve_number and curve_number_constant are used with a DEM only" in joined


def test_gauge_site_without_gauge_source_is_reported(tmp_path):
    text = re.sub(r'\[sources\.gauges\]\nkind = "gauge_csv"\npath = "[^"]+"\n', "",
                  _gauge_site_text(tmp_path))
    p = tmp_path / "site.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=r"sources\.gauges: a gauge site \(no site\.dem\)"):
        load_config(p)


def test_grid_site_still_needs_forecast_and_gauge_datum(tmp_path):
    from tests.conftest import demo_config_text

    text = demo_config_text()
    text = text.replace("datum_m = 37.8\n", "", 1)
    text = re.sub(r"\[sources\.forecast\]\n(?:[^\[\n][^\n]*\n)+", "", text)
    p = tmp_path / "demo.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    joined = "\n".join(exc.value.problems)
    assert "sources.forecast: a site with a DEM (site.dem) needs a rainfall forecast source" in joined
    assert "gauges[0].datum_m: give the elevation of gauge 'MB-WEST'" in joined


@needs_shared
def test_the_shipped_gauge_sites_and_their_events_are_valid():
    from warning.events import load_events

    for name, n_events in (("deadrun", 1), ("hupsel", 6)):
        cfg = load_config(REPO / "sites" / name / "site.toml")
        assert not cfg.has_grid
        events = load_events(REPO / "sites" / name / "events", cfg)
        assert len(events) == n_events


# ============================================================================ events vs record
@needs_shared
def test_deadrun_event_onsets_follow_the_flood_stage_definition():
    """Observed onset = first time the stage reached the flood (minor) stage."""
    from warning.events import load_events

    cfg = load_config(REPO / "sites" / "deadrun" / "site.toml")
    (event,) = load_events(REPO / "sites" / "deadrun" / "events", cfg)
    minor_ft = cfg.gauge("01589330").flood_stages.minor / 0.3048
    window = sorted((t, h) for t, (_, h) in _raw_nwis().items() if event.start <= t <= event.end)
    reached = [t for t, h in window if h >= minor_ft - 1e-9]
    assert event.observed["DR-FRANKLINTOWN"] == reached[:1]
    assert max(h for _, h in window) == 6.17  # the 3 June 2018 peak


@needs_shared
def test_hupsel_event_onsets_follow_the_threshold_definition():
    """Observed onset = first reading in the window with Q x 6.5 / 3.6 >= the warning
    threshold (m3/s) of the site."""
    from warning.events import load_events

    cfg = load_config(REPO / "sites" / "hupsel" / "site.toml")
    (zone,) = cfg.zones
    (crit,) = [c for c in cfg.level_specs(zone)[1].criteria if c.metric == "observed_discharge_m3s"]
    ends = [(_stamp_end(d), q) for d, _, _, q in _raw_peq()]
    events = load_events(REPO / "sites" / "hupsel" / "events", cfg)
    for event in events:
        hits = [t for t, q in ends if event.start <= t <= event.end and q * 6.5 / 3.6 >= crit.value]
        assert event.observed["HUPSEL"] == hits[:1], event.name
    last = max(t for t, _ in ends)
    assert any(e.end == last for e in events)  # the 2013 storm runs to the last reading


# ============================================================================ whole cycles
def _expected_level(cfg, zone_code: str, metrics: dict[str, float]) -> str:
    zone = next(z for z in cfg.zones if z.code == zone_code)
    met = "none"
    for spec in cfg.level_specs(zone):
        ops = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
               "<": lambda a, b: a < b}
        held = [ops[c.op](metrics[c.metric], c.value) for c in spec.criteria if c.metric in metrics]
        if held and (any(held) if spec.combine == "any" else all(held)):
            met = spec.name
    return met


@needs_shared
def test_run_cycle_on_deadrun_at_2200z_raises_the_level_the_record_calls_for(tmp_path):
    from warning.pipeline import Inputs, run_cycle
    from warning.site import Site
    from warning.storage import Run, Store

    at = _utc("2018-06-03T22:00Z")
    raw = _raw_nwis()
    stage_now = raw[at][1] * 0.3048
    rise = (raw[at][1] - raw[at - timedelta(hours=1)][1]) * 0.3048  # m over the last hour
    cfg = load_config(_site_config(tmp_path, "deadrun"))
    expected = _expected_level(cfg, "DR-FRANKLINTOWN",
                               {"observed_stage_m": stage_now, "observed_rise_m_per_h": rise})
    assert expected != "none"  # 6.15 ft, +3.84 ft in the hour: the record calls for a level
    store = Store(cfg.db_url)
    res = run_cycle(Site.load(cfg), cfg, store, Inputs(cfg), at)
    (d,) = res.decisions
    assert (d["zone"], d["action"], d["level_name"]) == ("DR-FRANKLINTOWN", "raise", expected)
    m = res.metrics["DR-FRANKLINTOWN"]
    assert m["observed_stage_m"] == pytest.approx(stage_now)
    assert m["observed_rise_m_per_h"] == pytest.approx(rise)
    assert m["observed_discharge_m3s"] == pytest.approx(1350.0 * 0.028316846592)
    assert res.forecast_issued == at and res.forecast_file == DEADRUN_CSV[-1]
    with store.session() as s:
        run = s.get(Run, res.run_id)
        assert run.status == "done" and run.forecast_issued == at
        assert run.forecast_file == DEADRUN_CSV[-1]
        assert set(run.summary) == {"metrics", "details", "problems", "timings", "decisions", "rain",
                                    "failed_zones", "run_info"}
    assert len(res.notices) == 1 and Path(res.notices[0]).is_file()
    store.dispose()


@needs_shared
@pytest.mark.parametrize("name, at", [("deadrun", "2018-06-03T22:00Z"), ("hupsel", "2013-09-10T23:00Z")])
def test_floodwarn_run_and_check_config_work_on_the_gauge_sites(tmp_path, name, at):
    cfg_path = _site_config(tmp_path, name)
    runner = CliRunner()
    res = runner.invoke(app, ["check-config", str(cfg_path)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["run", "--config", str(cfg_path), "--at", at])
    assert res.exit_code == 0, res.output
    assert f"gauge readings up to {at[:10]} {at[11:16]}Z" in res.output
