"""Engine, sessions and migrations. SQLite by default, PostgreSQL in production."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, make_url
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str) -> Engine:
    """An engine whose errors and logs never show row values: rows hold agent tokens."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)


def shown_url(url: str) -> str:
    """The database URL as messages may show it: its password hidden."""
    return make_url(url).render_as_string(hide_password=True)


def connect_failure(error: SQLAlchemyError) -> str:
    """What the driver said when it could not connect or query: its first line, which names
    the server and the cause but never the URL's password."""
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    """The newest migration this Hearth ships."""
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def known_revisions() -> set[str]:
    """Every migration this Hearth ships."""
    scripts = ScriptDirectory.from_config(_alembic_config())
    return {script.revision for script in scripts.walk_revisions()}


def schema_revision(engine: Engine) -> str | None:
    """The migration the database is at; None for a database with no schema yet."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine, revision: str = "head") -> Migrated:
    """Bring the schema to `revision` (the newest migration unless told otherwise)."""
    cfg = _alembic_config()
    with engine.begin() as conn:
        before = MigrationContext.configure(conn).get_current_revision()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        after = MigrationContext.configure(conn).get_current_revision()
    return Migrated(before, after)


@dataclass(frozen=True)
class Migrated:
    """Which revision a migration started from (None: an empty database) and ended at."""

    before: str | None
    after: str | None


class Database:
    def __init__(self, url: str):
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    def migrate(self, revision: str = "head") -> Migrated:
        return migrate(self.engine, revision)

    def session(self) -> Session:
        return self.sessions()

    def update(self, model: type, key: str, **fields) -> None:
        """Set fields of one row, in a transaction of its own."""
        with self.session() as s:
            row = s.get(model, key)
            for name, value in fields.items():
                setattr(row, name, value)
            s.commit()
