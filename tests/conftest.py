"""Shared fixtures. Hypothesis profile chosen by MESHPIPE_HYPOTHESIS (ci, dev, thorough)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.ledger.postgres import PostgresServer, postgres_bin_dir, run_postgres
from tests.peers import Sandbox, run_sandbox

settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=10, deadline=None)
settings.register_profile("thorough", max_examples=500, deadline=None)
settings.load_profile(os.environ.get("MESHPIPE_HYPOTHESIS", "ci"))


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """NHS's mesh-sandbox, real auth (AUTH_MODE=full) and file store, for the whole session."""
    with run_sandbox(tmp_path_factory.mktemp("sandbox")) as running:
        yield running


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session (tests/ledger/postgres.py; each test creates its
    own database on it). CI runs as root with Debian's postgresql installed by
    scripts/bootstrap.sh, so there a missing server fails; elsewhere it skips."""
    if postgres_bin_dir() is None:
        reason = "PostgreSQL server binaries not found (apt-get install postgresql)"
        if os.geteuid() == 0:
            pytest.fail(f"{reason}: scripts/bootstrap.sh installs them; CI must run these")
        pytest.skip(f"{reason}; not root, so not installing them")
    with run_postgres() as server:
        yield server


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own meshpipe state directory (ledger, partial files), inherited by
    the commands it starts, so no test reads or writes the user's own ledger."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("MESHPIPE_STATE_DIR", str(state))
    monkeypatch.delenv("MESHPIPE_LEDGER", raising=False)
    return state
