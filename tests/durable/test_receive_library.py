"""DurableReceiver as a library, against an in-process ``LocalMeshServer``: Python hooks
(async and sync), a redelivery after a lost acknowledgement, a file renamed into place just
before a crash adopted without downloading it again, receive_all through the same path."""

from __future__ import annotations

import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshpipe import xxh3_128_file
from meshpipe.client import ClientSettings, MeshClient
from meshpipe.config import MeshConfig
from meshpipe.durable import Delivery, DurableReceiver, HookError
from meshpipe.errors import MeshpipeError
from meshpipe.ledger import Ledger
from meshpipe.retry import RetryPolicy
from meshpipe.server import Fault, LocalMeshServer
from meshpipe.transfer import ReceiveResult
from tests.durable.receiving import CHUNK, RECIPIENT, SENDER
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY

SIZE = 2 * CHUNK + 4321
FAST = ClientSettings(retry=RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02))


@pytest.fixture
async def server() -> AsyncIterator[LocalMeshServer]:
    async with LocalMeshServer(rules="sandbox", shared_key=SANDBOX_SHARED_KEY) as running:
        running.add_fault(Fault("stall", route="download", seconds=0, times=0))  # counts
        yield running


@pytest.fixture
async def client(server: LocalMeshServer) -> AsyncIterator[MeshClient]:
    config = MeshConfig(server.url, RECIPIENT, SANDBOX_PASSWORD, SANDBOX_SHARED_KEY)
    async with MeshClient(config, FAST) as running:
        yield running


@pytest.fixture
def ledger(tmp_path: Path) -> Any:
    with Ledger.open(tmp_path / "ledger.sqlite3") as opened:
        yield opened


def downloads(server: LocalMeshServer) -> int:
    return sum(1 for entry in server.fault_log if entry["route"] == "download")


def message(server: LocalMeshServer, seed: int) -> str:
    return server.add_synthetic_message(
        RECIPIENT, SIZE, chunk_size=CHUNK, seed=seed, sender=SENDER, workflow_id="WF_LIB"
    )


async def test_async_hook_and_lost_ack_deliver_once(
    server: LocalMeshServer, client: MeshClient, ledger: Ledger, tmp_path: Path
) -> None:
    calls: list[Delivery] = []

    async def hook(delivery: Delivery) -> None:
        calls.append(delivery)

    receiver = DurableReceiver(ledger, hook=hook, state_dir=tmp_path / "state")
    message_id = message(server, 31)
    out = tmp_path / "out.bin"
    server.add_fault(Fault("lost_ack", route="ack", times=0))
    with pytest.raises(MeshpipeError, match="could not be acknowledged"):
        await receiver.receive(client, message_id, out)
    assert len(calls) == 1 and calls[0].path == out
    assert calls[0].idempotency_key == f"{message_id}:{xxh3_128_file(out)}"
    fetched = downloads(server)

    server.faults.clear()
    server.add_fault(Fault("stall", route="download", seconds=0, times=0))
    again = await receiver.receive(client, message_id, out)
    assert again.outcome == "already-delivered" and again.result.acknowledged
    assert len(calls) == 1
    assert downloads(server) == fetched  # nothing downloaded again
    assert server.message(message_id).status == "acknowledged"  # type: ignore[union-attr]
    record = ledger.find_receive(RECIPIENT, message_id)
    assert record is not None and record.state == "acknowledged"


async def test_sync_hook_failure_then_success(
    server: LocalMeshServer, client: MeshClient, ledger: Ledger, tmp_path: Path
) -> None:
    keys: list[str] = []

    def hook(delivery: Delivery) -> None:
        keys.append(delivery.idempotency_key)
        if len(keys) == 1:
            raise ValueError("the database is down")

    receiver = DurableReceiver(ledger, hook=hook, state_dir=tmp_path / "state")
    message_id = message(server, 32)
    out = tmp_path / "out.bin"
    with pytest.raises(HookError, match="raised ValueError: the database is down"):
        await receiver.receive(client, message_id, out)
    assert server.message(message_id).status != "acknowledged"  # type: ignore[union-attr]
    again = await receiver.receive(client, message_id, out)
    assert again.outcome == "already-delivered"
    assert keys[0] == keys[1] and len(keys) == 2
    assert again.hook is not None and again.hook.ok and again.hook.attempts == 2


async def test_file_renamed_before_its_record_is_adopted(
    server: LocalMeshServer,
    client: MeshClient,
    ledger: Ledger,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message_id = message(server, 33)
    out = tmp_path / "out.bin"
    real = ledger.mark_verified

    def crash(*args: Any) -> Any:
        raise MeshpipeError("the ledger went away just after the rename")

    monkeypatch.setattr(ledger, "mark_verified", crash)
    with pytest.raises(MeshpipeError, match="went away"):
        await DurableReceiver(ledger).receive(client, message_id, out)
    assert out.exists()
    monkeypatch.setattr(ledger, "mark_verified", real)
    fetched = downloads(server)
    again = await DurableReceiver(ledger).receive(client, message_id, out)
    assert again.outcome == "delivered" and again.result.acknowledged
    assert again.result.verified == ["chunks xxh3-128 (re-read)"]
    assert downloads(server) == fetched
    record = ledger.find_receive(RECIPIENT, message_id)
    assert record is not None and record.xxh3_128 == xxh3_128_file(out)


async def test_receive_all_goes_through_the_ledger(
    server: LocalMeshServer, client: MeshClient, ledger: Ledger, tmp_path: Path
) -> None:
    first, second = message(server, 34), message(server, 35)
    results = await DurableReceiver(ledger).receive_all(client, tmp_path / "inbox")
    received = {item.message_id for item in results if isinstance(item, ReceiveResult)}
    assert received == {first, second}
    for message_id in (first, second):
        record = ledger.find_receive(RECIPIENT, message_id)
        assert record is not None and record.state == "acknowledged"


async def test_existing_destination_is_refused_before_anything_is_recorded(
    server: LocalMeshServer, client: MeshClient, ledger: Ledger, tmp_path: Path
) -> None:
    message_id = message(server, 36)
    out = tmp_path / "taken.bin"
    out.write_bytes(b"someone else's file")
    with pytest.raises(MeshpipeError, match="already exists; remove it"):
        await DurableReceiver(ledger).receive(client, message_id, out)
    assert ledger.find_receive(RECIPIENT, message_id) is None
    assert out.read_bytes() == b"someone else's file"
    elsewhere = await DurableReceiver(ledger).receive(client, message_id, tmp_path / "new.bin")
    assert elsewhere.result.acknowledged


async def test_command_hook_from_the_library(
    server: LocalMeshServer, client: MeshClient, ledger: Ledger, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    script = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(sys.argv[2])"
    command = shlex.join([sys.executable, "-c", script, str(marker)])
    receiver = DurableReceiver(ledger, hook=command, state_dir=tmp_path / "state")
    message_id = message(server, 37)
    out = tmp_path / "out.bin"
    received = await receiver.receive(client, message_id, out)
    assert received.hook is not None and received.hook.ok
    assert marker.read_text() == str(out)


def test_the_partial_file_name_fits_beside_a_long_destination_name(tmp_path: Path) -> None:
    from meshpipe.durable.receive import MAX_NAME_BYTES, partial_path_for
    from meshpipe.transfer import safe_filename

    message_id = "20261203134307829131_4A6A1B"
    long_name = safe_filename("é" * 150 + ".csv", message_id)  # as receive_all names it
    partial = partial_path_for(tmp_path / long_name, message_id)
    assert len(partial.name.encode()) <= MAX_NAME_BYTES
    assert partial == partial_path_for(tmp_path / long_name, message_id)  # stable across runs
    assert partial.parent == tmp_path and partial.name.startswith(".")
    partial.write_bytes(b"")  # the filesystem takes it
    short = partial_path_for(tmp_path / "extract.csv", message_id)
    assert short.name == f".extract.csv.{message_id}.meshpipe-partial"
