"""A throwaway PostgreSQL server for the tests, started from the PostgreSQL binaries.

Debian/Ubuntu ship the binaries in the ``postgresql-15`` package (or the
``postgresql`` meta-package): ``/usr/lib/postgresql/<version>/bin``. Set
``COOPDP_PG_BIN`` to use another directory holding ``initdb``, ``pg_ctl`` and
``postgres``.

PostgreSQL refuses to run as root, so when the tests run as root the server
runs as an unprivileged OS user (``postgres`` if it exists, else one created
with ``useradd``), via ``runuser -u <user> --``. The cluster lives in a fresh
temporary directory owned by that user, listens on 127.0.0.1 only, on a free
port, with trust authentication, and is removed when stopped.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

SERVER_USER = "postgres"
"""The OS user the server runs as when the tests run as root (created if missing)."""
FALLBACK_USER = "coopdp-pg"
APT_PACKAGE = "postgresql-15 (or the postgresql meta-package)"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL binaries are not installed."""


def find_binaries() -> Path:
    """The directory holding initdb, pg_ctl and postgres; PostgreSQL 15 first, then the newest."""
    explicit = os.environ.get("COOPDP_PG_BIN")
    candidates: list[Path] = [Path(explicit)] if explicit else []
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda path: (path.parent.name != "15", -_version(path.parent.name)),
    )
    candidates += versions
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).parent)
    for directory in candidates:
        if all((directory / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in /usr/lib/postgresql/*/bin, "
        f"on PATH or in $COOPDP_PG_BIN; install the apt package {APT_PACKAGE}"
    )


def _version(name: str) -> int:
    return int(name) if name.isdigit() else 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> str | None:
    """None when not root (run the binaries directly); else an unprivileged user, created if needed."""
    if os.geteuid() != 0:
        return None
    for name in (SERVER_USER, FALLBACK_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_USER],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return FALLBACK_USER


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path
    port: int
    user: str | None
    superuser: str = "postgres"
    _databases: list[str] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{database}"

    def _run(self, args: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = list(args)
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False)

    def start(self) -> None:
        self._check(
            self._run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    self.superuser,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                    "--no-instructions",
                ]
            ),
            "initdb",
        )
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.root}",
                "-c max_connections=200",
                "-c fsync=off",  # the tests kill the API server, never PostgreSQL: no need to wait on the disk
                "-c full_page_writes=off",
            ]
        )
        self._check(
            self._run(
                [
                    str(self.bin_dir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            "pg_ctl start",
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=5):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        self._databases.append(name)
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        if not re.fullmatch(r"t_[0-9a-f]{16}", name):
            raise ValueError(f"not a test database: {name}")
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise RuntimeError(f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{log}")


def start_server(attempts: int = 3) -> PostgresServer:
    """Start a fresh server on a free loopback port (retrying if the port was taken meanwhile)."""
    bin_dir = find_binaries()
    user = _server_user()
    error: Exception | None = None
    for _ in range(attempts):
        # Not under pytest's tmp_path: that is private to root, and the server user must own its directory.
        root = Path(tempfile.mkdtemp(prefix="coopdp-pg-"))
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        root.chmod(0o700)
        server = PostgresServer(bin_dir, root, free_port(), user)
        try:
            server.start()
            return server
        except Exception as failure:  # noqa: BLE001
            error = failure
            server.stop()
    assert error is not None
    raise error
