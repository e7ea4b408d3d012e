"""One large message received by many workers (meshpipe.fleet.receive): chunk ranges written
into one preallocated file on the shared inbox path by three workers, then verified, renamed
and acknowledged once; and again with a worker killed while it holds a range."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from meshpipe._meshpipe import xxh3_128_file
from meshpipe.client import MeshClient
from meshpipe.config import MeshConfig
from meshpipe.fleet.receive import _copy_at, spreads
from meshpipe.headers import SendHeaders
from meshpipe.ledger import HistoryFilter, Ledger, ReceiveRecord
from meshpipe.models import MessageMetadata
from meshpipe.server.process import server_process
from meshpipe.synthetic import write_csv
from meshpipe.transfer import send_file
from meshpipe.units import Codec, MiB
from tests.fleet.conftest import RECIPIENT, SENDER, Fleet
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY

SIZE = 60 * MiB
#: The chunk whose first download hangs (the SIGKILL test): its worker is killed holding it.
STALLED_CHUNK = 7
#: A chunk whose first download arrives with a byte flipped (downloaded again).
FLIPPED_CHUNK = 4


FLIP: Final = [{"kind": "flip", "route": "download", "chunk": FLIPPED_CHUNK}]
ALWAYS_FLIPPED: Final = [{"kind": "flip", "route": "download", "chunk": FLIPPED_CHUNK, "times": 0}]
STALL: Final = [
    {"kind": "stall", "route": "download", "chunk": STALLED_CHUNK, "nth": 1, "seconds": 8}
]


@pytest.fixture
def faults(request: pytest.FixtureRequest) -> list[dict[str, object]]:
    """The server's fault plan (a test parametrizes it, indirectly)."""
    return list(getattr(request, "param", []))


@pytest.fixture
def serve(tmp_path: Path, faults: list[dict[str, object]]) -> Iterator[str]:
    """``meshpipe serve`` with mesh-sandbox's rules and the plan ``faults``."""
    plan = tmp_path / "faults.json"
    plan.write_text(json.dumps({"faults": faults}))
    with server_process(
        "--rules", "sandbox", "--shared-key", SANDBOX_SHARED_KEY, "--store", "dir",
        "--data-dir", str(tmp_path / "store"), "--faults", str(plan), "--log-level", "WARNING",
    ) as (url, _process):  # fmt: skip
        yield url


def _config(url: str, mailbox: str) -> MeshConfig:
    return MeshConfig(url, mailbox, SANDBOX_PASSWORD, SANDBOX_SHARED_KEY)


async def _send(url: str, source: Path, workflow: str, codec: Codec) -> str:
    """Send ``source`` to the fleet's mailbox in 5 MiB chunks, its hash in chunk 1's header."""
    async with MeshClient(_config(url, RECIPIENT)) as client:
        headers = SendHeaders(to=SENDER, workflow_id=workflow, filename="extract.csv")
        result = await send_file(
            client,
            source,
            headers,
            codec=codec,
            chunk_size=5 * MiB,
            checksum_in_header=True,
            min_payload_size=0,
        )
    return result.message_id


async def _inbox(url: str) -> list[str]:
    async with MeshClient(_config(url, SENDER)) as client:
        return await client.list_inbox()


def _wait_until_acknowledged(ledger: Ledger, message_id: str, fleet: Fleet) -> ReceiveRecord:
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        found = ledger.find_receive(SENDER, message_id)
        if found is not None and found.state == "acknowledged":
            return found
        if found is not None and found.state == "failed":
            raise AssertionError(f"the receive failed: {found.error}\n{fleet.log_text()}")
        time.sleep(0.2)
    raise AssertionError(f"never received:\n{fleet.log_text()}")


def _assert_received_once(
    ledger: Ledger, record: ReceiveRecord, fleet: Fleet, source: Path, inbox: Path
) -> set[str]:
    """Byte-exact, one file in the inbox, acknowledged once, each chunk written once; the
    workers that wrote chunks."""
    assert sorted(path.name for path in inbox.iterdir()) == ["extract.csv"]
    assert xxh3_128_file(inbox / "extract.csv") == xxh3_128_file(source)
    assert record.chunk_count == 12 and record.chunks_done == 12
    events = ledger.events(record)
    assert [e.detail.get("again") for e in events if e.kind == "acknowledged"] == [False]
    written = sorted(e.detail["number"] for e in events if e.kind == "chunk_written")
    assert written == list(range(1, 13))
    assert [r.message_id for r in ledger.history(HistoryFilter(direction="receive"))] == [
        record.message_id
    ]
    assert asyncio.run(_inbox(fleet.url)) == []
    workers = {chunk.worker for chunk in ledger.chunks(record)}
    assert None not in workers
    return {worker for worker in workers if worker is not None}


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
@pytest.mark.parametrize("faults", [FLIP], indirect=True)
@pytest.mark.usefixtures("faults")
def test_three_workers_receive_one_message_into_one_file(
    fleet: Fleet, tmp_path: Path, workflow: str, codec: Codec
) -> None:
    source = write_csv(tmp_path / "extract.csv", SIZE)
    message_id = asyncio.run(_send(fleet.url, source, workflow, codec))
    inbox = tmp_path / "inbox"
    fleet.start_all("--inbox", str(inbox), "--poll-interval", "1")
    with Ledger.open(fleet.ledger) as ledger:
        record = _wait_until_acknowledged(ledger, message_id, fleet)
        time.sleep(1.5)  # another tick: nobody receives it again
        workers = _assert_received_once(ledger, record, fleet, source, inbox)
    assert len(workers) >= 2, fleet.log_text()
    logs = "".join(path.read_text(errors="replace") for path in fleet.logs.glob("*.log"))
    assert f"chunk {FLIPPED_CHUNK} of 12 of message {message_id} failed verification" in logs


@pytest.mark.parametrize("faults", [STALL], indirect=True)
@pytest.mark.usefixtures("faults")
def test_a_worker_killed_holding_a_range_leaves_it_to_another(
    fleet: Fleet, tmp_path: Path, workflow: str
) -> None:
    source = write_csv(tmp_path / "extract.csv", SIZE)
    message_id = asyncio.run(_send(fleet.url, source, workflow, "zstd"))
    inbox = tmp_path / "inbox"
    fleet.start_all("--inbox", str(inbox), "--poll-interval", "1")
    with Ledger.open(fleet.ledger) as ledger:
        # The range holding the stalled chunk: the chunk before it is written, by its worker.
        deadline = time.monotonic() + 30
        holder = None
        while holder is None and time.monotonic() < deadline:
            found = ledger.find_receive(SENDER, message_id)
            if found is not None:
                chunks = {c.number: c for c in ledger.chunks(found)}
                before = chunks.get(STALLED_CHUNK - 1)
                if before is not None and STALLED_CHUNK not in chunks:
                    holder = before.worker
            time.sleep(0.05)
        assert holder is not None, fleet.log_text()
        fleet.kill(holder)
        record = _wait_until_acknowledged(ledger, message_id, fleet)
        _assert_received_once(ledger, record, fleet, source, inbox)
        stalled = next(c for c in ledger.chunks(record) if c.number == STALLED_CHUNK)
        assert stalled.worker != holder
    assert not list(inbox.glob(".*meshpipe-partial"))


@pytest.mark.parametrize("faults", [ALWAYS_FLIPPED], indirect=True)
@pytest.mark.usefixtures("faults")
def test_a_chunk_that_never_verifies_fails_the_receive_unacknowledged(
    fleet: Fleet, tmp_path: Path, workflow: str
) -> None:
    source = write_csv(tmp_path / "extract.csv", SIZE)
    message_id = asyncio.run(_send(fleet.url, source, workflow, "zstd"))
    inbox = tmp_path / "inbox"
    fleet.start_all("--inbox", str(inbox), "--poll-interval", "1")
    deadline = time.monotonic() + 40
    with Ledger.open(fleet.ledger) as ledger:
        while time.monotonic() < deadline:
            found = ledger.find_receive(SENDER, message_id)
            if found is not None and found.state not in ("downloading",):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"the receive never ended:\n{fleet.log_text()}")
        assert found.state == "failed", fleet.log_text()
        assert found.error is not None
        assert f"chunk {FLIPPED_CHUNK} of 12" in found.error
        assert "failed verification 3 times" in found.error
        assert not [e for e in ledger.events(found) if e.kind in ("verified", "acknowledged")]
    assert not (inbox / "extract.csv").exists()
    assert asyncio.run(_inbox(fleet.url)) == [message_id]


def _metadata(checksum: str, chunks: int) -> MessageMetadata:
    headers = {"mex-chunk-range": f"1:{chunks}", "mex-content-checksum": checksum}
    return MessageMetadata.from_headers("M1", headers)


@pytest.mark.parametrize(
    ("checksum", "chunks", "spread"),
    [
        (f"meshpipe/1 xxh3-128:{'a' * 32} size:62914560 chunk:5242880 codec:zstd", 12, True),
        (f"meshpipe/1 xxh3-128:{'a' * 32} size:10485760 chunk:5242880 codec:zstd", 2, False),
        ("meshpipe/2 xxh3-128:trailer size:62914560 chunk:5242880 codec:zstd", 12, False),
        (f"meshpipe/1 xxh3-128:{'a' * 32} size:62914560 codec:zstd", 12, False),
        (f"xxh3-128:{'a' * 32}", 12, False),
    ],
)
def test_only_a_large_header_form_message_is_spread(
    checksum: str, chunks: int, spread: bool
) -> None:
    assert spreads(_metadata(checksum, chunks)) is spread


@pytest.mark.parametrize("kernel_copies", [True, False])
def test_a_verified_chunk_is_copied_to_its_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_copies: bool
) -> None:
    """In the kernel, or 1 MiB at a time where it cannot copy (across filesystems)."""
    if not kernel_copies:

        def refuse(*_args: object) -> int:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    chunk = tmp_path / "chunk"
    body = os.urandom(3 * MiB + 17)
    chunk.write_bytes(body)
    partial = tmp_path / "partial"
    partial.write_bytes(b"\0" * (10 * MiB))
    descriptor = os.open(partial, os.O_WRONLY)
    try:
        _copy_at(str(chunk), descriptor, 5 * MiB, len(body))
    finally:
        os.close(descriptor)
    data = partial.read_bytes()
    assert data[5 * MiB : 5 * MiB + len(body)] == body
    assert data[: 5 * MiB] == b"\0" * (5 * MiB) and len(data) == 10 * MiB
