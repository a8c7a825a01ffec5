"""``floodwarn db ...``: the database's schema revision, upgrades, backup and restore."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .cli import ConfigOpt, _friendly, app, console

db_app = typer.Typer(help="The database: schema revision and upgrades, backup and restore.",
                     no_args_is_help=True)
app.add_typer(db_app, name="db")


def _revision_words(rev: str | None) -> str:
    return f"revision {rev}" if rev else "no revision (a new database, or one made before floodwarn kept one)"


@db_app.command("upgrade")
@_friendly
def db_upgrade(config: ConfigOpt) -> None:
    """Bring the database's schema to the newest revision, keeping every row (the service
    also does this when it starts)."""
    from .config import load_config
    from .migrations import upgrade
    from .storage import engine_for

    cfg = load_config(config)
    engine = engine_for(cfg.db_url)
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    if before == after:
        console.print(f"the database is already at the newest revision, {after}: nothing to do")
    else:
        console.print(f"upgraded the database from {_revision_words(before)} to revision {after}")


def _status(config: Path) -> None:
    from .config import load_config
    from .migrations import current_revision, head_revision
    from .storage import engine_for

    cfg = load_config(config)
    engine = engine_for(cfg.db_url)
    try:
        with engine.connect() as conn:
            rev = current_revision(conn)
    finally:
        engine.dispose()
    head = head_revision()
    if rev == head:
        console.print(f"the database is at revision {rev}, the newest: up to date")
    else:
        console.print(f"the database is at {_revision_words(rev)}; the newest is {head}: "
                      "run 'floodwarn db upgrade' (or start the service) to bring it up to date")


@db_app.command("current")
@_friendly
def db_current(config: ConfigOpt) -> None:
    """Show the database's schema revision and whether it is up to date."""
    _status(config)


@db_app.command("status")
@_friendly
def db_status(config: ConfigOpt) -> None:
    """The same as 'floodwarn db current'."""
    _status(config)


@db_app.command("backup")
@_friendly
def db_backup(config: ConfigOpt,
              file: Annotated[Path, typer.Argument(help="the backup to write (.tar.gz)")]) -> None:
    """Back up the database (every table, portable between SQLite and PostgreSQL), the
    published output folder and the site's config files into one file."""
    from .backup import SECRETS_NOTE, backup
    from .config import load_config

    cfg = load_config(config)
    res = backup(cfg, config, file)
    rows = sum(res.tables.values())
    console.print(f"backed up {rows} rows in {len(res.tables)} tables (schema revision {res.revision}), "
                  f"{res.output_files} published files and the config ({', '.join(res.config_files)}) "
                  f"to {res.path}", soft_wrap=True)
    for what in res.skipped:
        console.print(f"  not included: {what}", highlight=False, soft_wrap=True)
    console.print(SECRETS_NOTE, soft_wrap=True)


@db_app.command("restore")
@_friendly
def db_restore(config: ConfigOpt,
               file: Annotated[Path, typer.Argument(help="a backup made by 'floodwarn db backup'")],
               force: Annotated[bool, typer.Option(
                   help="replace the contents of a database that is not empty")] = False,
               config_dir: Annotated[Path | None, typer.Option(
                   help="write the backup's config files into this folder")] = None) -> None:
    """Restore a backup into the config's database (which must be empty, unless --force)
    and its output folder; an older backup is upgraded to the newest schema revision."""
    from .backup import SECRETS_NOTE, restore
    from .config import load_config

    cfg = load_config(config)
    res = restore(cfg, file, force=force, config_dir=config_dir)
    rows = sum(res.tables.values())
    upgraded = (f", then upgraded to revision {res.revision}" if res.revision != res.backup_revision else "")
    console.print(f"restored {rows} rows in {len(res.tables)} tables at schema revision "
                  f"{res.backup_revision}{upgraded} (row counts checked), and {res.output_files} "
                  f"published files into {cfg.output_dir}", soft_wrap=True)
    where = f"written to {config_dir}" if config_dir else "left in the backup (--config-dir to write them)"
    console.print(f"config files {', '.join(res.config_files)}: {where}", soft_wrap=True)
    console.print(SECRETS_NOTE, soft_wrap=True)
