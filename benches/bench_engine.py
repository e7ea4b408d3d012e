"""The chunk engine against the machine's ceiling, measured side by side in the same run.

Split = read + per-chunk xxh3-128 + whole-file xxh3-128 + compress, in order.
Ceiling = the same codec work done by the reference packages on two threads over chunks already
in memory (no file reads, no whole-file hash): python-isal (ISA-L) for gzip, zstandard for zstd,
xxhash for the checksums; for `none`, reading the file and hashing it once per chunk and once
whole, on one thread, which is the least any splitter must do.

Assemble = decode + verify + write at offset, fed in 1 MiB pieces from two Python threads, then
the whole-file check, fsync and rename. Ceiling = the reference packages decompressing the same
payloads on two threads, hashing and writing each chunk at its offset, then fsync: the least a
durable receive must do. On disk the fsync dominates; on tmpfs (/dev/shm) the CPU does.

Run: make bench   (or .venv/bin/python -m pytest benches/bench_engine.py -s)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import xxhash
import zstandard
from isal import isal_zlib
from pytest_benchmark.fixture import BenchmarkFixture

import meshpipe

MiB = meshpipe.MiB
GiB = meshpipe.GiB
CHUNK = 20 * MiB
MODES: list[tuple[str, meshpipe.Codec, int | None]] = [
    ("none", "none", None),
    ("gzip-1", "gzip", 1),
    ("zstd-1", "zstd", 1),
    ("zstd-3", "zstd", 3),
]


ROUNDS = 5


def side_by_side(
    benchmark: BenchmarkFixture, measured: Callable[[], object], reference: Callable[[], object]
) -> float:
    """Time ``measured`` with pytest-benchmark and ``reference`` just before each of its
    rounds, so both see the same machine; returns the reference's best time in seconds."""
    reference_times: list[float] = []

    def run_reference() -> None:
        start = time.perf_counter()
        reference()
        reference_times.append(time.perf_counter() - start)

    benchmark.pedantic(measured, setup=run_reference, rounds=ROUNDS, iterations=1)
    return min(reference_times)


def read_chunks(path: Path) -> list[bytes]:
    data = path.read_bytes()
    return [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]


def compress_reference(codec: str, level: int | None) -> Callable[[bytes], bytes]:
    if codec == "gzip":
        return lambda chunk: isal_zlib.compress(chunk, level or 1, wbits=31)
    if codec == "zstd":
        # A zstandard compressor is not thread-safe: one per thread.
        local = threading.local()

        def compress(chunk: bytes) -> bytes:
            if not hasattr(local, "compressor"):
                local.compressor = zstandard.ZstdCompressor(level=level or 1, write_checksum=True)
            result: bytes = local.compressor.compress(chunk)
            return result

        return compress
    return lambda chunk: chunk


def decompress_reference(codec: str) -> Callable[[bytes], bytes]:
    if codec == "gzip":
        return lambda payload: isal_zlib.decompress(payload, wbits=31)
    if codec == "zstd":
        return lambda payload: zstandard.ZstdDecompressor().decompress(payload)  # one per call
    return lambda payload: payload


def split_reference(path: Path, codec: str, level: int | None) -> Callable[[], object]:
    if codec == "none":
        buffer = bytearray(CHUNK)

        def read_and_hash() -> None:
            whole = xxhash.xxh3_128()
            with path.open("rb", buffering=0) as handle:
                while n := handle.readinto(buffer):
                    view = memoryview(buffer)[:n]
                    whole.update(view)
                    xxhash.xxh3_128_digest(view)

        return read_and_hash
    chunks = read_chunks(path)
    compress = compress_reference(codec, level)

    def work(chunk: bytes) -> None:
        xxhash.xxh3_128_digest(chunk)
        compress(chunk)

    pool = ThreadPoolExecutor(2)
    return lambda: list(pool.map(work, chunks))


def meshpipe_split(path: Path, codec: meshpipe.Codec, level: int | None) -> None:
    with meshpipe.Splitter(path, codec=codec, level=level, chunk_size=CHUNK) as splitter:
        for chunk in splitter:
            chunk.release()
        splitter.digest()


@pytest.mark.parametrize("data", ["csv", "random"])
@pytest.mark.parametrize(("name", "codec", "level"), MODES, ids=[m[0] for m in MODES])
def test_split(
    benchmark: BenchmarkFixture,
    request: pytest.FixtureRequest,
    figures: list[str],
    data: str,
    name: str,
    codec: meshpipe.Codec,
    level: int | None,
) -> None:
    path: Path = request.getfixturevalue(f"{data}_file")
    size = path.stat().st_size
    reference = split_reference(path, codec, level)
    ceiling = (
        size / side_by_side(benchmark, lambda: meshpipe_split(path, codec, level), reference) / 1e6
    )
    rate = size / benchmark.stats.stats.min / 1e6
    figures.append(
        f"split    {name:7} {data:6}: meshpipe {rate:7.0f} MB/s, ceiling {ceiling:7.0f} MB/s, "
        f"ratio {rate / ceiling:.2f}"
    )


def split_payloads(
    path: Path, codec: meshpipe.Codec, level: int | None
) -> tuple[list[bytes], meshpipe.FileDigest]:
    with meshpipe.Splitter(path, codec=codec, level=level, chunk_size=CHUNK) as splitter:
        payloads = [bytes(chunk) for chunk in splitter]
        return payloads, splitter.digest()


def meshpipe_assemble(
    destination: Path, codec: meshpipe.Codec, payloads: list[bytes], digest: meshpipe.FileDigest
) -> None:
    if destination.exists():
        destination.unlink()
    assembler = meshpipe.Assembler(
        destination,
        chunk_count=len(payloads),
        codec=codec,
        chunk_size=CHUNK,
        file_size=digest.size,
        xxh3_128=digest.xxh3_128,
    )

    def receive(number: int) -> None:
        writer = assembler.open_chunk(number)
        view = memoryview(payloads[number - 1])
        for start in range(0, len(view), MiB):
            writer.write(view[start : start + MiB])
        writer.finish()

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(receive, range(1, len(payloads) + 1)))
    assembler.finish()


def reference_assemble(destination: Path, codec: str, payloads: list[bytes], size: int) -> None:
    """The least a durable receive must do: decode on two threads, write each chunk at its
    offset, hash it, fsync."""
    decompress = decompress_reference(codec)
    descriptor = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:

        def receive(index: int) -> None:
            data = decompress(payloads[index])
            xxhash.xxh3_128_digest(data)
            os.pwrite(descriptor, data, index * CHUNK)

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(receive, range(len(payloads))))
        os.ftruncate(descriptor, size)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    destination.unlink()


ASSEMBLE_TARGETS = ["disk", "tmpfs"] if Path("/dev/shm").is_dir() else ["disk"]


@pytest.mark.parametrize("target", ASSEMBLE_TARGETS)
@pytest.mark.parametrize(("name", "codec", "level"), MODES, ids=[m[0] for m in MODES])
def test_assemble(
    benchmark: BenchmarkFixture,
    csv_file: Path,
    fixture_dir: Path,
    figures: list[str],
    target: str,
    name: str,
    codec: meshpipe.Codec,
    level: int | None,
) -> None:
    payloads, digest = split_payloads(csv_file, codec, level)
    directory = fixture_dir if target == "disk" else Path("/dev/shm")
    reference_path = directory / f"meshpipe-bench-reference-{os.getpid()}"
    destination = directory / f"meshpipe-bench-assembled-{os.getpid()}"
    best_reference = side_by_side(
        benchmark,
        lambda: meshpipe_assemble(destination, codec, payloads, digest),
        lambda: reference_assemble(reference_path, codec, payloads, digest.size),
    )
    ceiling = digest.size / best_reference / 1e6
    rate = digest.size / benchmark.stats.stats.min / 1e6
    figures.append(
        f"assemble {name:7} {target:6}: meshpipe {rate:7.0f} MB/s, ceiling {ceiling:7.0f} MB/s, "
        f"ratio {rate / ceiling:.2f}"
    )
    destination.unlink()


RSS_SCRIPT = """
import sys, meshpipe
path, codec, mode = sys.argv[1], sys.argv[2], sys.argv[3]
payload_dir = sys.argv[4]
if mode == "split":
    with meshpipe.Splitter(path, codec=codec, chunk_size=20 * meshpipe.MiB) as s:
        for c in s:
            c.release()
        s.digest()
else:
    import os
    plan = meshpipe.ChunkPlan(os.path.getsize(path), 20 * meshpipe.MiB)
    out = os.path.join(payload_dir, "assembled")
    a = meshpipe.Assembler(out, chunk_count=plan.chunk_count, chunk_size=plan.chunk_size,
                           file_size=plan.file_size)
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(meshpipe.MiB)
        for n in range(1, plan.chunk_count + 1):
            w = a.open_chunk(n)
            left = plan.chunk_length(n)
            while left:
                got = f.readinto(memoryview(buffer)[: min(left, len(buffer))])
                w.write(memoryview(buffer)[:got])
                left -= got
            w.finish()
    a.finish()
    os.remove(out)
from meshpipe.memory import peak_rss
print(peak_rss())
"""


def peak_rss(path: Path, codec: str, mode: str, workdir: Path) -> int:
    out = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(path), codec, mode, str(workdir)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("codec", ["none", "gzip"])
def test_peak_rss_is_flat_in_file_size(fixture_dir: Path, figures: list[str], codec: str) -> None:
    """Peak RSS (from the OS) of a split and an assemble of 1 GiB and 4 GiB files."""
    from meshpipe.synthetic import write_csv

    results = {}
    for gib in (1, 4):
        path = fixture_dir / f"rss-{gib}g.csv"
        if not path.exists():
            write_csv(path, gib * GiB)
        for mode in ("split", "assemble"):
            results[(gib, mode)] = peak_rss(path, codec, mode, fixture_dir)
    baseline = peak_rss(Path(os.devnull), "none", "split", fixture_dir)
    window = 4  # default window on 2 cores
    for mode in ("split", "assemble"):
        small, large = results[(1, mode)], results[(4, mode)]
        figures.append(
            f"peak RSS {mode:8} {codec:5}: 1 GiB {small / MiB:6.0f} MiB, "
            f"4 GiB {large / MiB:6.0f} MiB "
            f"(x{large / small:.2f}); interpreter alone {baseline / MiB:.0f} MiB; "
            f"bound 64 MiB + window x chunk = {64 + window * 20} MiB above it"
        )


SPARE_SCRIPT = """
import json, resource, sys, time
from meshpipe._meshpipe import Splitter
MiB = 1 << 20
def split(first):
    before = resource.getrusage(resource.RUSAGE_SELF)
    chunks = range(first, first + 4)
    with Splitter(sys.argv[1], codec="zstd", chunk_size=20 * MiB, window=4, chunks=chunks) as s:
        for chunk in s:
            chunk.release()
    after = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(0.1)  # the split's threads end (and give their buffers back) within 50 ms
    return [after.ru_stime - before.ru_stime, after.ru_minflt - before.ru_minflt]
print(json.dumps([split(1 + 4 * (n % 2)) for n in range(6)]))
"""


def test_spare_buffers_spare_the_kernel(csv_file: Path, figures: list[str]) -> None:
    """A fleet worker runs one subset split per job: the system time and page faults of
    4-chunk splits (20 MiB zstd chunks) one after another in a fresh process, the first on
    new buffers, the others on those the split before left spare (rust/src/buffers.rs)."""
    out = subprocess.run(
        [sys.executable, "-c", SPARE_SCRIPT, str(csv_file)],
        check=True,
        capture_output=True,
        text=True,
    )
    (fresh, fresh_faults), *spare = json.loads(out.stdout)
    figures.append(
        f"4-chunk subset splits of 20 MiB zstd chunks one after another: system CPU and page "
        f"faults on new buffers {fresh:.3f} s, {fresh_faults} faults; on spare ones "
        + ", ".join(f"{s:.3f} s, {f}" for s, f in spare)
    )
