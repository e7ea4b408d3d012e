"""The commands refuse a damaged ledger, or one from a newer meshpipe, before they do anything:
one line naming the file and what to do, exit 1, nothing sent, the file left as it was."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from meshpipe.ledger import SCHEMA_VERSION, Ledger

# Nothing listens on port 9 (discard): a command that got past the ledger would fail to connect.
UNREACHABLE = "http://127.0.0.1:9"


def run(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MESHPIPE_STATE_DIR": str(state),
        "MESH_URL": UNREACHABLE,
        "MESH_MAILBOX": "X26ABC1",
        "MESH_PASSWORD": "password",
        "MESH_SHARED_KEY": "TestKey",
    }
    return subprocess.run(
        [sys.executable, "-m", "meshpipe", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def damaged(state: Path) -> Path:
    ledger = state / "ledger.sqlite3"
    ledger.write_bytes(b"this is not a database; it is somebody's notes\n" * 100)
    return ledger


def newer(state: Path) -> Path:
    ledger = state / "ledger.sqlite3"
    Ledger.open(ledger).close()
    with sqlite3.connect(ledger) as connection:
        connection.execute(
            "INSERT INTO meshpipe_schema_migrations (version, description, applied_at) "
            "VALUES (?, 'from the future', '2030-01-01T00:00:00Z')",
            (SCHEMA_VERSION + 1,),
        )
    connection.close()
    return ledger


COMMANDS = {
    "send": ("send", "SOURCE", "--to", "X26ABC2", "--workflow-id", "WF"),
    "receive": ("receive", "20261203000000000000_ABCDEF", "--out", "OUT"),
    "history": ("history",),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize(
    ("make", "expected"),
    [(damaged, "is not a SQLite database"), (newer, "upgrade meshpipe")],
    ids=["damaged", "newer"],
)
def test_a_bad_ledger_stops_the_command_and_is_left_as_it_was(
    tmp_path: Path, command: str, make: Callable[[Path], Path], expected: str
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    ledger = make(state)
    before = digest(ledger)
    source = tmp_path / "extract.csv"
    source.write_text("a,b\n1,2\n")
    out = tmp_path / "received.csv"
    args = [{"SOURCE": str(source), "OUT": str(out)}.get(arg, arg) for arg in COMMANDS[command]]
    finished = run(state, *args)
    assert finished.returncode == 1, finished.stderr
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("meshpipe: error: ledger ")
    assert str(ledger) in lines[0] and expected in lines[0]
    assert "connect" not in lines[0].lower()  # refused before any request
    assert digest(ledger) == before
    assert not out.exists()
