"""One large message received by many workers (meshpipe.fleet.receive): chunk ranges written
into one preallocated file on the shared inbox path by three workers, then verified, renamed
and acknowledged once; and again with a worker killed while it holds a range."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from meshpipe._meshpipe import Assembler, Splitter, xxh3_128_file
from meshpipe.client import MeshClient
from meshpipe.config import MeshConfig
from meshpipe.errors import ChecksumMismatchError
from meshpipe.fleet.receive import Manifest, _copy_at, _manifest_of, spreads
from meshpipe.headers import SendHeaders
from meshpipe.ledger import HistoryFilter, Ledger, ReceiveRecord
from meshpipe.models import ContentChecksum, MessageMetadata
from meshpipe.server.process import server_process
from meshpipe.synthetic import write_csv
from meshpipe.transfer import send_file
from meshpipe.units import Codec, MiB
from tests.fleet.conftest import RECIPIENT, SENDER, Fleet, mesh_env
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


async def _send(
    url: str, source: Path, workflow: str, codec: Codec, *, checksum_in_header: bool = True
) -> str:
    """Send ``source`` to the fleet's mailbox in 5 MiB chunks, its hash in chunk 1's header
    (or, with ``checksum_in_header=False``, in the manifest at the end of the last chunk)."""
    async with MeshClient(_config(url, RECIPIENT)) as client:
        headers = SendHeaders(to=SENDER, workflow_id=workflow, filename="extract.csv")
        result = await send_file(
            client,
            source,
            headers,
            codec=codec,
            chunk_size=5 * MiB,
            checksum_in_header=checksum_in_header,
            min_payload_size=0,
        )
    return result.message_id


async def _inbox(url: str) -> list[str]:
    async with MeshClient(_config(url, SENDER)) as client:
        return await client.list_inbox()


async def _clear_inbox(url: str, *, keep: str) -> None:
    """Acknowledge every message in the fleet's mailbox but ``keep``: mesh-sandbox lives for
    the session, and a poll receives whatever an earlier test left there."""
    async with MeshClient(_config(url, SENDER)) as client:
        for message_id in await client.list_inbox():
            if message_id != keep:
                await client.acknowledge(message_id)


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
        assert "chunk 1:" not in found.error  # the one-chunk check's own number is not told
        assert not [e for e in ledger.events(found) if e.kind in ("verified", "acknowledged")]
    assert not (inbox / "extract.csv").exists()
    assert asyncio.run(_inbox(fleet.url)) == [message_id]


def _metadata(checksum: str, chunks: int) -> MessageMetadata:
    headers = {"mex-chunk-range": f"1:{chunks}", "mex-content-checksum": checksum}
    if "codec:gzip" in checksum:
        headers["content-encoding"] = "gzip"
    return MessageMetadata.from_headers("M1", headers)


@pytest.mark.parametrize(
    ("checksum", "chunks", "spread"),
    [
        (f"meshpipe/1 xxh3-128:{'a' * 32} size:62914560 chunk:5242880 codec:zstd", 12, True),
        (f"meshpipe/1 xxh3-128:{'a' * 32} size:10485760 chunk:5242880 codec:zstd", 2, False),
        ("meshpipe/2 xxh3-128:trailer size:62914560 chunk:5242880 codec:zstd", 12, True),
        ("meshpipe/2 xxh3-128:trailer size:62914560 chunk:5242880 codec:gzip", 12, True),
        ("meshpipe/2 xxh3-128:trailer size:10485760 chunk:5242880 codec:zstd", 2, False),
        ("meshpipe/2 xxh3-128:trailer size:62914560 chunk:5242880 codec:none", 12, False),
        ("meshpipe/2 xxh3-128:trailer size:62914560 codec:zstd", 12, False),
        (f"meshpipe/1 xxh3-128:{'a' * 32} size:62914560 codec:zstd", 12, False),
        (f"xxh3-128:{'a' * 32}", 12, False),
    ],
)
def test_only_a_large_message_with_meshpipe_s_checksum_is_spread(
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


# --- the trailer form; failures the final job finds; a failed receive taken up again ---------


def _manifests(ledger: Ledger, record: ReceiveRecord) -> list[object]:
    return [
        event.detail["manifest"]
        for event in ledger.events(record)
        if event.kind == "note" and "manifest" in event.detail
    ]


@pytest.mark.parametrize("peer_name", ["serve", "sandbox"])
@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_trailer_form_messages_are_received_by_the_fleet(
    fleet: Fleet, tmp_path: Path, workflow: str, codec: Codec, peer_name: str
) -> None:
    """``meshpipe send --compress gzip|zstd``'s default: the whole-file hash travels in the
    manifest at the end of the last chunk. The last chunk's job records it; the final job
    checks the file against it."""
    source = write_csv(tmp_path / "extract.csv", SIZE)
    message_id = asyncio.run(_send(fleet.url, source, workflow, codec, checksum_in_header=False))
    asyncio.run(_clear_inbox(fleet.url, keep=message_id))
    inbox = tmp_path / "inbox"
    fleet.start_all("--inbox", str(inbox), "--poll-interval", "1")
    with Ledger.open(fleet.ledger) as ledger:
        record = _wait_until_acknowledged(ledger, message_id, fleet)
        checksum = MessageMetadata.from_headers(message_id, dict(record.headers)).checksum
        assert checksum is not None and checksum.trailer and checksum.xxh3_128 is None
        time.sleep(1.5)  # another tick: nobody receives it again
        workers = _assert_received_once(ledger, record, fleet, source, inbox)
        whole = xxh3_128_file(source)
        assert _manifests(ledger, record) == [{"xxh3_128": whole, "size": SIZE}]
        assert record.xxh3_128 == whole
    assert len(workers) >= 2, fleet.log_text()
    assert not list(inbox.glob(".*meshpipe-partial"))


#: A message of 4 chunks: spread over the fleet, and quick to send.
SMALL: Final = 20 * MiB
FORGED: Final = "0123456789abcdef" * 2


async def _send_raw(
    url: str, payloads: list[bytes], workflow: str, checksum: str, codec: Codec
) -> str:
    """Post ``payloads`` (gzip, or zstd) as one message with ``checksum`` as its
    mex-Content-Checksum, through the raw client (no checks of ours on the way)."""
    encoding = "gzip" if codec == "gzip" else None
    async with MeshClient(_config(url, RECIPIENT)) as client:
        headers = SendHeaders(
            to=SENDER,
            workflow_id=workflow,
            local_id=f"raw-{uuid.uuid4().hex}",
            filename="extract.csv",
            checksum=checksum,
            compressed=True if codec == "zstd" else None,
        ).validate()
        count = len(payloads)
        message_id = await client.send_message(
            headers, payloads[0], chunk_count=count, content_encoding=encoding
        )
        for number in range(2, count + 1):
            await client.send_chunk(
                message_id, number, count, payloads[number - 1], content_encoding=encoding
            )
    return message_id


def _payloads(source: Path, codec: Codec, *, trailer: bool) -> list[bytes]:
    with Splitter(
        source, codec=codec, chunk_size=5 * MiB, min_chunk_size=0, trailer=trailer
    ) as splitter:
        return [bytes(chunk) for chunk in splitter]


def _change_manifest(payload: bytes, field: bytes, to: bytes | None = None) -> bytes:
    """``payload`` with the first digit of the manifest's ``field`` changed to ``to`` (by
    default another digit; the length stays)."""
    at = payload.rindex(field) + len(field)
    digit = payload[at : at + 1]
    changed = to or (b"1" if digit in b"09abcdef" else bytes([digit[0] + 1]))
    return payload[:at] + changed + payload[at + 1 :]


@dataclass(frozen=True)
class Damage:
    """A message that does not match its checksum: its payloads and mex-Content-Checksum, what
    the ledger's reason says, and the chunk whose job refused it (never written; None: the
    final job found it, every chunk written)."""

    payloads: list[bytes]
    header: str
    reason: list[str]
    refused_chunk: int | None


def _damaged(source: Path, damage: str, codec: Codec) -> Damage:
    whole, size = xxh3_128_file(source), source.stat().st_size
    trailer = ContentChecksum(size=size, chunk_size=5 * MiB, codec=codec, trailer=True)
    announced = trailer.header_value()
    if damage == "forged-header":
        header = ContentChecksum(xxh3_128=FORGED, size=size, chunk_size=5 * MiB, codec=codec)
        reason = [f"xxh3-128 is {whole}, but the sender declared {FORGED};"]
        return Damage(_payloads(source, codec, trailer=False), header.header_value(), reason, None)
    if damage == "missing-manifest":
        reason = ["chunk 4 of 4", "failed verification 3 times", "manifest"]
        return Damage(_payloads(source, codec, trailer=False), announced, reason, 4)
    payloads = _payloads(source, codec, trailer=True)
    plain = _payloads(source, codec, trailer=False)
    manifest = payloads[-1][len(plain[-1]) :]  # the manifest's bytes, as the splitter ends with
    if damage == "manifest-in-a-middle-chunk":
        payloads[1] += manifest
        reason = ["chunk 2 of 4", "failed verification 3 times", "only the last chunk carries"]
        return Damage(payloads, announced, reason, 2)
    if damage == "unannounced-manifest-disagrees":
        header = ContentChecksum(xxh3_128=whole, size=size, chunk_size=5 * MiB, codec=codec)
        plain[-1] += _change_manifest(manifest, b"xxh3-128:")
        reason = ["chunk 4 of 4", "failed verification 3 times", "disagrees with chunk 1's header"]
        return Damage(plain, header.header_value(), reason, 4)
    if damage == "changed-manifest":
        payloads[-1] = _change_manifest(payloads[-1], b"xxh3-128:")
        reason = [f"xxh3-128 is {whole}, but the sender declared", "in the manifest at the end"]
        return Damage(payloads, announced, reason, None)
    if damage == "malformed-manifest":
        payloads[-1] = _change_manifest(payloads[-1], b"size:", b"x")
        reason = ["chunk 4 of 4", "failed verification 3 times", "malformed whole-file manifest"]
        return Damage(payloads, announced, reason, 4)
    assert damage == "manifest-size"
    payloads[-1] = _change_manifest(payloads[-1], b"size:")
    reason = ["the manifest at the end of chunk 4 of 4", f"headers declare {size} bytes"]
    return Damage(payloads, announced, reason, 4)


def _wait_until_failed(ledger: Ledger, message_id: str, fleet: Fleet) -> ReceiveRecord:
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        found = ledger.find_receive(SENDER, message_id)
        if found is not None and found.state != "downloading":
            assert found.state == "failed", fleet.log_text()
            return found
        time.sleep(0.2)
    raise AssertionError(f"the receive never ended:\n{fleet.log_text()}")


@pytest.mark.parametrize(
    ("damage", "codec", "peer_name"),
    [
        ("forged-header", "gzip", "serve"),
        ("changed-manifest", "gzip", "serve"),
        ("changed-manifest", "zstd", "serve"),
        ("missing-manifest", "gzip", "serve"),
        # meshpipe serve, as MESH, refuses a body it cannot decode: the sandbox takes it
        ("malformed-manifest", "zstd", "sandbox"),
        ("manifest-size", "zstd", "serve"),
        ("manifest-in-a-middle-chunk", "gzip", "serve"),
        ("manifest-in-a-middle-chunk", "zstd", "sandbox"),
        ("unannounced-manifest-disagrees", "zstd", "serve"),
    ],
)
def test_a_message_that_does_not_match_its_checksum_fails_unacknowledged(
    fleet: Fleet, tmp_path: Path, workflow: str, damage: str, codec: Codec, peer_name: str
) -> None:
    """Every chunk intact, the file not what the sender declared (a wrong hash in the header,
    a changed manifest: found by the final job), or a manifest missing, malformed or of another
    size (found by the last chunk's job): the receive fails with the reason in the ledger, nothing
    is placed in the inbox folder and the message stays on MESH, unacknowledged."""
    source = write_csv(tmp_path / "extract.csv", SMALL)
    damaged = _damaged(source, damage, codec)
    message_id = asyncio.run(
        _send_raw(fleet.url, damaged.payloads, workflow, damaged.header, codec)
    )
    asyncio.run(_clear_inbox(fleet.url, keep=message_id))
    inbox = tmp_path / "inbox"
    fleet.start_all("--inbox", str(inbox), "--poll-interval", "1", names=("w1", "w2"))
    with Ledger.open(fleet.ledger) as ledger:
        record = _wait_until_failed(ledger, message_id, fleet)
        assert record.error is not None
        for part in damaged.reason:
            assert part in record.error, record.error
        written = ledger.written_chunks(record)
        if damaged.refused_chunk is None:
            assert sorted(written) == [1, 2, 3, 4]
        else:
            assert damaged.refused_chunk not in written
        kinds = {event.kind for event in ledger.events(record)}
        assert not kinds & {"verified", "delivered", "acknowledged"}
    assert not (inbox / "extract.csv").exists()
    assert asyncio.run(_inbox(fleet.url)) == [message_id]
    fleet.stop()
    asyncio.run(_clear_inbox(fleet.url, keep=""))  # leave mesh-sandbox's inbox empty


#: The first three downloads of chunk 3 arrive damaged: the fleet's three attempts fail; the
#: fourth (meshpipe receive's) is slow, so that polls of the fleet meet the receive under way.
FLIPPED_THRICE: Final = [
    {"kind": "flip", "route": "download", "chunk": 3, "times": 3},
    {"kind": "stall", "route": "download", "chunk": 3, "nth": 4, "seconds": 2},
]


@pytest.mark.parametrize("faults", [FLIPPED_THRICE], indirect=True)
@pytest.mark.usefixtures("faults")
def test_a_failed_receive_is_taken_up_by_meshpipe_receive(
    fleet: Fleet, tmp_path: Path, workflow: str
) -> None:
    """The fleet's later polls leave a failed receive failed (each logs it); ``meshpipe
    receive`` on the same ledger takes it up while the fleet runs (it holds the transfer, so
    the polls leave it alone): only the chunks not written are downloaded, the file is
    delivered once and the message acknowledged once."""
    source = write_csv(tmp_path / "extract.csv", SMALL)
    message_id = asyncio.run(_send(fleet.url, source, workflow, "zstd", checksum_in_header=False))
    inbox = tmp_path / "inbox"
    fleet.start_all("--inbox", str(inbox), "--poll-interval", "1", names=("w1", "w2"))
    with Ledger.open(fleet.ledger) as ledger:
        failed = _wait_until_failed(ledger, message_id, fleet)
        assert failed.error is not None and "chunk 3 of 4" in failed.error
        time.sleep(1.5)  # another tick: the fleet does not take it up
        record = ledger.find_receive(SENDER, message_id)
        assert record is not None and record.state == "failed"
        assert asyncio.run(_inbox(fleet.url)) == [message_id]
        done = subprocess.run(
            [sys.executable, "-m", "meshpipe", "receive", "--all", "--out-dir", str(inbox),
             "--ledger", fleet.ledger],
            env={**os.environ, **mesh_env(fleet.url, SENDER)},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, (done.stdout, done.stderr, fleet.log_text())
        record = ledger.find_receive(SENDER, message_id)
        assert record is not None and record.state == "acknowledged"
        events = ledger.events(record)
        assert [e.detail.get("again") for e in events if e.kind == "acknowledged"] == [False]
        assert [e.kind for e in events].count("resumed") == 1
        workers = {chunk.number: chunk.worker for chunk in ledger.chunks(record)}
        assert workers[3] is None  # written by meshpipe receive, not by a fleet worker
        assert {workers[1], workers[2]} <= {"w1", "w2"}  # kept from the fleet's attempt
    assert sorted(path.name for path in inbox.iterdir()) == ["extract.csv"]
    assert xxh3_128_file(inbox / "extract.csv") == xxh3_128_file(source)
    assert asyncio.run(_inbox(fleet.url)) == []
    logs = "".join(path.read_text(errors="replace") for path in fleet.logs.glob("*.log"))
    assert f"message {message_id} is being received by " in logs


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
@pytest.mark.parametrize("trailer", [True, False])
def test_the_last_chunk_s_manifest_is_read_from_the_engine(
    tmp_path: Path, codec: Codec, trailer: bool
) -> None:
    """What _manifest_of takes from the engine's report of the last chunk alone: the file's
    xxh3-128 and size; a last chunk without one fails verification."""
    source = tmp_path / "source"
    source.write_bytes(os.urandom(3 * MiB + 123))
    with Splitter(
        source, codec=codec, chunk_size=MiB, min_chunk_size=1, trailer=trailer
    ) as splitter:
        last = [bytes(chunk) for chunk in splitter][-1]
    assembler = Assembler(
        tmp_path / "chunk", chunk_count=1, codec=codec, chunk_size=123, file_size=123
    )
    try:
        writer = assembler.open_chunk(1)
        writer.write(last)
        report = writer.finish()
        if trailer:
            manifest = _manifest_of(report, "chunk 4 of 4")
            assert manifest == Manifest(xxh3_128_file(source), 3 * MiB + 123)
        else:
            with pytest.raises(ChecksumMismatchError, match=r"chunk 4 of 4 .* carries none"):
                _manifest_of(report, "chunk 4 of 4")
    finally:
        assembler.abort()
