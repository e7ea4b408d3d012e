"""The zero-copy handoff: chunk payloads are read-only buffers from a bounded pool."""

from __future__ import annotations

import gc
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import meshpipe
from tests.engine.helpers import csv_bytes

MiB = meshpipe.MiB


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "extract.csv"
    path.write_bytes(csv_bytes(11 * MiB))
    return path


def test_payload_is_a_read_only_view_without_copy(source: Path) -> None:
    splitter = meshpipe.Splitter(source, chunk_size=5 * MiB)
    chunk = next(splitter)
    view = memoryview(chunk)
    assert view.readonly and view.nbytes == len(chunk) == chunk.length == 5 * MiB
    assert view.format == "B" and view.ndim == 1
    with pytest.raises(TypeError):
        view[0] = 1
    # Two views share the same memory (no copy per export).
    again = memoryview(chunk)
    assert again.tobytes()[:100] == source.read_bytes()[:100]
    with pytest.raises(BufferError, match="still exported"):
        chunk.release()
    view.release()
    again.release()
    chunk.release()
    with pytest.raises(BufferError, match="released"):
        memoryview(chunk)
    splitter.close()


def test_chunks_outlive_the_splitter(source: Path) -> None:
    with meshpipe.Splitter(source, chunk_size=5 * MiB, codec="gzip") as splitter:
        first = next(splitter)
    del splitter
    gc.collect()
    assert len(bytes(first)) == first.payload_size > 0


def _next_in_thread(splitter: meshpipe.Splitter) -> tuple[threading.Thread, list[meshpipe.Chunk]]:
    got: list[meshpipe.Chunk] = []
    waiter = threading.Thread(target=lambda: got.append(next(splitter)), daemon=True)
    waiter.start()
    return waiter, got


@pytest.mark.parametrize("codec", ["none", "gzip"])
@pytest.mark.parametrize("window", [1, 2])
def test_window_bounds_chunks_in_flight(source: Path, codec: meshpipe.Codec, window: int) -> None:
    """While the caller holds ``window`` chunks no further chunk is produced; releasing one
    (explicitly or by garbage collection) lets exactly the next one through. A splitter whose
    window did not bound its buffers would hand the waiting thread a chunk here."""
    splitter = meshpipe.Splitter(source, chunk_size=5 * MiB, window=window, threads=1, codec=codec)
    held = [next(splitter) for _ in range(window)]
    assert [chunk.number for chunk in held] == list(range(1, window + 1))
    waiter, got = _next_in_thread(splitter)
    waiter.join(timeout=1.0)
    assert waiter.is_alive() and not got, "a chunk beyond the window was produced"
    held.pop(0).release()
    waiter.join(timeout=60)
    assert not waiter.is_alive() and [chunk.number for chunk in got] == [window + 1]
    del held, got  # garbage collection returns the buffers too
    gc.collect()
    rest = list(splitter)
    assert [chunk.number for chunk in rest] == list(range(window + 2, 4))
    if rest:
        assert rest[-1].length == MiB
    splitter.close()


def test_a_subset_split_has_the_same_window_bound(source: Path) -> None:
    splitter = meshpipe.Splitter(source, chunk_size=5 * MiB, window=1, threads=1, chunks=[1, 3])
    first = next(splitter)
    waiter, got = _next_in_thread(splitter)
    waiter.join(timeout=1.0)
    assert waiter.is_alive() and not got, "a chunk beyond the window was produced"
    first.release()
    waiter.join(timeout=60)
    assert [(chunk.number, chunk.length) for chunk in got] == [(3, MiB)]
    splitter.close()


def test_strided_input_is_refused(tmp_path: Path) -> None:
    assembler = meshpipe.Assembler(tmp_path / "out", chunk_count=1)
    writer = assembler.open_chunk(1)
    strided = memoryview(b"abcdefgh")[::2]
    with pytest.raises(ValueError, match="contiguous"):
        writer.write(strided)
    writer.write(bytearray(b"ok"))
    writer.write(memoryview(b"!"))
    writer.finish()
    assembler.finish()
    assert (tmp_path / "out").read_bytes() == b"ok!"


def test_digest_only_after_the_last_chunk(source: Path) -> None:
    splitter = meshpipe.Splitter(source, chunk_size=5 * MiB)
    next(splitter)
    with pytest.raises(meshpipe.StateError, match="after the last chunk"):
        splitter.digest()
    splitter.close()
    with pytest.raises(meshpipe.StateError, match="closed"):
        next(splitter)


def test_reprs_and_plan(source: Path) -> None:
    splitter = meshpipe.Splitter(source, chunk_size=5 * MiB, codec="zstd")
    assert splitter.codec == "zstd"
    assert splitter.plan.chunk_count == 3
    assert "chunk_count=3" in repr(splitter.plan)
    chunk = next(splitter)
    assert "number=1" in repr(chunk)
    splitter.close()


def test_next_releases_the_gil_while_it_waits(source: Path) -> None:
    """next() blocks until a buffer comes back; only another Python thread can give it back.
    If next() held the GIL while waiting, this would deadlock."""
    splitter = meshpipe.Splitter(source, chunk_size=5 * MiB, window=1, threads=1)
    first = next(splitter)
    got: list[meshpipe.Chunk] = []
    waiter = threading.Thread(target=lambda: got.append(next(splitter)))
    waiter.start()
    waiter.join(timeout=0.2)
    assert waiter.is_alive() and not got  # waiting for the only buffer
    first.release()
    waiter.join(timeout=30)
    assert not waiter.is_alive() and got[0].number == 2
    splitter.close()


def test_chunks_assemble_concurrently_from_threads(tmp_path: Path, source: Path) -> None:
    with meshpipe.Splitter(source, chunk_size=5 * MiB, codec="zstd") as splitter:
        payloads = [(chunk.number, bytes(chunk), chunk.xxh3_128) for chunk in splitter]
        digest = splitter.digest()
    assembler = meshpipe.Assembler(
        tmp_path / "out",
        chunk_count=len(payloads),
        codec="zstd",
        chunk_size=5 * MiB,
        file_size=digest.size,
        xxh3_128=digest.xxh3_128,
    )

    def receive(item: tuple[int, bytes, str]) -> str:
        number, payload, checksum = item
        writer = assembler.open_chunk(number, xxh3_128=checksum)
        for start in range(0, len(payload), 100_000):
            writer.write(payload[start : start + 100_000])
        return writer.finish().verified_by

    with ThreadPoolExecutor(3) as pool:
        assert set(pool.map(receive, payloads)) == {"xxh3-128"}
    assert assembler.finish().size == source.stat().st_size
    assert (tmp_path / "out").read_bytes() == source.read_bytes()
