"""``floodwarn db backup`` and ``db restore``: a site after a storm cycle (alerts, outbox,
a subscriber, published notices and feed) backed up and restored into a fresh SQLite
database and a PostgreSQL one, table by table and row by row; a database that holds rows
is refused; a backup from a newer schema is refused; no phone number is in the backup in
clear."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from tests.conftest import Clock, demo_config_text
from warning.backup import table_rows
from warning.cli import app
from warning.config import load_config
from warning.migrations import head_revision
from warning.service import Service
from warning.storage import Base, Store, Subscriber

SECRET = "backup-test-secret"
PHONE = "+447700900123"  # the subscriber added through the CLI ("07700 900123")
STORM = datetime(2025, 11, 14, 15, 0, tzinfo=UTC)


def site_config(folder: Path, db_url: str | None = None) -> Path:
    body = re.sub(r'output_dir = "[^"]*"', f'output_dir = "{folder / "out"}"', demo_config_text())
    if db_url:
        body = f'database_url = "{db_url}"\n' + body
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "site.toml").write_text(body)
    return folder / "site.toml"


def cli(*args: str, ok: bool = True):
    res = CliRunner().invoke(app, list(args))
    if ok:
        assert res.exit_code == 0, res.output
    return res


def dump(url: str) -> dict[str, list[dict]]:
    """Every table's rows, typed (aware datetimes, JSON values), in primary-key order."""
    store = Store(url)
    try:
        with store.engine.connect() as conn:
            return {t.name: list(table_rows(conn, t)) for t in Base.metadata.sorted_tables}
    finally:
        store.dispose()


def published(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] not in ("cache", "tiles")
            and not p.name.startswith("floodwarn.sqlite") and p.suffix != ".key"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The demo site after one storm cycle and a dispatch, with a subscriber added through
    the CLI, and its backup: ``(config path, config, backup path, backup output)``."""
    folder = tmp_path_factory.mktemp("site")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOODWARN_SECRET_KEY", SECRET)
        for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"):
            mp.delenv(name, raising=False)
        path = site_config(folder)
        cfg = load_config(path)
        cli("subscribers", "add", "--config", str(path), "07700 900123", "-z", "MB-TOWN")
        svc = Service(cfg, clock=Clock(STORM))
        svc.site.prepare()
        assert svc.cycle(force=True).ok
        svc.dispatch()
        svc.shutdown()
        archive = folder / "backups" / "site.tar.gz"
        out = cli("db", "backup", "--config", str(path), str(archive)).output
    return path, cfg, archive, out


def test_backup_holds_every_table_the_files_and_says_what_it_leaves_out(site):
    _path, cfg, archive, out = site
    assert "FLOODWARN_SECRET_KEY" in out and "not in the backup" in out
    assert "cache/" in out  # the terrain cache is left out, and said so
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        names = set(tar.getnames())
    source = dump(cfg.db_url)
    assert manifest["revision"] == head_revision()
    assert manifest["tables"] == {t: len(rows) for t, rows in source.items()}
    assert manifest["tables"]["alerts"] > 0 and manifest["tables"]["outbox"] > 0
    assert manifest["tables"]["subscribers"] == 1
    assert datetime.fromisoformat(manifest["created"]).tzinfo is not None
    assert {f"db/{t}.jsonl" for t in source} <= names
    assert {f"output/{p}" for p in published(cfg.output_dir)} <= names
    assert "config/site.toml" in names and "config/zones.geojson" in names
    assert not any(n.startswith("output/cache/") or n.endswith(".key") or "floodwarn.sqlite" in n
                   for n in names)


def test_backup_has_no_phone_number_in_clear(site):
    _path, _cfg, archive, _out = site
    raw = archive.read_bytes()
    tar_bytes = gzip.decompress(raw)
    for form in (PHONE, PHONE[1:], "07700 900123", "7700900123", "07700900123"):
        assert form.encode() not in raw and form.encode() not in tar_bytes, form
    # the number is there, encrypted: the same key decrypts it
    from warning.subscribers import PhoneVault

    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        rows = [json.loads(line) for line in tar.extractfile("db/subscribers.jsonl")]
    assert PhoneVault(SECRET).decrypt(rows[0]["phone_enc"]) == PHONE


def _restore_and_compare(site, folder: Path, db_url: str | None = None) -> None:
    _path, cfg, archive, _out = site
    target = site_config(folder, db_url)
    out = cli("db", "restore", "--config", str(target), str(archive)).output
    assert "row counts checked" in out and "FLOODWARN_SECRET_KEY" in out
    tcfg = load_config(target)
    assert dump(tcfg.db_url) == dump(cfg.db_url)  # table by table, row by row
    assert published(tcfg.output_dir) == published(cfg.output_dir)
    # the restored database works: the subscriber is there, and new rows get new ids
    store = Store(tcfg.db_url)
    with store.session.begin() as s:
        assert s.scalar(select(Subscriber.zones)) == ["MB-TOWN"]
        s.add(Subscriber(phone_hash="x" * 64, phone_enc="e", zones=["*"], consent_source="test",
                         consent_time=STORM))
    store.dispose()
    # a second restore into it is refused, and changes nothing
    before = dump(tcfg.db_url)
    res = cli("db", "restore", "--config", str(target), str(archive), ok=False)
    assert res.exit_code == 1
    assert "not empty" in res.output and "--force" in res.output
    assert dump(tcfg.db_url) == before
    # --force replaces the contents with the backup's
    cli("db", "restore", "--config", str(target), str(archive), "--force")
    assert dump(tcfg.db_url) == dump(cfg.db_url)


def test_restore_into_a_fresh_sqlite_database(site, tmp_path):
    _restore_and_compare(site, tmp_path / "restored")


@pytest.mark.postgres
def test_restore_into_postgres(site, tmp_path, pg_url):
    _restore_and_compare(site, tmp_path / "restored", pg_url)


def test_restore_refuses_a_backup_from_a_newer_schema(site, tmp_path):
    _path, _cfg, archive, _out = site
    newer = tmp_path / "newer.tar.gz"
    with tarfile.open(archive) as src, tarfile.open(newer, "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name == "manifest.json":
                data = json.dumps(dict(json.loads(data), revision="9999", floodwarn_version="9.0")).encode()
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    target = site_config(tmp_path / "t")
    res = cli("db", "restore", "--config", str(target), str(newer), ok=False)
    assert res.exit_code == 1
    assert "9999" in res.output and "does not know" in res.output and "9.0" in res.output
    assert not os.path.exists(tmp_path / "t" / "out" / "cap")
