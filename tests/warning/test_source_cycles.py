"""Every source kind through a real forecast cycle, driven by `floodwarn run`.

Forecast sources on the demo grid site: GeoTIFF sequences (hourly and 15-minute frames),
KNMI radar (the 26 August 2010 storm over the demo site's corner of the Netherlands)
and GRIB2. Gauge sources on the grid site (USGS IV, EA flood-monitoring, SensorThings,
polled over HTTP from a local server) and on a gauge site (the Dead Run record as a
gauge CSV in feet, and as USGS IV, EA and SensorThings documents).

Oracles: the values written into the files (rain per frame, stage per reading), unit
definitions (1 ft = 0.3048 m exactly), and arithmetic (a model step's rain is the mean of
its frames); the NetCDF path is covered by the demo's own tests.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from tests.conftest import REPO, demo_config_text, shared_path
from tests.warning.test_gauge_feeds import (  # noqa: F401  (server is a fixture)
    ea_doc,
    ea_item,
    json_route,
    server,
    usgs_doc,
    usgs_series,
)
from warning.cli import app

FT = 0.3048
DEMO_AT = "2025-11-14T16:00Z"


# ---------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def terrain_cache(tmp_path_factory) -> Path:
    """The demo site's terrain, prepared once for the module (each test copies it)."""
    from warning.config import load_config
    from warning.site import Site

    folder = tmp_path_factory.mktemp("terrain")
    cfg_path = _write_config(folder, demo_config_text())
    site = Site.load(load_config(cfg_path))
    return site.cache_path()


def _write_config(folder: Path, text: str) -> Path:
    text = re.sub(r'output_dir = "[^"]*"', f'output_dir = "{folder / "out"}"', text)
    p = folder / "site.toml"
    p.write_text(text)
    return p


def _section(text: str, name: str, body: str) -> str:
    """``text`` with the TOML table ``[name]`` (up to the next table) replaced by ``body``."""
    pat = re.compile(rf"^\[{re.escape(name)}\]\n.*?(?=^\[)", re.S | re.M)
    assert pat.search(text), name
    return pat.sub(body.strip() + "\n\n", text, count=1)


def grid_site(tmp_path: Path, terrain_cache: Path, *, forecast: str | None = None,
              gauges: str | None = None) -> Path:
    text = demo_config_text()
    if forecast is not None:
        text = _section(text, "sources.forecast", forecast)
    if gauges is not None:
        text = _section(text, "sources.gauges", gauges)
    cfg = _write_config(tmp_path, text)
    (tmp_path / "out" / "cache").mkdir(parents=True)
    shutil.copy(terrain_cache, tmp_path / "out" / "cache" / terrain_cache.name)
    return cfg


def run(cfg: Path, at: str) -> dict:
    """`floodwarn run` at ``at``; the run's summary from the database."""
    from warning.config import load_config
    from warning.storage import Run, Store

    res = CliRunner().invoke(app, ["run", "--config", str(cfg), "--at", at])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    c = load_config(cfg)
    store = Store(c.db_url)
    try:
        with store.session() as s:
            row = s.get(Run, f"{datetime.fromisoformat(at.replace('Z', '+00:00')):%Y%m%dT%H%MZ}-live")
            assert row is not None and row.status == "done", row and row.summary
            return {"summary": row.summary, "file": row.forecast_file, "output": res.output}
    finally:
        store.dispose()


def rain_by_time(summary: dict) -> dict[datetime, float]:
    r = summary["rain"]
    return {datetime.fromisoformat(t): v for t, v in zip(r["times"], r["site_mean_mm_h"], strict=True)}


def demo_grid() -> dict:
    with rasterio.open(REPO / "sample_data" / "demo" / "dem.tif") as ds:
        return {"crs": ds.crs, "transform": ds.transform, "height": ds.height, "width": ds.width}


def write_frame(path: Path, value: float, unit: str = "mm/h") -> None:
    g = demo_grid()
    data = np.full((g["height"], g["width"]), value, dtype=np.float32)
    with rasterio.open(path, "w", driver="GTiff", count=1, dtype="float32", **g) as ds:
        ds.write(data, 1)
        ds.units = (unit,)


# ------------------------------------------------------------------ forecast sources
def test_geotiff_hourly_frames_run_a_cycle_with_their_own_values(tmp_path, terrain_cache):
    """Hourly frames labelled by their start: each model step's rain is its frame's."""
    at = datetime(2025, 11, 14, 16, tzinfo=UTC)
    frames = tmp_path / "frames"
    frames.mkdir()
    written = {}
    for k in range(40):
        t = at - timedelta(hours=k + 1)
        written[t] = float(1 + (k * 7) % 11)  # 1..11 mm/h, no two neighbours alike
        write_frame(frames / f"rain_{t:%Y%m%d%H%M}.tif", written[t])
    cfg = grid_site(tmp_path, terrain_cache, forecast=f'''
[sources.forecast]
kind = "geotiff"
path = "{frames}"
settings = {{ name_format = "rain_%Y%m%d%H%M.tif" }}''')
    got = run(cfg, DEMO_AT)
    rain = rain_by_time(got["summary"])
    past = {t: v for t, v in rain.items() if t < at}
    assert past and all(v == pytest.approx(written[t], rel=1e-5) for t, v in past.items())
    assert all(v == 0.0 for t, v in rain.items() if t >= at)  # observed rain only: no forecast
    assert got["file"] == f"rain_{at - timedelta(hours=1):%Y%m%d%H%M}.tif"
    assert "observed rain; none is forecast after 2025-11-14 16:00Z" in got["summary"]["run_info"]["data_sources"]


def test_geotiff_15_minute_frames_are_averaged_into_model_steps(tmp_path, terrain_cache):
    """Four 15-min frames make one 60-min model step (the demo routes in 60-min steps):
    its rain is their mean; a step missing one frame takes the mean of the three it has
    and the run says so."""
    at = datetime(2025, 11, 14, 16, tzinfo=UTC)
    frames = tmp_path / "frames"
    frames.mkdir()
    written = {}
    for k in range(4 * 12):
        t = at - timedelta(minutes=15 * (k + 1))
        written[t] = float((k * 5) % 9) * 2.0
        if t == at - timedelta(hours=3, minutes=15):
            continue  # the lost frame
        write_frame(frames / f"{t:%Y%m%d%H%M}.tif", written[t])
    cfg = grid_site(tmp_path, terrain_cache, forecast=f'''
[sources.forecast]
kind = "geotiff"
path = "{frames}"
settings = {{ name_format = "%Y%m%d%H%M.tif", interval_minutes = 15 }}''')
    summary = run(cfg, DEMO_AT)["summary"]
    rain = rain_by_time(summary)
    for h in range(1, 12):
        start = at - timedelta(hours=h)
        quarter = [start + timedelta(minutes=15 * q) for q in range(4)]
        have = [written[t] for t in quarter if t != at - timedelta(hours=3, minutes=15)]
        assert rain[start] == pytest.approx(np.mean(have), rel=1e-5, abs=6e-5), start  # the summary rounds to 1e-4 mm/h
    assert any("missing in 1 of the" in p for p in summary["problems"])


def test_knmi_radar_runs_a_cycle_on_the_demo_site(tmp_path, terrain_cache):
    """The KNMI 5-min radar of 26 August 2010 over the demo site, cycle at 07:00Z: 60-min
    steps are the mean of their twelve frames, steps before the first frame (23:55Z) are
    dry and reported, nothing is forecast after the last frame."""
    from warning.config import load_config
    from warning.ingest import get_source
    from warning.site import Site

    radar = shared_path("data", "storms", "knmi_radar_20100826")
    cfg = grid_site(tmp_path, terrain_cache, forecast=f'''
[sources.forecast]
kind = "odim_h5"
path = "{radar}"''')
    at = datetime(2010, 8, 26, 7, tzinfo=UTC)
    summary = run(cfg, "2010-08-26T07:00Z")["summary"]
    rain = rain_by_time(summary)
    site = Site.load(load_config(cfg))
    src = get_source("odim_h5", path=radar)
    by_name = {i.path.name: i for i in src.issues()}
    for start in (at - timedelta(hours=3), at - timedelta(hours=1)):
        means = []
        for q in range(12):
            t = start + timedelta(minutes=5 * q)
            da = src.load(by_name[f"RAD_NL25_RAP_5min_{t + timedelta(minutes=5):%Y%m%d%H%M}.h5"], site)
            means.append(float(da.values[0, 0][site.valid].mean()))
        assert rain[start] == pytest.approx(np.mean(means), rel=1e-4, abs=6e-5)
    assert max(v for t, v in rain.items() if t < at) > 0.5  # it rained on the site that morning
    assert all(v == 0.0 for t, v in rain.items() if t >= at)
    # the first frame (file 00:00Z) covers 23:55-00:00Z: the step of 23:00Z is its mean alone
    assert rain[datetime(2010, 8, 25, 23, tzinfo=UTC)] > 0.0
    assert all(v == 0.0 for t, v in rain.items() if t < datetime(2010, 8, 25, 23, tzinfo=UTC))
    assert any("no rain frame for" in p for p in summary["problems"])


def test_grib_frames_run_a_cycle(tmp_path, terrain_cache):
    """Hourly GRIB2 total precipitation (kg m-2 per hour) covering the demo site."""
    if importlib.util.find_spec("cfgrib") is None:
        pytest.skip("cfgrib/eccodes (the 'grib' extra) are not installed")
    from tests.warning.test_grid_sources import _write_grib

    at = datetime(2025, 11, 14, 16, tzinfo=UTC)
    folder = tmp_path / "grib"
    folder.mkdir()
    written = {}
    for k in range(12):
        end = at - timedelta(hours=k)
        written[end - timedelta(hours=1)] = 1.0 + k
        _write_grib(folder / f"tp_{end:%Y%m%d%H}.grib2", np.full((60, 80), 1.0 + k), valid=end,
                    lon0=4.1, lat0=51.8, d=0.01)
    cfg = grid_site(tmp_path, terrain_cache, forecast=f'''
[sources.forecast]
kind = "grib"
path = "{folder}"
units = "kg m-2"
settings = {{ interval_minutes = 60 }}''')
    rain = rain_by_time(run(cfg, DEMO_AT)["summary"])
    for t, v in written.items():
        assert rain[t] == pytest.approx(v, rel=1e-5)


# -------------------------------------------------------------- gauge feeds, grid site
def demo_readings(station: str) -> list[tuple[datetime, float]]:
    with open(REPO / "sample_data" / "demo" / "gauges" / "readings.csv", newline="") as fh:
        return [(datetime.fromisoformat(r["time"].replace("Z", "+00:00")), float(r["stage_m"]))
                for r in csv.DictReader(fh) if r["station"] == station]


def _town_stage(summary: dict) -> float:
    return summary["metrics"]["MB-TOWN"].get("observed_stage_m")


def _expected_town(at: datetime) -> float:
    return max((t, v) for t, v in demo_readings("MB-TOWN") if t <= at)[1]


def test_usgs_iv_feed_on_a_grid_site(tmp_path, terrain_cache, server):
    """The demo's town gauge served as USGS IV JSON in feet: the cycle's observed stage is
    the reading at the cycle time in metres."""
    at = datetime(2025, 11, 14, 16, tzinfo=UTC)
    rows = [(t.strftime("%Y-%m-%dT%H:%M:%S.000-00:00"), f"{v / FT:.4f}", "P")
            for t, v in demo_readings("MB-TOWN") if t <= at]
    server.routes["/nwis/iv/"] = json_route(usgs_doc(usgs_series("00065", "ft", rows)))
    cfg = grid_site(tmp_path, terrain_cache, gauges=f'''
[sources.gauges]
kind = "usgs_iv"
stale_after_minutes = 90
settings = {{ url = "{server.url}/nwis/iv/", sites = ["01589330"], stations = {{ "01589330" = "MB-TOWN" }} }}''')
    summary = run(cfg, DEMO_AT)["summary"]
    assert _town_stage(summary) == pytest.approx(_expected_town(at), abs=1e-4)


def test_ea_feed_on_a_grid_site(tmp_path, terrain_cache, server):
    at = datetime(2025, 11, 14, 16, tzinfo=UTC)
    items = [ea_item("E7001", t, v, "level-stage-i-15_min-m")
             for t, v in reversed(demo_readings("MB-TOWN")) if t <= at]
    server.routes["/flood-monitoring/id/stations/E7001/readings"] = json_route(ea_doc(items))
    cfg = grid_site(tmp_path, terrain_cache, gauges=f'''
[sources.gauges]
kind = "ea_flood_monitoring"
settings = {{ url = "{server.url}/flood-monitoring", station = "E7001", gauge_id = "MB-TOWN" }}''')
    summary = run(cfg, DEMO_AT)["summary"]
    assert _town_stage(summary) == pytest.approx(_expected_town(at), abs=1e-6)


def test_sensorthings_feed_on_a_grid_site(tmp_path, terrain_cache, server):
    at = datetime(2025, 11, 14, 16, tzinfo=UTC)
    obs = [{"phenomenonTime": t.strftime("%Y-%m-%dT%H:%M:%SZ"), "result": round(v * 100, 2)}
           for t, v in demo_readings("MB-TOWN") if t <= at]
    server.routes["/sta/v1.1/Datastreams(3)/Observations"] = json_route({"value": obs})
    cfg = grid_site(tmp_path, terrain_cache, gauges=f'''
[sources.gauges]
kind = "sensorthings"
units = "cm"
settings = {{ url = "{server.url}/sta/v1.1", datastream = 3, gauge_id = "MB-TOWN" }}''')
    summary = run(cfg, DEMO_AT)["summary"]
    assert _town_stage(summary) == pytest.approx(_expected_town(at), abs=1e-6)


def test_a_dead_gauge_feed_does_not_stop_a_grid_cycle(tmp_path, terrain_cache, server):
    """The feed answers 500: the rain-driven cycle still runs and says why the observed
    stage is missing."""
    server.routes["/nwis/iv/"] = lambda h: (500, {}, b"upstream down")
    cfg = grid_site(tmp_path, terrain_cache, gauges=f'''
[sources.gauges]
kind = "usgs_iv"
settings = {{ url = "{server.url}/nwis/iv/", sites = ["01589330"], tries = 1 }}''')
    summary = run(cfg, DEMO_AT)["summary"]
    assert _town_stage(summary) is None  # no gauge data: no observed stage
    assert any("gauge readings unusable" in p for p in summary["problems"])
    assert summary["metrics"]["MB-TOWN"]["forecast_peak_depth_m"] is not None


# ------------------------------------------------------------------------ gauge site
DEADRUN_AT = "2018-06-03T22:00Z"


def deadrun_stage_ft() -> list[tuple[datetime, float]]:
    folder = shared_path("data", "storms", "usgs_deadrun_201806")
    with open(folder / "DeadRun_Instant_01589330_2018-06.csv", newline="") as fh:
        return [(datetime.fromisoformat(r["datetimeUTC"]), float(r["USGS:01589330:00065:00000"]))
                for r in csv.DictReader(fh) if r["USGS:01589330:00065:00000"]]


def deadrun_site(tmp_path: Path, gauges: str) -> Path:
    text = (REPO / "sites" / "deadrun" / "site.toml").read_text()
    text = text.replace('zones = "zones.geojson"', f'zones = "{REPO / "sites" / "deadrun" / "zones.geojson"}"')
    text = _section(text, "sources.gauges", gauges)
    return _write_config(tmp_path, text)


def _deadrun_expect() -> tuple[float, float]:
    """Stage (m) at 22:00Z and its rise over the hour before (m/h), from the raw file."""
    at = datetime(2018, 6, 3, 22, tzinfo=UTC)
    by_t = dict(deadrun_stage_ft())
    return by_t[at] * FT, (by_t[at] - by_t[at - timedelta(hours=1)]) * FT


def _check_deadrun(summary: dict) -> None:
    stage, rise = _deadrun_expect()
    m = summary["metrics"]["DR-FRANKLINTOWN"]
    assert m["observed_stage_m"] == pytest.approx(stage, abs=1e-4)
    assert m["observed_rise_m_per_h"] == pytest.approx(rise, abs=1e-4)


def test_gauge_csv_in_feet_with_a_bom_on_a_gauge_site(tmp_path):
    f = tmp_path / "deadrun.csv"
    lines = ["station,time,stage,unit"] + [f"01589330,{t:%Y-%m-%dT%H:%MZ},{v},ft" for t, v in deadrun_stage_ft()]
    f.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    cfg = deadrun_site(tmp_path, f'''
[sources.gauges]
kind = "gauge_csv"
path = "{f}"
stale_after_minutes = 30''')
    _check_deadrun(run(cfg, DEADRUN_AT)["summary"])


def test_usgs_iv_file_on_a_gauge_site(tmp_path):
    f = tmp_path / "iv.json"
    rows = [(t.strftime("%Y-%m-%dT%H:%M:%S.000+00:00"), str(v), "A") for t, v in deadrun_stage_ft()]
    f.write_text(json.dumps(usgs_doc(usgs_series("00065", "ft", rows))))
    cfg = deadrun_site(tmp_path, f'''
[sources.gauges]
kind = "usgs_iv"
path = "{f}"
stale_after_minutes = 30''')
    _check_deadrun(run(cfg, DEADRUN_AT)["summary"])


def test_ea_file_on_a_gauge_site(tmp_path):
    f = tmp_path / "ea.json"
    items = [ea_item("DR1", t, round(v * FT, 6), "level-stage-i-5_min-m")
             for t, v in reversed(deadrun_stage_ft())]
    f.write_text(json.dumps(ea_doc(items)))
    cfg = deadrun_site(tmp_path, f'''
[sources.gauges]
kind = "ea_flood_monitoring"
path = "{f}"
stale_after_minutes = 30
settings = {{ station = "DR1", gauge_id = "01589330" }}''')
    _check_deadrun(run(cfg, DEADRUN_AT)["summary"])


def test_sensorthings_file_on_a_gauge_site(tmp_path):
    f = tmp_path / "sta.json"
    obs = [{"phenomenonTime": f"{t - timedelta(minutes=5):%Y-%m-%dT%H:%M:%SZ}/{t:%Y-%m-%dT%H:%M:%SZ}",
            "result": v} for t, v in deadrun_stage_ft()]
    f.write_text(json.dumps({"value": obs}))
    cfg = deadrun_site(tmp_path, f'''
[sources.gauges]
kind = "sensorthings"
path = "{f}"
units = "ft"
stale_after_minutes = 30
settings = {{ datastream = 1, gauge_id = "01589330" }}''')
    _check_deadrun(run(cfg, DEADRUN_AT)["summary"])
