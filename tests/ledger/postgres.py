"""A throwaway PostgreSQL server from Debian's packages for tests and benchmarks: initdb and
pg_ctl in a temporary directory, listening only on a Unix socket in that directory (no port
to race for). As root it runs as the ``postgres`` user, since the server refuses root."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed."""


def postgres_bin_dir() -> Path | None:
    """The newest installed server's bin directory (Debian: /usr/lib/postgresql/N/bin)."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass(frozen=True)
class PostgresServer:
    socket_dir: Path
    user: str
    restart_command: tuple[str, ...] = ()

    def restart(self) -> None:
        """Stop the server (fast: every connection is cut) and start it again."""
        subprocess.run(self.restart_command, check=True, capture_output=True, timeout=120)

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@/{database}?host={self.socket_dir}"

    def create_database(self, prefix: str = "ledger") -> str:
        """A new, empty database; its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            host=str(self.socket_dir), user=self.user, dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def run_postgres(*, durable: bool = False) -> Iterator[PostgresServer]:
    """Start a server for the block, then stop it and delete its files. ``durable`` keeps
    PostgreSQL's default fsync-on-commit (benchmarks); tests turn fsync off for speed."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries not found: apt-get install postgresql "
            "(scripts/bootstrap.sh installs it)"
        )
    root = Path(tempfile.mkdtemp(prefix="meshpipe-pg-", dir="/tmp"))
    run_as: list[str] = []
    user = pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
        user = "postgres"
    data, log = root / "data", root / "server.log"
    settings = f"-c listen_addresses='' -k {root}"
    if not durable:
        settings += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"

    def run(*command: str) -> None:
        result = subprocess.run(
            [*run_as, *command], capture_output=True, text=True, check=False, timeout=120
        )
        if result.returncode != 0:
            server_log = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}"
                f"{result.stderr}\n{server_log}"
            )

    try:
        run(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            user,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
            "-o", settings, "start")  # fmt: skip
        restart = (*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                   "-t", "60", "-m", "fast", "-o", settings, "restart")  # fmt: skip
        try:
            yield PostgresServer(root, user, restart)
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
