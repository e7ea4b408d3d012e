"""Split → assemble round trips, cross-checked against independent oracles: Python's gzip,
the zstandard package, the xxhash package and hashlib."""

from __future__ import annotations

import gzip
import hashlib
import io
import random
from pathlib import Path

import pytest
import xxhash
import zstandard
from hypothesis import given
from hypothesis import strategies as st

import meshpipe
from tests.engine.helpers import SplitResult, csv_bytes, feed, split_file

MiB = meshpipe.MiB
CODECS: list[meshpipe.Codec] = ["none", "gzip", "zstd"]


def check_payloads_with_oracles(codec: str, data: bytes, result: SplitResult) -> None:
    offset = 0
    for payload, length, checksum in zip(
        result.payloads, result.lengths, result.checksums, strict=True
    ):
        expected = data[offset : offset + length]
        if codec == "gzip":
            assert gzip.decompress(payload) == expected
        elif codec == "zstd":
            frame = zstandard.ZstdDecompressor().decompress(payload)
            assert frame == expected
            params = zstandard.get_frame_parameters(payload)
            assert params.has_checksum
            assert params.content_size == length
        else:
            assert payload == expected
        assert checksum == xxhash.xxh3_128_hexdigest(expected)
        offset += length
    assert offset == len(data)
    assert result.digest.size == len(data)
    assert result.digest.xxh3_128 == xxhash.xxh3_128_hexdigest(data)
    assert result.digest.sha256 == hashlib.sha256(data).hexdigest()
    if codec == "zstd":
        # The concatenated chunks are one valid .zst file.
        whole = b"".join(result.payloads)
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(whole), read_across_frames=True
        )
        assert reader.read() == data


def assemble(
    destination: Path,
    codec: str,
    result: SplitResult,
    *,
    order: list[int] | None = None,
    piece: int = 65536,
    known_sizes: bool = True,
) -> meshpipe.AssemblyReport:
    count = len(result.payloads)
    assembler = meshpipe.Assembler(
        destination,
        chunk_count=count,
        codec=codec,  # type: ignore[arg-type]
        chunk_size=result.chunk_size if known_sizes else None,
        file_size=result.digest.size if known_sizes else None,
        xxh3_128=result.digest.xxh3_128,
        sha256=result.digest.sha256,
    )
    for index in order if order is not None else range(count):
        writer = assembler.open_chunk(index + 1, xxh3_128=result.checksums[index])
        feed(writer, result.payloads[index], piece)
        report = writer.finish()
        assert report.length == result.lengths[index]
    return assembler.finish()


AWKWARD_SIZES = [0, 1, 5 * MiB - 1, 5 * MiB, 5 * MiB + 1, 3 * 5 * MiB + 1]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("size", AWKWARD_SIZES, ids=lambda s: f"{s}B")
def test_awkward_sizes_round_trip(tmp_path: Path, codec: str, size: int) -> None:
    data = csv_bytes(size)
    source = tmp_path / "extract.csv"
    source.write_bytes(data)
    result = split_file(source, codec=codec)  # type: ignore[arg-type]
    assert len(result.payloads) == max(1, -(-size // (5 * MiB)))
    if size == 3 * 5 * MiB + 1:
        assert result.lengths[-1] == 1
    check_payloads_with_oracles(codec, data, result)
    order = list(range(len(result.payloads)))
    random.Random(size).shuffle(order)
    destination = tmp_path / "received.csv"
    report = assemble(destination, codec, result, order=order, piece=100_003)
    assert destination.read_bytes() == data
    assert report.size == size
    assert report.xxh3_128 == xxhash.xxh3_128_hexdigest(data)
    assert "file xxh3-128" in report.verified and "file sha256" in report.verified


@given(
    data=st.one_of(
        st.binary(max_size=40_000),
        st.integers(0, 60_000).map(csv_bytes),
    ),
    chunk_size=st.integers(1, 9_000),
    codec=st.sampled_from(CODECS),
    level=st.integers(0, 3),
    seed=st.integers(0, 2**32),
    piece=st.integers(1, 5_000),
    known_sizes=st.booleans(),
)
def test_any_order_any_slices(
    tmp_path_factory: pytest.TempPathFactory,
    data: bytes,
    chunk_size: int,
    codec: str,
    level: int,
    seed: int,
    piece: int,
    known_sizes: bool,
) -> None:
    directory = tmp_path_factory.mktemp("rt")
    source = directory / "source.bin"
    source.write_bytes(data)
    codec_level = None if codec == "none" else (level if codec == "gzip" else level + 1)
    result = split_file(
        source,
        codec=codec,  # type: ignore[arg-type]
        chunk_size=chunk_size,
        level=codec_level,
        min_chunk_size=1,
    )
    check_payloads_with_oracles(codec, data, result)
    count = len(result.payloads)
    order = list(range(count))
    random.Random(seed).shuffle(order)
    destination = directory / "out.bin"
    if known_sizes:
        assemble(destination, codec, result, order=order, piece=piece)
    else:
        # A plain sender's message: chunk size unknown. Chunk 1 first, then any order.
        assembler = meshpipe.Assembler(destination, chunk_count=count, codec=codec)  # type: ignore[arg-type]
        order.remove(0)
        for position, index in enumerate([0, *order]):
            writer = assembler.open_chunk(index + 1)
            feed(writer, result.payloads[index], piece)
            writer.finish()
            if position == 0 and count > 1:
                assert assembler.assume_fixed_chunk_size() == result.lengths[0]
        report = assembler.finish()
        assert report.xxh3_128 == xxhash.xxh3_128_hexdigest(data)
    assert destination.read_bytes() == data


def test_file_descriptor_source(tmp_path: Path) -> None:
    data = csv_bytes(12 * MiB)
    source = tmp_path / "extract.csv"
    source.write_bytes(data)
    with source.open("rb") as handle:
        result_fd = meshpipe.Splitter(handle.fileno(), codec="gzip")
        payloads = [gzip.decompress(bytes(chunk)) for chunk in result_fd]
        assert b"".join(payloads) == data
        assert result_fd.digest().xxh3_128 == xxhash.xxh3_128_hexdigest(data)
        # Our descriptor is still open and usable: the splitter used its own duplicate.
        assert handle.read(5) == data[:5]


def test_gzip_from_python_and_zstd_from_zstandard_are_accepted(tmp_path: Path) -> None:
    """Chunks made by other encoders (what a plain MESH sender sends) assemble too."""
    parts = [csv_bytes(6 * MiB, seed=1), csv_bytes(6 * MiB, seed=2), b"tail"]
    data = b"".join(parts)
    cases = {
        "gzip": [gzip.compress(p, compresslevel=9) for p in parts],
        "zstd": [zstandard.ZstdCompressor(level=3).compress(p) for p in parts],
    }
    for codec, payloads in cases.items():
        destination = tmp_path / f"out-{codec}"
        assembler = meshpipe.Assembler(destination, chunk_count=3, codec=codec)  # type: ignore[arg-type]
        reports = []
        for number, payload in enumerate(payloads, start=1):
            writer = assembler.open_chunk(number)
            feed(writer, payload, 8191)
            reports.append(writer.finish())
            if number == 1:
                assembler.assume_fixed_chunk_size()
        report = assembler.finish()
        assert destination.read_bytes() == data
        if codec == "gzip":
            assert {r.verified_by for r in reports} == {"gzip-crc32"}
            assert report.verified == ["chunks gzip-crc32"]
        else:
            # zstandard writes no content checksum by default: nothing to verify it by.
            assert {r.verified_by for r in reports} == {"none"}
            assert report.verified == []
