"""A private PostgreSQL server for tests: `initdb` + `pg_ctl start` in a temporary folder.

Import the fixture into a test module (`from postgres_fixture import postgres`); pytest picks
up fixtures imported into a module's namespace. `postgres` (session scope) is one cluster for
the whole run: it listens only on a Unix socket in its own folder (no TCP port), trusts local
connections, and is stopped and deleted at the end. `postgres.create_database("name")` makes
a fresh database and returns its SQLAlchemy URL (psycopg 3 driver).

PostgreSQL refuses to run as root, so when the tests run as root the server binaries run as
the `postgres` system user (which the Debian package creates) with the folder given to it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN_ENV = "HSM_VAULT_TEST_PG_BIN"
SUPERUSER = "postgres"
MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: run 'make test' (it installs the "
    f"Debian package postgresql), or set {BIN_ENV} to the folder holding them."
)


def _bin_dir() -> Path:
    """The folder with initdb/pg_ctl: $HSM_VAULT_TEST_PG_BIN, the newest Debian one, or PATH."""
    candidates: list[Path] = []
    if os.environ.get(BIN_ENV):
        candidates.append(Path(os.environ[BIN_ENV]))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = [p for p in debian.iterdir() if p.name.isdigit()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: -int(p.name))]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    pytest.fail(MISSING, pytrace=False)


def _driver_installed() -> None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail(
            "the psycopg driver is missing: run 'make test' (it installs the test extras, "
            "psycopg[binary])",
            pytrace=False,
        )


@dataclass(frozen=True)
class PostgresCluster:
    """A running private cluster; connect through the Unix socket in `socket_dir`."""

    folder: Path
    bin_dir: Path
    as_owner: tuple[str, ...]

    @property
    def socket_dir(self) -> Path:
        return self.folder

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def url(self, database: str) -> str:
        """SQLAlchemy URL of `database` on this cluster (psycopg 3, Unix socket)."""
        return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.socket_dir}"

    def run(self, tool: str, *args: str) -> str:
        """Run a PostgreSQL program from the cluster's version as the cluster's owner."""
        done = subprocess.run(
            [*self.as_owner, str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            log = self.log.read_text()[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{done.stderr}{done.stdout}{log}")
        return done.stdout

    def psql(self, database: str, sql: str) -> str:
        """Run one SQL command; returns the rows unaligned, one a line, `|` between fields."""
        return self.run(
            "psql",
            "-h",
            str(self.socket_dir),
            "-U",
            SUPERUSER,
            "-d",
            database,
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        )

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database (a unique name unless given); returns its URL."""
        name = name or f"hsmvault_{uuid.uuid4().hex[:8]}"
        self.run("createdb", "-h", str(self.socket_dir), "-U", SUPERUSER, name)
        return self.url(name)

    def stop(self) -> None:
        try:
            self.run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        except (RuntimeError, subprocess.TimeoutExpired):
            self.run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")


def start_cluster(bin_dir: Path) -> PostgresCluster:
    """initdb a cluster in a new folder under the system temp folder and start it."""
    as_owner: tuple[str, ...] = ()
    # A short path in /tmp: Unix socket paths are limited to ~107 bytes, and pytest's tmp
    # folders (mode 0700, owned by root) would be out of reach of the postgres user.
    folder = Path(tempfile.mkdtemp(prefix="hsmv-pg-"))
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.fail("running as root, but runuser is missing to start PostgreSQL as postgres")
        try:
            shutil.chown(folder, user=SUPERUSER, group=None)
        except LookupError:
            shutil.rmtree(folder)
            pytest.fail(
                "running as root, but there is no 'postgres' system user to run PostgreSQL: "
                "run 'make test' (the Debian package postgresql creates it)",
                pytrace=False,
            )
        as_owner = (runuser, "-u", SUPERUSER, "--")
    cluster = PostgresCluster(folder, bin_dir, as_owner)
    try:
        cluster.run(
            "initdb",
            "-D",
            str(cluster.data_dir),
            "--auth=trust",
            f"--username={SUPERUSER}",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        # No TCP listener at all: only the socket in our private folder; fsync off (tests).
        options = f"-k {folder} -c listen_addresses= -F"
        start = ("-D", str(cluster.data_dir), "-l", str(cluster.log), "-o", options, "-w")
        cluster.run("pg_ctl", *start, "start")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return cluster


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A private PostgreSQL cluster for the test session; stopped and deleted at the end."""
    _driver_installed()
    cluster = start_cluster(_bin_dir())
    try:
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(cluster.folder, ignore_errors=True)
