"""The drill roster: a separate list of numbers, kept apart from public subscribers."""

from __future__ import annotations

import re
import sqlite3

import pytest
from typer.testing import CliRunner

from tests.conftest import demo_config_text
from alerts.channels import mask_phone
from warning.cli import app
from warning.outbox import recipients_for_zone, roster_for_scope
from warning.storage import Store
from warning.subscribers import PhoneVault, SubscriberRegistry


@pytest.fixture
def cfg_path(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "test-key-not-secret")
    text = re.sub(r'output_dir = "[^"]*"', f'output_dir = "{tmp_path / "out"}"', demo_config_text())
    p = tmp_path / "site.toml"
    p.write_text(text)
    return p


def test_rosters_share_no_row_and_scopes_pick_their_roster(cfg_path, tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'r.sqlite'}")
    vault = PhoneVault.from_env()
    public = SubscriberRegistry(store, vault, "GB")
    drill = SubscriberRegistry(store, vault, "GB", roster="drill")
    a = public.add("07700 900100", ["MB-TOWN"], "en")
    b = drill.add("07700 900100", ["*"], "es")  # the same number on both lists
    c = drill.add("07700 900200", ["HILLTOP"], "en")
    assert len({a, b, c}) == 3
    assert public.count() == 1 and drill.count() == 2
    with store.session() as s:
        assert recipients_for_zone(s, "MB-TOWN", roster_for_scope("live")) == [(a, "en")]
        assert recipients_for_zone(s, "MB-TOWN", roster_for_scope("drill:storm")) == [(b, "es")]
        assert recipients_for_zone(s, "HILLTOP", roster_for_scope("drill:storm")) == [(b, "es"), (c, "en")]
    # opting out of one list leaves the other as it was
    assert drill.opt_out("07700 900100", source="test")
    assert public.find("07700 900100").opted_out_at is None


def test_old_database_gets_the_roster_column(tmp_path):
    """A database from before the drill roster: its subscribers become public ones."""
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    store = Store(url)
    SubscriberRegistry(store, PhoneVault("k"), "GB").add("07700 900100", ["MB-TOWN"])
    store.dispose()
    con = sqlite3.connect(tmp_path / "old.sqlite")
    con.execute("DROP INDEX ix_subscribers_roster")
    con.execute("ALTER TABLE subscribers DROP COLUMN roster")
    con.execute("DROP TABLE alembic_version")  # such a database had no schema revision
    con.commit()
    assert "roster" not in {r[1] for r in con.execute("PRAGMA table_info(subscribers)")}
    con.close()
    store = Store(url)
    reg = SubscriberRegistry(store, PhoneVault("k"), "GB")
    assert reg.count() == 1 and reg.find("07700 900100").roster == "public"


def test_cli_keeps_the_drill_roster_apart(cfg_path):
    runner = CliRunner()
    res = runner.invoke(app, ["subscribers", "add", "--config", str(cfg_path), "07700 900555", "--drill"])
    assert res.exit_code == 0, res.output
    assert "drill roster entry" in res.output and "every zone" in res.output
    res = runner.invoke(app, ["subscribers", "add", "--config", str(cfg_path), "07700 900100", "-z", "MB-TOWN"])
    assert res.exit_code == 0, res.output
    drill = runner.invoke(app, ["subscribers", "list", "--config", str(cfg_path), "--drill"]).output
    public = runner.invoke(app, ["subscribers", "list", "--config", str(cfg_path)]).output
    team, resident = mask_phone("+447700900555"), mask_phone("+447700900100")
    assert team != resident
    assert team in drill and resident not in drill
    assert resident in public and team not in public
    # a public subscriber needs a zone
    res = runner.invoke(app, ["subscribers", "add", "--config", str(cfg_path), "07700 900101"])
    assert res.exit_code != 0 and "zone" in res.output
