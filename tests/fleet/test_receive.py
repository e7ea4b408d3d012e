"""The periodic poll: two workers of one mailbox, each polling every second, receive a
message into the shared inbox folder once, verified and acknowledged."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from meshpipe._meshpipe import xxh3_128_file
from meshpipe.client import MeshClient
from meshpipe.config import MeshConfig
from meshpipe.headers import SendHeaders
from meshpipe.ledger import HistoryFilter, Ledger
from meshpipe.synthetic import write_csv
from meshpipe.transfer import send_file
from meshpipe.units import MiB
from tests.fleet.conftest import RECIPIENT, SENDER, Fleet
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY


async def _send_to_the_fleet(url: str, source: Path, workflow: str) -> str:
    config = MeshConfig(url, RECIPIENT, SANDBOX_PASSWORD, SANDBOX_SHARED_KEY)
    async with MeshClient(config) as client:
        headers = SendHeaders(to=SENDER, workflow_id=workflow, filename="report.csv")
        result = await send_file(client, source, headers, chunk_size=5 * MiB)
    return result.message_id


async def _inbox(url: str) -> list[str]:
    config = MeshConfig(url, SENDER, SANDBOX_PASSWORD, SANDBOX_SHARED_KEY)
    async with MeshClient(config) as client:
        return await client.list_inbox()


def test_the_fleet_polls_its_mailbox_and_receives_once(
    fleet: Fleet, tmp_path: Path, workflow: str
) -> None:
    source = write_csv(tmp_path / "report.csv", 11 * MiB)
    message_id = asyncio.run(_send_to_the_fleet(fleet.url, source, workflow))
    inbox = tmp_path / "inbox"
    for name in ("w1", "w2"):
        fleet.start(name, "--inbox", str(inbox), "--poll-interval", "1")
    delivered = inbox / "report.csv"
    deadline = time.monotonic() + 30
    with Ledger.open(fleet.ledger) as ledger:
        while time.monotonic() < deadline:
            found = ledger.find_receive(SENDER, message_id)
            if found is not None and found.state == "acknowledged":
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"never received:\n{fleet.log_text()}")
        time.sleep(2.5)  # two more ticks: neither worker receives it again
        receives = ledger.history(HistoryFilter(direction="receive"))
    assert [item.message_id for item in receives] == [message_id]
    assert sorted(path.name for path in inbox.iterdir()) == ["report.csv"]
    assert xxh3_128_file(delivered) == xxh3_128_file(source)
    assert asyncio.run(_inbox(fleet.url)) == []
