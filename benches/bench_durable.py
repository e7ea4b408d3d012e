"""What the ledger costs a transfer: the same file sent with the ledger on (DurableSend:
every chunk recorded, the message id and the last chunk waited for) and off (send_file), side
by side in one run, rounds interleaved (off, on, off, on, ...) so that drift hits both alike.

Send: uncompressed (the fastest send, so the ledger's largest share) in 20 MiB chunks to
``meshpipe serve --store discard`` in its own process (bodies checked and dropped, so the
server's disk is not measured), the ledger on SQLite in a temporary directory (WAL,
synchronous=FULL) and on a local PostgreSQL server. Stated as the ratio on/off of the best
round of each (goal: at least 0.97), with the MB/s of each. No --local-id is given (a fresh
one each send, as by default): a send with one first asks MESH's outbox whether it was already
sent, one request more.

    make bench PYTEST_ARGS="-k bench_durable"                 # 1 GiB by default
    MESHPIPE_BENCH_DURABLE_MB=64 make bench PYTEST_ARGS="-k bench_durable"
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.ledger.postgres import PostgresServer, run_postgres
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY

from meshpipe.client import ClientSettings, MeshClient
from meshpipe.config import MeshConfig
from meshpipe.durable import DurableSend
from meshpipe.headers import SendHeaders
from meshpipe.ledger import Ledger
from meshpipe.server.process import server_process
from meshpipe.synthetic import write_csv
from meshpipe.transfer import send_file
from meshpipe.units import MiB

SIZE_MB = int(os.environ.get("MESHPIPE_BENCH_DURABLE_MB", "1024"))
ROUNDS = int(os.environ.get("MESHPIPE_BENCH_DURABLE_ROUNDS", "3"))
CHUNK_SIZE = 20 * MiB
SENDER, RECIPIENT, WORKFLOW = "X26ABC1", "X26ABC2", "TEST_WORKFLOW2"


@pytest.fixture(scope="module")
def discard_server() -> Iterator[str]:
    with server_process(
        "--rules",
        "sandbox",
        "--shared-key",
        SANDBOX_SHARED_KEY,
        "--store",
        "discard",
        "--log-level",
        "WARNING",
    ) as (url, _process):
        yield url


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_csv(tmp_path_factory.mktemp("bench-durable") / "extract.csv", SIZE_MB * MiB)


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    with run_postgres(durable=True) as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ledger]:
    if request.param == "sqlite":
        location = str(tmp_path_factory.mktemp("ledger") / "ledger.sqlite3")
    else:
        location = request.getfixturevalue("postgres_server").create_database("bench_durable")
    with Ledger.open(location) as opened:
        yield opened


async def _send_rounds(url: str, source: Path, ledger: Ledger) -> dict[str, list[float]]:
    """Seconds of each send, ledger off and on, interleaved."""
    config = MeshConfig(url, SENDER, SANDBOX_PASSWORD, SANDBOX_SHARED_KEY)
    seconds: dict[str, list[float]] = {"off": [], "on": []}
    async with MeshClient(config, ClientSettings(max_connections=8)) as client:
        for _ in range(ROUNDS):
            for mode in ("off", "on"):
                headers = SendHeaders(to=RECIPIENT, workflow_id=WORKFLOW)
                started = time.perf_counter()
                if mode == "off":
                    await send_file(client, source, headers, chunk_size=CHUNK_SIZE)
                else:
                    result = await DurableSend(
                        client, ledger, source, headers, chunk_size=CHUNK_SIZE
                    ).run()
                    assert result.outcome == "sent"
                seconds[mode].append(time.perf_counter() - started)
    return seconds


def test_bench_send_ledger_on_vs_off(
    benchmark: Any, discard_server: str, source: Path, ledger: Ledger, figures: list[str]
) -> None:
    seconds = benchmark.pedantic(
        lambda: asyncio.run(_send_rounds(discard_server, source, ledger)), rounds=1, iterations=1
    )
    size = source.stat().st_size
    best = {mode: min(times) for mode, times in seconds.items()}
    rate = {mode: size / 1e6 / best[mode] for mode in best}
    ratio = rate["on"] / rate["off"]
    backend = "SQLite" if ledger.location.startswith("/") else "PostgreSQL"
    chunks = -(-size // CHUNK_SIZE)
    figures.append(
        f"send, ledger on/off ({backend}): {ratio:.3f} "
        f"(on {rate['on']:,.0f} MB/s, off {rate['off']:,.0f} MB/s; best of {ROUNDS} "
        f"interleaved rounds of {size / MiB:,.0f} MiB = {chunks} chunks of 20 MiB, "
        "uncompressed, to meshpipe serve --store discard)"
    )
    benchmark.extra_info.update(
        {"ratio_on_off": ratio, "mb_per_s_on": rate["on"], "mb_per_s_off": rate["off"]}
    )
