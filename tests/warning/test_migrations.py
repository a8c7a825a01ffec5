"""Schema migrations: a database made by any floodwarn that shipped (the historic schemas
in ``schemas/``, one per distinct schema in ``git log -- warning/storage.py``) upgrades to
exactly the current schema, keeping its rows; the upgrade is recorded and not repeated;
``Store`` upgrades at start-up and costs one query when the schema is up to date; two
processes upgrading at once do not break each other.

The oracles: Alembic's ``compare_metadata`` against ``Base.metadata`` (no differences), and
the reflected schema of a database made fresh by ``create_all`` (columns with their types,
nullability and defaults, indexes, unique constraints, foreign keys)."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import JSON, MetaData, Table, create_engine, event, insert, inspect, select, text
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from tests.conftest import REPO, demo_config_text
from warning.cli import app
from warning.migrations import head_revision
from warning.storage import AlertRow, Base, OutboxRow, Run, Store, Subscriber

SCHEMAS = Path(__file__).parent / "schemas"
SQLITE_SCHEMAS = sorted(p for p in SCHEMAS.glob("*.sql") if not p.name.endswith(".postgresql.sql"))
T = "2025-11-14 12:00:00.000000"

#: rows every historic schema can hold (columns a schema lacks are left out)
ROWS = {
    "runs": {"id": "20251114T1200Z-live", "at": T, "scope": "live", "forecast_issued": None,
             "forecast_file": "rain.nc", "status": "done", "started": T, "finished": T,
             "summary": json.dumps({"zones": 2, "ÅLAND": [1.5, None]})},
    "alerts": {"id": 7, "identifier": "urn:fw:1", "zone": "MB-TOWN", "scope": "live",
               "run_id": "20251114T1200Z-live", "level": 2, "level_name": "warning", "msg_type": "Alert",
               "status": "Actual", "sent": T, "expires": "2025-11-14 18:00:00.000000",
               "cap_path": "cap/1.xml", "headline": "Flood warning", "state": "published"},
    "subscribers": {"id": 3, "phone_hash": "h" * 64, "phone_enc": "gAAAAencrypted", "zones": '["MB-TOWN"]',
                    "language": "cy", "consent_source": "web form", "consent_time": T,
                    "opted_out_at": None, "unreachable": None, "roster": "public"},
    "outbox": {"id": 11, "key": "urn:fw:1/3/sms", "alert_identifier": "urn:fw:1", "subscriber_id": 3,
               "channel": "sms", "zone": "MB-TOWN", "scope": "live", "body": "Flood warning for the town",
               "segments": 1, "state": "sent", "attempts": 1, "sent_at": T, "provider_id": "SM1"},
    "audit": {"id": 5, "time": T, "run_id": "20251114T1200Z-live", "zone": "MB-TOWN", "event": "issued",
              "detail": json.dumps({"level": "warning"}), "value": 0.42},
}
TIME_COLUMNS = {"at", "started", "finished", "sent", "expires", "consent_time", "sent_at", "time"}
#: what a column a schema lacked holds after the upgrade, in the rows already there
FILLED = {("alerts", "state"): "published", ("outbox", "zone"): "", ("outbox", "scope"): "live",
          ("outbox", "segments"): 1, ("subscribers", "roster"): "public"}


def site_config(folder: Path, db_url: str | None = None) -> Path:
    """The demo config with its output (and by default its SQLite database) in ``folder``."""
    body = re.sub(r'output_dir = "[^"]*"', f'output_dir = "{folder / "out"}"', demo_config_text())
    if db_url:
        body = f'database_url = "{db_url}"\n' + body
    path = folder / "site.toml"
    path.write_text(body)
    return path


def old_sqlite_db(schema: Path, db: Path) -> dict[str, dict]:
    """A SQLite database made from a historic schema, with ROWS (what each table got) and an
    APScheduler job table as old services made."""
    db.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(db)
    con.executescript(schema.read_text())
    con.execute("CREATE TABLE scheduler_jobs (id VARCHAR(191) NOT NULL PRIMARY KEY, next_run_time FLOAT, "
                "job_state BLOB NOT NULL)")
    con.execute("INSERT INTO scheduler_jobs VALUES ('cycle', 1.0, x'00')")
    inserted = {}
    for table, row in ROWS.items():
        cols = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
        row = {k: v for k, v in row.items() if k in cols}
        con.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                    list(row.values()))
        inserted[table] = row
    con.commit()
    con.close()
    return inserted


def schema_of(engine) -> dict:
    """The reflected schema, normalised for comparison."""
    insp = inspect(engine)
    out = {}
    for t in sorted(set(insp.get_table_names()) - {"alembic_version"}):
        out[t] = {
            "columns": sorted((c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                              for c in insp.get_columns(t)),
            "pk": insp.get_pk_constraint(t)["constrained_columns"],
            "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                              for i in insp.get_indexes(t)),
            "unique": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(t)),
            "fks": sorted((tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]),
                           (f.get("options") or {}).get("ondelete")) for f in insp.get_foreign_keys(t)),
        }
    return out


def assert_current_schema(url: str, fresh_url: str) -> None:
    engine = create_engine(url)
    fresh = create_engine(fresh_url)
    try:
        Base.metadata.create_all(fresh)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
            assert diff == []
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision()
        assert schema_of(engine) == schema_of(fresh)
        assert "scheduler_jobs" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
        fresh.dispose()


def assert_rows_kept(url: str, inserted: dict[str, dict]) -> None:
    """The rows read back through the models: each value given, and the filled defaults."""
    store = Store(url)
    at = datetime(2025, 11, 14, 12, tzinfo=UTC)
    with store.session() as s:
        run = s.scalar(select(Run))
        alert = s.scalar(select(AlertRow))
        sub = s.scalar(select(Subscriber))
        out = s.scalar(select(OutboxRow))
    store.dispose()
    assert (run.id, run.at, run.status, run.summary) == ("20251114T1200Z-live", at, "done",
                                                       {"zones": 2, "ÅLAND": [1.5, None]})
    assert (alert.id, alert.identifier, alert.level, alert.sent, alert.headline) == (
        7, "urn:fw:1", 2, at, "Flood warning")
    assert (sub.id, sub.phone_enc, sub.zones, sub.language, sub.consent_time) == (
        3, "gAAAAencrypted", ["MB-TOWN"], "cy", at)
    assert (out.id, out.key, out.subscriber_id, out.body, out.state, out.provider_id) == (
        11, "urn:fw:1/3/sms", 3, "Flood warning for the town", "sent", "SM1")
    rows = {"alerts": alert, "subscribers": sub, "outbox": out}
    for (table, column), value in FILLED.items():
        expect = inserted[table].get(column, value)
        assert getattr(rows[table], column) == expect, (table, column)


def cli(*args: str) -> str:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("schema", SQLITE_SCHEMAS, ids=lambda p: p.stem)
def test_every_shipped_schema_upgrades_to_the_current_one(schema, tmp_path):
    cfg = site_config(tmp_path)
    db = tmp_path / "out" / "floodwarn.sqlite"
    inserted = old_sqlite_db(schema, db)
    out = cli("db", "upgrade", "--config", str(cfg))
    assert "from no revision" in out and f"to revision {head_revision()}" in out
    assert_current_schema(f"sqlite:///{db}", f"sqlite:///{tmp_path / 'fresh.sqlite'}")
    assert_rows_kept(f"sqlite:///{db}", inserted)
    # the foreign keys still hold (rebuilt tables kept their references)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA foreign_key_check").fetchall() == []
    con.close()


def test_a_new_database_and_a_second_upgrade(tmp_path):
    cfg = site_config(tmp_path)
    out = cli("db", "status", "--config", str(cfg))
    assert "no revision" in out and "floodwarn db upgrade" in out
    out = cli("db", "upgrade", "--config", str(cfg))
    assert "from no revision" in out and f"to revision {head_revision()}" in out
    db = tmp_path / "out" / "floodwarn.sqlite"
    before = sqlite3.connect(db).execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    out = cli("db", "upgrade", "--config", str(cfg))
    assert "already at the newest revision" in out and "nothing to do" in out
    assert sqlite3.connect(db).execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == before
    assert "up to date" in cli("db", "current", "--config", str(cfg))
    assert_current_schema(f"sqlite:///{db}", f"sqlite:///{tmp_path / 'fresh.sqlite'}")


def test_status_says_when_the_database_is_behind(tmp_path):
    cfg = site_config(tmp_path)
    db = tmp_path / "out" / "floodwarn.sqlite"
    Store(f"sqlite:///{db}").dispose()
    con = sqlite3.connect(db)
    con.execute("UPDATE alembic_version SET version_num = '0001'")
    con.execute("DROP INDEX ix_audit_event_time")  # made by 0003: the database is truly at 0001
    con.commit()
    con.close()
    out = cli("db", "current", "--config", str(cfg))
    assert "revision 0001" in out and f"the newest is {head_revision()}" in out
    assert "to revision" in cli("db", "upgrade", "--config", str(cfg))


def test_store_upgrades_an_old_database_and_then_starts_in_one_query(tmp_path):
    db = tmp_path / "old.sqlite"
    inserted = old_sqlite_db(SQLITE_SCHEMAS[0], db)
    url = f"sqlite:///{db}"
    Store(url).dispose()
    assert_current_schema(url, f"sqlite:///{tmp_path / 'fresh.sqlite'}")
    assert_rows_kept(url, inserted)
    statements: list[str] = []

    def seen(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(Engine, "before_cursor_execute", seen)
    try:
        Store(url).dispose()
    finally:
        event.remove(Engine, "before_cursor_execute", seen)
    assert statements == ["SELECT version_num FROM alembic_version"]  # up to date: one query


STARTUP = """
import sys
from warning.storage import Store
sys.stdin.readline()
Store(sys.argv[1]).dispose()
print("ok", flush=True)
"""


def _start_together(url: str, n: int = 3) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", STARTUP, url], cwd=REPO, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "ok", err[-2000:]


def test_processes_starting_together_on_an_old_sqlite_database(tmp_path):
    db = tmp_path / "old.sqlite"
    inserted = old_sqlite_db(SQLITE_SCHEMAS[3], db)
    _start_together(f"sqlite:///{db}")
    assert_current_schema(f"sqlite:///{db}", f"sqlite:///{tmp_path / 'fresh.sqlite'}")
    assert_rows_kept(f"sqlite:///{db}", inserted)


# --------------------------------------------------------------------------- PostgreSQL
def _pg_rows(url: str) -> dict[str, dict]:
    """ROWS in a PostgreSQL database of a historic schema (times as aware datetimes), and an
    APScheduler job table."""
    engine = create_engine(url)
    meta = MetaData()
    inserted = {}
    with engine.begin() as c:
        for table, row in ROWS.items():
            t = Table(table, meta, autoload_with=c)
            row = {k: v for k, v in row.items() if k in t.c}
            c.execute(insert(t), {k: datetime.fromisoformat(v + "+00:00") if k in TIME_COLUMNS
                                  else json.loads(v) if isinstance(t.c[k].type, JSON) else v
                                  for k, v in row.items()})
            inserted[table] = row
        c.execute(text("CREATE TABLE scheduler_jobs (id VARCHAR(191) PRIMARY KEY, next_run_time FLOAT, "
                       "job_state BYTEA NOT NULL)"))
    engine.dispose()
    return inserted


@pytest.mark.postgres
def test_postgres_new_database_upgrades_to_head(pg_url, tmp_path, _pg_admin):
    cfg = site_config(tmp_path, pg_url)
    assert "from no revision" in cli("db", "upgrade", "--config", str(cfg))
    assert "nothing to do" in cli("db", "upgrade", "--config", str(cfg))
    fresh = _fresh_pg_schema(_pg_admin)
    try:
        assert_current_schema(pg_url, fresh)
    finally:
        _drop_pg_schema(_pg_admin, fresh)


@pytest.mark.postgres
@pytest.mark.parametrize("name", ["2026-11-27_e260a1c", "2026-12-05_54d0ce3"])
def test_postgres_old_schema_upgrades_keeping_rows(name, pg_url, tmp_path, _pg_admin):
    engine = create_engine(pg_url)
    with engine.begin() as c:
        c.exec_driver_sql((SCHEMAS / f"{name}.postgresql.sql").read_text())
    engine.dispose()
    inserted = _pg_rows(pg_url)
    _start_together(pg_url, 2)  # two services starting at once upgrade it once
    fresh = _fresh_pg_schema(_pg_admin)
    try:
        assert_current_schema(pg_url, fresh)
    finally:
        _drop_pg_schema(_pg_admin, fresh)
    assert_rows_kept(pg_url, inserted)
    cfg = site_config(tmp_path, pg_url)
    assert "nothing to do" in cli("db", "upgrade", "--config", str(cfg))


def _fresh_pg_schema(admin) -> str:
    import uuid

    schema = f"fwfresh_{uuid.uuid4().hex[:12]}"
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = admin.url.update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


def _drop_pg_schema(admin, url: str) -> None:
    schema = url.split("search_path%3D")[-1] if "search_path%3D" in url else url.split("search_path=")[-1]
    with admin.begin() as c:
        c.execute(text(f'DROP SCHEMA "{schema.split("&")[0]}" CASCADE'))
