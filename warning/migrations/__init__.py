"""Schema migrations (Alembic), run from code: no ``alembic.ini`` needed.

The revisions live in ``versions/`` beside this file; the database records its revision
in the ``alembic_version`` table. :func:`upgrade` brings any floodwarn database to the
newest revision, including one made before there was a version table (the baseline
revision adopts it, keeping every row). :class:`warning.storage.Store` calls
:func:`ensure_schema` at start-up: one ``SELECT`` when the database is up to date.

Two processes starting together on one database do not race: on PostgreSQL the upgrade
runs in one transaction under an advisory lock; on SQLite in one ``BEGIN IMMEDIATE``
transaction, which holds the write lock (the second process waits, then finds the schema
up to date). SQLite upgrades run on a connection of their own with
``PRAGMA foreign_keys=OFF``, as rebuilding a table requires.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

#: PostgreSQL advisory lock key held while the schema is made or migrated
SCHEMA_LOCK = 0x666C6F6F64  # "flood"


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config pointing at this package's revisions; ``connection`` is what the
    revisions run on (``env.py`` takes it from ``config.attributes``)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def head_revision() -> str:
    """The newest revision this floodwarn knows."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def known_revisions() -> list[str]:
    """Every revision this floodwarn knows, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def current_revision(conn: Connection) -> str | None:
    """The database's revision; None when it has no version table (new, or made before
    floodwarn kept one)."""
    from sqlalchemy import inspect

    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _quick_revision(engine: Engine) -> str | None:
    """The revision in one query, or None if there is no version table (the query fails)."""
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:
        return None


def _is_memory(url) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


@contextmanager
def locked_connection(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that holds the schema lock (see the module's text);
    committed when the block ends, rolled back if it raises."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and not _is_memory(url):
        # a connection of our own: the store's engine turns foreign keys on, and the
        # driver's own transaction handling is off so BEGIN IMMEDIATE is ours to send
        own = create_engine(url, poolclass=NullPool,
                            connect_args={"isolation_level": None, "timeout": 60})
        try:
            with own.connect() as conn:
                conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
        finally:
            own.dispose()
        return
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
        yield conn


def upgrade(engine: Engine, target: str = "head") -> tuple[str | None, str | None]:
    """Upgrade the database to ``target`` (default the newest revision) under the schema
    lock; returns the revisions before and after (the same when there was nothing to do)."""
    with locked_connection(engine) as conn:
        before = current_revision(conn)
        goal = head_revision() if target == "head" else target
        if before != goal:
            log.info("upgrading the database schema from %s to %s", before or "no revision", goal)
            command.upgrade(alembic_config(conn), target)
        after = current_revision(conn)
    return before, after


def ensure_schema(engine: Engine) -> tuple[str | None, str | None] | None:
    """Upgrade the database to the newest revision if it is not there already; None when it
    was (one query: start-up stays fast), else the revisions before and after."""
    if _quick_revision(engine) == head_revision():
        return None
    return upgrade(engine)


def url_of(engine: Engine) -> str:
    """The engine's URL with its password, to give to another process."""
    return make_url(engine.url).render_as_string(hide_password=False)
