"""Byte-exact interop with NHS's own software: meshpipe -> mesh-sandbox -> mesh-client and
mesh-client -> mesh-sandbox -> meshpipe, single and multi-chunk, uncompressed and gzip; zstd
between meshpipe peers (a plain recipient gets a standard .zst). A gzip or zstd message of
several chunks carries its whole-file hash at the end of the last chunk: mesh-client still
gets the exact original bytes, and a meshpipe recipient refuses a message whose manifest is
missing or wrong."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import mesh_client
import pytest
import zstandard

from meshpipe._meshpipe import Splitter
from meshpipe.client import MeshClient
from meshpipe.errors import ChecksumMismatchError
from meshpipe.headers import SendHeaders
from meshpipe.models import ContentChecksum
from meshpipe.transfer import receive_message, send_file
from tests.client.conftest import RECIPIENT, SENDER, MiB, write_csv

MeshClientFactory = Callable[..., mesh_client.MeshClient]


def content(path: Path) -> bytes:
    return path.read_bytes()


def read_with_mesh_client(client: mesh_client.MeshClient, message_id: str) -> tuple[object, bytes]:
    message = client.retrieve_message(message_id)
    try:
        return message, message.read()
    finally:
        message.close()


@pytest.mark.parametrize("codec", ["none", "gzip"])
@pytest.mark.parametrize("shape", ["single", "multi"])
async def test_meshpipe_to_mesh_client(
    sender: MeshClient,
    mesh_client_for: MeshClientFactory,
    small_file: Path,
    multi_file: Path,
    workflow: str,
    codec: str,
    shape: str,
) -> None:
    source = small_file if shape == "single" else multi_file
    local_id = f"interop-{uuid.uuid4().hex}"
    result = await send_file(
        sender,
        source,
        SendHeaders(
            to=RECIPIENT,
            workflow_id=workflow,
            local_id=local_id,
            subject="interop subject",
            filename="extract.csv",
        ),
        codec=codec,
        chunk_size=5 * MiB,
    )
    assert result.chunk_count == (1 if shape == "single" else 3)
    peer = mesh_client_for(RECIPIENT)
    assert result.message_id in await asyncio.to_thread(peer.list_messages)
    message, data = await asyncio.to_thread(read_with_mesh_client, peer, result.message_id)
    assert data == source.read_bytes()
    # header parity: what NHS's client sees is what meshpipe sent
    assert message.workflow_id == workflow  # type: ignore[attr-defined]
    assert message.local_id == local_id  # type: ignore[attr-defined]
    assert message.subject == "interop subject"  # type: ignore[attr-defined]
    assert message.filename == "extract.csv"  # type: ignore[attr-defined]
    assert message.sender == SENDER  # type: ignore[attr-defined]
    assert message.message_type == "DATA"  # type: ignore[attr-defined]
    checksum = ContentChecksum.parse(message.checksum)  # type: ignore[attr-defined]
    assert checksum is not None and checksum.meshpipe
    # gzip of several chunks: the hash is in the last chunk's manifest, which mesh-client's
    # gzip decoding skipped (the bytes above are the original's); else it is in the header.
    trailer = codec == "gzip" and shape == "multi"
    assert checksum.trailer is trailer
    assert checksum.xxh3_128 == (None if trailer else result.xxh3_128)
    assert checksum.size == source.stat().st_size and checksum.codec == codec
    await asyncio.to_thread(peer.acknowledge_message, result.message_id)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("shape", ["single", "multi"])
async def test_mesh_client_to_meshpipe(
    recipient: MeshClient,
    mesh_client_for: MeshClientFactory,
    small_file: Path,
    multi_file: Path,
    workflow: str,
    tmp_path: Path,
    compress: bool,
    shape: str,
) -> None:
    source = small_file if shape == "single" else multi_file
    peer = mesh_client_for(SENDER, max_chunk_size=5 * MiB)
    data = source.read_bytes()
    message_id = await asyncio.to_thread(
        peer.send_message,
        RECIPIENT,
        data,
        workflow_id=workflow,
        filename="from-nhs.csv",
        local_id="nhs-local",
        subject="from mesh-client",
        compress=compress,
    )
    info = await recipient.head(message_id)
    assert info.chunk_count == (1 if shape == "single" else 3)
    assert (info.content_encoding == "gzip") is compress
    destination = tmp_path / "received.csv"
    result = await receive_message(recipient, message_id, destination)
    assert destination.read_bytes() == data
    assert result.acknowledged
    assert (info.filename, info.local_id, info.subject) == (
        "from-nhs.csv",
        "nhs-local",
        "from mesh-client",
    )
    # a plain sender carries no meshpipe checksum: the result says what was verified
    if compress:
        assert any("gzip" in item for item in result.verified)
    else:
        assert result.verified == []
    assert not any("xxh3" in item and "file" in item for item in result.verified)
    assert message_id not in await recipient.list_inbox(workflow_filter=workflow)


async def test_zstd_between_meshpipe_peers(
    sender: MeshClient,
    recipient: MeshClient,
    mesh_client_for: MeshClientFactory,
    multi_file: Path,
    workflow: str,
    tmp_path: Path,
) -> None:
    result = await send_file(
        sender,
        multi_file,
        SendHeaders(to=RECIPIENT, workflow_id=workflow),
        codec="zstd",
        chunk_size=5 * MiB,
        min_payload_size=0,
    )
    assert result.bytes_sent < len(content(multi_file))
    info = await recipient.head(result.message_id)
    assert info.compressed is True and info.filename == "multi.csv.zst"
    assert info.content_type == "application/zstd"
    # a plain MESH recipient gets a standard .zst that any zstd tool restores
    peer = mesh_client_for(RECIPIENT)
    _, stream = await asyncio.to_thread(read_with_mesh_client, peer, result.message_id)
    restored = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True).read()
    assert restored == content(multi_file)
    # a meshpipe recipient restores and verifies the original
    destination = tmp_path / "restored.csv"
    received = await receive_message(recipient, result.message_id, destination)
    assert content(destination) == content(multi_file)
    assert "file xxh3-128" in received.verified
    # or keeps the .zst if asked
    second = await send_file(
        sender,
        multi_file,
        SendHeaders(to=RECIPIENT, workflow_id=workflow),
        codec="zstd",
        chunk_size=5 * MiB,
        min_payload_size=0,
    )
    kept = tmp_path / "kept.zst"
    await receive_message(recipient, second.message_id, kept, decode_payload=False)
    assert content(kept) == stream


async def test_meshpipe_to_meshpipe_gzip_random_data(
    sender: MeshClient, recipient: MeshClient, workflow: str, tmp_path: Path
) -> None:
    source = tmp_path / "random.bin"
    source.write_bytes(uuid.uuid4().bytes * (700_000))  # 11.2 MB, 3 chunks
    result = await send_file(
        sender,
        source,
        SendHeaders(to=RECIPIENT, workflow_id=workflow),
        codec="gzip",
        chunk_size=5 * MiB,
    )
    destination = tmp_path / "out.bin"
    received = await receive_message(recipient, result.message_id, destination)
    assert destination.read_bytes() == source.read_bytes()
    assert received.verified[0] == "file xxh3-128"


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["none", "gzip"])
async def test_many_chunks_both_ways(
    sender: MeshClient,
    recipient: MeshClient,
    mesh_client_for: MeshClientFactory,
    workflow: str,
    tmp_path: Path,
    codec: str,
) -> None:
    """101 MiB in 5 MiB chunks (21 chunks) each way, at meshpipe's concurrency."""
    source = write_csv(tmp_path / "large.csv", 101 * MiB)
    result = await send_file(
        sender,
        source,
        SendHeaders(to=RECIPIENT, workflow_id=workflow),
        codec=codec,
        chunk_size=5 * MiB,
        concurrency=8,
    )
    assert result.chunk_count == 21
    peer = mesh_client_for(RECIPIENT)
    _, data = await asyncio.to_thread(read_with_mesh_client, peer, result.message_id)
    assert data == content(source)
    await asyncio.to_thread(peer.acknowledge_message, result.message_id)

    nhs_sender = mesh_client_for(SENDER, max_chunk_size=5 * MiB)
    message_id = await asyncio.to_thread(
        nhs_sender.send_message, RECIPIENT, data, workflow_id=workflow, compress=codec == "gzip"
    )
    destination = tmp_path / "back.csv"
    received = await receive_message(recipient, message_id, destination, concurrency=8)
    assert received.chunk_count == 21
    assert content(destination) == data


async def test_empty_file_both_ways(
    sender: MeshClient,
    recipient: MeshClient,
    mesh_client_for: MeshClientFactory,
    workflow: str,
    tmp_path: Path,
) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    first = await send_file(sender, empty, SendHeaders(to=RECIPIENT, workflow_id=workflow))
    assert first.codec == "gzip" and first.file_size == 0
    peer = mesh_client_for(RECIPIENT)
    _, data = await asyncio.to_thread(read_with_mesh_client, peer, first.message_id)
    assert data == b""
    second = await send_file(sender, empty, SendHeaders(to=RECIPIENT, workflow_id=workflow))
    received = await receive_message(recipient, second.message_id, tmp_path / "got.csv")
    assert received.size == 0 and content(tmp_path / "got.csv") == b""
    await asyncio.to_thread(peer.acknowledge_message, first.message_id)


@pytest.mark.parametrize(
    ("size", "codec"),
    [
        (1, "none"),
        (5 * MiB - 1, "none"),
        (5 * MiB, "none"),
        (5 * MiB + 1, "none"),
        (5 * MiB + 1, "gzip"),
        (5 * MiB + 1, "zstd"),
        (10 * MiB, "none"),
        (10 * MiB + 1, "gzip"),
        (10 * MiB + 1, "zstd"),
    ],
)
async def test_awkward_sizes_round_trip(
    sender: MeshClient,
    recipient: MeshClient,
    workflow: str,
    tmp_path: Path,
    size: int,
    codec: str,
) -> None:
    """Around the chunk boundary: 1 chunk, exactly 1, 2 with a 1-byte last chunk, 3."""
    source = write_csv(tmp_path / "edge.csv", size)
    result = await send_file(
        sender,
        source,
        SendHeaders(to=RECIPIENT, workflow_id=workflow),
        codec=codec,
        chunk_size=5 * MiB,
        min_payload_size=0,
    )
    assert result.chunk_count == max(1, -(-size // (5 * MiB)))
    destination = tmp_path / "out.csv"
    received = await receive_message(recipient, result.message_id, destination)
    assert content(destination) == content(source)
    assert received.chunk_count == result.chunk_count
    assert "file xxh3-128" in received.verified


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
async def test_the_header_form_on_request_reaches_mesh_client(
    sender: MeshClient,
    recipient: MeshClient,
    mesh_client_for: MeshClientFactory,
    multi_file: Path,
    workflow: str,
    tmp_path: Path,
    codec: str,
) -> None:
    """checksum_in_header: the meshpipe/1 form (a receiver older than the trailer verifies it)."""
    result = await send_file(
        sender,
        multi_file,
        SendHeaders(to=RECIPIENT, workflow_id=workflow),
        codec=codec,  # type: ignore[arg-type]
        chunk_size=5 * MiB,
        min_payload_size=0,
        checksum_in_header=True,
    )
    assert result.checksum_header.startswith(f"meshpipe/1 xxh3-128:{result.xxh3_128} ")
    destination = tmp_path / "out.csv"
    received = await receive_message(recipient, result.message_id, destination)
    assert content(destination) == content(multi_file)
    assert "file xxh3-128" in received.verified


def _payloads(source: Path, codec: str, *, trailer: bool) -> list[bytes]:
    with Splitter(
        source, codec=codec, chunk_size=5 * MiB, min_chunk_size=0, trailer=trailer
    ) as splitter:
        return [bytes(chunk) for chunk in splitter]


def _flip_manifest_digit(payload: bytes) -> bytes:
    at = payload.rindex(b"xxh3-128:") + len(b"xxh3-128:")
    return payload[:at] + (b"1" if payload[at : at + 1] == b"0" else b"0") + payload[at + 1 :]


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
@pytest.mark.parametrize("damage", ["flipped", "missing"])
async def test_a_damaged_or_missing_manifest_is_refused(
    sender: MeshClient,
    recipient: MeshClient,
    mesh_client_for: MeshClientFactory,
    multi_file: Path,
    workflow: str,
    tmp_path: Path,
    codec: str,
    damage: str,
) -> None:
    """A message whose header announces the trailer, with one hex digit of the manifest's hash
    changed, or with no manifest at all: meshpipe receives every chunk (each is intact), then
    refuses the file, leaving nothing at the destination and the message unacknowledged.
    mesh-client, which never looks at the manifest, still gets the original bytes."""
    payloads = _payloads(multi_file, codec, trailer=damage == "flipped")
    assert len(payloads) == 3
    if damage == "flipped":
        payloads[-1] = _flip_manifest_digit(payloads[-1])
    size = (await asyncio.to_thread(multi_file.stat)).st_size
    header = ContentChecksum(
        size=size, chunk_size=5 * MiB, codec=codec, trailer=True
    ).header_value()
    headers = SendHeaders(
        to=RECIPIENT,
        workflow_id=workflow,
        local_id=f"manifest-{uuid.uuid4().hex}",
        filename="multi.csv" + (".zst" if codec == "zstd" else ""),
        checksum=header,
        compressed=True if codec == "zstd" else None,
    ).validate()
    encoding = "gzip" if codec == "gzip" else None
    message_id = await sender.send_message(
        headers, payloads[0], chunk_count=3, content_encoding=encoding
    )
    for number in (2, 3):
        await sender.send_chunk(
            message_id, number, 3, payloads[number - 1], content_encoding=encoding
        )
    folder = tmp_path / "received"
    folder.mkdir()
    destination = folder / "refused.csv"
    with pytest.raises(ChecksumMismatchError, match="manifest in the last chunk"):
        await receive_message(recipient, message_id, destination)
    assert [p.name for p in folder.iterdir()] == []
    assert message_id in await recipient.list_inbox(workflow_filter=workflow)
    if codec == "gzip":
        peer = mesh_client_for(RECIPIENT)
        _, data = await asyncio.to_thread(read_with_mesh_client, peer, message_id)
        assert data == content(multi_file)
