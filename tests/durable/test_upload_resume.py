"""Upload's resume stage on its own (no ledger): it sends only the chunks it is not told MESH
holds, into the given message, the last one last; and a file that changes while the rest is
sent is not completed (a subset split has no whole-file digest, so the file's identity is
compared before the last chunk)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshpipe._meshpipe import xxh3_128_file
from meshpipe.client import ClientSettings, MeshClient
from meshpipe.errors import SourceChangedError
from meshpipe.headers import SendHeaders
from meshpipe.retry import RetryingClient
from meshpipe.server import LocalMeshServer
from meshpipe.synthetic import write_csv
from meshpipe.transfer import SendJournal, Upload, receive_message
from meshpipe.units import Codec, MiB
from tests.client.conftest import FAST_RETRY, RECIPIENT, SENDER, make_config
from tests.peers import SANDBOX_SHARED_KEY

HEADERS = SendHeaders(to=RECIPIENT, workflow_id="TEST_WORKFLOW", local_id="UPLOAD-RESUME")


@pytest.fixture
async def client() -> AsyncIterator[MeshClient]:
    async with (
        LocalMeshServer(shared_key=SANDBOX_SHARED_KEY, rules="sandbox") as server,
        MeshClient(make_config(server.url, SENDER), ClientSettings(retry=FAST_RETRY)) as sender,
    ):
        yield sender


async def first_chunks_only(
    client: MeshClient, source: Path, count: int = 1, codec: Codec = "none"
) -> tuple[str, str, SendHeaders]:
    """Create the message with its first ``count`` chunks, as a send killed then leaves it."""
    upload = Upload(client, source, HEADERS, chunk_size=5 * MiB, codec=codec, min_payload_size=0)
    try:
        await upload.prepare()
        message_id = await upload.send_first()
        for _ in range(count - 1):
            chunk = await upload._next_chunk()
            assert chunk is not None
            await upload.send_chunk(chunk)
    finally:
        await upload.close()
    return message_id, upload.xxh3_128, upload.headers


class Sending(SendJournal):
    def __init__(self, on_chunk: int | None = None, path: Path | None = None) -> None:
        self.sent: list[int] = []
        self._on_chunk, self._path = on_chunk, path

    async def chunk_sending(self, number: int, xxh3_128: str, payload_size: int) -> None:
        self.sent.append(number)
        if number == self._on_chunk and self._path is not None:
            # rewritten in place while it is sent: same size, a new modification time (the
            # engine sees no change in size, only the identity check can tell)
            info = self._path.stat()
            os.utime(self._path, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))


async def test_run_resumed_sends_the_rest_into_the_same_message(
    client: MeshClient, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "four.csv", 16 * MiB)
    message_id, xxh3_128, headers = await first_chunks_only(client, source, 2)
    journal = Sending()
    upload = Upload(client, source, headers, chunk_size=5 * MiB, journal=journal)

    result = await upload.run_resumed(message_id, xxh3_128, accepted={1, 2})

    assert journal.sent == [3, 4]
    assert result.message_id == message_id and result.bytes_sent == 5 * MiB + MiB
    tracking = await RetryingClient(client).track(message_id)
    assert (tracking.status or "").lower() == "accepted"


async def test_a_file_changed_during_a_resume_is_not_completed(
    client: MeshClient, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "four.csv", 16 * MiB)
    message_id, xxh3_128, headers = await first_chunks_only(client, source)
    info = os.stat(source)
    identity = (info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev)
    journal = Sending(on_chunk=2, path=source)
    upload = Upload(client, source, headers, chunk_size=5 * MiB, journal=journal, sequential=True)

    with pytest.raises(SourceChangedError, match="changed while it was being resumed"):
        await upload.run_resumed(message_id, xxh3_128, accepted={1}, identity=identity)

    assert 4 not in journal.sent
    tracking = await RetryingClient(client).track(message_id)
    assert (tracking.status or "").lower() == "uploading"


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
async def test_a_resumed_trailer_send_hashes_the_file_for_its_manifest(
    tmp_path: Path, codec: Codec
) -> None:
    """Killed before its last chunk was read, a gzip/zstd send has no recorded hash: the
    resume hashes the file (its identity checked first) and ends the last chunk with the
    manifest, which the recipient verifies."""
    async with (
        LocalMeshServer(shared_key=SANDBOX_SHARED_KEY, rules="sandbox") as server,
        MeshClient(make_config(server.url, SENDER), ClientSettings(retry=FAST_RETRY)) as sender,
        MeshClient(make_config(server.url, RECIPIENT), ClientSettings(retry=FAST_RETRY)) as peer,
    ):
        source = write_csv(tmp_path / "four.csv", 16 * MiB)
        message_id, xxh3_128, headers = await first_chunks_only(sender, source, 2, codec)
        assert xxh3_128 == ""
        assert (headers.checksum or "").startswith("meshpipe/2 xxh3-128:trailer ")
        upload = Upload(
            sender, source, headers, chunk_size=5 * MiB, codec=codec, min_payload_size=0
        )
        result = await upload.run_resumed(message_id, "", accepted={1, 2})
        destination = tmp_path / "received.csv"
        received = await receive_message(peer, message_id, destination)
    assert destination.read_bytes() == source.read_bytes()
    assert "file xxh3-128" in received.verified
    assert result.xxh3_128 == xxh3_128_file(source)


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
async def test_a_file_touched_during_a_trailer_send_is_not_completed(
    client: MeshClient, tmp_path: Path, codec: Codec
) -> None:
    """The manifest is of the bytes read, so only the identity check before the last chunk can
    tell that the file changed in place between reads."""
    source = write_csv(tmp_path / "four.csv", 16 * MiB)
    journal = Sending(on_chunk=2, path=source)
    upload = Upload(
        client,
        source,
        HEADERS,
        chunk_size=5 * MiB,
        codec=codec,
        journal=journal,
        sequential=True,
        min_payload_size=0,
    )
    with pytest.raises(SourceChangedError, match="changed while it was being sent"):
        await upload.run()
    assert 4 not in journal.sent
