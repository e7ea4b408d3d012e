"""Benchmark fixtures: generated data (never committed) and a summary of figures and ratios."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.ledger.postgres import PostgresServer, run_postgres

from meshpipe.ledger import Ledger
from meshpipe.synthetic import write_csv, write_random
from meshpipe.units import MiB

FIXTURE_SIZE = 256 * MiB
_FIGURES: list[str] = []


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-data")


@pytest.fixture(scope="session")
def csv_file(fixture_dir: Path) -> Path:
    return write_csv(fixture_dir / "extract.csv", FIXTURE_SIZE)


@pytest.fixture(scope="session")
def random_file(fixture_dir: Path) -> Path:
    return write_random(fixture_dir / "random.bin", FIXTURE_SIZE)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A local PostgreSQL server with its default durability (fsync on), for the ledger."""
    with run_postgres(durable=True) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ledger]:
    """A fresh ledger on SQLite (a file on disk) and on PostgreSQL (a new database)."""
    if request.param == "sqlite":
        location = str(tmp_path_factory.mktemp("ledger") / "ledger.sqlite3")
    else:
        location = request.getfixturevalue("postgres_server").create_database("bench")
    with Ledger.open(location) as opened:
        yield opened


@pytest.fixture(scope="session")
def figures() -> Iterator[list[str]]:
    yield _FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("meshpipe figures (MB = 10^6 bytes of uncompressed input)")
        for line in _FIGURES:
            terminalreporter.write_line(line)
