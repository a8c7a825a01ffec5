"""One cycle on the demo site: no peeking at later forecasts, and bad files fall back on the
last good forecast with the problem recorded for operators."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone

import numpy as np
import pytest

from warning.pipeline import Inputs, assemble_rain, run_cycle
from warning.site import Site
from warning.storage import AuditRow, Store

UTC = timezone.utc


@pytest.fixture
def copied(demo_cfg, tmp_path):
    """The demo config reading a copy of the forecast folder that the test may damage."""
    src = demo_cfg.path(demo_cfg.sources.forecast.path)
    dst = tmp_path / "forecasts"
    shutil.copytree(src, dst)
    fc = demo_cfg.sources.forecast.model_copy(update={"path": dst})
    cfg = demo_cfg.model_copy(update={"sources": demo_cfg.sources.model_copy(update={"forecast": fc})})
    return cfg, dst


def test_rain_before_the_cycle_comes_from_issues_out_by_then(copied):
    cfg, folder = copied
    site = Site.load(cfg)
    inputs = Inputs(cfg)
    at = datetime(2025, 11, 14, 13, 0, tzinfo=UTC)
    rain, times, now_index, issue, problems = assemble_rain(inputs, site, cfg, at)
    assert issue.issued == datetime(2025, 11, 14, 12, 0, tzinfo=UTC)
    assert times[now_index] == np.datetime64("2025-11-14T13:00", "ns")
    # removing every issue after `at` changes nothing: nothing later was used
    for f in folder.glob("rain_*.nc"):
        if f.name > "rain_20251114T1200Z.nc":
            f.unlink()
    again = assemble_rain(Inputs(cfg), site, cfg, at)
    np.testing.assert_array_equal(rain, again[0])
    assert rain.shape[0] == 6  # the 12 UTC issue is a 6-member ensemble


def test_truncated_newest_forecast_falls_back_and_is_reported(copied, monkeypatch):
    cfg, folder = copied
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "k")
    newest = folder / "rain_20251114T1200Z.nc"
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # a half-written upload
    site = Site.load(cfg)
    store = Store(cfg.db_url)
    res = run_cycle(site, cfg, store, Inputs(cfg), datetime(2025, 11, 14, 13, tzinfo=UTC))
    assert res.forecast_file == "rain_20251114T0900Z.nc"
    assert any("rain_20251114T1200Z.nc" in p for p in res.problems)
    with store.session() as s:
        logged = [r.detail["problem"] for r in s.query(AuditRow).filter_by(event="data_problem")]
    assert any("rain_20251114T1200Z.nc" in p for p in logged)


def test_green_ampt_chosen_by_name_runs_the_cycle(demo_cfg):
    """The registry's second runoff method through the same cycle: less infiltration
    capacity means more runoff, so the town's forecast depth cannot go down."""
    at = datetime(2025, 11, 14, 12, tzinfo=UTC)
    from warning.pipeline import simulate, zone_metrics

    def town_depth(model):
        cfg = demo_cfg.model_copy(update={"model": model})
        site = Site.load(cfg)
        inputs = Inputs(cfg)
        rain, times, now_index, issue, _ = assemble_rain(inputs, site, cfg, at)
        sim = simulate(site, cfg, rain, times, now_index, issue)
        return zone_metrics(site, cfg, sim, None, at)[0]["MB-TOWN"]["forecast_peak_depth_m"]

    base = demo_cfg.model.model_copy(update={"runoff_method": "green_ampt"})
    sandy = town_depth(base.model_copy(update={"green_ampt_ks_mm_h": 30.0}))
    clay = town_depth(base.model_copy(update={"green_ampt_ks_mm_h": 1.0}))
    assert clay > sandy > 0 or (clay > 0 and sandy == 0)
