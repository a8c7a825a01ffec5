"""The service and bad data: a broken forecast file, a dead gauge feed and a failing cycle
are each told to the operators once (and once more when they clear), shown on /health
and the console, and the cycles go on with the last good data. No run is left running."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests.conftest import REPO, Clock, demo_config_text
from warning.config import load_config
from warning.service import Service
from warning.storage import AuditRow, Run
from warning.web import create_app

AT = datetime(2025, 11, 14, 15, 10, tzinfo=UTC)
OPERATOR = "+447700900555"


@pytest.fixture
def svc(tmp_path, monkeypatch):
    """The demo service with its forecasts and gauge file in tmp_path (so a test may break
    them), an operator on the roster, SMS to the file channel."""
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "service-test-secret")
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    fc = tmp_path / "forecasts"
    shutil.copytree(REPO / "sample_data" / "demo" / "forecasts", fc)
    gauges = tmp_path / "readings.csv"
    shutil.copy(REPO / "sample_data" / "demo" / "gauges" / "readings.csv", gauges)
    text = demo_config_text()
    text = re.sub(r'output_dir = "[^"]*"', f'output_dir = "{tmp_path / "out"}"', text)
    text = re.sub(r'(\[sources\.forecast\][^\[]*?)path = "[^"]*"', rf'\1path = "{fc}"', text, flags=re.S)
    text = re.sub(r'(\[sources\.gauges\][^\[]*?)path = "[^"]*"', rf'\1path = "{gauges}"', text, flags=re.S)
    text = text.replace("[service]", f'[service]\noperator_phones = ["{OPERATOR}"]', 1)
    (tmp_path / "site.toml").write_text(text)
    cfg = load_config(tmp_path / "site.toml")
    clock = Clock(AT)
    s = Service(cfg, clock=clock)
    yield s, clock, fc, gauges
    s.shutdown()


def operator_texts(s: Service) -> list[str]:
    log = s.cfg.output_dir / s.cfg.channels.sms_log
    if not log.exists():
        return []
    return [m["body"] for m in map(json.loads, log.read_text().splitlines()) if m["key"].startswith("ops:")]


def audit(s: Service, *events: str) -> list[str]:
    with s.store.session() as ses:
        rows = ses.scalars(select(AuditRow).where(AuditRow.event.in_(events)).order_by(AuditRow.id))
        return [r.detail["problem"] for r in rows]


def health(s: Service) -> dict:
    """/health of the service; its jobs are run by hand here, so the scheduler is marked
    running (else health says "down")."""
    s.state.running = True
    with TestClient(create_app(s.cfg, store=s.store, service=s)) as client:
        return client.get("/health").json()


def test_a_broken_forecast_file_is_told_once_and_the_cycle_uses_the_issue_before(svc):
    s, clock, fc, _ = svc
    newest = fc / "rain_20251114T1500Z.nc"
    good = newest.read_bytes()
    newest.write_bytes(b"<html><body>502 Bad Gateway</body></html>")  # a failed download
    for _ in range(4):  # the ingest job polls again and again
        assert s.ingest("forecast").state == "ok"
        clock.t += timedelta(seconds=30)
    refused = [p for p in audit(s, "data_problem") if "forecast file refused" in p]
    assert len(refused) == 1 and "rain_20251114T1500Z.nc" in refused[0]
    assert len(operator_texts(s)) == 1 and "rain_20251114T1500Z.nc" in operator_texts(s)[0]
    rec = s.cycle(force=True)
    assert rec.ok and rec.forecast_file == "rain_20251114T1200Z.nc"  # the issue before it
    h = health(s)
    assert h["status"] == "degraded" and any("rain_20251114T1500Z.nc" in p["text"] for p in h["problems"])
    # the file is fixed: told once that it cleared, and the next cycle uses it
    newest.write_bytes(good)
    s.ingest("forecast")
    s.ingest("forecast")
    cleared = audit(s, "data_problem_cleared")
    assert len(cleared) == 1 and "rain_20251114T1500Z.nc" in cleared[0]
    assert len(operator_texts(s)) == 2 and operator_texts(s)[1].startswith(f"floodwarn {s.cfg.site.name}: cleared")
    assert s.cycle().forecast_file == "rain_20251114T1500Z.nc"
    assert health(s)["status"] == "ok"


def test_a_dead_gauge_file_is_told_once_per_gap_and_once_when_it_returns(svc):
    s, clock, _, gauges = svc
    good = gauges.read_bytes()
    assert s.ingest("gauges").state == "ok"
    gauges.write_bytes(good[: len(good) // 3] + b"\xff\xfe garbage")  # a bad write
    states = []
    for _ in range(3):
        clock.t += timedelta(minutes=1)
        states.append(s.ingest("gauges").state)
    assert all(st.startswith("error") for st in states), states
    failed = [p for p in audit(s, "data_problem") if "gauges feed failed" in p]
    assert len(failed) == 1 and "readings.csv" in failed[0]
    assert len(operator_texts(s)) == 1
    assert health(s)["status"] == "degraded"
    gauges.write_bytes(good)
    assert s.ingest("gauges").state == "ok"
    s.ingest("gauges")
    assert len(audit(s, "data_problem_cleared")) == 1 and len(operator_texts(s)) == 2
    assert health(s)["status"] == "ok"


def test_a_failing_cycle_is_told_once_leaves_no_run_running_and_retries_later(svc, monkeypatch):
    from models.errors import ModelError
    from warning import pipeline

    s, clock, _, _ = svc
    real = pipeline.simulate

    def diverged(*a, **k):
        raise ModelError("kinematic wave: negative storage in reach 12")

    monkeypatch.setattr(pipeline, "simulate", diverged)
    first = s.cycle(force=True)
    assert first is not None and not first.ok and "negative storage" in first.detail
    for _ in range(3):  # polls within the retry delay: not run again, not told again
        clock.t += timedelta(minutes=1)
        assert s.cycle() is None
    assert len(audit(s, "cycle_failed")) == 1 and len(operator_texts(s)) == 1
    with s.store.session() as ses:
        runs = ses.scalars(select(Run)).all()
    assert [r.status for r in runs] == ["failed"]  # recorded, and not left running
    h = health(s)
    assert h["status"] == "degraded" and not h["ok"]
    assert h["scheduler"]["last_cycle"]["ok"] is False
    clock.t += timedelta(minutes=10)
    assert s.due(clock.t) == (True, "retrying the failed cycle")
    monkeypatch.setattr(pipeline, "simulate", real)
    assert s.cycle().ok
    assert len(audit(s, "data_problem_cleared")) == 1 and health(s)["status"] == "ok"
