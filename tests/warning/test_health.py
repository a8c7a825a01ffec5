"""/health, /health/live and /health/ready of the running app tell the truth: 503 with the
reason when the database is gone (its file replaced by a folder), the scheduler stopped,
the last forecast cycle failed or a feed is past its allowed delay; ready only once a
cycle has succeeded."""

from __future__ import annotations

import os
import shutil
from datetime import timedelta

from fastapi.testclient import TestClient

from tests.warning.test_service_problems import svc  # noqa: F401  (the fixture)
from warning.web import create_app


def get(s, path: str):
    with TestClient(create_app(s.cfg, store=s.store, service=s)) as client:
        r = client.get(path)
    return r.status_code, r.json()


def test_a_fresh_service_is_alive_but_not_ready_until_a_cycle_succeeds(svc):  # noqa: F811
    s, clock, _, _ = svc
    s.state.running = True  # its jobs are run by hand here
    assert get(s, "/health/live") == (200, {"alive": True, "scheduler_running": True})
    code, body = get(s, "/health/ready")
    assert code == 503 and body["reasons"] == ["forecast cycle: none has succeeded yet"]
    assert s.cycle(force=True).ok
    assert get(s, "/health/ready") == (200, {"ready": True, "reasons": []})
    code, body = get(s, "/health")
    assert code == 200 and body["ok"] and body["reasons"] == []
    # the scheduler stops: not alive, not ready, not healthy
    s.state.running = False
    assert get(s, "/health/live")[0] == 503
    code, body = get(s, "/health")
    assert code == 503 and body["status"] == "down" and "scheduler: not running" in body["reasons"]


def test_a_failed_cycle_and_a_late_feed_answer_503_with_the_reason(svc, monkeypatch):  # noqa: F811
    from models.errors import ModelError
    from warning import pipeline

    s, clock, _, gauges = svc
    s.state.running = True
    real = pipeline.simulate
    monkeypatch.setattr(pipeline, "simulate", lambda *a, **k: (_ for _ in ()).throw(
        ModelError("kinematic wave: negative storage in reach 12")))
    assert not s.cycle(force=True).ok
    code, body = get(s, "/health")
    assert code == 503 and not body["ok"]
    assert any(r.startswith("forecast cycle: the last one") and "negative storage" in r for r in body["reasons"])
    assert get(s, "/health/ready")[0] == 503
    monkeypatch.setattr(pipeline, "simulate", real)
    clock.t += timedelta(minutes=10)
    assert s.cycle().ok and get(s, "/health")[0] == 200
    # the gauge archive ends at 23:45 on 15 November: three days on, the
    # newest reading is far past the feed's allowed delay (90 min): stale
    assert s.ingest("gauges").state == "ok"
    clock.t += timedelta(days=3)
    assert s.ingest("gauges").state.startswith("stale")
    code, body = get(s, "/health")
    assert code == 503 and any(r.startswith("feed gauges: stale") for r in body["reasons"])


def test_a_database_file_replaced_by_a_folder_is_a_failing_database(svc):  # noqa: F811
    s, clock, _, _ = svc
    s.state.running = True
    assert s.cycle(force=True).ok
    db = s.store.url.removeprefix("sqlite:///")
    with TestClient(create_app(s.cfg, store=s.store, service=s)) as client:
        assert client.get("/health").status_code == 200
        shutil.move(db, db + ".moved")
        for extra in ("-wal", "-shm"):
            if os.path.exists(db + extra):
                shutil.move(db + extra, db + ".moved" + extra)
        os.mkdir(db)
        r = client.get("/health")
    assert r.status_code == 503
    assert r.json()["database"] == f"database file {db} is a folder"
    assert f"database: database file {db} is a folder" in r.json()["reasons"]
