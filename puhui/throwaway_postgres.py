"""A throwaway PostgreSQL server from the machine's own binaries, for tests and benchmarks.

``initdb`` refuses to run as root (and CI runs as root), so as root the server runs as the
``postgres`` system user. The data directory lives in a temporary folder, the server listens
on a free loopback port with fsync off (durability is irrelevant for a throwaway), and
everything is removed on exit.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from puhui.errors import PuhuiError


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    bin_dir: Path
    data_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def libpq_url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database ``name`` (dropping an old one), optionally as a copy of
        ``template`` (a file-level copy: fast, and nobody may be connected to it); returns
        its SQLAlchemy URL."""
        import psycopg

        copy = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(self.libpq_url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"{copy}')
        return self.url(name)


def find_postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<v>/bin`` with initdb, or ``PUHUI_PG_BIN``."""
    explicit = os.environ.get("PUHUI_PG_BIN")
    if explicit:
        return Path(explicit)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if candidates:
        return Path(candidates[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_as(user: str | None, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, **kwargs)


@contextmanager
def throwaway_postgres(log: bool = False) -> Iterator[PostgresServer]:
    """Start a private PostgreSQL server; stop it and delete its files on exit."""
    bin_dir = find_postgres_bin_dir()
    if bin_dir is None:
        raise PuhuiError("no PostgreSQL server binaries found (install Debian's 'postgresql')")
    run_user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="puhui-pg-"))
    data_dir, socket_dir = root / "data", root / "sock"
    socket_dir.mkdir()
    if run_user:
        entry = pwd.getpwnam(run_user)
        os.chmod(root, 0o755)
        for path in (root, socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    db_user = run_user or pwd.getpwuid(os.geteuid()).pw_name
    init = _run_as(
        run_user,
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data_dir),
            "-U",
            db_user,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ],
    )
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise PuhuiError(f"initdb failed: {init.stderr.strip().splitlines()[-1:]}")
    port = _free_port()
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c fsync=off "
        f"-c synchronous_commit=off -c full_page_writes=off "
        f"-c unix_socket_directories={socket_dir} -c max_connections=100 "
        f"-c shared_buffers=256MB -c max_wal_size=4GB"
    )
    logfile = root / "server.log"
    start = _run_as(
        run_user,
        [
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data_dir),
            "-o",
            options,
            "-l",
            str(logfile),
            "-w",
            "-t",
            "60",
            "start",
        ],
    )
    if start.returncode != 0:
        tail = logfile.read_text(errors="replace")[-500:] if logfile.exists() else start.stderr
        shutil.rmtree(root, ignore_errors=True)
        raise PuhuiError(f"PostgreSQL did not start: {tail.strip()}")
    server = PostgresServer("127.0.0.1", port, db_user, bin_dir, data_dir)
    try:
        _wait_ready(server)
        yield server
    finally:
        _run_as(
            run_user,
            [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "immediate", "-w", "stop"],
        )
        if log and logfile.exists():
            print(logfile.read_text(errors="replace")[-2000:])
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(server: PostgresServer, timeout: float = 30.0) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(server.libpq_url(), connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
