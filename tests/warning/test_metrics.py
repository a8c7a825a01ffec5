"""GET /metrics tells what the service and its database say: cycles run (ok and failed)
and their durations, feed lag from the data time the test chose, outbox rows by state
and the oldest waiting one's age, deliveries by status, open data problems; a database
that cannot be read is counted, never a failed scrape; every app has its own registry."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

from tests.conftest import Clock
from warning.config import load_config
from warning.service import Service
from warning.storage import AlertRow, DeliveryRow, OutboxRow
from warning.subscribers import PhoneVault, SubscriberRegistry
from warning.web import create_app

#: the town floods at this time (see test_run_cli); the newest demo forecast is 15:00Z
AT = datetime(2025, 11, 14, 16, 0, tzinfo=UTC)
FORECAST_ISSUED = datetime(2025, 11, 14, 15, 0, tzinfo=UTC)
GAUGES = "MB-WEST,2025-11-13T00:00:00Z,0.444\n"  # one good reading, the one the test chose


@pytest.fixture
def svc(tmp_path, monkeypatch):
    """The demo service on a clock of the test's, its subscribers imported, SMS to the file
    channel, and a gauge file with one reading at a time the test chose."""
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "metrics-test-secret")
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    from tests.conftest import demo_config_text

    gauges = tmp_path / "readings.csv"
    gauges.write_text("station,time,stage_m\n" + GAUGES)
    text = re.sub(r'output_dir = "[^"]*"', f'output_dir = "{tmp_path / "out"}"', demo_config_text())
    text = re.sub(r'(\[sources\.gauges\][^\[]*?)path = "[^"]*"', rf'\1path = "{gauges}"', text, flags=re.DOTALL)
    (tmp_path / "site.toml").write_text(text)
    cfg = load_config(tmp_path / "site.toml")
    clock = Clock(AT)
    s = Service(cfg, clock=clock)
    SubscriberRegistry(s.store, PhoneVault.from_env(), "GB").import_csv(cfg.path(cfg.subscribers.import_csv))
    yield s, clock
    s.shutdown()


def scrape(client: TestClient) -> dict[str, dict[tuple, float]]:
    """``{sample name: {sorted label items: value}}`` of one scrape of /metrics."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def one(metrics: dict, name: str, **labels: str) -> float:
    return metrics[name][tuple(sorted(labels.items()))]


def test_metrics_match_the_cycles_the_outbox_and_the_deliveries(svc, monkeypatch):
    from models.errors import ModelError
    from warning import pipeline

    s, clock = svc
    with TestClient(create_app(s.cfg, store=s.store, service=s)) as client:
        before = scrape(client)
        assert one(before, "floodwarn_cycles_total", outcome="ok") == 0
        assert one(before, "floodwarn_outbox_depth", state="pending") == 0
        assert "floodwarn_last_cycle_success_timestamp_seconds" not in before

        for job in s.job_names():  # ingest both feeds, a cycle, dispatch (the file channel)
            if job != "dispatch":
                s.job(job)
        m = scrape(client)
        # feed lag: the clock the test set minus the data time it chose
        assert one(m, "floodwarn_feed_lag_seconds", source="forecast") == (AT - FORECAST_ISSUED).total_seconds()
        gauge_time = datetime(2025, 11, 13, tzinfo=UTC)
        assert one(m, "floodwarn_feed_lag_seconds", source="gauges") == (AT - gauge_time).total_seconds()
        assert one(m, "floodwarn_feed_up", source="forecast") == 1
        assert one(m, "floodwarn_feed_up", source="gauges") == 0  # 40 h old: stale
        assert one(m, "floodwarn_data_problems", kind="feed:gauges:stale") == 1
        # one cycle, ok; its SMS queued, none sent yet
        assert one(m, "floodwarn_cycles_total", outcome="ok") == 1
        assert one(m, "floodwarn_cycles_total", outcome="failed") == 0
        assert one(m, "floodwarn_cycle_duration_seconds_count") == 1
        assert one(m, "floodwarn_cycle_duration_seconds_sum") == pytest.approx(s.state.cycles[-1].seconds)
        assert one(m, "floodwarn_last_cycle_success_timestamp_seconds") == pytest.approx(
            s.state.cycles[-1].started.timestamp())
        with s.store.session() as ses:
            queued = ses.scalar(select(func.count()).select_from(OutboxRow).where(OutboxRow.state == "pending"))
            notice_time = ses.scalar(select(func.min(AlertRow.sent)).join(
                OutboxRow, OutboxRow.alert_identifier == AlertRow.identifier))
        assert queued > 0 and one(m, "floodwarn_outbox_depth", state="pending") == queued
        clock.t = AT + timedelta(minutes=7)  # messages wait while the clock runs
        m = scrape(client)
        assert one(m, "floodwarn_outbox_oldest_age_seconds") == (clock.t - notice_time).total_seconds()

        s.job("dispatch")
        # a failed cycle, an hour on
        monkeypatch.setattr(pipeline, "simulate", lambda *a, **k: (_ for _ in ()).throw(
            ModelError("kinematic wave: negative storage in reach 12")))
        clock.t = AT + timedelta(hours=1)
        assert not s.cycle(force=True).ok
        m = scrape(client)
        with s.store.session() as ses:
            states = dict(ses.execute(select(OutboxRow.state, func.count()).group_by(OutboxRow.state)).all())
            statuses = dict(ses.execute(select(DeliveryRow.status, func.count())
                                        .group_by(DeliveryRow.status)).all())
        assert states.get("sent") == queued and statuses  # the file channel sent them all
        assert {dict(k)["state"]: v for k, v in m["floodwarn_outbox_depth"].items() if v} == states
        assert {dict(k)["status"]: v for k, v in m["floodwarn_deliveries"].items()} == statuses
        assert one(m, "floodwarn_outbox_oldest_age_seconds") == 0  # nothing waits
        assert one(m, "floodwarn_cycles_total", outcome="ok") == 1
        assert one(m, "floodwarn_cycles_total", outcome="failed") == 1
        assert one(m, "floodwarn_cycle_duration_seconds_count") == 2 == len(s.state.cycles)
        assert one(m, "floodwarn_cycle_duration_seconds_bucket", le="+Inf") == 2
        assert one(m, "floodwarn_data_problems", kind="cycle") == 1
        assert all(v == 0 for v in m["floodwarn_metrics_scrape_errors_total"].values())
        # counted once: a second scrape sees no new cycle
        assert one(scrape(client), "floodwarn_cycles_total", outcome="failed") == 1
        # never a phone number (nor a message) in the exposition
        text = client.get("/metrics").text
        assert not re.search(r"\+?447700\d{6}", text) and "FLOOD" not in text.upper().replace("FLOODWARN", "")


def test_a_database_error_is_counted_not_a_failed_scrape(svc):
    s, _clock = svc
    with TestClient(create_app(s.cfg, store=s.store, service=s)) as client, \
            TestClient(create_app(s.cfg, store=s.store, service=s)) as other:  # two apps, two registries
        with s.store.engine.begin() as c:
            c.exec_driver_sql("ALTER TABLE outbox RENAME TO outbox_moved")
        m = scrape(client)
        assert one(m, "floodwarn_metrics_scrape_errors_total", part="outbox") == 1
        assert one(m, "floodwarn_metrics_scrape_errors_total", part="deliveries") == 0
        assert "floodwarn_outbox_depth" not in m and "floodwarn_outbox_oldest_age_seconds" not in m
        assert "# TYPE floodwarn_deliveries gauge" in client.get("/metrics").text  # read: no rows yet
        assert one(scrape(client), "floodwarn_metrics_scrape_errors_total", part="outbox") == 3
        assert one(scrape(other), "floodwarn_metrics_scrape_errors_total", part="outbox") == 1
        with s.store.engine.begin() as c:
            c.exec_driver_sql("ALTER TABLE outbox_moved RENAME TO outbox")
        m = scrape(client)
        assert one(m, "floodwarn_outbox_depth", state="pending") == 0
        assert one(m, "floodwarn_metrics_scrape_errors_total", part="outbox") == 3


def test_an_app_without_a_service_shows_the_database_part_only(demo_cfg):
    from warning.storage import Store

    store = Store(demo_cfg.db_url)
    with TestClient(create_app(demo_cfg, store=store)) as client:
        m = scrape(client)
    store.dispose()
    assert "floodwarn_outbox_depth" in m and "floodwarn_cycles_total" not in m
    assert "/metrics" not in client.app.openapi()["paths"]
