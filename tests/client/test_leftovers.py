"""A killed receive's temporary file is removed by the next receive into the same place; live
receives' files, recent ones and the ledger's resumable partial files are left alone."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import time
from pathlib import Path

from meshpipe.client import MeshClient
from meshpipe.headers import SendHeaders
from meshpipe.transfer import receive_message, send_file
from meshpipe.transfer.leftovers import ABANDONED_AFTER, remove_abandoned_parts
from tests.client.conftest import RECIPIENT


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def left(path: Path, age: float = 2 * ABANDONED_AFTER) -> Path:
    path.write_bytes(b"half a chunk")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_only_old_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    destination = tmp_path / "extract.csv"
    pid = dead_pid()
    abandoned = left(tmp_path / f".extract.csv.meshpipe-{pid}-0.part")
    recent = left(tmp_path / f".extract.csv.meshpipe-{pid}-1.part", age=1)
    alive = left(tmp_path / f".extract.csv.meshpipe-{os.getppid()}-0.part")
    own = left(tmp_path / f".extract.csv.meshpipe-{os.getpid()}-0.part")
    other_file = left(tmp_path / f".other.csv.meshpipe-{pid}-0.part")
    resumable = left(tmp_path / ".extract.csv.20261203_ABC.meshpipe-partial")

    assert remove_abandoned_parts(destination) == [abandoned]
    assert not abandoned.exists()
    assert all(p.exists() for p in (recent, alive, own, other_file, resumable))


async def test_a_receive_removes_what_a_killed_receive_left(
    sender: MeshClient, recipient: MeshClient, small_file: Path, workflow: str, tmp_path: Path
) -> None:
    sent = await send_file(sender, small_file, SendHeaders(to=RECIPIENT, workflow_id=workflow))
    destination = tmp_path / "out.csv"
    left(tmp_path / f".out.csv.meshpipe-{dead_pid()}-3.part")
    received = await receive_message(recipient, sent.message_id, destination)
    assert filecmp.cmp(received.path, small_file, shallow=False)
    assert hidden_files(tmp_path) == []  # the killed receive's file is gone, and ours


def hidden_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))
