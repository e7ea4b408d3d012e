"""Fixtures for the ``meshpipe watch`` tests: the two peers (``meshpipe serve`` in a thread,
NHS's mesh-sandbox), a workflow of each test's own, a ledger, and a mailbox's folders."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshpipe.ledger import Ledger
from meshpipe.server import LocalMeshServer
from meshpipe.server.threaded import ServerThread
from meshpipe.watch.settings import MailboxFolders
from tests.peers import SANDBOX_SHARED_KEY, Sandbox


@pytest.fixture(scope="module")
def meshpipe_url() -> Iterator[str]:
    """``meshpipe serve`` with mesh-sandbox's rules, in a thread, for the module."""
    thread = ServerThread(LocalMeshServer(rules="sandbox", shared_key=SANDBOX_SHARED_KEY))
    server = thread.start()
    try:
        yield server.url
    finally:
        thread.stop()


@pytest.fixture(params=["meshpipe", "sandbox"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "sandbox":
        sandbox: Sandbox = request.getfixturevalue("sandbox")
        return sandbox.url
    return str(request.getfixturevalue("meshpipe_url"))


@pytest.fixture
def workflow() -> str:
    return f"MPWATCH_{uuid.uuid4().hex[:12].upper()}"


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(tmp_path / "ledger.sqlite3") as opened:
        yield opened


def folders_in(root: Path) -> MailboxFolders:
    return MailboxFolders(
        out=root / "out",
        sent=root / "sent",
        failed=root / "failed",
        inbox=root / "in",
        reports=root / "reports",
    )


async def put_faults(url: str, faults: list[dict[str, Any]]) -> None:
    """Replace the local server's fault plan (``[]``: none)."""
    async with (
        aiohttp.ClientSession() as session,
        session.put(f"{url}/messageexchange/admin/faults", json={"faults": faults}) as answer,
    ):
        assert answer.status == 200
