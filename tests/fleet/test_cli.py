"""``meshpipe submit`` and ``meshpipe worker`` from the command line: the local id printed,
a local id submitted again taken up (not sent twice), a SQLite ledger refused before anything
is recorded."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from meshpipe.ledger import Ledger
from meshpipe.synthetic import write_csv
from meshpipe.units import MiB
from tests.fleet.conftest import RECIPIENT, SENDER, mesh_env


def _meshpipe(*args: str, url: str = "http://127.0.0.1:9") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshpipe", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **mesh_env(url)},
        check=False,
    )


def test_submit_prints_the_local_id_and_enqueues_once(fleet_db: str, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "extract.csv", 6 * MiB)
    command = (
        "submit",
        str(source),
        "--to",
        RECIPIENT,
        "--workflow-id",
        "WF_A",
        "--chunk-size",
        "5MiB",
    )
    first = _meshpipe(*command, "--ledger", fleet_db, "--local-id", "nightly-1")
    assert first.returncode == 0, first.stderr
    assert first.stdout == "nightly-1\n"
    again = _meshpipe(*command, "--ledger", fleet_db, "--local-id", "nightly-1")
    assert again.returncode == 0, again.stderr
    assert "not finished; taken up again" in again.stderr
    with Ledger.open(fleet_db) as ledger:
        record = ledger.find_send(SENDER, "nightly-1")
        assert record is not None and record.sequence == 1 and record.state == "preparing"
        assert record.chunk_count == 2
    with psycopg.connect(fleet_db) as connection:
        jobs = connection.execute("SELECT task_name, status FROM procrastinate_jobs").fetchall()
    assert jobs == [("meshpipe.fleet.send_first", "todo")]  # the second one was a duplicate


def test_a_sqlite_ledger_is_refused(tmp_path: Path) -> None:
    source = write_csv(tmp_path / "extract.csv", MiB)
    ledger = tmp_path / "ledger.sqlite3"
    for command in (
        ("submit", str(source), "--to", RECIPIENT, "--workflow-id", "WF_A"),
        ("worker",),
    ):
        result = _meshpipe(*command, "--ledger", str(ledger))
        assert result.returncode == 2, result.stderr
        assert "the fleet needs a PostgreSQL ledger" in result.stderr
    assert not ledger.exists()


def test_the_database_password_is_never_logged(fleet_db: str, tmp_path: Path) -> None:
    password = "s3cret-db-password"
    location = fleet_db.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")
    log = tmp_path / "worker.log"
    with log.open("wb") as stderr:
        worker = subprocess.Popen(
            [sys.executable, "-m", "meshpipe", "worker", "--ledger", location, "-vv"],
            stderr=stderr,
            env={**os.environ, **mesh_env("http://127.0.0.1:9")},
        )
        try:
            deadline = time.monotonic() + 30
            while "Starting worker" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
    text = log.read_text()
    assert "Starting worker" in text
    assert password not in text
    missing = location.replace(fleet_db.rsplit("/", 1)[1].split("?")[0], "no_such_db")
    source = write_csv(tmp_path / "extract.csv", MiB)
    result = _meshpipe("submit", str(source), "--to", RECIPIENT, "--workflow-id", "W",
                       "--ledger", missing)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "no_such_db" in result.stderr and "Traceback" not in result.stderr
    assert password not in result.stderr
