"""Resuming an assembly from a stable partial file with a list of completed chunks."""

from __future__ import annotations

import errno
import gc
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import meshpipe
from tests.engine.helpers import SplitResult, csv_bytes, feed, split_file

KiB = meshpipe.KiB
CHUNK = 16 * KiB


@pytest.fixture
def source(tmp_path: Path) -> SplitResult:
    path = tmp_path / "extract.csv"
    path.write_bytes(csv_bytes(5 * CHUNK + 123))
    return split_file(path, codec="zstd", chunk_size=CHUNK, min_chunk_size=1)


def assembler(
    split: SplitResult, destination: Path, partial: Path, **kwargs: object
) -> meshpipe.Assembler:
    return meshpipe.Assembler(
        destination,
        chunk_count=len(split.payloads),
        codec="zstd",
        chunk_size=CHUNK,
        file_size=split.digest.size,
        xxh3_128=split.digest.xxh3_128,
        partial_path=partial,
        **kwargs,  # type: ignore[arg-type]
    )


def write(assembly: meshpipe.Assembler, split: SplitResult, numbers: list[int]) -> None:
    for number in numbers:
        writer = assembly.open_chunk(number, xxh3_128=split.checksums[number - 1])
        feed(writer, split.payloads[number - 1], 5000)
        assert writer.finish(sync=True).verified_by == "xxh3-128"


def recorded(split: SplitResult, numbers: list[int]) -> dict[int, str]:
    return {n: split.checksums[n - 1] for n in numbers}


def test_a_resumed_assembly_writes_only_the_rest_and_verifies_the_whole_file(
    tmp_path: Path, source: SplitResult
) -> None:
    destination, partial = tmp_path / "out.csv", tmp_path / "out.csv.partial"
    first = assembler(source, destination, partial, keep_partial=True)
    write(first, source, [4, 1, 2])
    del first  # a crash: never finished
    gc.collect()
    assert partial.exists() and not destination.exists()

    resumed = assembler(source, destination, partial, completed=recorded(source, [1, 2, 4]))
    assert (resumed.accepted, resumed.rejected) == ([1, 2, 4], [])
    assert resumed.missing == [3, 5, 6]
    assert resumed.temporary_path == str(partial)
    write(resumed, source, resumed.missing)
    report = resumed.finish()
    assert report.xxh3_128 == source.digest.xxh3_128
    assert "file xxh3-128" in report.verified
    assert destination.read_bytes() == (tmp_path / "extract.csv").read_bytes()
    assert not partial.exists()


def test_a_partial_file_survives_a_killed_process(tmp_path: Path, source: SplitResult) -> None:
    """The first run is SIGKILLed after syncing chunks 2 and 5 (no destructor runs); the
    second run resumes from what is on disk."""
    destination, partial = tmp_path / "out.csv", tmp_path / "out.csv.partial"
    payloads = tmp_path / "payloads"
    payloads.mkdir()
    for number in (2, 5):
        (payloads / str(number)).write_bytes(source.payloads[number - 1])
    child = textwrap.dedent(
        f"""
        import os, signal
        import meshpipe
        a = meshpipe.Assembler(
            {str(destination)!r}, chunk_count=6, codec="zstd", chunk_size={CHUNK},
            file_size={source.digest.size}, partial_path={str(partial)!r}, keep_partial=True,
        )
        for number in (2, 5):
            writer = a.open_chunk(number)
            with open(os.path.join({str(payloads)!r}, str(number)), "rb") as f:
                writer.write(f.read())
            writer.finish(sync=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=120)
    assert run.returncode == -signal.SIGKILL, run.stderr.decode()
    resumed = assembler(source, destination, partial, completed=recorded(source, [2, 5]))
    assert (resumed.accepted, resumed.rejected) == ([2, 5], [])
    write(resumed, source, resumed.missing)
    assert resumed.finish().xxh3_128 == source.digest.xxh3_128
    assert destination.read_bytes() == (tmp_path / "extract.csv").read_bytes()


def test_a_tampered_completed_chunk_is_rejected_and_written_again(
    tmp_path: Path, source: SplitResult
) -> None:
    destination, partial = tmp_path / "out.csv", tmp_path / "out.csv.partial"
    first = assembler(source, destination, partial, keep_partial=True)
    write(first, source, [1, 2, 3])
    first.abort()
    with partial.open("r+b") as handle:  # one byte of chunk 2 changes between the runs
        handle.seek(CHUNK + 100)
        byte = handle.read(1)
        handle.seek(CHUNK + 100)
        handle.write(bytes([byte[0] ^ 0xFF]))

    resumed = assembler(source, destination, partial, completed=recorded(source, [1, 2, 3]))
    assert (resumed.accepted, resumed.rejected) == ([1, 3], [2])
    assert resumed.missing == [2, 4, 5, 6]
    write(resumed, source, resumed.missing)
    assert resumed.finish().size == source.digest.size
    assert destination.read_bytes() == (tmp_path / "extract.csv").read_bytes()


def test_the_whole_file_check_still_covers_resumed_chunks(
    tmp_path: Path, source: SplitResult
) -> None:
    """A ledger that recorded the checksum of wrong bytes accepts them on resume; the
    whole-file xxh3-128 over the finished file still refuses the result."""
    destination, partial = tmp_path / "out.csv", tmp_path / "out.csv.partial"
    partial.write_bytes(b"x" * CHUNK)
    wrong = {1: meshpipe.xxh3_128_file(partial)}
    resumed = assembler(source, destination, partial, completed=wrong, keep_partial=True)
    assert resumed.accepted == [1]
    write(resumed, source, resumed.missing)
    with pytest.raises(meshpipe.ChecksumMismatchError, match="whole file: xxh3-128 mismatch"):
        resumed.finish()
    assert not destination.exists()
    assert partial.exists(), "kept for the caller to decide"


def test_keep_partial_survives_abort_and_an_exception_and_the_default_does_not(
    tmp_path: Path, source: SplitResult
) -> None:
    destination, partial = tmp_path / "out.csv", tmp_path / "out.csv.partial"
    with (
        pytest.raises(RuntimeError),
        assembler(source, destination, partial, keep_partial=True) as a,
    ):
        write(a, source, [1])
        raise RuntimeError("the download failed")
    assert partial.stat().st_size == source.digest.size  # extended to the planned size
    with assembler(source, destination, partial, completed=recorded(source, [1])) as a:
        assert a.accepted == [1]
        a.abort()
    assert not partial.exists()
    assert sorted(os.listdir(tmp_path)) == ["extract.csv"]


def test_a_partial_file_in_use_is_refused(tmp_path: Path, source: SplitResult) -> None:
    destination, partial = tmp_path / "out.csv", tmp_path / "out.csv.partial"
    first = assembler(source, destination, partial, keep_partial=True)
    with pytest.raises(BlockingIOError, match="in use by another assembler"):
        assembler(source, destination, partial, keep_partial=True)
    first.abort()


def test_resume_arguments_are_checked(tmp_path: Path, source: SplitResult) -> None:
    destination, partial = tmp_path / "out.csv", tmp_path / "out.csv.partial"
    with pytest.raises(ValueError, match="pass partial_path"):
        meshpipe.Assembler(destination, chunk_count=6, chunk_size=CHUNK, completed={1: "0" * 32})
    with pytest.raises(ValueError, match="needs chunk_size"):
        meshpipe.Assembler(
            destination, chunk_count=6, partial_path=partial, completed={1: "0" * 32}
        )
    with pytest.raises(ValueError, match="completed chunk 1: an xxh3-128 digest is 32 hex"):
        assembler(source, destination, partial, completed={1: "beef"})
    with pytest.raises(meshpipe.ChunkNumberError, match="chunk 7 is outside"):
        assembler(source, destination, partial, completed={7: "0" * 32})
    with pytest.raises(ValueError, match="is the destination itself"):
        assembler(source, destination, destination)
    assert sorted(os.listdir(tmp_path)) == ["extract.csv"]


def test_finish_never_replaces_an_existing_file(tmp_path: Path, source: SplitResult) -> None:
    destination, partial = tmp_path / "out.csv", tmp_path / "out.csv.partial"
    a = assembler(source, destination, partial, keep_partial=True)
    write(a, source, list(range(1, 7)))
    destination.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError, match="appeared while receiving"):
        a.finish()
    assert destination.read_bytes() == b"someone else's"
    assert partial.exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_is_an_enospc_oserror_naming_the_file(tmp_path: Path) -> None:
    # /dev/full accepts the open and fails every write with ENOSPC. keep_partial: never delete it.
    a = meshpipe.Assembler(
        tmp_path / "out",
        chunk_count=2,
        chunk_size=1000,
        partial_path="/dev/full",
        keep_partial=True,
    )
    writer = a.open_chunk(1)
    with pytest.raises(OSError) as raised:
        writer.write(b"x" * 1000)
    assert type(raised.value) is OSError and raised.value.errno == errno.ENOSPC
    assert "/dev/full" in str(raised.value)
    assert a.missing == [1, 2]
    a.open_chunk(1).abort()  # the chunk may be written again later
    a.abort()
    assert os.path.exists("/dev/full")
