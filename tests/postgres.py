"""A throwaway PostgreSQL cluster for tests: initdb in a temporary directory, on a free
port of 127.0.0.1, with trust authentication, stopped and deleted afterwards.

PostgreSQL refuses to run as root, and the tests run as root here: the cluster's
directory (made with `mkdtemp` under /tmp, since pytest's own temporary directories
are private to root) is handed to the unprivileged account `nobody`, and initdb
and pg_ctl run through `runuser -u nobody --`. `nobody` has no home and no login
shell; neither is needed (runuser runs the command without a shell, and nothing
reads a home directory). Run as another user, the tests run them directly.

The postmaster listens on 127.0.0.1 only, its Unix socket in the cluster's own
directory. Its port is held by a bound socket (SO_REUSEADDR, not listening) from
before it starts until it stops, so no other process can take it in between
(`tests.harness.reserve_port`). fsync is off unless `durable`: a test cluster needs
no crash safety.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

from tests.harness import reserve_port

USER = "nobody"
SUPERUSER = "postgres"


def binaries() -> Path | None:
    """The directory of the newest installed PostgreSQL's initdb, pg_ctl and postgres."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    return found[-1].parent if found else None


SKIP_REASON = (
    "no PostgreSQL binaries under /usr/lib/postgresql/*/bin "
    "(`make system-deps` installs the Debian package postgresql)"
)


class Cluster:
    """One running PostgreSQL cluster; `database()` makes a fresh database in it."""

    def __init__(self, bin_dir: Path, *, durable: bool = False) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="apsis-pg-"))
        self.data = self.root / "data"
        self.durable = durable
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam(USER)
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as_user = ["runuser", "-u", USER, "--"]
        self._port = reserve_port()
        self.port = int(self._port.getsockname()[1])
        self._names = itertools.count(1)
        self._started = False

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            [*self._as_user, *argv],
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def start(self) -> Cluster:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "200",
            "fsync": "on" if self.durable else "off",
            "synchronous_commit": "on" if self.durable else "off",
            "full_page_writes": "on" if self.durable else "off",
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        try:
            self._run(
                str(self.bin / "pg_ctl"),
                "start",
                "-w",
                "-t",
                "30",
                "-D",
                str(self.data),
                "-l",
                str(self.root / "postgres.log"),
            )
        except RuntimeError as exc:
            log = self.root / "postgres.log"
            raise RuntimeError(f"{exc}\n{log.read_text() if log.exists() else ''}") from exc
        self._started = True
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.url(), autocommit=True)

    def database(self, prefix: str = "t") -> str:
        """A new, empty database; its URL."""
        name = f"{prefix}{next(self._names)}"
        with self.admin() as db:
            # From 15 on: a file copy of the (small) template rather than its
            # WAL-logged copy block by block, several times faster with fsync off.
            strategy = " STRATEGY FILE_COPY" if db.info.server_version >= 150000 else ""
            db.execute(sql.SQL("CREATE DATABASE {}" + strategy).format(sql.Identifier(name)))
        return self.url(name)

    def drop(self, url: str) -> None:
        """Drop a database made by `database()`, closing whatever is still connected."""
        name = url.rsplit("/", 1)[1]
        with self.admin() as db:
            db.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))

    def stop(self) -> None:
        if self._started:
            with contextlib.suppress(RuntimeError):
                self._run(str(self.bin / "pg_ctl"), "stop", "-m", "immediate", "-D", str(self.data))
            self._started = False
        self._port.close()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def cluster(*, durable: bool = False) -> Iterator[Cluster]:
    """A running cluster for the duration of the block; stopped and deleted after."""
    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError(SKIP_REASON)
    running = Cluster(bin_dir, durable=durable)
    try:
        yield running.start()
    finally:
        running.stop()
