"""The ways to run floodwarn for real (Dockerfile, deploy/compose.yaml, deploy/systemd) say
only what floodwarn understands: every command line they run parses with the real CLI,
every environment variable they set is one the code (or uvicorn) reads, the health check
asks a route the app serves, the systemd units pass ``systemd-analyze verify``, and the
database URL they hand over in the environment reaches a real PostgreSQL database through
``floodwarn db upgrade`` and ``floodwarn dispatch``.

Building the image needs a Docker daemon and its base image registry, which the test
machine does not have; that is not tested here."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from tests.conftest import DEMO_CONFIG, REPO
from warning.cli import app as cli_app

DEPLOY = REPO / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
SOURCES = "\n".join(p.read_text() for d in ("warning", "alerts", "models") for p in (REPO / d).rglob("*.py"))


def parse(args: list[str]) -> Any:
    """Parse a floodwarn command line with the real CLI (options, arguments, subcommands)
    without running it (the click context); the parser raises on anything it does not know."""
    cmd = typer.main.get_command(cli_app)
    args = list(args)
    name = "floodwarn"
    while hasattr(cmd, "list_commands"):  # a group (typer carries its own copy of click)
        sub = cmd.get_command(cmd.make_context(name, [], resilient_parsing=True), args[0])
        assert sub is not None, f"floodwarn has no command {args[0]!r}"
        name, cmd, args = args[0], sub, args[1:]
    return cmd.make_context(name, args)


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def floodwarn_services() -> dict[str, dict]:
    return {name: s for name, s in compose()["services"].items() if s.get("image", "").startswith("floodwarn")}


def test_compose_runs_postgres_the_service_and_a_second_dispatcher():
    services = compose()["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    ours = floodwarn_services()
    commands = {name: s["command"] for name, s in ours.items()}
    assert commands["serve"][0] == "serve" and commands["dispatcher"][0] == "dispatch"
    assert "--forever" in commands["dispatcher"]
    for name, args in commands.items():
        ctx = parse(args)
        assert ctx.params["config"] == Path("/site/site.toml"), name
    # the order of start-up: the schema, then the terrain, then the service
    assert ours["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert ours["prepare"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert ours["serve"]["depends_on"]["prepare"]["condition"] == "service_completed_successfully"
    # the database URL is a secret given as a file, read through FLOODWARN_DATABASE_URL_FILE
    for s in ours.values():
        assert s["environment"]["FLOODWARN_DATABASE_URL_FILE"] == "/run/secrets/database_url"
        assert "database_url" in s["secrets"]


def environment_names() -> set[str]:
    names = set()
    for s in floodwarn_services().values():
        names |= set(s.get("environment", {}))
    for line in (DEPLOY / "env.example").read_text().splitlines():
        if re.match(r"^[A-Z_]+=", line):
            names.add(line.split("=", 1)[0])
    for unit in UNITS:
        names |= set(re.findall(r"^Environment=([A-Z_]+)=", unit.read_text(), re.M))
    block = re.search(r"^ENV (?:.*\\\n|\s*#.*\n)*.*$", (REPO / "Dockerfile").read_text(), re.M).group(0)
    names |= {m for line in block.splitlines() if not line.strip().startswith("#")
              for m in re.findall(r"\b([A-Z][A-Z0-9_]+)=", line)}
    return names


def test_every_environment_variable_set_is_one_that_is_read(monkeypatch):
    names = environment_names()
    assert {"FLOODWARN_SECRET_KEY", "TWILIO_AUTH_TOKEN", "FLOODWARN_DATABASE_URL_FILE", "FORWARDED_ALLOW_IPS",
            "FLOODWARN_LOG_FORMAT"} <= names
    read_by_uvicorn = {"FORWARDED_ALLOW_IPS"}
    python_own = {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK",
                  "NUMBA_CACHE_DIR"}
    for name in sorted(names - read_by_uvicorn - python_own):
        base = name.removesuffix("_FILE")
        assert f'"{base}"' in SOURCES, f"{name}: floodwarn never reads {base}"
    # uvicorn, which serve runs, takes the trusted proxies from the environment
    import uvicorn

    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "10.0.0.1")
    assert uvicorn.Config(app=lambda *a: None).forwarded_allow_ips == "10.0.0.1"


def test_dockerfile_command_and_health_check_match_the_cli_and_the_app():
    text = (REPO / "Dockerfile").read_text()
    entry = yaml.safe_load(re.search(r"^ENTRYPOINT (.*)$", text, re.M).group(1))
    cmd = yaml.safe_load(re.search(r"^CMD (.*)$", text, re.M).group(1))
    assert entry == ["floodwarn"]
    ctx = parse(cmd)
    assert ctx.params["host"] == "0.0.0.0" and ctx.params["port"] == 8080
    assert re.search(r"^EXPOSE 8080$", text, re.M)
    probe = re.search(r"urlopen\('http://127\.0\.0\.1:8080(/[^']*)'", text).group(1)
    from fastapi.testclient import TestClient

    from warning.config import load_config
    from warning.storage import Store
    from warning.web import create_app

    cfg = load_config(DEMO_CONFIG)
    with TestClient(create_app(cfg, store=Store("sqlite://"))) as c:
        assert c.get(probe).status_code == 200  # without a service: alive
    # it copies the packages setuptools is told to install, and a Python the project supports
    for package in ("warning", "models", "alerts"):
        assert re.search(rf"^COPY {package} ", text, re.M)
    major, minor = map(int, re.search(r"^FROM python:(\d+)\.(\d+)", text, re.M).groups())
    import tomllib

    wants = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert (major, minor) >= tuple(map(int, wants.removeprefix(">=").split(".")))


def exec_lines(unit: Path) -> list[list[str]]:
    lines = re.findall(r"^(?:ExecStart|ExecStartPre)=(.*)$", unit.read_text(), re.M)
    out = []
    for line in lines:
        args = shlex.split(line)
        if args[0] == "/bin/sh":  # sh -c 'exec floodwarn ...'
            args = shlex.split(re.sub(r"\$\([^)]*\)", "STAMP", args[2]))[1:]
        if args[0].endswith("/floodwarn"):
            out.append(args[1:])
    return out


def test_systemd_units_run_real_commands_and_pass_systemd_analyze(tmp_path):
    names = {u.name for u in UNITS}
    assert {"floodwarn-serve.service", "floodwarn-dispatch.service", "floodwarn-backup.service"} <= names
    seen = []
    for unit in UNITS:
        for args in exec_lines(unit):
            parse(args)
            seen.append(args[:2] if args[0] == "db" else args[:1])
    assert ["serve"] in seen and ["dispatch"] in seen and ["db", "upgrade"] in seen and ["db", "backup"] in seen
    timer = (DEPLOY / "systemd" / "floodwarn-backup.timer").read_text()
    assert "OnCalendar=" in timer
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the units' syntax is not checked")
    # verify copies that point at this checkout's floodwarn (verify wants the programs to exist)
    exe = str(Path(sys.executable).parent / "floodwarn")
    for unit in [*UNITS, DEPLOY / "systemd" / "floodwarn-backup.timer"]:
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/floodwarn/venv/bin/floodwarn", exe))
    res = subprocess.run([analyze, "verify", *(str(tmp_path / u.name) for u in UNITS)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr


def test_the_database_url_from_the_environment_reaches_postgres(tmp_path, pg_url):
    """As in compose: site.toml names no database; FLOODWARN_DATABASE_URL_FILE does."""
    from sqlalchemy import create_engine, inspect

    from tests.conftest import demo_config_text

    text = re.sub(r'output_dir = "[^"]*"', f'output_dir = "{tmp_path / "out"}"', demo_config_text())
    assert not re.search(r"^database_url\s*=", text, re.M)
    config = tmp_path / "site.toml"
    config.write_text(text)
    secret = tmp_path / "database_url"
    secret.write_text(pg_url + "\n")
    env = {"FLOODWARN_DATABASE_URL_FILE": str(secret), "FLOODWARN_SECRET_KEY": "deploy-test"}
    exe = str(Path(sys.executable).parent / "floodwarn")
    for args in (["db", "upgrade", "--config", str(config)], ["dispatch", "--config", str(config), "--once"]):
        res = subprocess.run([exe, *args], capture_output=True, text=True, timeout=300,
                             env={**os.environ, **env})
        assert res.returncode == 0, res.stdout + res.stderr
    engine = create_engine(pg_url)
    try:
        assert {"alembic_version", "outbox", "operators", "audit"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert not (tmp_path / "out" / "floodwarn.sqlite").exists()  # not the SQLite default
