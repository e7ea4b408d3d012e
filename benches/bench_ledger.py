"""The ledger's cost per chunk: commits per second of the per-chunk calls (chunk_sent, then
chunk_accepted: two committed transactions per chunk), on SQLite on disk (WAL,
synchronous=FULL: an fsync per commit) and on a local PostgreSQL server with its default
durability (fsync on, synchronous_commit on). For context, each figure is also given as a
fraction of one 20 MiB chunk's send time at 400 MB/s, and against a reference measured just
before each round on the same database: bare one-row commits through the driver itself
(sqlite3, or psycopg), which is what the disk's fsync allows.

Run: .venv/bin/python -m pytest benches/bench_ledger.py -s
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from pytest_benchmark.fixture import BenchmarkFixture

from meshpipe.headers import SendHeaders
from meshpipe.ledger import Ledger, SendRecord, SourceFile
from meshpipe.units import MiB

CHUNKS_PER_ROUND = 100
ROUNDS = 5
CHUNK_SIZE = 20 * MiB
LINK_RATE = 400e6  # bytes per second


def test_chunk_commits_per_second(
    benchmark: BenchmarkFixture, ledger: Ledger, tmp_path: Path, figures: list[str]
) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"x")
    local_ids = (f"bench-{n}" for n in itertools.count())
    transfers: list[SendRecord] = []

    def new_transfer() -> None:
        record = ledger.begin_send(
            "X26BENCH1",
            SendHeaders(to="X26BENCH2", workflow_id="BENCH", local_id=next(local_ids)),
            SourceFile.stat(source),
            chunk_size=CHUNK_SIZE,
            chunk_count=CHUNKS_PER_ROUND,
            codec="zstd",
        )
        ledger.chunk_sent(record, 1, "0" * 32, CHUNK_SIZE)
        ledger.set_message_id(record, f"MSG-{record.id}")
        transfers.append(record)

    def per_chunk_calls() -> None:
        record = transfers[-1]
        for number in range(2, CHUNKS_PER_ROUND + 1):
            ledger.chunk_sent(record, number, f"{number:032x}", CHUNK_SIZE)
            ledger.chunk_accepted(record, number)

    commits = 2 * (CHUNKS_PER_ROUND - 1)
    bare = _bare_commits(ledger, tmp_path, commits)
    bare_times: list[float] = []

    def setup() -> None:
        start = time.perf_counter()
        bare()
        bare_times.append(time.perf_counter() - start)
        new_transfer()

    with ledger.claim(_placeholder(ledger, source)):
        pass  # warm the connection pool and the claim path once
    benchmark.pedantic(per_chunk_calls, setup=setup, rounds=ROUNDS, iterations=1)
    rate = commits / benchmark.stats.stats.min
    bare_rate = commits / min(bare_times)
    per_chunk = 2 / rate
    chunk_time = CHUNK_SIZE / LINK_RATE
    backend = "SQLite" if ledger.location.startswith("/") else "PostgreSQL"
    figures.append(
        f"ledger {backend:<10} {rate:8.0f} commits/s (best of {ROUNDS} x {commits}); "
        f"chunk_sent+chunk_accepted {per_chunk * 1e3:.2f} ms = "
        f"{per_chunk / chunk_time:.2%} of a 20 MiB chunk at 400 MB/s "
        f"({chunk_time * 1e3:.1f} ms); bare driver commits {bare_rate:.0f}/s, ledger/bare "
        f"{rate / bare_rate:.2f} [{ledger.location}, on {_filesystem(ledger)}]"
    )
    assert ledger.accepted_chunks(transfers[-1]).keys() == set(range(1, CHUNKS_PER_ROUND + 1))


def _bare_commits(ledger: Ledger, tmp_path: Path, commits: int) -> Callable[[], None]:
    """One-row commits straight through the driver, in the same place as the ledger."""
    if ledger.location.startswith("/"):
        connection = sqlite3.connect(tmp_path / "bare.sqlite3", isolation_level=None)
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("CREATE TABLE IF NOT EXISTS bare (n INTEGER)")

        def sqlite_commits() -> None:
            for n in range(commits):
                connection.execute("BEGIN IMMEDIATE")
                connection.execute("INSERT INTO bare VALUES (?)", (n,))
                connection.execute("COMMIT")

        return sqlite_commits
    url = ledger.location.replace("postgresql+psycopg://", "postgresql://")
    pg = psycopg.connect(url.replace("%2F", "/"))
    pg.execute("CREATE TABLE IF NOT EXISTS bare (n INTEGER)")
    pg.commit()

    def postgres_commits() -> None:
        for n in range(commits):
            pg.execute("INSERT INTO bare VALUES (%s)", (n,))
            pg.commit()

    return postgres_commits


def _placeholder(ledger: Ledger, source: Path) -> int:
    record = ledger.begin_send(
        "X26BENCH1",
        SendHeaders(to="X26BENCH2", workflow_id="BENCH", local_id="warm-up"),
        SourceFile.stat(source),
        chunk_size=CHUNK_SIZE,
        chunk_count=1,
        codec="none",
    )
    return record.id


def _filesystem(ledger: Ledger) -> str:
    if not ledger.location.startswith("/"):
        return "a local server"
    device = os.stat(ledger.location).st_dev
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            name, mount_point, kind = line.split()[:3]
            if os.path.exists(mount_point) and os.stat(mount_point).st_dev == device:
                return f"{kind} {name}"
    return "an unknown filesystem"
