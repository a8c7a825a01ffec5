"""The real storms replayed on their gauge sites: the Hupsel Brook winter peak of January
2011 (a hit, checked against the raw record) and a drill of it watched in the console."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from tests.conftest import REPO, console_login, hupsel_config, shared_path
from warning.console import add_operator
from warning.events import load_event
from warning.replay import replay
from warning.web import create_app

HUPSEL = REPO / "sites" / "hupsel"
EVENT = HUPSEL / "events" / "2011-01-13-winter-peak.toml"
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def hupsel(tmp_path_factory):
    cfg = hupsel_config(tmp_path_factory.mktemp("hupsel"))
    return cfg, load_event(EVENT, cfg)


def _first_exceedance(threshold_m3s: float, start: datetime, end: datetime) -> datetime:
    """From the raw PEQ file: the end of the first hour whose discharge (mm/h over the
    site's 6.5 km2) reached the threshold."""
    path = shared_path("data", "storms", "hupsel_hourly", "PEQ_Hupsel.dat")
    for line in path.read_text().splitlines()[1:]:
        stamp, _p, _e, q = line.split()
        t = datetime.strptime(stamp, "%Y%m%d%H").replace(tzinfo=UTC) + timedelta(hours=1)
        if start <= t <= end and q != "NA" and float(q) * 6.5 / 3.6 >= threshold_m3s:
            return t
    raise AssertionError("the record never reaches the threshold")


def test_hupsel_winter_peak_replay_warns_on_time(hupsel):
    cfg, event = hupsel
    res = replay(cfg, event, step=timedelta(hours=1))
    warning = next(c.value for lv in cfg.level_specs(cfg.zones[0]) if lv.name == "warning"
                   for c in lv.criteria if c.metric == "observed_discharge_m3s")
    onset = _first_exceedance(warning, event.start, event.end)
    assert event.observed["HUPSEL"] == [onset]
    # the warning level came at the first hourly cycle that saw the discharge there
    raised = [(c.at, d["level_name"]) for c in res.trace.cycles for d in c.decisions
              if d["action"] == "raise"]
    first_warning = min(t for t, name in raised if name in ("warning", "severe"))
    assert first_warning == onset
    # the report draws flow (this gauge measures no stage) against the discharge thresholds
    from warning.report import build_report
    from warning.storage import Store

    store = Store(res.config.db_url)
    files = build_report(res.config, store, event, scope=res.scope, trace=res.trace, out_dir=res.out_dir)
    store.dispose()
    data = json.loads(files.json.read_text())
    (gauge,) = data["gauges"]
    assert gauge["quantity"]["key"] == "discharge_m3s" and gauge["thresholds"]["warning"] == warning
    peak = gauge["observed_peak"]
    assert peak["value"] == pytest.approx(1.23, abs=0.005)  # the record's 13 January peak, m3/s
    assert len(gauge["forecasts"]) == res.cycles  # a lumped forecast every cycle


def test_gauge_site_console_and_api(hupsel, monkeypatch):
    """The console and the public API on a site with no DEM, during a drill replay."""
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "test-key-not-secret")
    cfg, event = hupsel
    short = event.model_copy(update={"end": datetime(2011, 1, 13, 6, tzinfo=UTC)})
    seen = {}

    def watch(svc) -> None:
        seen["svc"] = svc

    res = replay(cfg, short, drill=True, step=timedelta(hours=1), on_service=watch)
    svc = seen["svc"]
    add_operator(svc.store, "duty", PASSWORD)
    with TestClient(create_app(res.config, store=svc.store, service=svc), base_url="https://testserver") as c:
        gauges = c.get("/api/gauges").json()
        assert gauges == [{"id": "HUPSEL", "name": gauges[0]["name"], "lon": 6.65, "lat": 52.06,
                           "flood_stages_m": {}}]
        readings = c.get("/api/gauges/HUPSEL/readings", params={"since": "2011-01-13T00:00:00Z",
                                                                "until": "2011-01-13T02:00:00Z"}).json()
        # PEQ 2011011300..01: Q 0.2745 and 0.3879 mm/h (hour ends 01:00 and 02:00), x 6.5 / 3.6
        flows = {r["time"]: r["discharge_m3s"] for r in readings}
        assert flows["2011-01-13T01:00:00Z"] == pytest.approx(float(_raw_q("2011011300")) * 6.5 / 3.6)
        assert all(r["stage_m"] is None for r in readings)
        page = c.get("/console/login")
        assert page.status_code == 200
        ok = console_login(c, "duty", PASSWORD, follow_redirects=False)
        assert ok.status_code == 303
        dash = c.get("/console")
        assert dash.status_code == 200 and "HUPSEL" in dash.text
        # the drill's level is shown: the console follows the service's scope
        from warning.storage import ZoneStateRow

        with svc.store.session() as s:
            state = s.get(ZoneStateRow, ("HUPSEL", res.scope))
        assert state is not None and state.level >= 1
        assert cfg.levels[state.level - 1].title in dash.text
        for url in ("/console/map.png", "/console/rain.png", "/console/gauges/HUPSEL.png"):
            r = c.get(url)
            assert r.status_code == 200 and r.content[:8] == b"\x89PNG\r\n\x1a\n", url


def _raw_q(stamp: str) -> str:
    path = shared_path("data", "storms", "hupsel_hourly", "PEQ_Hupsel.dat")
    return next(line.split()[3] for line in path.read_text().splitlines() if line.startswith(stamp))
