"""Backup and restore of a site: its database, its published output and its config.

A backup is one ``.tar.gz`` file:

- ``manifest.json``: the format, the schema revision, the floodwarn version, when it was
  made, the database backend, the row count of every table, and what it leaves out;
- ``db/<table>.jsonl``: every row of every table, one JSON object a line (datetimes as ISO
  8601 UTC). The dump is portable: a backup of SQLite restores into PostgreSQL and back;
- ``output/...``: the published output folder (notices, feed, maps, the SMS log), without
  the database file, the terrain cache (``floodwarn prepare`` makes it again) and key files;
- ``config/...``: the site's configuration file and its zones file.

What is never in a backup: the secrets, which live in the environment
(``FLOODWARN_SECRET_KEY``, the Twilio credentials, ...). Subscribers' phone numbers are
stored encrypted with ``FLOODWARN_SECRET_KEY`` (see :class:`warning.subscribers.PhoneVault`)
and are copied encrypted, so a restored database can text residents only where that same
key is set. No phone number is ever written in clear.

The rows are read in one consistent snapshot: on SQLite from a copy taken with SQLite's
online backup API, on PostgreSQL in one ``REPEATABLE READ`` read-only transaction.
"""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import Integer, Table, create_engine, func, insert, inspect, select, text
from sqlalchemy.engine import Connection, Engine, make_url

from .errors import FloodwarnError
from .migrations import current_revision, head_revision, known_revisions, upgrade
from .storage import Base, UTCDateTime, engine_for

FORMAT = "floodwarn-backup/1"

SECRETS_NOTE = ("Secrets are not in the backup: FLOODWARN_SECRET_KEY, the Twilio credentials and "
                "any other *_FILE or environment secret stay with the site. Phone numbers are "
                "kept encrypted with FLOODWARN_SECRET_KEY: a restored database can text "
                "residents only where that same key is set.")

#: folders of the output directory left out: made again by ``floodwarn prepare``
SKIPPED_FOLDERS = ("cache", "tiles")
#: file names left out of the output directory (keys are secrets)
SKIPPED_SUFFIXES = (".key",)

_CHUNK = 1000


@dataclass
class BackupResult:
    """What went into a backup."""

    path: Path
    revision: str
    tables: dict[str, int]
    output_files: int
    config_files: list[str]
    skipped: list[str] = field(default_factory=list)


@dataclass
class RestoreResult:
    """What a restore did: the backup's revision and the one the database ends at."""

    backup_revision: str
    revision: str | None
    tables: dict[str, int]
    output_files: int
    config_files: list[str]


def floodwarn_version() -> str:
    try:
        return metadata.version("floodwarn")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


# --------------------------------------------------------------------------- rows
def _encode(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in row.items():
        if isinstance(value, datetime):
            value = value.astimezone(UTC).isoformat()
        out[name] = value
    return out


def _decode(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    unknown = set(row) - set(table.columns.keys())
    if unknown:
        raise FloodwarnError(f"the backup's table {table.name} has columns this floodwarn does not "
                             f"know ({', '.join(sorted(unknown))}); restore it with the version that "
                             "made it")
    out = dict(row)
    for name, value in row.items():
        if value is not None and isinstance(table.c[name].type, UTCDateTime):
            out[name] = datetime.fromisoformat(value)
    return out


def table_rows(conn: Connection, table: Table) -> Iterator[dict[str, Any]]:
    """Every row of ``table`` as a dict, in primary-key order (typed: aware datetimes, JSON
    as Python values)."""
    for row in conn.execute(select(table).order_by(*table.primary_key.columns)).mappings():
        yield dict(row)


def _counts(conn: Connection) -> dict[str, int]:
    present = set(inspect(conn).get_table_names())
    return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
            for t in Base.metadata.sorted_tables if t.name in present}


# --------------------------------------------------------------------------- backup
def _snapshot(engine: Engine, folder: Path) -> Engine:
    """SQLite: an engine on a consistent copy of the database in ``folder``, taken with
    SQLite's online backup API (writers may go on meanwhile)."""
    copy = folder / "snapshot.sqlite"
    src = sqlite3.connect(engine.url.database)
    dst = sqlite3.connect(copy)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return create_engine(f"sqlite:///{copy}")


def _output_files(cfg: Any, dest: Path) -> tuple[list[Path], list[str]]:
    """The files of the output folder to keep, and what was left out (folders, files)."""
    root = cfg.output_dir
    if not root.is_dir():
        return [], []
    db = make_url(cfg.db_url)
    db_file = Path(db.database).resolve() if db.get_backend_name() == "sqlite" and db.database else None
    db_names = {f"{db_file.name}{s}" for s in ("", "-wal", "-shm", "-journal")} if db_file else set()
    keep, skipped = [], set()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts[0] in SKIPPED_FOLDERS:
            skipped.add(f"{rel.parts[0]}/ (terrain cache, made again by 'floodwarn prepare')")
            continue
        if not p.is_file():
            continue
        if p.resolve() == dest.resolve():
            continue
        if db_file is not None and p.parent.resolve() == db_file.parent and p.name in db_names:
            continue  # the database is in db/
        if p.suffix in SKIPPED_SUFFIXES:
            skipped.add(f"{rel} (a key: a secret)")
            continue
        keep.append(p)
    return keep, sorted(skipped)


def _config_files(cfg: Any, config_path: Path) -> list[Path]:
    files = [Path(config_path).resolve()]
    zones = cfg.path(cfg.site.zones)
    if zones.is_file():
        files.append(zones)
    return files


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), mtime, 0o644
    tar.addfile(info, io.BytesIO(data))


def backup(cfg: Any, config_path: Path, dest: Path, *,
           clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> BackupResult:
    """Write a backup of the site (see the module's text) to ``dest``.

    Parameters
    ----------
    cfg : Config
        The site's configuration (its ``db_url`` and ``output_dir``).
    config_path : Path
        The configuration file itself, copied into the backup.
    dest : Path
        The ``.tar.gz`` to write (replaced if it exists).
    clock : callable, optional
        Returns the time written in the manifest.
    """
    from .storage import Store

    store = Store(cfg.db_url)  # brings the schema to the newest revision first
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    made = clock()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            snap = _snapshot(store.engine, folder) if store.dialect == "sqlite" else None
            engine = snap or store.engine
            try:
                with engine.connect() as conn:
                    if snap is None:
                        conn = conn.execution_options(isolation_level="REPEATABLE READ")
                        conn.execute(text("SET TRANSACTION READ ONLY"))
                    revision = current_revision(conn)
                    counts: dict[str, int] = {}
                    for table in Base.metadata.sorted_tables:
                        n = 0
                        with open(folder / f"{table.name}.jsonl", "w", encoding="utf-8") as fh:
                            for row in table_rows(conn, table):
                                fh.write(json.dumps(_encode(table, row), ensure_ascii=False) + "\n")
                                n += 1
                        counts[table.name] = n
                    conn.rollback()
            finally:
                if snap is not None:
                    snap.dispose()
            outputs, skipped = _output_files(cfg, dest)
            configs = _config_files(cfg, config_path)
            manifest = {"format": FORMAT, "revision": revision, "floodwarn_version": floodwarn_version(),
                        "created": made.astimezone(UTC).isoformat(), "backend": store.dialect,
                        "tables": counts, "output_files": len(outputs),
                        "config_files": [p.name for p in configs], "not_included": skipped,
                        "secrets": SECRETS_NOTE}
            partial = dest.with_name(dest.name + ".partial")
            with tarfile.open(partial, "w:gz") as tar:
                ts = made.timestamp()
                _add_bytes(tar, "manifest.json", json.dumps(manifest, indent=2).encode(), ts)
                for table in Base.metadata.sorted_tables:
                    tar.add(folder / f"{table.name}.jsonl", arcname=f"db/{table.name}.jsonl")
                for p in outputs:
                    tar.add(p, arcname=f"output/{p.relative_to(cfg.output_dir).as_posix()}")
                for p in configs:
                    tar.add(p, arcname=f"config/{p.name}")
            partial.replace(dest)
    finally:
        store.dispose()
    return BackupResult(dest, revision, counts, len(outputs), [p.name for p in configs], skipped)


# --------------------------------------------------------------------------- restore
def read_manifest(archive: Path) -> dict[str, Any]:
    """The manifest of a backup, checked to be one."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
    except (OSError, tarfile.TarError, KeyError, ValueError) as exc:
        raise FloodwarnError(f"{archive} is not a floodwarn backup ({exc}); make one with "
                             "'floodwarn db backup'") from None
    if manifest.get("format") != FORMAT:
        raise FloodwarnError(f"{archive} is a backup in format {manifest.get('format')!r}; this floodwarn "
                             f"reads {FORMAT!r}")
    return manifest


def _safe_member(name: str, prefix: str) -> PurePosixPath | None:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not name.startswith(prefix):
        return None
    return PurePosixPath(*p.parts[1:])


def _clear(conn: Connection) -> None:
    """Drop floodwarn's tables and the version table (the database is rebuilt from the backup)."""
    Base.metadata.drop_all(conn)
    present = set(inspect(conn).get_table_names())
    for name in ("alembic_version", "scheduler_jobs"):
        if name in present:
            conn.execute(text(f"DROP TABLE {name}"))


def _reset_sequences(conn: Connection) -> None:
    """PostgreSQL: move each serial id's sequence past the ids restored."""
    for table in Base.metadata.sorted_tables:
        pk = list(table.primary_key.columns)
        if len(pk) == 1 and isinstance(pk[0].type, Integer):
            col = pk[0].name
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', '{col}'), "
                              f"COALESCE((SELECT MAX({col}) FROM {table.name}), 0) + 1, false)"))


def restore(cfg: Any, archive: Path, *, force: bool = False,
            config_dir: Path | None = None) -> RestoreResult:
    """Restore a backup into the site's database and output folder.

    Refuses a database that holds rows (unless ``force``: its tables are then dropped and
    made again) and a backup from a schema revision newer than this floodwarn knows. A
    backup from an older revision is loaded at its revision, then upgraded. Row counts are
    checked against the manifest.

    Parameters
    ----------
    cfg : Config
        The site's configuration: where the database and the output folder are.
    archive : Path
        The backup (``floodwarn db backup``).
    force : bool
        Replace the contents of a database that is not empty.
    config_dir : Path, optional
        Where to write the backup's config files; None leaves them in the backup.
    """
    archive = Path(archive)
    manifest = read_manifest(archive)
    rev = manifest["revision"]
    known = known_revisions()
    if rev not in known:
        raise FloodwarnError(f"the backup is at schema revision {rev}, which this floodwarn "
                             f"({floodwarn_version()}, newest revision {head_revision()}) does not know: "
                             f"restore it with floodwarn {manifest.get('floodwarn_version')} or newer")
    engine = engine_for(cfg.db_url)
    try:
        with engine.connect() as conn:
            held = {t: n for t, n in _counts(conn).items() if n}
        if held and not force:
            rows = sum(held.values())
            raise FloodwarnError(
                f"the database {make_url(cfg.db_url).render_as_string()} is not empty ({rows} rows in "
                f"{len(held)} tables, e.g. {', '.join(sorted(held)[:3])}); restore into an empty "
                "database, or give --force to replace everything in it with the backup")
        with engine.begin() as conn:
            _clear(conn)
        upgrade(engine, rev)
        tables = {t.name: t for t in Base.metadata.sorted_tables}
        with tarfile.open(archive, "r:gz") as tar, engine.begin() as conn:
            for table in Base.metadata.sorted_tables:
                try:
                    fh = tar.extractfile(f"db/{table.name}.jsonl")
                except KeyError:
                    continue
                batch: list[dict[str, Any]] = []
                for line in io.TextIOWrapper(fh, encoding="utf-8"):
                    batch.append(_decode(tables[table.name], json.loads(line)))
                    if len(batch) >= _CHUNK:
                        conn.execute(insert(table), batch)
                        batch = []
                if batch:
                    conn.execute(insert(table), batch)
            if conn.dialect.name == "postgresql":
                _reset_sequences(conn)
            counts = _counts(conn)
            wrong = {t: (counts.get(t), n) for t, n in manifest["tables"].items() if counts.get(t) != n}
            if wrong:  # raising rolls the rows back
                raise FloodwarnError("the restored row counts differ from the backup's: " + ", ".join(
                    f"{t} {got} instead of {want}" for t, (got, want) in sorted(wrong.items())))
        _before, after = upgrade(engine)
    finally:
        engine.dispose()
    outputs, configs = 0, []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            rel = _safe_member(member.name, "output/")
            if rel is not None:
                target = cfg.output_dir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
                outputs += 1
                continue
            rel = _safe_member(member.name, "config/")
            if rel is not None:
                configs.append(str(rel))
                if config_dir is not None:
                    target = Path(config_dir) / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(member).read())
    return RestoreResult(rev, after, dict(manifest["tables"]), outputs, configs)
