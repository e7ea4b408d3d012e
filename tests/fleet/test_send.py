"""One large message spread over several worker processes, received byte-exact."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from pathlib import Path

import pytest

from meshpipe._meshpipe import Splitter, xxh3_128_file
from meshpipe.client import MeshClient
from meshpipe.config import MeshConfig
from meshpipe.durable.send_records import recorded_headers
from meshpipe.ledger import Ledger, SendRecord
from meshpipe.synthetic import write_csv
from meshpipe.transfer import receive_message
from meshpipe.units import MiB
from tests.fleet.conftest import RECIPIENT, SENDER, Fleet, wait_for_send
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY


async def receive(url: str, message_id: str, destination: Path) -> None:
    config = MeshConfig(url, RECIPIENT, SANDBOX_PASSWORD, SANDBOX_SHARED_KEY)
    async with MeshClient(config) as client:
        await receive_message(client, message_id, destination)


@pytest.mark.parametrize("peer_name", ["serve", "sandbox"])
def test_one_message_is_spread_over_three_workers(
    fleet: Fleet, tmp_path: Path, workflow: str, peer_name: str
) -> None:
    source = write_csv(tmp_path / "extract.csv", 60 * MiB)
    fleet.start_all()
    submitted = fleet.submit(source, workflow)
    assert submitted.outcome == "submitted" and submitted.chunk_count == 12
    with Ledger.open(fleet.ledger) as ledger:
        record = wait_for_send(ledger, submitted.transfer_id, fleet)
        assert record.state == "completed", (record.error, fleet.log_text())
        chunks = ledger.chunks(record)
        assert [chunk.number for chunk in chunks] == list(range(1, 13))
        assert all(chunk.state == "accepted" for chunk in chunks)
        assert record.chunks_done == 12
        senders = Counter(chunk.worker for chunk in chunks)
        assert len(senders) >= 2, senders
        assert set(senders) <= {"w1", "w2", "w3"}
        assert record.message_id is not None
    destination = tmp_path / "received.csv"
    asyncio.run(receive(fleet.url, record.message_id, destination))
    assert xxh3_128_file(destination) == xxh3_128_file(source)


async def _post_chunk_1_and_lose_the_answer(url: str, location: str, transfer_id: int) -> str:
    """What a worker killed after posting chunk 1, before recording MESH's answer, leaves:
    the ledger says chunk 1 was sent, MESH holds the message."""
    with Ledger.open(location) as ledger:
        record = ledger.transfer(transfer_id)
        assert isinstance(record, SendRecord)
        ledger.set_source_checksum(record, xxh3_128_file(record.source.path))
        record = ledger.transfer(transfer_id)
        assert isinstance(record, SendRecord)
        with Splitter(record.source.path, chunk_size=record.chunk_size, chunks=[1]) as split:
            chunk = next(split)
            ledger.chunk_sent(record, 1, chunk.xxh3_128, chunk.payload_size, worker="dead")
            config = MeshConfig(url, SENDER, SANDBOX_PASSWORD, SANDBOX_SHARED_KEY)
            async with MeshClient(config) as client:
                message_id = await client.send_message(
                    recorded_headers(record).validate(), chunk, chunk_count=chunk.count
                )
            chunk.release()
    return message_id


def test_a_chunk_1_posted_by_a_dead_worker_is_adopted_not_posted_again(
    fleet: Fleet, tmp_path: Path, workflow: str
) -> None:
    source = write_csv(tmp_path / "extract.csv", 16 * MiB)
    submitted = fleet.submit(source, workflow)
    lost = asyncio.run(
        _post_chunk_1_and_lose_the_answer(fleet.url, fleet.ledger, submitted.transfer_id)
    )
    fleet.start("w1")
    with Ledger.open(fleet.ledger) as ledger:
        record = wait_for_send(ledger, submitted.transfer_id, fleet)
    assert record.state == "completed", (record.error, fleet.log_text())
    assert record.message_id == lost, fleet.log_text()
    assert asyncio.run(_inbox_of(fleet.url, workflow)) == [lost]
    destination = tmp_path / "received.csv"
    asyncio.run(receive(fleet.url, lost, destination))
    assert xxh3_128_file(destination) == xxh3_128_file(source)


async def _inbox_of(url: str, workflow: str) -> list[str]:
    config = MeshConfig(url, RECIPIENT, SANDBOX_PASSWORD, SANDBOX_SHARED_KEY)
    async with MeshClient(config) as client:
        return await client.list_inbox(workflow_filter=workflow)


def test_in_order_the_fleet_posts_each_chunk_after_the_one_before(
    fleet: Fleet, tmp_path: Path, workflow: str
) -> None:
    source = write_csv(tmp_path / "extract.csv", 40 * MiB)
    fleet.start_all("--order", "in-order", "--concurrency", "2")
    submitted = fleet.submit(source, workflow)
    with Ledger.open(fleet.ledger) as ledger:
        record = wait_for_send(ledger, submitted.transfer_id, fleet)
        assert record.state == "completed", (record.error, fleet.log_text())
        chunks = ledger.chunks(record)
    assert len({chunk.worker for chunk in chunks}) >= 2
    for before, after in itertools.pairwise(chunks):
        assert before.done_at is not None and after.sent_at is not None
        assert after.sent_at > before.done_at, (before, after)  # MESH gets them in order
    assert record.message_id is not None
    destination = tmp_path / "received.csv"
    asyncio.run(receive(fleet.url, record.message_id, destination))
    assert xxh3_128_file(destination) == xxh3_128_file(source)
