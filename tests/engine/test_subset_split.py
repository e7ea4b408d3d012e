"""A Splitter over a subset of a file's chunks: the same bytes and checksums as a full split."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import meshpipe
from tests.engine.helpers import csv_bytes, split_file

KiB = meshpipe.KiB


@pytest.mark.parametrize("codec", ["none", "gzip", "zstd"])
@pytest.mark.parametrize(
    ("size", "chunk_size", "chunks"),
    [
        (100 * KiB + 7, 7 * KiB + 3, range(3, 9)),  # a range, awkward sizes
        (100 * KiB + 7, 7 * KiB + 3, [15, 1, 8, 8, 2]),  # unsorted, repeated, the short last
        (64 * KiB, 16 * KiB, {4}),  # exactly divisible, last chunk alone
        (1, 4 * KiB, [1]),  # a one-byte file
    ],
)
def test_a_subset_gives_exactly_what_the_full_split_gives(
    tmp_path: Path, codec: meshpipe.Codec, size: int, chunk_size: int, chunks: Iterable[int]
) -> None:
    path = tmp_path / "extract.csv"
    path.write_bytes(csv_bytes(size, seed=size))
    full = split_file(path, codec=codec, chunk_size=chunk_size, min_chunk_size=1)
    wanted = sorted(set(chunks))
    with meshpipe.Splitter(
        path, codec=codec, chunk_size=chunk_size, min_chunk_size=1, chunks=chunks, window=2
    ) as splitter:
        got = []
        for chunk in splitter:
            assert chunk.count == len(full.payloads)
            assert chunk.offset == (chunk.number - 1) * chunk_size
            got.append((chunk.number, chunk.length, chunk.xxh3_128, bytes(chunk)))
            chunk.release()
    expected = [
        (n, full.lengths[n - 1], full.checksums[n - 1], full.payloads[n - 1]) for n in wanted
    ]
    assert got == expected


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(min_size=1, max_size=6000),
    chunk_size=st.integers(1, 1500),
    picks=st.lists(st.integers(0, 10**6), max_size=8),
    codec=st.sampled_from(["none", "gzip", "zstd"]),
)
def test_any_subset_matches_the_full_split(
    tmp_path_factory: pytest.TempPathFactory,
    data: bytes,
    chunk_size: int,
    picks: list[int],
    codec: meshpipe.Codec,
) -> None:
    path = tmp_path_factory.mktemp("subset") / "data.bin"
    path.write_bytes(data)
    full = split_file(path, codec=codec, chunk_size=chunk_size, min_chunk_size=1, sha256=False)
    count = len(full.payloads)
    wanted = sorted({pick % count + 1 for pick in picks})
    with meshpipe.Splitter(
        path, codec=codec, chunk_size=chunk_size, min_chunk_size=1, chunks=wanted, window=1
    ) as splitter:
        got = []
        for chunk in splitter:
            got.append((chunk.number, chunk.xxh3_128, bytes(chunk)))
            chunk.release()
    assert got == [(n, full.checksums[n - 1], full.payloads[n - 1]) for n in wanted]


def test_a_subset_has_no_whole_file_digest(tmp_path: Path) -> None:
    path = tmp_path / "extract.csv"
    path.write_bytes(csv_bytes(40 * KiB))
    with meshpipe.Splitter(path, chunk_size=10 * KiB, min_chunk_size=1, chunks=[2, 3]) as splitter:
        assert [chunk.number for chunk in splitter] == [2, 3]
        with pytest.raises(meshpipe.StateError, match=r"2 of the file's 4 chunks.*no whole-file"):
            splitter.digest()
    # Every chunk selected is a whole-file split: the digest is the file's.
    with meshpipe.Splitter(path, chunk_size=10 * KiB, min_chunk_size=1, chunks=range(1, 5)) as s:
        assert len(list(s)) == 4
        assert s.digest().xxh3_128 == meshpipe.xxh3_128_file(path)


def test_bad_selections_are_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "extract.csv"
    path.write_bytes(csv_bytes(40 * KiB))
    size = 10 * KiB
    with pytest.raises(meshpipe.ChunkNumberError, match="chunk 5 is outside"):
        meshpipe.Splitter(path, chunk_size=size, min_chunk_size=1, chunks=[1, 5])
    with pytest.raises(ValueError, match="they count from 1"):
        meshpipe.Splitter(path, chunk_size=size, min_chunk_size=1, chunks=[-1])
    with pytest.raises(ValueError, match="sha256 is a whole-file digest"):
        meshpipe.Splitter(path, chunk_size=size, min_chunk_size=1, chunks=[1], sha256=True)
    with pytest.raises(TypeError):
        meshpipe.Splitter(path, chunk_size=size, min_chunk_size=1, chunks=["1"])  # type: ignore[list-item]
