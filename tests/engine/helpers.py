"""Split/assemble helpers shared by the engine tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import meshpipe
from meshpipe import synthetic


@dataclass(frozen=True)
class SplitResult:
    payloads: list[bytes]
    lengths: list[int]
    checksums: list[str]
    digest: meshpipe.FileDigest
    chunk_size: int


def csv_bytes(size: int, seed: int = 1) -> bytes:
    """CSV-like text of exactly ``size`` bytes (an NHS extract's shape)."""
    return synthetic.csv_bytes(size, seed)


def split_file(
    path: Path,
    *,
    codec: meshpipe.Codec = "none",
    chunk_size: int = meshpipe.MIN_CHUNK_SIZE,
    level: int | None = None,
    min_chunk_size: int = meshpipe.MIN_CHUNK_SIZE,
    sha256: bool = True,
) -> SplitResult:
    with meshpipe.Splitter(
        path,
        codec=codec,
        level=level,
        chunk_size=chunk_size,
        sha256=sha256,
        min_chunk_size=min_chunk_size,
    ) as splitter:
        payloads, lengths, checksums = [], [], []
        for chunk in splitter:
            payloads.append(bytes(chunk))
            lengths.append(chunk.length)
            checksums.append(chunk.xxh3_128)
            chunk.release()
        return SplitResult(payloads, lengths, checksums, splitter.digest(), chunk_size)


def feed(writer: meshpipe.ChunkWriter, payload: bytes, piece: int) -> None:
    view = memoryview(payload)
    for start in range(0, len(view), max(piece, 1)):
        writer.write(view[start : start + piece])
    if not payload:
        writer.write(b"")
