"""Property tests: the streaming checker and synthetic generator agree with one-shot oracles
(stdlib gzip, zstandard, xxhash) however the bytes are split."""

from __future__ import annotations

import gzip
import itertools
import tempfile
from pathlib import Path

import xxhash
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from meshpipe._meshpipe import Splitter
from meshpipe.server.checker import ChunkChecker
from meshpipe.server.streaming import BLOCK_SIZE, synthetic_bytes, synthetic_pieces

payloads = st.binary(min_size=0, max_size=200_000) | st.builds(
    lambda n, c: bytes([c]) * n, st.integers(0, 3_000_000), st.integers(0, 255)
)


def feed(checker: ChunkChecker, body: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(body)) for c in cuts} | {0, len(body)})
    for start, end in itertools.pairwise(points):
        checker.update(body[start:end])


@given(
    payloads, st.lists(st.integers(0, 3_000_000), max_size=8), st.sampled_from(["", "gzip", "zstd"])
)
def test_checker_matches_one_shot_oracles(data: bytes, cuts: list[int], encoding: str) -> None:
    if encoding == "gzip":
        body = gzip.compress(data, 1)
        checker = ChunkChecker("gzip")
    elif encoding == "zstd":
        body = zstandard.ZstdCompressor(level=1).compress(data)
        checker = ChunkChecker("", payload_compressed=True)
    else:
        body = data
        checker = ChunkChecker("")
    feed(checker, body, cuts)
    result = checker.finish()
    assert result.stored_size == len(body)
    assert result.payload_size == len(data)
    assert result.size == (len(data) if encoding == "gzip" else len(body))
    assert result.xxh3_128 == xxhash.xxh3_128_hexdigest(data)


@given(
    st.integers(0, 5),
    st.integers(0, 3 * BLOCK_SIZE),
    st.integers(0, 2 * BLOCK_SIZE),
    st.integers(1, 2**20),
)
def test_synthetic_pieces_are_slices_of_one_stream(
    seed: int, offset: int, length: int, piece: int
) -> None:
    pieces = list(synthetic_pieces(seed, offset, length, piece))
    assert all(len(p) <= piece for p in pieces)
    joined = b"".join(pieces)
    assert len(joined) == length
    whole = synthetic_bytes(seed, 0, offset + length)
    assert joined == whole[offset:]


@given(st.sampled_from(["gzip", "zstd"]), st.lists(st.integers(0, 400_000), max_size=6))
def test_the_whole_file_manifest_counts_as_no_bytes(codec: str, cuts: list[int]) -> None:
    """The last chunk of a gzip/zstd send ends with the manifest (an empty gzip member, a zstd
    skippable frame): the server accepts it, and its decoded size and hash are the data's."""
    data = bytes(range(256)) * 1200 + b"tail"
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "source.bin"
        source.write_bytes(data)
        with Splitter(
            source, codec=codec, chunk_size=100_000, min_chunk_size=0, trailer=True
        ) as splitter:
            chunks = [(chunk.offset, chunk.length, bytes(chunk)) for chunk in splitter]
    offset, length, body = chunks[-1]
    assert b"meshpipe-manifest/1" in body
    checker = ChunkChecker("gzip") if codec == "gzip" else ChunkChecker("", payload_compressed=True)
    feed(checker, body, cuts)
    result = checker.finish()
    assert result.stored_size == len(body)
    assert result.payload_size == length == len(data) - offset
    assert result.xxh3_128 == xxhash.xxh3_128_hexdigest(data[offset:])
