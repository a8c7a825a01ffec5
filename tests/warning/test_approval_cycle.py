"""Approval is part of the level state machine, through the commands a manager and an
operator use: ``floodwarn run``, ``alerts pending|approve|reject``, ``dispatch``, and the
public web app, on a one-zone gauge site with real sending through the Twilio SDK to a
local Twilio-compatible server.

The oracle is the published state: what the public can see (``/api/zones``,
``/api/alerts``, ``/``, the feed, notice pages) and what residents receive must follow
only published notices, and each published raise must reach each resident exactly once.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import xmlschema
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from tests.alerts.twilio_fake import FakeTwilio
from tests.conftest import SHARED
from warning.cli import app
from warning.config import load_config
from warning.storage import AuditRow, Run, Store

RESIDENTS = ("+447700900201", "+447700900202")
OPERATOR_PHONE = "+447700900299"
PASSWORD = "manager password 1"

SITE = """{database}
[site]
name = "Test brook"
code = "TB"
zones = "zones.geojson"
output_dir = "out"

[[gauges]]
id = "G1"
name = "Test brook at the bridge"
lon = -1.0
lat = 52.0
flood_stages = {{ minor = 2.0 }}

[sources.gauges]
kind = "gauge_csv"
path = "gauges.csv"
stale_after_minutes = 120

[[levels]]
name = "warning"
title = "Flood Warning"
colour = "#e8770e"
severity = "Severe"
urgency = "Immediate"
certainty = "Observed"
response_type = "Avoid"
approval = true
{timeout}
instruction = "Move to higher ground."

[policy]
persistence = 1
hysteresis = 0.1
min_hold_hours = 0
expiry_hours = 6
renew_before_hours = 1

{zones}

[channels]
sms = "auto"
[channels.twilio]
from_number = "+15005550006"

[notices]
sender = "floodwarn-test@example.org"
sender_name = "Test brook flood warnings"
web_base = "https://flood.example.org/tb"
language = "en"

[service]
operator_phones = ["{operator}"]
"""

ZONE = """
[[zones]]
code = "{code}"
gauge = "G1"
[zones.thresholds]
warning = {{ any = ["observed_stage_m >= 2.0"] }}
"""


def _polygon(x0: float) -> list[list[float]]:
    ring = [[x0, 51.99], [x0 + 0.02, 51.99], [x0 + 0.02, 52.01], [x0, 52.01]]
    return [*ring, ring[0]]


def write_site(root: Path, *, zones: tuple[str, ...] = ("TZ",), timeout: str = "",
               database_url: str | None = None) -> Path:
    """A gauge site in ``root``: one gauge, a stage record with two floods (07:00-10:00 and
    16:30-19:00 on 14 Nov 2025, 2.5 and 2.6 m against a 2.0 m threshold, from 1.5 m: each step
    within the 5 m/h plausible rate), and ``zones`` on that gauge."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "site.toml").write_text(SITE.format(
        database=f'database_url = "{database_url}"' if database_url else "", timeout=timeout, operator=OPERATOR_PHONE, zones="".join(ZONE.format(code=z) for z in zones)))
    features = [{"type": "Feature", "properties": {"code": z, "name": f"Valley {z}"},
                 "geometry": {"type": "Polygon", "coordinates": [_polygon(-1.01 + 0.05 * i)]}}
                for i, z in enumerate(zones)]
    (root / "zones.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    t0 = datetime(2025, 11, 14)
    rows = ["station,time,stage"]
    for i in range(24 * 4):
        t, h = t0 + timedelta(minutes=15 * i), i / 4
        stage = 2.5 if 7 <= h < 10 else 2.6 if 16.5 <= h < 19 else 1.5
        rows.append(f"G1,{t:%Y-%m-%dT%H:%M}Z,{stage}")
    (root / "gauges.csv").write_text("\n".join(rows) + "\n")
    return root / "site.toml"


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "test-key-not-secret")
    monkeypatch.setenv("FLOODWARN_OPERATOR_PASSWORD", PASSWORD)
    import warning.cli

    monkeypatch.setattr(warning.cli.console, "width", 250)  # table cells on one line each
    with FakeTwilio() as server:
        monkeypatch.setenv("TWILIO_ACCOUNT_SID", server.account_sid)
        monkeypatch.setenv("TWILIO_AUTH_TOKEN", server.auth_token)
        monkeypatch.setenv("FLOODWARN_TWILIO_BASE_URL", server.base_url)
        yield server


def cli(*args: str, code: int = 0) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == code, res.output
    return res.output


def setup_people(config: Path, zones: tuple[str, ...] = ("TZ",)) -> None:
    cli("operators", "add", "--config", str(config), "mgr", "--role", "manager")
    cli("operators", "add", "--config", str(config), "watch", "--role", "operator")
    for phone in RESIDENTS:
        cli("subscribers", "add", "--config", str(config), phone, *[a for z in zones for a in ("--zone", z)],
            "--consent-source", "test form")


def run(config: Path, at: str, code: int = 0) -> str:
    return cli("run", "--config", str(config), "--at", at, code=code)


def pending_ids(config: Path) -> list[int]:
    out = cli("alerts", "pending", "--config", str(config))
    return [int(m) for m in re.findall(r"^│\s*(\d+)\s*│", out, flags=re.M)]


def public(config: Path) -> dict:
    cfg = load_config(config)
    from warning.web import create_app

    store = Store(cfg.db_url)
    try:
        with TestClient(create_app(cfg, store=store)) as client:
            zones = {z["code"]: z for z in client.get("/api/zones").json()}
            alerts = client.get("/api/alerts").json()
            pages = {a["identifier"]: (client.get(f"/notices/{a['identifier']}.xml").status_code,
                                       client.get(f"/notices/{a['identifier']}.html").status_code)
                     for a in alerts}
            index = client.get("/").text
        return {"zones": zones, "alerts": alerts, "pages": pages, "index": index}
    finally:
        store.dispose()


def texts_to(fake: FakeTwilio, phone: str) -> list[str]:
    return [m["Body"] for m in fake.messages if m["To"] == phone]


def test_a_rejected_warning_does_not_silence_the_zone_for_the_next_flood(tmp_path, fake, db_url):
    config = write_site(tmp_path / "site", database_url=None if db_url.startswith("sqlite") else db_url)
    setup_people(config)
    cfg = load_config(config)

    out = run(config, "2025-11-14T07:00Z")
    assert "held for approval" in out
    # held: nothing public, nobody texted
    pub = public(config)
    assert (pub["zones"]["TZ"]["level_name"], pub["zones"]["TZ"]["active"]) == ("none", False)
    assert pub["alerts"] == [] and "Flood Warning" not in pub["index"]
    assert not list((cfg.output_dir / "cap").glob("*.xml"))
    cli("dispatch", "--config", str(cfg.source if hasattr(cfg, "source") else config))
    assert fake.messages == []

    [first] = pending_ids(config)
    # an operator may not decide; a manager must prove who they are
    assert "only managers" in cli("alerts", "reject", "--config", str(config), str(first), "--by", "watch", code=1)
    cli("alerts", "reject", "--config", str(config), str(first), "--by", "mgr", "--note", "gauge fault")
    assert public(config)["zones"]["TZ"]["level_name"] == "none"

    # the river still meets the criteria an hour later: the warning is raised again, held again
    assert "held for approval" in run(config, "2025-11-14T08:00Z")
    [second] = pending_ids(config)
    assert second != first
    # the river falls: the held raise is withdrawn; the cycles succeed and end "done"
    for at in ("10:00", "11:00", "12:00"):
        out = run(config, f"2025-11-14T{at}Z")
        assert "failed" not in out
    assert pending_ids(config) == []
    store = Store(cfg.db_url)
    with store.session() as s:
        assert {r.status for r in s.scalars(select(Run))} == {"done"}
        events = s.scalars(select(AuditRow.event)).all()
    assert "approval_withdrawn" in events and "rejected" in events

    # the second flood raises (not "renew"); approved, it is published and texted to everyone once
    out = run(config, "2025-11-14T16:30Z")
    assert "raise (held for approval)" in out
    [third] = pending_ids(config)
    cli("alerts", "approve", "--config", str(config), str(third), "--by", "mgr")
    cli("dispatch", "--config", str(config))
    for phone in RESIDENTS:
        assert len(texts_to(fake, phone)) == 1, fake.messages
        assert "Flood Warning" in texts_to(fake, phone)[0]
    pub = public(config)
    assert (pub["zones"]["TZ"]["level_name"], pub["zones"]["TZ"]["active"]) == ("warning", True)
    [alert] = pub["alerts"]
    assert alert["msg_type"] == "Alert" and pub["pages"][alert["identifier"]] == (200, 200)

    # the flood ends: an all-clear that cancels the approved Alert, texted once more
    out = run(config, "2025-11-14T19:30Z")
    assert "all_clear" in out
    cli("dispatch", "--config", str(config))
    for phone in RESIDENTS:
        assert len(texts_to(fake, phone)) == 2
    pub = public(config)
    assert pub["zones"]["TZ"]["level_name"] == "none"
    cancel = next(a for a in pub["alerts"] if a["msg_type"] == "Cancel")
    xml = (cfg.output_dir / "cap" / f"{cancel['identifier']}.xml").read_text()
    assert alert["identifier"] in xml
    # only the approved Alert and its Cancel were ever published; the held ones stay private
    assert len(list((cfg.output_dir / "cap").glob("*.xml"))) == 2
    xsd = SHARED / "standards" / "cap" / "CAP-v1.2.xsd"
    if xsd.exists():
        schema = xmlschema.XMLSchema(str(xsd))
        for f in (cfg.output_dir / "cap").glob("*.xml"):
            schema.validate(str(f))


def test_a_held_raise_refreshes_one_request_and_the_time_out_settles_it(tmp_path, fake):
    config = write_site(tmp_path / "site", timeout='approval_timeout_minutes = 90\non_approval_timeout = "publish"')
    setup_people(config)
    run(config, "2025-11-14T07:00Z")
    [request] = pending_ids(config)
    run(config, "2025-11-14T08:00Z")  # the same raise: the same request, a fresh notice
    assert pending_ids(config) == [request]
    # nobody decides: the dispatcher's time-out check publishes it at 07:00 + 90 min
    cfg = load_config(config)
    from warning.outbox import release_due

    store = Store(cfg.db_url)
    from warning.alerting import publisher

    assert release_due(store, datetime.fromisoformat("2025-11-14T08:29+00:00"), publisher(cfg)) == 0
    assert release_due(store, datetime.fromisoformat("2025-11-14T08:30+00:00"), publisher(cfg)) == 1
    cli("dispatch", "--config", str(config))
    assert sorted(m["To"] for m in fake.messages) == sorted(RESIDENTS)
    assert public(config)["zones"]["TZ"]["level_name"] == "warning"


def test_a_zone_that_fails_does_not_stop_the_cycle(tmp_path, fake):
    config = write_site(tmp_path / "site", zones=("TZ", "BAD"))
    setup_people(config, zones=("TZ", "BAD"))
    # a fault that hits one zone only: its notice file cannot be written (a folder is in the way)
    blocker = tmp_path / "site" / "out" / "held" / "BAD.20251114T0700.xml"
    blocker.mkdir(parents=True)
    out = run(config, "2025-11-14T07:00Z", code=1)
    assert "failed" in out and "BAD" in out
    cfg = load_config(config)
    store = Store(cfg.db_url)
    with store.session() as s:
        [r] = s.scalars(select(Run)).all()
        failed = s.scalars(select(AuditRow).where(AuditRow.event == "zone_failed")).all()
    assert r.status == "done" and [f["zone"] for f in r.summary["failed_zones"]] == ["BAD"]
    assert [f.zone for f in failed] == ["BAD"]
    # the other zone went on (held for approval), the operators were texted about BAD
    assert pending_ids(config) != []
    assert any(m["To"] == OPERATOR_PHONE and "BAD" in m["Body"] for m in fake.messages)
    with store.session() as s:  # nothing of BAD's failed stage was kept
        from warning.storage import OutboxRow, ZoneStateRow

        assert s.get(ZoneStateRow, ("BAD", "live")) is None
        assert {r.zone for r in s.scalars(select(OutboxRow))} == {"TZ"}
    # the fault cleared, the next cycle raises it like any other
    blocker.rmdir()
    out = run(config, "2025-11-14T08:00Z")
    assert out.count("held for approval") == 2
