"""Replays use data only from when they really arrived: a forecast issue an hour late, a
gauge reading some minutes late, a daily mean only after its day. Every expected time here
is worked out by hand from the archives' file names and time stamps."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from tests.conftest import REPO, hupsel_config, prepared_demo_site
from warning.errors import ConfigError
from warning.events import event_config, load_event
from warning.ingest.gauge_csv import QC_GOOD, QC_SPIKE
from warning.replay import ForecastGate, GaugeGate, PeekError, ReplayClock, replay

HOUR = timedelta(hours=1)
HUPSEL = REPO / "sites" / "hupsel"


def _utc(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _event_file(folder: Path, name: str, start: str, end: str, *tables: str) -> Path:
    p = folder / f"{name}.toml"
    p.write_text("\n".join([f'name = "{name}"', f"start = {start}", f"end = {end}", *tables]) + "\n")
    return p


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The demo site in a temp folder, terrain prepared once for the replays here."""
    return prepared_demo_site(tmp_path_factory.mktemp("delays"))


# ------------------------------------------------------------------------- the gates
def test_forecast_gate_holds_an_issue_back_for_its_delay(site):
    """Demo issues come every 3 h (rain_20251114T0900Z.nc, rain_20251114T1200Z.nc, ...)."""
    from warning.pipeline import Inputs

    _root, cfg = site
    clock = ReplayClock(_utc("2025-11-14T12:30Z"))
    src = Inputs(cfg).forecast
    prompt, late = ForecastGate(src, clock), ForecastGate(src, clock, delay_minutes=60)
    assert prompt.latest_before(clock()).path.name == "rain_20251114T1200Z.nc"
    assert late.latest_before(clock()).path.name == "rain_20251114T0900Z.nc"  # 12:00 + 1 h > 12:30
    assert max(i.issued for i in late.issues()) == _utc("2025-11-14T09:00Z")
    noon = next(i for i in src.issues() if i.path.name == "rain_20251114T1200Z.nc")
    with pytest.raises(PeekError) as exc:
        late.load(noon, None)
    text = str(exc.value)
    assert "issued 2025-11-14 12:00Z" in text and "60 min" in text and "usable from 2025-11-14 13:00Z" in text
    assert late.loaded == []
    # later on the clock, latest_before(t) still respects the delay at t
    clock.now = _utc("2025-11-14T16:00Z")
    assert late.latest_before(_utc("2025-11-14T12:59Z")).path.name == "rain_20251114T0900Z.nc"
    assert late.latest_before(_utc("2025-11-14T13:00Z")).path.name == "rain_20251114T1200Z.nc"
    assert late.latest_before(_utc("2025-11-14T20:00Z")).path.name == "rain_20251114T1500Z.nc"


def test_gauge_gate_holds_readings_back_for_their_delay(site):
    """Demo readings come every 15 min; with a 20-min delay, at 12:00 the newest in hand is
    11:30 (11:45 + 20 min = 12:05 is still to come)."""
    from warning.pipeline import Inputs

    _root, cfg = site
    gs = cfg.sources.gauges.model_copy(update={"delay_minutes": 20})
    clock = ReplayClock(_utc("2025-11-14T12:00Z"))
    src = Inputs(cfg).gauges
    late = GaugeGate(src, clock, gs.usable_from).read()
    assert late["time"].values[-1] == np.datetime64("2025-11-14T11:30", "ns")
    prompt = GaugeGate(src, clock).read()
    assert prompt["time"].values[-1] == np.datetime64("2025-11-14T12:00", "ns")


def test_gauge_gate_judges_spikes_on_the_readings_in_hand():
    """A reading that looks like a spike only because of the one after it is good while that
    one has not arrived (readings every 5 min, delivered 10 min late)."""

    class Archive:
        spike_limit_m = 0.5

        def read(self):
            times = np.array(["2020-01-01T00:00", "2020-01-01T00:05", "2020-01-01T00:10", "2020-01-01T00:15"],
                             dtype="datetime64[ns]")
            qc = np.array([[QC_GOOD, QC_SPIKE, QC_GOOD, QC_GOOD]], dtype=np.uint8)
            return xr.Dataset({"stage": (("station", "time"), [[1.0, 2.0, 1.0, 1.0]]),
                               "qc": (("station", "time"), qc)}, coords={"station": ["G"], "time": times})

    from warning.availability import usable_from

    clock = ReplayClock(_utc("2020-01-01T00:15Z"))
    gate = GaugeGate(Archive(), clock, lambda t: usable_from(t, delay_minutes=10))
    at_15 = gate.read()  # in hand: 00:00 (since 00:10) and 00:05 (since 00:15)
    assert at_15.sizes["time"] == 2 and at_15["qc"].values[0, 1] == QC_GOOD
    clock.now = _utc("2020-01-01T00:20Z")  # 00:10 has come: 00:05 jumped up and straight back
    at_20 = gate.read()
    assert at_20.sizes["time"] == 3 and at_20["qc"].values[0, 1] == QC_SPIKE
    assert gate.reads == [(_utc("2020-01-01T00:15Z"), _utc("2020-01-01T00:05Z")),
                          (_utc("2020-01-01T00:20Z"), _utc("2020-01-01T00:10Z"))]


# -------------------------------------------------------------------- event files
def test_an_event_may_set_only_delays_and_keep_the_archives(site):
    root, cfg = site
    ev = load_event(_event_file(root, "only-delays", "2025-11-14T12:00:00Z", "2025-11-14T14:00:00Z",
                                "[sources.forecast]", "delay_minutes = 45",
                                "[sources.gauges]", "delay_minutes = 10", "period_minutes = 60",
                                'period_label = "start"'), cfg)
    rcfg = event_config(cfg, ev, root / "only-delays-out")
    fc, gs = rcfg.sources.forecast, rcfg.sources.gauges
    assert (fc.delay_minutes, gs.delay_minutes, gs.period_minutes, gs.period_label) == (45, 10, 60, "start")
    assert fc.path == cfg.sources.forecast.path and gs.path == cfg.sources.gauges.path
    assert fc.url == cfg.sources.forecast.url
    # a forecast table has no aggregation period
    with pytest.raises(ConfigError, match="period_minutes"):
        load_event(_event_file(root, "forecast-period", "2025-11-14T12:00:00Z", "2025-11-14T14:00:00Z",
                               "[sources.forecast]", "period_minutes = 60"), cfg)


# ------------------------------------------------------------------------ replays
def test_replay_uses_a_forecast_only_an_hour_after_its_issue(site):
    """Issues at 09:00 and 12:00, an hour's delivery delay, hourly steps 12:00 to 14:00: the
    12:00 issue arrives at 13:00, so the 12:00 cycle still runs on the 09:00 issue."""
    root, cfg = site
    ev = load_event(_event_file(root, "late-forecast", "2025-11-14T12:00:00Z", "2025-11-14T14:00:00Z",
                                "[sources.forecast]", "delay_minutes = 60"), cfg)
    res = replay(cfg, ev, step=HOUR, out_dir=root / "late-forecast")
    assert res.config.sources.forecast.delay_minutes == 60
    noon = _utc("2025-11-14T12:00Z")
    loaded_noon = [now for now, issued in res.forecast_gate.loaded if issued == noon]
    assert loaded_noon and min(loaded_noon) == _utc("2025-11-14T13:00Z")
    assert all(issued + HOUR <= now for now, issued in res.forecast_gate.loaded)
    files = {c.at: c.forecast_file for c in res.trace.cycles}
    assert files[noon] == "rain_20251114T0900Z.nc"
    assert files[_utc("2025-11-14T13:00Z")] == "rain_20251114T1200Z.nc"


@pytest.fixture(scope="module")
def hupsel(tmp_path_factory):
    root = tmp_path_factory.mktemp("hupsel-delays")
    return root, hupsel_config(root)


def test_gauge_site_replay_sees_no_reading_of_a_day_before_it_ends(hupsel):
    """The Hupsel readings declared daily means, start-labelled. The PEQ source stamps each
    row at its hour's end: row 2011011222 at 12 Jan 23:00 (a start label puts it in the day
    of 12 January: in hand from 13 Jan 00:00), row 2011011223 at 13 Jan 00:00 (the day of 13
    January: in hand from 14 Jan 00:00). So every read on 13 January ends at 12 Jan 23:00,
    where without the period the 12:00 read ends at 12:00 (row 2011011311)."""
    from warning.pipeline import Inputs

    root, cfg = hupsel
    ev = load_event(_event_file(root, "daily", "2011-01-13T10:00:00Z", "2011-01-13T12:00:00Z",
                                "[sources.gauges]", "period_minutes = 1440", 'period_label = "start"'), cfg)
    res = replay(cfg, ev, step=HOUR, out_dir=root / "daily")
    assert res.config.sources.gauges.period_minutes == 1440
    reads = res.gauge_gate.reads
    assert {now for now, _ in reads} >= {_utc("2011-01-13T10:00Z"), _utc("2011-01-13T12:00Z")}
    assert {newest for _, newest in reads} == {_utc("2011-01-12T23:00Z")}
    # the same archive read plainly at 12:00 holds the hour ending 12:00
    plain = GaugeGate(Inputs(cfg).gauges, ReplayClock(_utc("2011-01-13T12:00Z"))).read()
    assert plain["time"].values[-1] == np.datetime64("2011-01-13T12:00", "ns")


# ---------------------------------------------------------------------------- CLI
def test_replay_cli_with_a_late_forecast(site):
    """`floodwarn replay` of an event file whose forecasts arrived an hour late: the
    report's 12:00 cycle ran on the 09:00 issue (3 h old), the 13:00 cycle on the 12:00
    issue (1 h old)."""
    from typer.testing import CliRunner

    from warning.cli import app

    root, cfg = site
    ev_path = _event_file(root, "late-forecast-cli", "2025-11-14T12:00:00Z", "2025-11-14T13:00:00Z",
                          "[sources.forecast]", "delay_minutes = 60")
    out = root / "cli"
    res = CliRunner().invoke(app, ["replay", str(ev_path), "--config", str(cfg.base_dir / "site.toml"),
                                   "--as-fast-as-possible", "--step-minutes", "60", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(next(out.glob("*.json")).read_text())
    cycles = {_utc(c["at"]): c for c in data["cycles"]}
    noon, one = _utc("2025-11-14T12:00Z"), _utc("2025-11-14T13:00Z")
    assert set(cycles) == {noon, one}
    assert cycles[noon]["forecast_file"] == "rain_20251114T0900Z.nc"
    assert cycles[noon]["forecast_age_h"] == pytest.approx(3.0)
    assert cycles[one]["forecast_file"] == "rain_20251114T1200Z.nc"
    assert cycles[one]["forecast_age_h"] == pytest.approx(1.0)
