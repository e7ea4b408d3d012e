"""One large message spread over several worker processes, received byte-exact."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from meshpipe._meshpipe import xxh3_128_file
from meshpipe.client import MeshClient
from meshpipe.config import MeshConfig
from meshpipe.fleet import submit
from meshpipe.headers import SendHeaders
from meshpipe.ledger import Ledger
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
    for name in ("w1", "w2", "w3"):
        fleet.start(name)
    fleet.wait_until_listening()
    submitted = asyncio.run(
        submit(
            fleet.ledger,
            SENDER,
            source,
            SendHeaders(to=RECIPIENT, workflow_id=workflow),
            chunk_size=5 * MiB,
            chunks_per_job=1,
        )
    )
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
