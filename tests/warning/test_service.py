"""floodwarn serve: the scheduler's jobs (due logic, no overlapping cycles, coalesced
misfires, restart) and the web app (public notices, JSON API and its OpenAPI document,
/health, Twilio webhooks refusing forged signatures)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect

from tests.conftest import Clock
from warning import service as service_mod
from warning.service import Service, SimulatedClock
from warning.web import create_app

AT = datetime(2025, 11, 14, 12, 0, tzinfo=UTC)


@pytest.fixture
def svc(demo_cfg, monkeypatch):
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "service-test-secret")
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    clock = Clock(AT)
    s = Service(demo_cfg, clock=clock)
    s.site.prepare()
    yield s, clock
    s.shutdown()


def test_cycle_runs_on_new_data_or_after_the_maximum_gap(svc):
    s, clock = svc
    first = s.cycle()
    assert first is not None and first.ok and "new forecast" in first.detail
    assert s.cycle() is None  # same forecast, no gap: nothing to do
    clock.t = AT + timedelta(hours=1)  # the demo issues forecasts every 3 h
    assert s.due(clock.t) == (False, "nothing new")
    clock.t = AT + timedelta(hours=3)
    go, why = s.due(clock.t)
    assert go and why.startswith("new forecast")
    assert s.cycle().forecast_file == "rain_20251114T1500Z.nc"
    # a gap longer than cycle_every_minutes forces a cycle even without new data
    s.state.last_forecast = str(s.inputs.forecast.latest_before(clock.t + timedelta(hours=2, minutes=59)).path)
    clock.t = AT + timedelta(hours=3) + timedelta(minutes=s.cfg.service.cycle_every_minutes)
    assert s.due(clock.t)[0]


def test_cycles_never_overlap(svc, monkeypatch):
    s, _clock = svc
    started = threading.Event()
    release = threading.Event()
    real = service_mod.run_cycle

    def slow(*a, **k):
        started.set()
        release.wait(10)
        return real(*a, **k)

    monkeypatch.setattr(service_mod, "run_cycle", slow)
    first = threading.Thread(target=s.cycle)
    first.start()
    assert started.wait(10)
    assert s.cycle(force=True) is None  # refused while the first is running
    release.set()
    first.join()
    assert s.state.refused_overlaps == 1 and len(s.state.cycles) == 1


def test_scheduler_coalesces_missed_runs_and_restarts_from_the_database(svc, monkeypatch):
    """A job that missed many runs (the service was down) runs once, not once per missed
    run; jobs are kept in memory (never in the shared database) and a restart makes them
    again from the config."""
    s, _clock = svc
    calls = []
    monkeypatch.setattr(Service, "cycle", lambda self, force=False: calls.append(time.monotonic()))
    monkeypatch.setattr(Service, "dispatch", lambda self: None)
    monkeypatch.setattr(Service, "housekeeping", lambda self: None)
    sched = s.start()
    job = sched.get_job("cycle")
    assert (job.coalesce, job.max_instances) == (True, 1)
    sched.pause()
    # pretend the scheduler was down for 20 periods
    sched.modify_job("cycle", next_run_time=datetime.now(UTC) - 20 * job.trigger.interval)
    calls.clear()
    sched.resume()
    time.sleep(1.5)
    assert len(calls) == 1
    ids = {j.id for j in sched.get_jobs()}
    s.shutdown()
    assert ids == {"cycle", "ingest:forecast", "ingest:gauges", "dispatch", "housekeeping"}
    with s.store.engine.connect() as c:
        assert not inspect(c).has_table("scheduler_jobs")
    again = Service(s.cfg, clock=s.clock, store=s.store)
    sched2 = again.start()
    assert {j.id for j in sched2.get_jobs()} == ids
    again.shutdown()


def test_simulated_clock_runs_faster_than_real_time():
    wall = [100.0]
    clock = SimulatedClock(AT, speed=360, wall=lambda: wall[0])
    wall[0] += 10.0
    assert clock() == AT + timedelta(hours=1)


def test_web_app_serves_notices_api_openapi_and_health(svc, monkeypatch):
    s, clock = svc
    # a cycle where the town is at a warning level (the demo's storm)
    clock.t = datetime(2025, 11, 14, 15, 0, tzinfo=UTC)
    assert s.cycle(force=True).ok
    monkeypatch.delenv("TWILIO_AUTH_TOKEN", raising=False)
    with TestClient(create_app(s.cfg, store=s.store, service=s)) as client:
        zones = {z["code"]: z for z in client.get("/api/zones").json()}
        assert zones["MB-TOWN"]["level_name"] in ("advisory", "warning", "severe")
        assert zones["HILLTOP"]["level"] == 0 and zones["MB-TOWN"]["name"]
        levels = client.get("/api/levels").json()
        assert [lv["name"] for lv in levels] == [lv.name for lv in s.cfg.levels]
        alerts = client.get("/api/alerts", params={"zone": "MB-TOWN"}).json()
        assert alerts and alerts[0]["cap_url"].endswith(".xml")
        cap = client.get(f"/notices/{alerts[0]['identifier']}.xml")
        assert cap.status_code == 200 and cap.headers["content-type"].startswith("application/cap+xml")
        from alerts.cap import parse_cap

        assert parse_cap(cap.content).identifier == alerts[0]["identifier"]  # validated on parse
        assert client.get(f"/notices/{alerts[0]['identifier']}.html").status_code == 200
        assert client.get("/notices/..%2Fconfig.xml").status_code == 404
        feed = client.get("/feed.atom")
        assert feed.status_code == 200 and b"<feed" in feed.content
        readings = client.get(f"/api/gauges/{s.cfg.gauges[0].id}/readings",
                              params={"until": clock.t.isoformat()}).json()
        assert readings and all(r["flag"] for r in readings)
        assert client.get("/api/gauges/NOPE/readings").status_code == 404
        spec = client.get("/openapi.json").json()
        assert {"/api/zones", "/api/levels", "/api/gauges", "/api/gauges/{gauge_id}/readings",
                "/api/alerts", "/health"} <= set(spec["paths"])
        health = client.get("/health").json()
        assert health["database"] == "ok" and health["scheduler"]["last_cycle"]["ok"] is True


def test_forged_twilio_signature_is_refused_by_the_app(svc, monkeypatch):
    from twilio.request_validator import RequestValidator

    from warning.webhooks import INBOUND_PATH

    s, _clock = svc
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "the-real-token")
    form = {"From": "+447700900123", "To": "+15005550006", "Body": "STOP", "MessageSid": "SM" + "b" * 32}
    url = s.cfg.notices.web_base.rstrip("/") + INBOUND_PATH
    with TestClient(create_app(s.cfg, store=s.store)) as client:
        forged = RequestValidator("a-guessed-token").compute_signature(url, form)
        assert client.post(INBOUND_PATH, data=form, headers={"X-Twilio-Signature": forged}).status_code == 403
        good = RequestValidator("the-real-token").compute_signature(url, form)
        assert client.post(INBOUND_PATH, data=form, headers={"X-Twilio-Signature": good}).status_code == 200


def test_a_failed_cycle_keeps_the_service_running_and_tells_operators(svc, monkeypatch):
    from sqlalchemy import select

    from warning.errors import IngestError
    from warning.storage import AuditRow

    s, clock = svc
    assert s.cycle(force=True).ok

    def broken(*a, **k):
        raise IngestError("rain_20251114T1500Z.nc: truncated file (HDF error)")

    monkeypatch.setattr(service_mod, "run_cycle", broken)
    clock.t = AT + timedelta(hours=3)
    rec = s.cycle()
    assert rec is not None and not rec.ok and "truncated" in rec.detail
    assert s.state.last_cycle_at == AT  # the last good cycle stands
    with s.store.session() as ses:
        problems = [a.detail["problem"] for a in
                    ses.scalars(select(AuditRow).where(AuditRow.event == "cycle_failed"))]
    assert any("truncated file" in p for p in problems)


def test_run_summary_carries_the_gauge_forecast_and_the_rain_for_the_console(svc):
    import numpy as np
    from sqlalchemy import select

    from warning.storage import Run

    s, clock = svc
    clock.t = datetime(2025, 11, 14, 15, 0, tzinfo=UTC)
    assert s.cycle(force=True).ok
    with s.store.session() as ses:
        summ = ses.scalars(select(Run).where(Run.scope == "live")).first().summary
    gauged = [d for d in summ["details"].values() if d.get("gauge")]
    assert gauged
    for d in gauged:
        med, low, high = (np.array(d[k]) for k in ("gauge_forecast_stage_m", "gauge_forecast_low_m",
                                                   "gauge_forecast_high_m"))
        assert len(d["gauge_forecast_times"]) == med.size > 0
        assert np.all(low <= med + 1e-9) and np.all(med <= high + 1e-9)
    rain = summ["rain"]
    assert len(rain["times"]) == len(rain["site_mean_mm_h"]) and 0 < rain["now_index"] < len(rain["times"])
    assert min(rain["site_mean_mm_h"]) >= 0 and max(rain["site_mean_mm_h"]) > 0  # the storm rains


def test_ingest_jobs_mark_new_data_and_report_a_late_gauge_feed_once(svc):
    from sqlalchemy import select

    from warning.storage import AuditRow

    s, clock = svc
    fc = s.ingest("forecast")
    assert fc.state == "ok" and fc.last_data <= AT and s.state.new_data.startswith("new forecast")
    g = s.ingest("gauges")
    assert g.state == "ok" and AT - timedelta(hours=1) <= g.last_data <= AT
    assert s.cycle().ok and s.state.new_data is None
    assert s.state.cycled_gauges == g.last_data
    # readings two hours newer (same forecast) make a cycle due
    clock.t = AT + timedelta(hours=2)
    s.ingest("gauges")
    assert s.due(clock.t) == (True, s.state.new_data) and "new gauge readings" in s.state.new_data
    # long after the demo record ends the feed is late: one data-gap report, not one per check,
    # texted to the operators' roster (the file channel here)
    s.cfg.service.operator_phones.append("+447700900555")
    clock.t = AT + timedelta(days=5)
    assert s.ingest("gauges").state.startswith("stale")
    s.ingest("gauges")
    with s.store.session() as ses:
        gaps = [a.detail["problem"] for a in ses.scalars(select(AuditRow).where(AuditRow.event == "data_problem"))]
    assert len([p for p in gaps if p.startswith("gauge feed late")]) == 1
    sms = [json.loads(line) for line in (s.cfg.output_dir / s.cfg.channels.sms_log).read_text().splitlines()]
    texted = [m for m in sms if m["key"].startswith("ops:")]
    assert len(texted) == 1 and "gauge feed late" in texted[0]["body"] and "+447700900555" not in str(texted)
    with TestClient(create_app(s.cfg, store=s.store, service=s)) as client:
        feeds = client.get("/health").json()["feeds"]
    assert feeds["gauges"]["state"].startswith("stale") and feeds["forecast"]["state"] == "ok"


def test_forecast_published_at_a_url_is_mirrored_and_a_truncated_one_is_refused(tmp_path, monkeypatch):
    """The newest forecast is served over HTTP (with an ETag); the ingest job fetches it into
    the source folder, where the next cycle finds it; a repeated poll gets 304 and changes
    nothing; a truncated body is refused, reported, and the last good files stay."""
    import shutil
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from sqlalchemy import select

    from tests.conftest import REPO, demo_config_text
    from warning.config import load_config
    from warning.storage import AuditRow

    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "mirror-test")
    src = REPO / "sample_data" / "demo" / "forecasts"
    folder = tmp_path / "forecasts"
    folder.mkdir()
    newest = src / "rain_20251114T1200Z.nc"
    for f in src.glob("rain_*.nc"):
        if f != newest:
            shutil.copy(f, folder / f.name)
    body = {"data": newest.read_bytes()}
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.headers.get("If-None-Match"))
            etag = f'"{len(body["data"])}"'
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("ETag", etag)
            self.send_header("Content-Length", str(len(body["data"])))
            self.end_headers()
            self.wfile.write(body["data"])

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        text = demo_config_text().replace('output_dir = "', f'output_dir = "{tmp_path}/out" #', 1)
        text = text.replace(f'path = "{REPO}/sample_data/demo/forecasts"',
                            f'path = "{folder}"\nurl = "http://127.0.0.1:{server.server_port}/latest.nc"', 1)
        cfg_path = tmp_path / "site.toml"
        cfg_path.write_text(text)
        cfg = load_config(cfg_path)
        assert cfg.sources.forecast.url
        s = Service(cfg, clock=Clock(AT))
        assert s.ingest("forecast").state == "ok"
        mirrored = sorted(folder.glob("rain_mirror_*.nc"))
        assert len(mirrored) == 1 and mirrored[0].read_bytes() == newest.read_bytes()
        assert s.inputs.forecast.latest_before(AT).path == mirrored[0]  # issued 12:00, found by content
        assert s.cycle().forecast_file == mirrored[0].name
        s.ingest("forecast")
        assert requests[-1] is not None and len(sorted(folder.glob("rain_mirror_*.nc"))) == 1  # 304
        body["data"] = newest.read_bytes()[:5000]  # truncated
        feed = s.ingest("forecast")
        assert feed.state.startswith("error") and "truncated or corrupt" in feed.state
        assert len(sorted(folder.glob("rain_mirror_*.nc"))) == 1  # the last good file stays
        with s.store.session() as ses:
            problems = [a.detail["problem"] for a in ses.scalars(select(AuditRow).where(AuditRow.event == "data_problem"))]
        assert any("forecast feed failed" in p for p in problems)
        s.shutdown()
    finally:
        server.shutdown()
