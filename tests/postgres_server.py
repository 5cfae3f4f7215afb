"""A throwaway PostgreSQL server for tests, and scratch databases on any server.

The server is Debian's packaged binaries run on a data directory in a temporary directory,
listening only on a Unix socket in that directory (no TCP at all), with `trust` auth: only
the directory's owner (and root) can reach the socket. Durability is switched off, since the
data dies with the test session anyway.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from sqlalchemy import URL, create_engine, make_url, text

from hearth.waiting import wait_for

DEBIAN_BINDIRS = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"  # initdb and postgres refuse to run as root
START_TIMEOUT = 60.0


def find_bindir() -> Path | None:
    """The newest of Debian's /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl."""
    found = [
        d
        for d in DEBIAN_BINDIRS.glob("*/bin")
        if d.parent.name.isdigit() and (d / "initdb").exists() and (d / "pg_ctl").exists()
    ]
    return max(found, key=lambda d: int(d.parent.name), default=None)


class PostgresServer:
    """One postmaster on its own data directory; `url` reaches its `postgres` database."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="hearth-pg-"))  # short: socket paths are <108
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.url = URL.create(
            "postgresql+psycopg",
            username=SERVER_USER,
            database="postgres",
            query={"host": str(self.root)},
        )

    def __enter__(self) -> PostgresServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, tool: str, *args: str) -> None:
        """Run a server tool as the server's user; the tool's output is in the error if it fails."""
        command = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(
            command, cwd=self.root, stdin=subprocess.DEVNULL, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")

    def start(self) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            SERVER_USER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "listen_addresses = ''\n"
                f"unix_socket_directories = '{self.root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
        # -W: return at once; readiness is polled below, against a deadline.
        self._run("pg_ctl", "--pgdata", str(self.data), "--log", str(self.log), "-W", "start")
        try:
            wait_for(self._ready, START_TIMEOUT, f"PostgreSQL to accept connections in {self.root}")
        except TimeoutError as e:
            raise RuntimeError(f"{e}; server log:\n{self._log_tail()}") from e

    def _ready(self) -> bool:
        probe = [str(self.bindir / "pg_isready"), "--quiet", "--host", str(self.root)]
        return subprocess.run(probe, stdin=subprocess.DEVNULL).returncode == 0

    def _log_tail(self) -> str:
        return self.log.read_text()[-4000:] if self.log.exists() else "(no log)"

    def close(self) -> None:
        """Stop the postmaster this server started (by the PID in its data dir), remove files."""
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "--pgdata", str(self.data), "--mode", "fast", "--wait", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def scratch_database(server_url: str | URL) -> Iterator[str]:
    """A new, randomly named database on the server, dropped on exit; yields its URL.

    `server_url` names any database the user can connect to and create databases from. A
    plain `postgresql://` URL is taken to mean psycopg 3, the driver Hearth's tests install.
    """
    url = make_url(server_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    name = f"hearth_test_{secrets.token_hex(6)}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
