"""`floodwarn run` on the demo site: one cycle, SMS through the real Twilio SDK to a local
Twilio-compatible server, CAP written, opt-outs honoured, terrain cached once."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from tests.alerts.twilio_fake import FakeTwilio
from tests.conftest import demo_config_text
from warning.cli import app


def _config_in(tmp_path) -> str:
    text = demo_config_text()
    text = re.sub(r'output_dir = "[^"]*"', f'output_dir = "{tmp_path / "out"}"', text)
    p = tmp_path / "site.toml"
    p.write_text(text)
    return str(p)


@pytest.fixture
def subscribed(tmp_path, monkeypatch):
    """A config in tmp_path, with the demo subscribers imported under a test key."""
    from warning.config import load_config
    from warning.storage import Store
    from warning.subscribers import PhoneVault, SubscriberRegistry

    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "test-key-not-secret")
    path = _config_in(tmp_path)
    cfg = load_config(path)
    store = Store(cfg.db_url)
    reg = SubscriberRegistry(store, PhoneVault.from_env(), "GB")
    reg.import_csv(cfg.path(cfg.subscribers.import_csv))
    store.dispose()
    return path, cfg


def test_run_one_cycle_sends_sms_through_twilio_sdk(subscribed, monkeypatch):
    path, cfg = subscribed
    with FakeTwilio() as fake:
        fake.opt_out("+447700900114")  # the third subscriber replied STOP to the provider
        monkeypatch.setenv("TWILIO_ACCOUNT_SID", fake.account_sid)
        monkeypatch.setenv("TWILIO_AUTH_TOKEN", fake.auth_token)
        monkeypatch.setenv("FLOODWARN_TWILIO_BASE_URL", fake.base_url)
        res = CliRunner().invoke(app, ["run", "--config", path, "--at", "2025-11-14T16:00Z"])
        assert res.exit_code == 0, res.output
        sent = list(fake.messages)
    # the town floods at this time: its four subscribers are messaged, one has opted out
    town_numbers = {"+447700900100", "+447700900107", "+447700900114", "+447700900142"}
    to = {m["To"] for m in sent}
    assert to & town_numbers == town_numbers - {"+447700900114"}
    assert all(m["From"] == cfg.channels.twilio.from_number for m in sent)
    assert "HILLTOP" in res.output
    cap_files = list((cfg.output_dir / "cap").glob("*.xml"))
    assert any("MB-TOWN" in f.name for f in cap_files)
    assert all(b"<status>Actual</status>" in f.read_bytes() for f in cap_files)
    # the STOP is mirrored in our database: no second attempt next cycle
    import sqlite3
    con = sqlite3.connect(cfg.output_dir / "floodwarn.sqlite")
    states = dict(con.execute("select state, count(*) from outbox group by state").fetchall())
    assert states.get("failed") == 1 and states.get("sent") == len(sent)
    assert con.execute("select count(*) from subscribers where opted_out_at is not null").fetchone() == (1,)


def test_run_twice_reuses_terrain_and_sends_nothing_new(subscribed, tmp_path):
    path, cfg = subscribed
    runner = CliRunner()
    first = runner.invoke(app, ["run", "--config", path, "--at", "2025-11-14T16:00Z"])
    assert first.exit_code == 0, first.output
    cache = list((cfg.output_dir / "cache").glob("terrain-*.nc"))
    assert len(cache) == 1
    mtime = cache[0].stat().st_mtime
    second = runner.invoke(app, ["run", "--config", path, "--at", "2025-11-14T17:00Z"])
    assert second.exit_code == 0, second.output
    assert cache[0].stat().st_mtime == mtime  # computed once per site
    lines = (cfg.output_dir / "sms.jsonl").read_text().splitlines()
    first_count = len([x for x in lines if json.loads(x)["key"].split(":")[0].split(".")[1] == "20251114T1600"])
    assert first_count == len(lines)  # the level held: no second round of messages


def test_run_reports_bad_input_without_traceback(tmp_path):
    path = _config_in(tmp_path)
    res = CliRunner().invoke(app, ["run", "--config", path, "--at", "2020-01-01T00:00Z"])
    assert res.exit_code == 1
    assert "no rainfall forecast issued at or before 2020-01-01 00:00Z" in res.output
    assert "Traceback" not in res.output
