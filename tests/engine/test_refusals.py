"""Every refusal: a specific error, and never a file at the destination."""

from __future__ import annotations

import gzip
import os
import resource
from pathlib import Path

import pytest
import xxhash
import zstandard

import meshpipe
from tests.engine.helpers import csv_bytes, feed

MiB = meshpipe.MiB


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- planning ------------------------------------------------------------------------------


def test_chunk_below_minimum_names_rule_value_and_fix() -> None:
    with pytest.raises(meshpipe.ChunkSizeError) as caught:
        meshpipe.ChunkPlan(20 * MiB, 1 * MiB)
    message = str(caught.value)
    assert "1048576" in message and "minimum" in message and "at least 5242880" in message
    assert isinstance(caught.value, ValueError)


def test_chunk_above_request_maximum_suggests_a_size() -> None:
    with pytest.raises(meshpipe.ChunkSizeError) as caught:
        meshpipe.ChunkPlan(300_000_000, 150_000_000, codec="gzip")
    fits = int(str(caught.value).rsplit("at most ", 1)[1].split()[0])
    assert fits < 100_000_000
    assert meshpipe.ChunkPlan(300_000_000, fits, codec="gzip").chunk_count == -(
        -300_000_000 // fits
    )


def test_file_above_maximum_is_refused_before_reading(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    with source.open("wb") as handle:
        handle.truncate(10 * MiB)  # sparse: nothing to read
    with pytest.raises(meshpipe.FileTooLargeError, match="maximum message size"):
        meshpipe.Splitter(source, max_file_size=5 * MiB)
    assert meshpipe.ChunkPlan(10 * MiB, max_file_size=10 * MiB).chunk_count == 1


def test_plan_geometry_and_chunk_numbers() -> None:
    plan = meshpipe.ChunkPlan(11 * MiB, 5 * MiB)
    assert plan.chunk_count == 3
    assert [plan.chunk_offset(n) for n in (1, 2, 3)] == [0, 5 * MiB, 10 * MiB]
    assert plan.chunk_length(3) == MiB
    for bad in (0, 4):
        with pytest.raises(meshpipe.ChunkNumberError):
            plan.chunk_length(bad)


def test_unknown_codec_and_level() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        meshpipe.ChunkPlan(1, codec="brotli")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="levels 0 to 3"):
        meshpipe.Splitter(__file__, codec="gzip", level=9)


def test_missing_source_and_directory_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        meshpipe.Splitter(tmp_path / "absent.csv")
    with pytest.raises(IsADirectoryError):
        meshpipe.Splitter(tmp_path)


def test_source_shrinking_mid_split(tmp_path: Path) -> None:
    source = tmp_path / "growing.csv"
    source.write_bytes(csv_bytes(16 * MiB))
    splitter = meshpipe.Splitter(source, chunk_size=5 * MiB, window=1, threads=1)
    first = next(splitter)
    # The reader now waits for the only buffer; shrink the file under it.
    os.truncate(source, 6 * MiB)
    first.release()
    with pytest.raises(meshpipe.SourceChangedError, match="shrank"):
        list(splitter)


# --- assembly ------------------------------------------------------------------------------


@pytest.fixture
def two_chunks() -> tuple[bytes, bytes]:
    return csv_bytes(5 * MiB, seed=3), csv_bytes(1000, seed=4)


def make_assembler(
    destination: Path, first: bytes, second: bytes, **extra: object
) -> meshpipe.Assembler:
    return meshpipe.Assembler(
        destination,
        chunk_count=2,
        chunk_size=len(first),
        file_size=len(first) + len(second),
        **extra,  # type: ignore[arg-type]
    )


def test_chunk_number_outside_plan(tmp_path: Path, two_chunks: tuple[bytes, bytes]) -> None:
    assembler = make_assembler(tmp_path / "out", *two_chunks)
    for bad in (0, 3, -1):
        with pytest.raises(meshpipe.ChunkNumberError) as caught:
            assembler.open_chunk(bad)
        assert caught.value.chunk == bad
    assembler.abort()
    assert leftovers(tmp_path) == []


def test_checksum_mismatch_names_the_chunk(tmp_path: Path, two_chunks: tuple[bytes, bytes]) -> None:
    first, second = two_chunks
    assembler = make_assembler(tmp_path / "out", first, second)
    writer = assembler.open_chunk(2, xxh3_128=xxhash.xxh3_128_hexdigest(b"something else"))
    writer.write(second)
    with pytest.raises(meshpipe.ChecksumMismatchError) as caught:
        writer.finish()
    assert caught.value.chunk == 2 and caught.value.algorithm == "xxh3-128"
    assert caught.value.actual == xxhash.xxh3_128_hexdigest(second)
    assert "chunk 2" in str(caught.value)
    # The chunk can be fetched again.
    writer = assembler.open_chunk(2, xxh3_128=xxhash.xxh3_128_hexdigest(second))
    writer.write(second)
    assert writer.finish().verified_by == "xxh3-128"


def test_whole_file_mismatch_leaves_nothing(
    tmp_path: Path, two_chunks: tuple[bytes, bytes]
) -> None:
    first, second = two_chunks
    wrong = xxhash.xxh3_128_hexdigest(b"not the file")
    assembler = make_assembler(tmp_path / "out", first, second, xxh3_128=wrong)
    for number, data in ((1, first), (2, second)):
        writer = assembler.open_chunk(number)
        writer.write(data)
        writer.finish()
    with pytest.raises(meshpipe.ChecksumMismatchError) as caught:
        assembler.finish()
    assert caught.value.chunk is None and "whole file" in str(caught.value)
    assert leftovers(tmp_path) == []


def test_missing_chunks_at_finish(tmp_path: Path, two_chunks: tuple[bytes, bytes]) -> None:
    first, second = two_chunks
    assembler = make_assembler(tmp_path / "out", first, second)
    writer = assembler.open_chunk(2)
    writer.write(second)
    writer.finish()
    with pytest.raises(meshpipe.MissingChunksError) as caught:
        assembler.finish()
    assert caught.value.missing == [1]
    assert assembler.missing == [1]
    assert not (tmp_path / "out").exists()
    del assembler, writer
    assert leftovers(tmp_path) == []


def test_repeated_chunk_same_content_ok_different_refused(
    tmp_path: Path, two_chunks: tuple[bytes, bytes]
) -> None:
    first, second = two_chunks
    assembler = make_assembler(tmp_path / "out", first, second)
    for _ in range(2):
        writer = assembler.open_chunk(2)
        writer.write(second)
        writer.finish()
    writer = assembler.open_chunk(2)
    writer.write(second[:-1] + b"X")
    with pytest.raises(meshpipe.DuplicateChunkError) as caught:
        writer.finish()
    assert caught.value.chunk == 2 and "different content" in str(caught.value)
    writer = assembler.open_chunk(1)
    with pytest.raises(meshpipe.DuplicateChunkError, match="already being written"):
        assembler.open_chunk(1)
    writer.abort()
    assembler.open_chunk(1).abort()


def test_short_and_long_chunks(tmp_path: Path, two_chunks: tuple[bytes, bytes]) -> None:
    first, second = two_chunks
    assembler = make_assembler(tmp_path / "out", first, second)
    writer = assembler.open_chunk(1)
    writer.write(first[:-10])
    with pytest.raises(meshpipe.ChunkLengthError, match="truncated") as caught:
        writer.finish()
    assert caught.value.chunk == 1 and caught.value.expected == len(first)
    writer = assembler.open_chunk(2)
    with pytest.raises(meshpipe.ChunkLengthError):
        writer.write(second + b"extra")


def test_truncated_and_corrupt_gzip_name_the_chunk(tmp_path: Path) -> None:
    data = csv_bytes(100_000)
    packed = gzip.compress(data)
    assembler = meshpipe.Assembler(tmp_path / "out", chunk_count=1, codec="gzip")
    writer = assembler.open_chunk(1)
    writer.write(packed[:-4])
    with pytest.raises(meshpipe.CodecError, match="truncated") as caught:
        writer.finish()
    assert caught.value.chunk == 1
    corrupt = bytearray(packed)
    corrupt[-8] ^= 0xFF  # CRC-32 in the trailer
    writer = assembler.open_chunk(1)
    with pytest.raises(meshpipe.CodecError, match="CRC"):
        writer.write(bytes(corrupt))
        writer.finish()


def test_unknown_chunk_size_requires_order(tmp_path: Path) -> None:
    assembler = meshpipe.Assembler(tmp_path / "out", chunk_count=3)
    with pytest.raises(meshpipe.ChunkOrderError) as caught:
        assembler.open_chunk(2)
    assert (caught.value.chunk, caught.value.waiting_for) == (2, 1)
    with pytest.raises(meshpipe.StateError):
        assembler.assume_fixed_chunk_size()
    writer = assembler.open_chunk(1)
    writer.write(b"a" * 10)
    writer.finish()
    assert assembler.assume_fixed_chunk_size() == 10
    writer = assembler.open_chunk(3)
    writer.write(b"c" * 4)
    writer.finish()
    writer = assembler.open_chunk(2)
    writer.write(b"b" * 9)
    with pytest.raises(meshpipe.ChunkLengthError):
        writer.finish()


def test_destination_rules(tmp_path: Path) -> None:
    existing = tmp_path / "exists.csv"
    existing.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite"):
        meshpipe.Assembler(existing, chunk_count=1)
    assembler = meshpipe.Assembler(existing, chunk_count=1, overwrite=True)
    writer = assembler.open_chunk(1)
    writer.write(b"new")
    writer.finish()
    assert existing.read_bytes() == b"keep me"  # untouched until finish
    assembler.finish()
    assert existing.read_bytes() == b"new"
    with pytest.raises(FileNotFoundError):
        meshpipe.Assembler(tmp_path / "no" / "such" / "dir.csv", chunk_count=1)
    with pytest.raises(ValueError, match="32 hex digits"):
        meshpipe.Assembler(tmp_path / "x", chunk_count=1, xxh3_128="abc")


def test_finished_assembler_refuses_more_work(tmp_path: Path) -> None:
    with meshpipe.Assembler(tmp_path / "out", chunk_count=1) as assembler:
        writer = assembler.open_chunk(1)
        writer.write(b"x")
        writer.finish()
        assembler.finish()
    with pytest.raises(meshpipe.StateError):
        assembler.open_chunk(1)
    assert (tmp_path / "out").read_bytes() == b"x"


def test_context_exit_without_finish_cleans_up(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), meshpipe.Assembler(tmp_path / "out", chunk_count=2) as asm:
        asm.open_chunk(1).write(b"partial")
        raise RuntimeError("download failed")
    assert leftovers(tmp_path) == []


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_bombs_are_stopped_at_the_limit_with_bounded_memory(tmp_path: Path, codec: str) -> None:
    block = bytes(16 * MiB)
    if codec == "gzip":
        member = gzip.compress(block, compresslevel=9)
    else:
        member = zstandard.ZstdCompressor(level=19, write_checksum=True).compress(block)
    del block
    bomb = member * 64  # 1 GiB when expanded, about 1 MB (gzip) or a few KB (zstd) as sent
    assert len(bomb) < 2 * MiB
    before = peak_rss()
    assembler = meshpipe.Assembler(
        tmp_path / "out",
        chunk_count=2,
        chunk_size=5 * MiB,
        file_size=6 * MiB,
        codec=codec,  # type: ignore[arg-type]
    )
    writer = assembler.open_chunk(1)
    with pytest.raises(meshpipe.ChunkLengthError, match="bomb") as caught:
        feed(writer, bomb, 64 * 1024)
    assert caught.value.chunk == 1 and caught.value.expected == 5 * MiB
    assert caught.value.actual <= 5 * MiB + 1
    assert peak_rss() - before < 64 * MiB
    assembler.abort()
    assert leftovers(tmp_path) == []


def test_source_growing_mid_split(tmp_path: Path) -> None:
    source = tmp_path / "growing.csv"
    source.write_bytes(csv_bytes(6 * MiB))
    splitter = meshpipe.Splitter(source, chunk_size=5 * MiB, window=1, threads=1)
    first = next(splitter)
    with source.open("ab") as handle:
        handle.write(b"late rows\n")
    first.release()
    # The reader notices after the last chunk: next() or digest() says so, never a digest.
    with pytest.raises(meshpipe.SourceChangedError, match="changed size"):
        for chunk in splitter:
            chunk.release()
        splitter.digest()
