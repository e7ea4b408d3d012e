"""Fixtures of the durable tests: a MESH server to send to (``meshpipe serve --store dir`` as
a process, or NHS's mesh-sandbox) behind a HoldingProxy, a test file and a unique workflow."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from meshpipe.server.process import server_process
from meshpipe.synthetic import write_csv
from meshpipe.units import MiB
from tests.durable.send_helpers import HoldingProxy
from tests.peers import SANDBOX_SHARED_KEY, Sandbox


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[str]:
    """``meshpipe serve`` with a durable directory store and mesh-sandbox's rules."""
    with server_process(
        "--rules",
        "sandbox",
        "--shared-key",
        SANDBOX_SHARED_KEY,
        "--store",
        "dir",
        "--data-dir",
        str(tmp_path / "store"),
        "--log-level",
        "WARNING",
    ) as (url, _process):
        yield url


@pytest.fixture
def peer_name() -> str:
    """Which server ``upstream`` is: ``serve`` unless a test parametrizes ``peer_name``."""
    return "serve"


@pytest.fixture
def upstream(request: pytest.FixtureRequest, peer_name: str) -> str:
    if peer_name == "serve":
        return str(request.getfixturevalue("serve"))
    sandbox: Sandbox = request.getfixturevalue("sandbox")
    return sandbox.url


@pytest.fixture
async def proxy(upstream: str) -> AsyncIterator[HoldingProxy]:
    async with HoldingProxy(upstream) as running:
        yield running


@pytest.fixture
def workflow() -> str:
    return f"MPDUR_{uuid.uuid4().hex[:12].upper()}"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """26 MiB: six chunks of 5 MiB (the last 1 MiB)."""
    return write_csv(tmp_path / "extract.csv", 26 * MiB)
