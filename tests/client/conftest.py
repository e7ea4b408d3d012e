"""Fixtures for the client tests: configs and clients for the sandbox mailboxes, mesh-client
peers, test files, and a fault-injecting proxy in front of the sandbox."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import mesh_client
import pytest

from meshpipe.client import ClientSettings, MeshClient
from meshpipe.config import MeshConfig
from meshpipe.retry import RetryPolicy
from meshpipe.synthetic import write_csv
from meshpipe.units import MiB
from tests.client.proxy import FaultProxy
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY, Sandbox

__all__ = ["RECIPIENT", "SENDER", "MiB", "make_config", "write_csv"]

SENDER = "X26ABC1"
RECIPIENT = "X26ABC2"
#: Retries quick enough for tests.
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.05, max_delay=0.2)


def make_config(url: str, mailbox: str, shared_key: str = SANDBOX_SHARED_KEY) -> MeshConfig:
    return MeshConfig(url, mailbox, SANDBOX_PASSWORD, shared_key)


@pytest.fixture
def settings() -> ClientSettings:
    return ClientSettings(retry=FAST_RETRY, request_timeout=30, transfer_timeout=120)


@pytest.fixture
async def sender(sandbox: Sandbox, settings: ClientSettings) -> AsyncIterator[MeshClient]:
    async with MeshClient(make_config(sandbox.url, SENDER), settings) as client:
        yield client


@pytest.fixture
async def recipient(sandbox: Sandbox, settings: ClientSettings) -> AsyncIterator[MeshClient]:
    async with MeshClient(make_config(sandbox.url, RECIPIENT), settings) as client:
        yield client


@pytest.fixture
def mesh_client_for(sandbox: Sandbox) -> Iterator[Callable[..., mesh_client.MeshClient]]:
    """NHS's own client for a sandbox mailbox (closed after the test)."""
    made: list[mesh_client.MeshClient] = []

    def factory(mailbox: str, **options: object) -> mesh_client.MeshClient:
        client = mesh_client.MeshClient(
            sandbox.url,
            mailbox,
            SANDBOX_PASSWORD,
            shared_key=sandbox.shared_key.encode(),
            **options,
        )
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close()


@pytest.fixture
def workflow() -> str:
    """A workflow id unique to the test, so inbox listings can be filtered to its messages."""
    return f"MPTEST_{uuid.uuid4().hex[:12].upper()}"


@pytest.fixture
def small_file(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "small.csv", 200_000)


@pytest.fixture
def multi_file(tmp_path: Path) -> Path:
    """11 MiB: three chunks of 5 MiB (5, 5, 1)."""
    return write_csv(tmp_path / "multi.csv", 11 * MiB)


@pytest.fixture
async def proxy(sandbox: Sandbox) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(sandbox.url) as running:
        yield running


@pytest.fixture
async def proxied_sender(proxy: FaultProxy, settings: ClientSettings) -> AsyncIterator[MeshClient]:
    async with MeshClient(make_config(proxy.url, SENDER), settings) as client:
        yield client


@pytest.fixture
async def proxied_recipient(
    proxy: FaultProxy, settings: ClientSettings
) -> AsyncIterator[MeshClient]:
    async with MeshClient(make_config(proxy.url, RECIPIENT), settings) as client:
        yield client


@pytest.fixture
def env(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    """The CLI's environment for the sandbox's sender (no profile file, no home config)."""
    monkeypatch.setenv("MESH_URL", sandbox.url)
    monkeypatch.setenv("MESH_PASSWORD", SANDBOX_PASSWORD)
    monkeypatch.setenv("MESH_SHARED_KEY", sandbox.shared_key)
    monkeypatch.setenv("MESHPIPE_CONFIG", "")
    monkeypatch.delenv("MESHPIPE_PROFILE", raising=False)
    monkeypatch.setenv("HOME", "/nonexistent-home-for-tests")
    return sandbox
