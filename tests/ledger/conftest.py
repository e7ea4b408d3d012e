"""Ledger fixtures: every API test runs on SQLite and on a real PostgreSQL server (the
session's ``postgres_server``, tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshpipe.ledger import Ledger
from tests.ledger.postgres import PostgresServer


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
