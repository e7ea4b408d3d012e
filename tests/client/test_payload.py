"""Chunk bodies leave the engine's buffers without a copy, in pieces of at most 1 MiB."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshpipe import Splitter
from meshpipe.client import WRITE_PIECE_SIZE, BufferPayload
from tests.client.conftest import MiB, write_csv


class RecordingWriter:
    def __init__(self) -> None:
        self.pieces: list[memoryview] = []
        self.owners: list[object] = []

    async def write(self, data: memoryview) -> None:
        self.pieces.append(memoryview(bytes(data)))
        self.owners.append(data.obj)


@pytest.mark.parametrize("codec", ["none", "gzip"])
async def test_chunk_payload_is_zero_copy_and_pieced(tmp_path: Path, codec: str) -> None:
    source = write_csv(tmp_path / "f.csv", 11 * MiB)
    with Splitter(source, codec=codec, chunk_size=5 * MiB) as splitter:  # type: ignore[arg-type]
        chunk = next(iter(splitter))
        payload = BufferPayload(chunk)
        assert payload.size == chunk.payload_size == len(chunk)
        writer = RecordingWriter()
        await payload.write(writer)  # type: ignore[arg-type]
        assert all(piece.nbytes <= WRITE_PIECE_SIZE for piece in writer.pieces)
        assert sum(piece.nbytes for piece in writer.pieces) == chunk.payload_size
        # every piece is a view of the engine's own buffer, not a copy
        assert all(owner is chunk for owner in writer.owners)
        body = b"".join(bytes(piece) for piece in writer.pieces)
        assert body == bytes(memoryview(chunk))
        payload.release()
        chunk.release()  # no view is left alive: the buffer goes back to the pool


async def test_payload_honours_content_length() -> None:
    payload = BufferPayload(b"x" * (3 * MiB + 5))
    writer = RecordingWriter()
    await payload.write_with_length(writer, 2 * MiB + 1)  # type: ignore[arg-type]
    assert [piece.nbytes for piece in writer.pieces] == [MiB, MiB, 1]
