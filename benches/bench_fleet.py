"""What the fleet's coordination costs, and how a send scales with workers, in one run.

The same file is sent, rounds interleaved so that drift hits every mode alike, to ``meshpipe
serve --store discard`` (bodies checked and dropped) in its own process:

* ``durable-sqlite`` / ``durable-pg``: one process, DurableSend (4 chunks in flight), the
  ledger on SQLite or on the local PostgreSQL server (fsync on);
* ``fleet-1`` / ``fleet-2``: ``meshpipe submit`` (4 chunks a range job) then 1 or 2
  ``meshpipe worker`` processes (``--concurrency 4`` each: as many chunks in flight as
  DurableSend; ledger and job queue on the same PostgreSQL, started and listening before the
  submit), timed from the submit to the ledger's ``completed``.

Each mode sends the file twice per round, one send after the other: the figures are of the
second (a process already sending: the engine's spare buffers and open connections, as for a
worker through a night of extracts); the first send of each process is reported beside them
(a worker just started zeroes fresh pages for every chunk buffer of its first jobs).

From the fleet rounds the ledger and the queue give the coordination per chunk: a chunk's
request (recorded sent to recorded accepted) against the gap between one job's end and the
next job's start on a worker (procrastinate_events: finish, fetch), and the commits of the
ledger per chunk (chunk_sent + chunk_accepted, timed alone). On this 2-core machine the
codec is the ceiling: 2 workers share the same 2 cores as 1.

    make bench PYTEST_ARGS="-k bench_fleet"              # 400 MiB, zstd, 20 MiB chunks
    MESHPIPE_BENCH_FLEET_CODEC=none make bench PYTEST_ARGS="-k bench_fleet"
    MESHPIPE_BENCH_FLEET_MB=2048 MESHPIPE_BENCH_FLEET_CONCURRENCY=2 make bench ...  # 103 chunks
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.ledger.postgres import PostgresServer
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY

from meshpipe.client import ClientSettings, MeshClient
from meshpipe.config import MeshConfig
from meshpipe.durable import DurableSend
from meshpipe.fleet import submit
from meshpipe.fleet.queue import apply_schema
from meshpipe.headers import SendHeaders
from meshpipe.ledger import Ledger, SendRecord, SourceFile
from meshpipe.server.process import server_process
from meshpipe.synthetic import write_csv
from meshpipe.units import Codec, MiB

SIZE_MB = int(os.environ.get("MESHPIPE_BENCH_FLEET_MB", "400"))
ROUNDS = int(os.environ.get("MESHPIPE_BENCH_FLEET_ROUNDS", "3"))
CODEC: Codec = os.environ.get("MESHPIPE_BENCH_FLEET_CODEC", "zstd")  # type: ignore[assignment]
CHUNK_SIZE = 20 * MiB
CHUNKS_PER_JOB = int(os.environ.get("MESHPIPE_BENCH_FLEET_CHUNKS_PER_JOB", "4"))
CONCURRENCY = os.environ.get("MESHPIPE_BENCH_FLEET_CONCURRENCY", "4")
SENDER, RECIPIENT, WORKFLOW = "X26ABC1", "X26ABC2", "TEST_WORKFLOW2"


@pytest.fixture(scope="module")
def discard_server() -> Iterator[str]:
    with server_process(
        "--rules", "sandbox", "--shared-key", SANDBOX_SHARED_KEY, "--store", "discard",
        "--log-level", "WARNING",
    ) as (url, _process):  # fmt: skip
        yield url


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("bench-fleet") / "extract.csv", SIZE_MB * MiB)


def _config(url: str) -> MeshConfig:
    return MeshConfig(url, SENDER, SANDBOX_PASSWORD, SANDBOX_SHARED_KEY)


async def _durable(url: str, source: Path, location: str) -> tuple[float, float]:
    """Seconds of two sends of ``source`` one after the other in this process."""
    taken = []
    with Ledger.open(location) as ledger:
        async with MeshClient(_config(url), ClientSettings(max_connections=8)) as client:
            for _ in range(2):
                started = time.perf_counter()
                result = await DurableSend(
                    client,
                    ledger,
                    source,
                    SendHeaders(to=RECIPIENT, workflow_id=WORKFLOW),
                    chunk_size=CHUNK_SIZE,
                    codec=CODEC,
                    min_payload_size=0,
                ).run()
                taken.append(time.perf_counter() - started)
                assert result.outcome == "sent"
    return taken[0], taken[1]


class _Workers:
    def __init__(self, location: str, url: str, count: int, logs: Path) -> None:
        env = {
            **os.environ,
            "MESH_URL": url,
            "MESH_MAILBOX": SENDER,
            "MESH_PASSWORD": SANDBOX_PASSWORD,
            "MESH_SHARED_KEY": SANDBOX_SHARED_KEY,
        }
        command = [sys.executable, "-m", "meshpipe", "worker", "--ledger", location]
        options = ["--concurrency", CONCURRENCY, "--min-payload-size", "0"]
        self.processes = [
            subprocess.Popen(
                [*command, "--name", f"w{n}", *options],
                env=env,
                stderr=(logs / f"w{n}.log").open("ab"),
            )
            for n in range(count)
        ]

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=30)


def _wait_for_workers(location: str, count: int) -> None:
    """Until ``count`` workers have registered with the queue (started and listening)."""
    with psycopg.connect(location, autocommit=True) as connection:
        while True:
            row = connection.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
            if row is not None and row[0] >= count:
                return
            time.sleep(0.05)


def _fleet(url: str, source: Path, location: str) -> tuple[float, SendRecord]:
    started = time.perf_counter()
    submitted = asyncio.run(
        submit(
            location,
            SENDER,
            source,
            SendHeaders(to=RECIPIENT, workflow_id=WORKFLOW),
            codec=CODEC,
            chunk_size=CHUNK_SIZE,
            chunks_per_job=CHUNKS_PER_JOB,
        )
    )
    with Ledger.open(location) as ledger:
        while True:
            record = ledger.transfer(submitted.transfer_id)
            if record.state in ("completed", "failed"):
                break
            time.sleep(0.01)
    seconds = time.perf_counter() - started
    assert isinstance(record, SendRecord) and record.state == "completed", record.error
    return seconds, record


def _chunk_seconds(location: str, record: SendRecord) -> tuple[list[float], float, float]:
    """Each chunk's request (recorded sent to accepted); the seconds from the send's record
    to chunk 1 recorded sent (the submit's own work and chunk 1's hash pass) and from chunk 1
    sent to the last chunk accepted (the message on the wire)."""
    with Ledger.open(location) as ledger:
        chunks = ledger.chunks(record)
    requests = []
    for chunk in chunks:
        assert chunk.sent_at is not None and chunk.done_at is not None
        requests.append((chunk.done_at - chunk.sent_at).total_seconds())
    first = min(chunk.sent_at for chunk in chunks if chunk.sent_at is not None)
    last = max(chunk.done_at for chunk in chunks if chunk.done_at is not None)
    return requests, (first - record.created_at).total_seconds(), (last - first).total_seconds()


def _job_gaps(location: str) -> list[float]:
    """Per worker, the seconds between one job's end and its next job's start."""
    with psycopg.connect(location) as connection:
        rows = connection.execute(
            """
            SELECT j.worker_id, e.job_id, e.type::text, e.at FROM procrastinate_events e
            JOIN procrastinate_jobs j ON j.id = e.job_id
            WHERE e.type IN ('started', 'succeeded') ORDER BY e.at
            """
        ).fetchall()
    ended: dict[Any, Any] = {}
    gaps: list[float] = []
    for worker, _job, kind, at in rows:
        if kind == "succeeded":
            ended[worker] = at
        elif worker in ended:
            gaps.append((at - ended.pop(worker)).total_seconds())
    return gaps


def _ledger_commits(location: str, source: Path, count: int = 200) -> float:
    """Seconds of one chunk's two ledger commits (chunk_sent, chunk_accepted)."""
    with Ledger.open(location) as ledger:
        record = ledger.begin_send(
            SENDER,
            SendHeaders(to=RECIPIENT, workflow_id=WORKFLOW, local_id=f"commits-{time.time_ns()}"),
            SourceFile.stat(source),
            chunk_size=CHUNK_SIZE,
            chunk_count=count + 1,
            codec=CODEC,
        )
        ledger.chunk_sent(record, 1, "0" * 32, 1)
        ledger.set_message_id(record, "BENCH")
        started = time.perf_counter()
        for number in range(2, count + 2):
            ledger.chunk_sent(record, number, f"{number:032x}", 1, worker="bench")
            ledger.chunk_accepted(record, number, worker="bench")
        return (time.perf_counter() - started) / count


def _rounds(
    url: str, source: Path, server: PostgresServer, sqlite: str, logs: Path
) -> dict[str, Any]:
    """Per round, each mode sends the file twice: once as the first send of its process (cold)
    and once right after (warm: buffers kept spare by the engine, connections open)."""
    modes = ("durable-sqlite", "durable-pg", "fleet-1", "fleet-2")
    seconds: dict[str, list[float]] = {mode: [] for mode in modes}
    cold: dict[str, list[float]] = {mode: [] for mode in modes}
    chunk_times: list[float] = []
    gaps: list[float] = []
    leads: list[float] = []
    wires: list[float] = []
    durable_pg = server.create_database("bench_durable")
    for _ in range(ROUNDS):
        for mode, location in (("durable-sqlite", sqlite), ("durable-pg", durable_pg)):
            first, again = asyncio.run(_durable(url, source, location))
            cold[mode].append(first)
            seconds[mode].append(again)
        for workers in (1, 2):
            location = server.create_database("bench_fleet")
            asyncio.run(apply_schema(location))
            Ledger.open(location).close()
            running = _Workers(location, url, workers, logs)
            try:
                _wait_for_workers(location, workers)
                first, _ = _fleet(url, source, location)
                took, record = _fleet(url, source, location)
            finally:
                running.stop()
            cold[f"fleet-{workers}"].append(first)
            seconds[f"fleet-{workers}"].append(took)
            if workers == 1:
                requests, lead, wire = _chunk_seconds(location, record)
                chunk_times += requests
                leads.append(lead)
                wires.append(wire)
                gaps += _job_gaps(location)
    commits_pg = _ledger_commits(durable_pg, source)
    commits_sqlite = _ledger_commits(sqlite, source)
    return {
        "seconds": seconds,
        "cold": cold,
        "chunk": statistics.median(chunk_times),
        "gap": statistics.median(gaps) if gaps else float("nan"),
        "commits_pg": commits_pg,
        "commits_sqlite": commits_sqlite,
        "lead": min(leads),
        "wire": min(wires),
        "fleet_1": min(seconds["fleet-1"]),
    }


@pytest.mark.timeout(1800)
def test_bench_fleet_coordination_and_workers(
    benchmark: Any,
    discard_server: str,
    source: Path,
    postgres_server: PostgresServer,
    tmp_path: Path,
    figures: list[str],
) -> None:
    outcome = benchmark.pedantic(
        lambda: _rounds(
            discard_server, source, postgres_server, str(tmp_path / "ledger.sqlite3"), tmp_path
        ),
        rounds=1,
        iterations=1,
    )
    size = source.stat().st_size
    rate = {mode: size / 1e6 / min(times) for mode, times in outcome["seconds"].items()}
    cold = {mode: size / 1e6 / min(times) for mode, times in outcome["cold"].items()}
    chunks = -(-size // CHUNK_SIZE)
    figures.append(
        f"fleet, {size / MiB:,.0f} MiB {CODEC} in {chunks} chunks of 20 MiB, best of {ROUNDS} "
        f"interleaved rounds, workers --concurrency {CONCURRENCY}, MB/s of each process's "
        "second send: "
        + ", ".join(f"{mode} {value:,.0f}" for mode, value in rate.items())
        + f"; durable PG/SQLite {rate['durable-pg'] / rate['durable-sqlite']:.3f}, "
        f"fleet-1/durable-pg {rate['fleet-1'] / rate['durable-pg']:.3f}, "
        f"fleet-2/fleet-1 {rate['fleet-2'] / rate['fleet-1']:.3f}"
    )
    figures.append(
        "fleet, the first send of each process (workers just started), MB/s: "
        + ", ".join(f"{mode} {value:,.0f}" for mode, value in cold.items())
        + f"; fleet-1/durable-pg {cold['fleet-1'] / cold['durable-pg']:.3f}"
    )
    figures.append(
        f"fleet coordination per chunk: job end to next job start {outcome['gap'] * 1e3:.1f} ms "
        f"(median, per {CHUNKS_PER_JOB}-chunk job), ledger commits "
        f"{outcome['commits_pg'] * 1e3:.2f} ms "
        f"(PostgreSQL, fsync on; SQLite {outcome['commits_sqlite'] * 1e3:.2f} ms), against "
        f"{outcome['chunk'] * 1e3:.0f} ms for a chunk's request (median, recorded sent to "
        "accepted)"
    )
    figures.append(
        f"fleet, 1 worker, best round {outcome['fleet_1']:.2f} s: submit's record to chunk 1 "
        f"sent {outcome['lead']:.2f} s (the plan, the ledger, the queue, chunk 1's job and its "
        f"hash pass), chunk 1 sent to the last chunk accepted {outcome['wire']:.2f} s"
    )
    benchmark.extra_info.update({"mb_per_s": rate, **{k: outcome[k] for k in ("chunk", "gap")}})
