"""Fixtures shared by every test folder."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Engine

from hearth.store.db import Database
from tests.packages import PREFIX, STRICT_ENV, missing
from tests.postgres_server import PostgresServer, find_bindir, scratch_database

# The tests' settings are their own: never a configuration file of this machine's
# (/etc/hearth/hearth.toml). Processes the tests start inherit it.
os.environ["HEARTH_CONFIG"] = os.devnull
# The warm pool boots browser VMs in the background of every controller that serves the API:
# tests that are not about it (and the controllers they start) run without one; the pool's
# tests turn it on in their own settings.
os.environ.setdefault("HEARTH_POOL_BROWSER", "0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Where every package should be installed (STRICT_ENV), a skip for a missing one fails."""
    report = (yield).get_result()
    if report.skipped and os.environ.get(STRICT_ENV) and isinstance(report.longrepr, tuple):
        reason = report.longrepr[2]
        if PREFIX in reason:
            report.outcome = "failed"
            report.longrepr = (
                f"{reason}: scripts/bootstrap.sh should have installed it ({STRICT_ENV} is set)"
            )


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A PostgreSQL server for the session: $HEARTH_TEST_POSTGRES_URL, else one started here."""
    if url := os.environ.get("HEARTH_TEST_POSTGRES_URL"):
        yield url
        return
    bindir = find_bindir()
    if bindir is None:
        pytest.skip(missing("postgresql", "the server binaries"))
    with PostgresServer(bindir) as server:
        yield server.url.render_as_string()


@pytest.fixture(
    scope="session", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A database URL on each backend Hearth supports, so store tests run on both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'hearth.db'}"
        return
    with scratch_database(request.getfixturevalue("postgres_server_url")) as url:
        yield url


def drop_everything(engine: Engine) -> None:
    """Empty the database, so each test starts from no schema at all."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        else:
            tables = MetaData()
            tables.reflect(conn)
            tables.drop_all(conn)


@pytest.fixture
def empty_db(database_url: str) -> Iterator[Database]:
    """A Database on an empty schema, not yet migrated."""
    database = Database(database_url)
    drop_everything(database.engine)
    yield database
    database.engine.dispose()


@pytest.fixture
def db(empty_db: Database) -> Database:
    """A Database migrated to head, on a clean schema of its own."""
    empty_db.migrate()
    return empty_db
