"""Ledger fixtures: every API test runs on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshpipe.ledger import Ledger
from tests.ledger.postgres import PostgresServer, postgres_bin_dir, run_postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session. CI runs as root with Debian's postgresql
    installed by scripts/bootstrap.sh, so there a missing server fails; elsewhere it skips."""
    if postgres_bin_dir() is None:
        reason = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.geteuid() == 0:
            pytest.fail(f"{reason}: scripts/bootstrap.sh installs them; CI must run these")
        pytest.skip(f"{reason}; not root, so not installing them")
    with run_postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty ledger location of each kind."""
    if request.param == "sqlite":
        return str(tmp_path / "state" / "ledger.sqlite3")
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


@pytest.fixture
def ledger(ledger_location: str) -> Iterator[Ledger]:
    with Ledger.open(ledger_location) as opened:
        yield opened


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "extract.csv"
    path.write_bytes(b"id,value\n" * 1000)
    return path
