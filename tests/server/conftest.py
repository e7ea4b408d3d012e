"""Fixtures for the local MESH server's tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshpipe.server import LocalMeshServer
from meshpipe.server.process import server_process
from meshpipe.server.threaded import ServerThread
from tests.peers import SANDBOX_SHARED_KEY, Sandbox


@dataclass(frozen=True)
class Peer:
    """A running MESH server the tests talk to over HTTP: ``kind`` is sandbox or meshpipe."""

    kind: str
    url: str
    shared_key: str
    server: LocalMeshServer | None = None


@pytest.fixture(scope="session")
def meshpipe_sandbox_mode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """meshpipe serve as a drop-in for mesh-sandbox: --rules sandbox, dir store, same key."""
    server = LocalMeshServer(
        rules="sandbox",
        store="dir",
        data_dir=tmp_path_factory.mktemp("meshpipe-store"),
        shared_key=SANDBOX_SHARED_KEY,
    )
    thread = ServerThread(server)
    thread.start()
    try:
        yield Peer("meshpipe", server.url, SANDBOX_SHARED_KEY, server)
    finally:
        thread.stop()


@pytest.fixture(scope="session")
def meshpipe_started_like_the_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """``python -m meshpipe.server --rules sandbox`` configured only by the sandbox's environment
    variables (SHARED_KEY, AUTH_MODE, STORE_MODE=file, MAILBOXES_DATA_DIR)."""
    data_dir = tmp_path_factory.mktemp("meshpipe-env-store")
    env = {
        "SHARED_KEY": SANDBOX_SHARED_KEY,
        "AUTH_MODE": "full",
        "STORE_MODE": "file",
        "MAILBOXES_DATA_DIR": str(data_dir),
    }
    command = ["--rules", "sandbox", "--log-level", "WARNING"]
    with server_process(*command, env=env) as (url, _):
        yield Peer("meshpipe-env", url, SANDBOX_SHARED_KEY)


@pytest.fixture(params=["sandbox", "meshpipe", "meshpipe-env"])
def peer(request: pytest.FixtureRequest) -> Peer:
    if request.param == "sandbox":
        sandbox: Sandbox = request.getfixturevalue("sandbox")
        return Peer("sandbox", sandbox.url, sandbox.shared_key)
    if request.param == "meshpipe-env":
        started: Peer = request.getfixturevalue("meshpipe_started_like_the_sandbox")
        return started
    running: Peer = request.getfixturevalue("meshpipe_sandbox_mode")
    return running


@pytest.fixture
def threaded_server(tmp_path: Path) -> Iterator[Any]:
    """A factory: start a LocalMeshServer (any settings) in a thread for this test."""
    threads: list[ServerThread] = []

    def start(**settings: Any) -> LocalMeshServer:
        settings.setdefault("shared_key", SANDBOX_SHARED_KEY)
        thread = ServerThread(LocalMeshServer(**settings))
        threads.append(thread)
        return thread.start()

    yield start
    for thread in threads:
        thread.stop()
