"""Every fault kind injected against meshpipe's own client (send_file / receive_message).

Each run must end with a verified, complete file or a clear error, and never with a wrong file,
a duplicate message, or an acknowledgement of unverified data.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshpipe.client import ClientSettings, MeshClient
from meshpipe.config import MeshConfig
from meshpipe.errors import MeshpipeError
from meshpipe.headers import SendHeaders
from meshpipe.retry import RetryPolicy
from meshpipe.server import Fault, FaultPlan, LocalMeshServer
from meshpipe.transfer import receive_message, send_file
from meshpipe.units import MiB
from tests.peers import SANDBOX_SHARED_KEY

CHUNK = 5 * MiB
FAST_RETRY = ClientSettings(retry=RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("source") / "extract.bin"
    path.write_bytes(os.urandom(2 * CHUNK + 12345))  # three chunks
    return path


@pytest.fixture(params=["sandbox", "strict"])
def rules(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def server(request: pytest.FixtureRequest, rules: str) -> AsyncIterator[LocalMeshServer]:
    plan: FaultPlan = request.param
    async with LocalMeshServer(rules=rules, shared_key=SANDBOX_SHARED_KEY, faults=plan) as running:
        yield running


def client(server: LocalMeshServer, mailbox: str) -> MeshClient:
    return MeshClient(MeshConfig(server.url, mailbox, "password", SANDBOX_SHARED_KEY), FAST_RETRY)


async def sent_messages(server: LocalMeshServer) -> list[str]:
    async with client(server, "X26ABC1") as sender:
        return [item.message_id for item in await sender.outbox_rich()]


async def send(server: LocalMeshServer, source: Path) -> str | None:
    async with client(server, "X26ABC1") as sender:
        try:
            result = await send_file(
                sender,
                source,
                SendHeaders(to="X26ABC2", workflow_id="TEST_WORKFLOW"),
                chunk_size=CHUNK,
            )
        except MeshpipeError:
            return None
        return result.message_id


async def receive(server: LocalMeshServer, message_id: str, target: Path) -> bool:
    async with client(server, "X26ABC2") as receiver:
        try:
            result = await receive_message(receiver, message_id, target)
        except MeshpipeError:
            return False
        return result.acknowledged


def acknowledged(server: LocalMeshServer, message_id: str) -> bool:
    message = server.message(message_id)
    return message is not None and message.status == "acknowledged"


def plan(*faults: Fault, seed: int = 0) -> FaultPlan:
    return FaultPlan(faults, seed)


def same_bytes(one: Path, other: Path) -> bool:
    return one.exists() and one.read_bytes() == other.read_bytes()


SEND_FAULTS = {
    "503-on-chunk-2": plan(Fault("status", route="send_chunk", chunk=2, status=503, retry_after=0)),
    "429-twice": plan(Fault("status", route="send_chunk", times=2, status=429, retry_after=0)),
    "reset-mid-chunk-2": plan(Fault("reset", route="send_chunk", chunk=2, after_bytes=MiB)),
    "reset-mid-chunk-1": plan(Fault("reset", route="send", after_bytes=MiB)),
    "500-on-chunk-1": plan(Fault("status", route="send", status=500)),
    "stall-last-chunk": plan(Fault("stall", route="send_chunk", chunk=3, seconds=0.1)),
}


@pytest.mark.parametrize("server", list(SEND_FAULTS.values()), ids=list(SEND_FAULTS), indirect=True)
async def test_send_faults(server: LocalMeshServer, source: Path, tmp_path: Path) -> None:
    message_id = await send(server, source)
    assert server.fault_log, "the planned fault never fired"
    sent = await sent_messages(server)
    assert len(sent) <= 1, f"duplicate messages: {sent}"
    if message_id is None:  # a clear error: nothing complete may have been delivered
        assert all(server.message(m).status == "uploading" for m in sent)  # type: ignore[union-attr]
        return
    assert sent == [message_id]
    target = tmp_path / "received.bin"
    assert await receive(server, message_id, target)
    assert same_bytes(target, source)


RECEIVE_FAULTS = {
    "flip-in-chunk-2": plan(Fault("flip", route="download", chunk=2), seed=9),
    "reset-mid-download": plan(Fault("reset", route="download", chunk=3, after_bytes=1000)),
    "503-on-download": plan(Fault("status", route="download", status=503, retry_after=0)),
    "stall-mid-download": plan(Fault("stall", route="download", seconds=0.1, after_bytes=MiB)),
    "lost-ack": plan(Fault("lost_ack", route="ack")),
    "lost-ack-reply": plan(Fault("lost_ack", route="ack", applied=True)),
}


@pytest.mark.parametrize(
    "server", list(RECEIVE_FAULTS.values()), ids=list(RECEIVE_FAULTS), indirect=True
)
async def test_receive_faults(server: LocalMeshServer, source: Path, tmp_path: Path) -> None:
    message_id = await send(server, source)
    assert message_id is not None
    target = tmp_path / "received.bin"
    ok = await receive(server, message_id, target)
    assert server.fault_log, "the planned fault never fired"
    if ok:
        assert same_bytes(target, source)
        assert acknowledged(server, message_id)
    else:
        assert not target.exists() or same_bytes(target, source)


@pytest.mark.parametrize(
    "server", [plan(Fault("flip", route="download", chunk=2, times=0), seed=1)], indirect=True
)
async def test_persistent_corruption_is_never_acknowledged(
    server: LocalMeshServer, source: Path, tmp_path: Path
) -> None:
    message_id = await send(server, source)
    assert message_id is not None
    target = tmp_path / "received.bin"
    assert not await receive(server, message_id, target)
    assert not target.exists()
    assert not acknowledged(server, message_id)


@pytest.mark.parametrize("server", [RECEIVE_FAULTS["lost-ack"]], indirect=True)
@pytest.mark.parametrize("rules", ["strict"], indirect=True)
async def test_lost_ack_is_retried_with_a_fresh_token(
    server: LocalMeshServer, source: Path, tmp_path: Path
) -> None:
    """Under single-use tokens a retried acknowledgement needs a fresh token: aiohttp's silent
    re-send of an idempotent request on a dropped kept-alive connection re-used the old one (403);
    meshpipe's client now turns that off and retries itself."""
    message_id = await send(server, source)
    assert message_id is not None
    assert await receive(server, message_id, tmp_path / "received.bin")
    assert acknowledged(server, message_id)
