"""Disk full while receiving: a clear error, the message not acknowledged, the ledger and the
partial file agreeing, and a later run with space finishing without fetching again what
was written. The destination is a small tmpfs (mounting needs root: skipped otherwise)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshpipe import xxh3_128_file
from meshpipe.durable import partial_path_for
from tests.durable.receiving import CHUNK, Serve, open_ledger, run_meshpipe, serve

SIZE = 4 * CHUNK  # four chunks: 20 MiB into a 12 MiB filesystem


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Serve]:
    with serve(tmp_path / "serve") as running:
        yield running


def grow(mount_point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=64m", str(mount_point)], check=True)


def test_disk_full_then_resume_with_space(server: Serve, small_disk: Path, tmp_path: Path) -> None:
    message_id = server.synthetic(SIZE, seed=21)
    out = small_disk / "extract.bin"
    server.faults()
    full = run_meshpipe(server.url, "receive", message_id, "--out", str(out), "--concurrency", "1")
    assert full.returncode == 1
    assert full.stderr.startswith("meshpipe: error: no space left on the device")
    assert "was not acknowledged" in full.stderr and "run the same command again" in full.stderr
    assert server.acks() == 0
    assert server.status(message_id) != "acknowledged"
    assert not out.exists()
    partial = partial_path_for(out, message_id)
    with open_ledger() as ledger:
        record = ledger.find_receive("X26ABC2", message_id)
        assert record is not None and record.state == "failed"
        written = ledger.written_chunks(record)
    assert written and set(written) == {1, 2}  # 12 MiB holds two 5 MiB chunks
    data = partial.read_bytes()
    piece = tmp_path / "piece"
    for number, checksum in written.items():
        piece.write_bytes(data[(number - 1) * CHUNK : number * CHUNK])
        assert xxh3_128_file(piece) == checksum  # the ledger says only what the file holds

    grow(small_disk)
    server.faults()
    done = run_meshpipe(server.url, "receive", message_id, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert server.downloads() == {3: 1, 4: 1}
    assert server.acks() == 1
    assert out.stat().st_size == SIZE
    assert "file xxh3-128" in done.stderr
    assert not partial.exists()
