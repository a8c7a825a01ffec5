"""Shared fixtures: the repository, ../shared beside it, a demo config in a temp folder,
and databases: ``pg_url`` (a fresh PostgreSQL schema, when a server is configured) and
``db_url`` (each database test once on SQLite and once on PostgreSQL)."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

# make test runs two pytest-xdist workers: each keeps its own Numba cache, so one worker never
# loads a cached kernel (ours or a peer library's) while the other is still writing it (seen
# as a KeyError in pysheds' cached priority flood). Set before anything imports Numba.
if os.environ.get("PYTEST_XDIST_WORKER") and "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = str(Path(tempfile.gettempdir()) /
                                        f"floodwarn-numba-cache-{os.environ['PYTEST_XDIST_WORKER']}")

import pytest  # noqa: E402

try:  # psycopg's bundled libraries first, whatever a test imports (see warning.ingest.grid_sources.import_grib)
    import psycopg  # noqa: F401
except ImportError:
    pass

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEMO_CONFIG = REPO / "config" / "demo.toml"
#: a PostgreSQL database the tests may use (each test gets a schema of its own in it), e.g.
#: postgresql+psycopg://floodwarn:floodwarn@127.0.0.1:5432/floodwarn; .ci/run sets it
PG_ENV = "FLOODWARN_TEST_POSTGRES_URL"


def demo_config_text() -> str:
    """The demo config's TOML with its relative paths made absolute, to write elsewhere."""
    return DEMO_CONFIG.read_text().replace('"../', f'"{REPO}/')


def console_login(client, name: str, password: str, **kwargs):
    """Sign in to the console as a browser does: fetch the sign-in form (its pre-session
    cookie and token), then post it. Returns the POST's response."""
    import re

    form = client.get("/console/login")
    token = re.search(r'action="/console/login">\s*<input type="hidden" name="csrf" value="([0-9a-f]+)"', form.text)
    assert token is not None, form.text
    return client.post("/console/login", data={"name": name, "password": password, "csrf": token.group(1)},
                       **kwargs)


def shared_path(*parts: str) -> Path:
    """A file in ../shared, or skip the test with the reason when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not found: the shared data folder must sit beside the repository")
    return p


def prepared_demo_site(folder: Path):
    """The demo site's config written into ``folder`` (outputs there too), its terrain
    prepared: ``(folder, config)``, for module fixtures that replay it."""
    import re

    from warning.config import load_config
    from warning.site import Site

    text = re.sub(r'output_dir = "[^"]*"', f'output_dir = "{folder / "out"}"', demo_config_text())
    (folder / "site.toml").write_text(text)
    cfg = load_config(folder / "site.toml")
    Site.load(cfg).prepare()
    return folder, cfg


def hupsel_config(folder: Path):
    """The Hupsel gauge site's config with its outputs in ``folder`` (skips without the
    shared record)."""
    from warning.config import load_config

    shared_path("data", "storms", "hupsel_hourly", "PEQ_Hupsel.dat")
    cfg = load_config(REPO / "sites" / "hupsel" / "site.toml")
    return cfg.model_copy(update={"site": cfg.site.model_copy(update={"output_dir": folder / "out"})})


class Clock:
    """A clock the test sets by hand: ``clock.t = ...``; calling it returns ``t``."""

    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def demo_cfg(tmp_path):
    """The demo configuration with its outputs redirected to a temporary folder."""
    from warning.config import load_config

    cfg = load_config(DEMO_CONFIG)
    site = cfg.site.model_copy(update={"output_dir": tmp_path / "out"})
    return cfg.model_copy(update={"site": site})


@pytest.fixture(scope="session")
def _pg_admin():
    """An engine on the test PostgreSQL database, or skip every PostgreSQL test with the reason."""
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"PostgreSQL tests need a server: {PG_ENV} is not set (.ci/run starts one and sets "
                    f"it; or set it to postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB)")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is not installed (pip install -e .)")
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    engine = create_engine(url, pool_pre_ping=True)
    try:
        with engine.connect() as c:
            c.execute(text("SELECT 1"))
    except OperationalError as exc:
        engine.dispose()
        pytest.skip(f"PostgreSQL at {PG_ENV} is unreachable: {str(exc).splitlines()[0]}")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url(_pg_admin):
    """The URL of a fresh, empty PostgreSQL schema (dropped after the test): the test
    database's URL with ``search_path`` set, so other processes given it see the same tables."""
    from sqlalchemy import text

    schema = f"fwtest_{uuid.uuid4().hex[:12]}"
    with _pg_admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = _pg_admin.url.update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with _pg_admin.begin() as c:
        c.execute(text("SET LOCAL lock_timeout = '20s'"))
        c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """A fresh database URL: a SQLite file, then a PostgreSQL schema (skipped without a server)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fw.db"
    return request.getfixturevalue("pg_url")


def pytest_collection_modifyitems(config, items):
    """Mark every test that talks to PostgreSQL (``pg_url``, or ``db_url`` on postgres):
    ``make test`` runs them in a pytest process of their own (see the Makefile)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = "pg_url" in item.fixturenames or (
            "db_url" in item.fixturenames and callspec is not None and callspec.params.get("db_url") == "postgres")
        if on_postgres:
            item.add_marker(pytest.mark.postgres)
