"""Benchmark fixtures: generated data (never committed) and a summary of figures and ratios."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
def figures() -> Iterator[list[str]]:
    yield _FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _FIGURES:
        terminalreporter.section("meshpipe figures (MB = 10^6 bytes of uncompressed input)")
        for line in _FIGURES:
            terminalreporter.write_line(line)
