"""Console sessions are kept on the server: signing out, a new password (`floodwarn
operators passwd`) and removing the operator (`floodwarn operators remove`) end them at
once, and the old cookie no longer opens the console. The database keeps only a hash of
each session token."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from tests.conftest import console_login, demo_config_text
from warning.cli import app as cli_app
from warning.config import load_config
from warning.storage import SessionRow, Store
from warning.web import create_app

PASSWORD = "correct horse battery"
NEW_PASSWORD = "staple battery horse!"


def cli(*args: str, password: str | None = None):
    env = {"FLOODWARN_OPERATOR_PASSWORD": password} if password else {}
    res = CliRunner().invoke(cli_app, list(args), env=env)
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


def sign_in(client, password: str = PASSWORD) -> str:
    r = console_login(client, "duty", password, follow_redirects=False)
    assert r.status_code == 303, r.text
    return client.cookies.get("floodwarn_session")


def opens_console(app, cookie: str) -> bool:
    """Whether ``cookie`` alone (a fresh client, as a thief holding it would) opens the console."""
    with TestClient(app, base_url="https://testserver", cookies={"floodwarn_session": cookie}) as c:
        return c.get("/console", follow_redirects=False).status_code == 200


def test_logout_password_change_and_removal_end_sessions_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOODWARN_SECRET_KEY", "sessions-test-secret")
    text = re.sub(r'output_dir = "[^"]*"', f'output_dir = "{tmp_path / "out"}"', demo_config_text())
    config = tmp_path / "site.toml"
    config.write_text(text)
    cfg = load_config(config)
    cli("operators", "add", "--config", str(config), "duty", "--role", "manager", password=PASSWORD)
    store = Store(cfg.db_url)
    app = create_app(cfg, store=store)
    with TestClient(app, base_url="https://testserver") as client:
        # sign in, sign out: the old cookie is worthless at once
        first = sign_in(client)
        assert opens_console(app, first)
        page = client.get("/console").text
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
        assert client.post("/console/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
        assert not opens_console(app, first)
        # only a hash of the token is stored, never the token
        second = sign_in(client)
        with store.session() as s:
            hashes = [r.token_hash for r in s.scalars(select(SessionRow))]
        assert len(hashes) == 1 and second not in hashes and first not in hashes
        listed = re.search(r"duty\W+manager\W+(\d+)", cli("operators", "list", "--config", str(config)))
        assert listed is not None and listed.group(1) == "1"  # one open session
        # a new password ends the sessions signed in with the old one
        assert opens_console(app, second)
        out = cli("operators", "passwd", "--config", str(config), "duty", password=NEW_PASSWORD)
        assert "sessions have ended" in out
        assert not opens_console(app, second)
        bad = console_login(client, "duty", PASSWORD)
        assert "Wrong name or password" in bad.text
        third = sign_in(client, NEW_PASSWORD)
        assert opens_console(app, third)
        # removing the operator ends their session and their sign-in
        out = cli("operators", "remove", "--config", str(config), "duty")
        assert "operator duty removed; 1 console session(s) ended" in out
        assert not opens_console(app, third)
        assert "Wrong name or password" in console_login(client, "duty", NEW_PASSWORD).text
        assert "duty" not in cli("operators", "list", "--config", str(config))
    res = CliRunner().invoke(cli_app, ["operators", "remove", "--config", str(config), "duty"])
    assert res.exit_code != 0 and "no operator named 'duty'" in " ".join(res.output.split())
