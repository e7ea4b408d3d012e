"""The journal calls at the stage boundaries of a send and a receive, against meshpipe's own
local server: right order, right values, and each awaited before the step that depends on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshpipe import errors
from meshpipe._meshpipe import AssemblyReport, ChunkPlan, xxh3_128_file
from meshpipe.client import ClientSettings, MeshClient
from meshpipe.headers import SendHeaders
from meshpipe.models import MessageMetadata
from meshpipe.retry import RetryingClient
from meshpipe.server import LocalMeshServer
from meshpipe.synthetic import write_csv
from meshpipe.transfer import (
    ReceiveJournal,
    SendJournal,
    SendResult,
    receive_message,
    send_file,
)
from tests.client.conftest import RECIPIENT, SENDER, MiB, make_config
from tests.peers import SANDBOX_SHARED_KEY

WORKFLOW = "TEST_WORKFLOW"
Call = tuple[object, ...]


class RecordingSendJournal(SendJournal):
    def __init__(self) -> None:
        self.calls: list[Call] = []

    async def prepared(self, local_id: str, plan: ChunkPlan, xxh3_128: str) -> None:
        self.calls.append(("prepared", local_id, plan.chunk_count, plan.file_size, xxh3_128))

    async def chunk_sending(self, number: int, xxh3_128: str, payload_size: int) -> None:
        self.calls.append(("chunk_sending", number, xxh3_128, payload_size))

    async def message_created(self, message_id: str) -> None:
        self.calls.append(("message_created", message_id))

    async def chunk_accepted(self, number: int) -> None:
        self.calls.append(("chunk_accepted", number))

    async def completed(self, result: SendResult) -> None:
        self.calls.append(("completed", result.message_id))

    async def failed(self, error: BaseException) -> None:
        self.calls.append(("failed", error))


class RecordingReceiveJournal(ReceiveJournal):
    """Records the calls; at ``assembled`` it checks that the file is in place and that the
    message is still in the inbox (not acknowledged before delivery)."""

    def __init__(self, recipient: MeshClient, destination: Path) -> None:
        self.calls: list[Call] = []
        self._recipient = recipient
        self._destination = destination
        self._message_id = ""

    async def started(self, metadata: MessageMetadata) -> None:
        self._message_id = metadata.message_id
        self.calls.append(("started", metadata.message_id, metadata.chunk_count))

    async def chunk_verified(self, number: int, xxh3_128: str, length: int) -> None:
        self.calls.append(("chunk_verified", number, xxh3_128, length))

    async def assembled(self, report: AssemblyReport) -> None:
        inbox = await RetryingClient(self._recipient).list_inbox(workflow_filter=WORKFLOW)
        in_place = Path(report.path) == self._destination and self._destination.exists()
        self.calls.append(("assembled", report.size, in_place, self._message_id in inbox))

    async def acknowledged(self) -> None:
        self.calls.append(("acknowledged",))

    async def failed(self, error: BaseException) -> None:
        self.calls.append(("failed", error))


def chunk_digests(path: Path, chunk_size: int, tmp_path: Path) -> list[tuple[str, int]]:
    """(xxh3-128, length) of each chunk of ``path``, by the engine's file hash of each slice."""
    data = path.read_bytes()
    digests = []
    for offset in range(0, len(data), chunk_size):
        piece = tmp_path / f"piece-{offset}"
        piece.write_bytes(data[offset : offset + chunk_size])
        digests.append((xxh3_128_file(piece), len(data[offset : offset + chunk_size])))
    return digests


@pytest.fixture
async def server() -> AsyncIterator[LocalMeshServer]:
    async with LocalMeshServer(shared_key=SANDBOX_SHARED_KEY) as running:
        yield running


@pytest.fixture
async def local_sender(server: LocalMeshServer) -> AsyncIterator[MeshClient]:
    async with MeshClient(make_config(server.url, SENDER), ClientSettings()) as client:
        yield client


@pytest.fixture
async def local_recipient(server: LocalMeshServer) -> AsyncIterator[MeshClient]:
    async with MeshClient(make_config(server.url, RECIPIENT), ClientSettings()) as client:
        yield client


async def test_send_and_receive_journals_see_every_stage_in_order(
    local_sender: MeshClient,
    local_recipient: MeshClient,
    tmp_path: Path,
) -> None:
    source = write_csv(tmp_path / "four.csv", 16 * MiB)
    chunks = chunk_digests(source, 5 * MiB, tmp_path)
    assert len(chunks) == 4
    sent_journal = RecordingSendJournal()
    result = await send_file(
        local_sender,
        source,
        SendHeaders(to=RECIPIENT, workflow_id=WORKFLOW, local_id="journal-test"),
        chunk_size=5 * MiB,
        journal=sent_journal,
    )
    calls = sent_journal.calls
    assert calls[0] == ("prepared", "journal-test", 4, 16 * MiB, xxh3_128_file(source))
    # chunk 1 alone, then the message id, before any other chunk goes
    assert calls[1:4] == [
        ("chunk_sending", 1, *chunks[0]),
        ("message_created", result.message_id),
        ("chunk_accepted", 1),
    ]
    middle = calls[4:-3]
    assert sorted(c for c in middle if c[0] == "chunk_sending") == [
        ("chunk_sending", n, *chunks[n - 1]) for n in (2, 3)
    ]
    for number in (2, 3):
        assert middle.index(("chunk_accepted", number)) > middle.index(
            ("chunk_sending", number, *chunks[number - 1])
        )
    # the last chunk only after every other chunk was accepted, then the outcome
    assert calls[-3:] == [
        ("chunk_sending", 4, *chunks[3]),
        ("chunk_accepted", 4),
        ("completed", result.message_id),
    ]

    destination = tmp_path / "received.csv"
    received_journal = RecordingReceiveJournal(local_recipient, destination)
    await receive_message(local_recipient, result.message_id, destination, journal=received_journal)
    received = received_journal.calls
    assert received[0] == ("started", result.message_id, 4)
    assert sorted(c for c in received[1:5]) == [
        ("chunk_verified", n, *chunks[n - 1]) for n in range(1, 5)
    ]
    # delivered (fsynced and renamed) while still in the inbox, then acknowledged
    assert received[5:] == [("assembled", 16 * MiB, True, True), ("acknowledged",)]
    assert await RetryingClient(local_recipient).list_inbox(workflow_filter=WORKFLOW) == []


async def test_failures_reach_the_journal(
    local_sender: MeshClient, local_recipient: MeshClient, tmp_path: Path
) -> None:
    source = tmp_path / "small.txt"
    source.write_bytes(b"to nobody\n")
    sent_journal = RecordingSendJournal()
    with pytest.raises(errors.MeshUnknownRecipientError) as refused:
        await send_file(
            local_sender,
            source,
            SendHeaders(to="X26NOBODY", workflow_id=WORKFLOW),
            journal=sent_journal,
        )
    assert [call[0] for call in sent_journal.calls] == ["prepared", "chunk_sending", "failed"]
    assert sent_journal.calls[-1] == ("failed", refused.value)

    received_journal = RecordingReceiveJournal(local_recipient, tmp_path / "never.txt")
    with pytest.raises(errors.MeshNotFoundError) as missing:
        await receive_message(
            local_recipient, "0" * 32, tmp_path / "never.txt", journal=received_journal
        )
    assert received_journal.calls == [("failed", missing.value)]
