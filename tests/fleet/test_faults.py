"""Faults of a fleet send: a worker killed while it holds a chunk job, PostgreSQL restarted
mid-send, a poison job. Each ends with one verified message or a clear failure, nothing
duplicated."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from meshpipe._meshpipe import xxh3_128_file
from meshpipe.client import MeshClient
from meshpipe.config import MeshConfig
from meshpipe.ledger import Ledger, SendRecord
from meshpipe.server.process import server_process
from meshpipe.synthetic import write_csv
from meshpipe.units import MiB
from tests.fleet.conftest import RECIPIENT, Fleet, wait_for_send
from tests.fleet.test_send import receive
from tests.ledger.postgres import PostgresServer, run_postgres
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY


def _stalling_server(tmp_path: Path, chunk: int, seconds: float) -> Iterator[str]:
    plan = tmp_path / "faults.json"
    plan.write_text(
        json.dumps(
            {
                "faults": [
                    {"kind": "stall", "route": "send_chunk", "chunk": chunk, "seconds": seconds}
                ]
            }
        )
    )
    with server_process(
        "--rules", "sandbox", "--shared-key", SANDBOX_SHARED_KEY, "--store", "dir",
        "--data-dir", str(tmp_path / "store"), "--faults", str(plan), "--log-level", "WARNING",
    ) as (url, _process):  # fmt: skip
        yield url


@pytest.fixture
def stall_seconds() -> float:
    return 8.0


@pytest.fixture
def serve(tmp_path: Path, stall_seconds: float) -> Iterator[str]:
    """``meshpipe serve`` whose first request for chunk 3 hangs for ``stall_seconds``."""
    yield from _stalling_server(tmp_path, 3, stall_seconds)


def _wait_until(check: object, fleet: Fleet, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} never happened:\n{fleet.log_text()}")


async def _inbox_of(url: str, workflow: str) -> list[str]:
    config = MeshConfig(url, RECIPIENT, SANDBOX_PASSWORD, SANDBOX_SHARED_KEY)
    async with MeshClient(config) as client:
        found = []
        for message_id in await client.list_inbox():
            metadata = await client.head(message_id)
            if metadata.workflow_id == workflow:
                found.append(message_id)
        return found


def assert_sent_once(ledger: Ledger, record: SendRecord, fleet: Fleet, source: Path) -> None:
    assert record.state == "completed", (record.error, fleet.log_text())
    assert record.chunks_done == record.chunk_count
    accepted = [e.detail["number"] for e in ledger.events(record) if e.kind == "chunk_accepted"]
    assert sorted(accepted) == list(range(1, record.chunk_count + 1))  # each counted once
    assert record.message_id is not None
    assert asyncio.run(_inbox_of(fleet.url, record.workflow_id or "")) == [record.message_id]
    destination = source.parent / "received.csv"
    asyncio.run(receive(fleet.url, record.message_id, destination))
    assert xxh3_128_file(destination) == xxh3_128_file(source)


def test_a_worker_killed_holding_a_chunk_job_is_taken_over(
    fleet: Fleet, tmp_path: Path, workflow: str
) -> None:
    source = write_csv(tmp_path / "extract.csv", 30 * MiB)
    fleet.start("w1")
    submitted = fleet.submit(source, workflow, chunks_per_job=2)
    with Ledger.open(fleet.ledger) as ledger:

        def w1_sending_chunk_3() -> bool:
            return any(
                c.number == 3 and c.state == "sent" and c.worker == "w1"
                for c in ledger.chunks(submitted.transfer_id)
            )

        _wait_until(w1_sending_chunk_3, fleet, "w1 sending chunk 3")
        fleet.kill("w1")  # mid-request: MESH holds chunk 3's request, unanswered
        fleet.start("w2")
        fleet.start("w3")
        record = wait_for_send(ledger, submitted.transfer_id, fleet)
        assert_sent_once(ledger, record, fleet, source)
        third = next(c for c in ledger.chunks(record) if c.number == 3)
        assert third.worker in ("w2", "w3")
        sent_3 = [
            e for e in ledger.events(record) if e.kind == "chunk_sent" and e.detail["number"] == 3
        ]
        assert [e.detail["worker"] for e in sent_3][:1] == ["w1"] and len(sent_3) == 2


def test_a_poison_job_ends_failed_with_its_reason(
    fleet: Fleet, tmp_path: Path, workflow: str
) -> None:
    source = write_csv(tmp_path / "extract.csv", 12 * MiB)
    submitted = fleet.submit(source, workflow, chunks_per_job=2)
    source.unlink()
    fleet.start("w1")
    with Ledger.open(fleet.ledger) as ledger:
        record = wait_for_send(ledger, submitted.transfer_id, fleet)
    assert record.state == "failed"
    assert record.error is not None and "no longer exists" in record.error
    assert "chunk 1 failed on worker w1 after 1 try" in record.error
    with psycopg.connect(fleet.ledger) as connection:
        statuses = connection.execute(
            "SELECT task_name, status, attempts FROM procrastinate_jobs"
        ).fetchall()
    assert statuses == [("meshpipe.fleet.send_first", "failed", 1)]  # one try, not retried


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own (it is restarted)."""
    with run_postgres() as server:
        yield server


@pytest.fixture
def fleet_db(own_postgres: PostgresServer) -> str:
    return own_postgres.create_database("fleet")


@pytest.mark.usefixtures("fleet_db", "stall_seconds")
@pytest.mark.parametrize("stall_seconds", [3.0])
def test_workers_reconnect_after_postgresql_restarts(
    fleet: Fleet, tmp_path: Path, workflow: str, own_postgres: PostgresServer
) -> None:
    source = write_csv(tmp_path / "extract.csv", 30 * MiB)
    for name in ("w1", "w2", "w3"):
        fleet.start(name)
    submitted = fleet.submit(source, workflow)
    with Ledger.open(fleet.ledger) as ledger:
        _wait_until(
            lambda: any(c.number == 3 for c in ledger.chunks(submitted.transfer_id)),
            fleet,
            "chunk 3 sent",
        )
        assert ledger.transfer(submitted.transfer_id).state == "uploading"
    own_postgres.restart()  # chunk 3's request hangs meanwhile
    with Ledger.open(fleet.ledger) as ledger:
        record = wait_for_send(ledger, submitted.transfer_id, fleet, timeout=120)
        assert_sent_once(ledger, record, fleet, source)


@pytest.mark.slow
@pytest.mark.usefixtures("stall_seconds")
@pytest.mark.parametrize("stall_seconds", [3.0])
def test_in_order_a_chunk_that_waits_too_long_steps_aside(
    fleet: Fleet, tmp_path: Path, workflow: str
) -> None:
    """Chunk 3 hangs at MESH for 3 s: in order, the jobs of chunks 4.. wait for it, step
    aside after a second (enqueued again), and the message completes in order."""
    source = write_csv(tmp_path / "extract.csv", 30 * MiB)
    for name in ("w1", "w2"):
        fleet.start(name, "--order", "in-order", "--concurrency", "2", "--turn-wait", "1")
    submitted = fleet.submit(source, workflow)
    with Ledger.open(fleet.ledger) as ledger:
        record = wait_for_send(ledger, submitted.transfer_id, fleet)
        assert_sent_once(ledger, record, fleet, source)
        chunks = ledger.chunks(record)
    for before, after in itertools.pairwise(chunks):
        assert before.done_at is not None and after.sent_at is not None
        assert after.sent_at > before.done_at
    with psycopg.connect(fleet.ledger) as connection:
        row = connection.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'meshpipe.fleet.send_range'"
        ).fetchone()
    assert row is not None and row[0] > record.chunk_count - 2  # some were enqueued again
