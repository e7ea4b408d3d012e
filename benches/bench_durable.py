"""What the ledger costs a send, and what a resume costs, measured in one run.

Ledger on vs off: the same file sent with the ledger on (DurableSend: every chunk recorded,
the message id and the last chunk waited for) and off (send_file), rounds interleaved (off,
on, off, on, ...) so that drift hits both alike. Uncompressed (the fastest send, so the
ledger's largest share) in 20 MiB chunks to ``meshpipe serve --store discard`` in its own
process (bodies checked and dropped, so the server's disk is not measured); the ledger on
SQLite in a temporary directory (WAL, synchronous=FULL) and on a local PostgreSQL server. No
local id is given (a fresh one each send, as by default; with --local-id a send first asks
MESH's outbox whether it was already sent, one request more). Stated as the ratio on/off of
the best round of each (goal: at least 0.97), with the MB/s of each.

Resume: the same file sent until 90% of it is accepted, then stopped (the ledger keeps what
it recorded, as after a crash), then resumed: the time from the resume's start to its first
chunk request, against one xxh3-128 pass over the file in the same run (goal: about 1, the
re-hash and nothing more), and the bytes re-sent against those not recorded accepted.

    make bench PYTEST_ARGS="-k bench_durable"                 # 1 GiB by default
    MESHPIPE_BENCH_DURABLE_MB=10240 make bench PYTEST_ARGS="-k bench_resume"   # the 10 GiB case
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY

from meshpipe._meshpipe import xxh3_128_file
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


class _Interrupt(Exception):
    """Stops a send part-way, as a crash would (the ledger keeps what was recorded)."""


async def _interrupted_then_resumed(
    url: str, source: Path, ledger: Ledger, stop_at: float
) -> dict[str, float]:
    """Send until ``stop_at`` of the file is accepted, stop, then resume: the seconds from the
    resume's start to its first chunk request, and what it sent."""
    config = MeshConfig(url, SENDER, SANDBOX_PASSWORD, SANDBOX_SHARED_KEY)
    headers = SendHeaders(to=RECIPIENT, workflow_id=WORKFLOW, local_id=f"resume-{time.time_ns()}")

    def stop(done: int, total: int) -> None:
        if done >= stop_at * total:
            raise _Interrupt

    async with MeshClient(config, ClientSettings(max_connections=8)) as client:
        with contextlib.suppress(_Interrupt):
            await DurableSend(
                client, ledger, source, headers, chunk_size=CHUNK_SIZE, progress=stop
            ).run()
        record = ledger.find_send(SENDER, headers.local_id or "")
        assert record is not None and record.state == "failed"
        accepted = len(ledger.accepted_chunks(record))
        first_chunk: list[float] = []
        send_chunk = client.send_chunk

        async def timed_send_chunk(*args: Any, **kwargs: Any) -> None:
            first_chunk.append(time.perf_counter())
            await send_chunk(*args, **kwargs)

        client.send_chunk = timed_send_chunk  # type: ignore[method-assign]
        started = time.perf_counter()
        result = await DurableSend(client, ledger, source, headers, chunk_size=CHUNK_SIZE).run()
    assert result.outcome == "resumed" and result.sent is not None
    return {
        "to_first_chunk": first_chunk[0] - started,
        "accepted_before": accepted,
        "chunks": record.chunk_count,
        "bytes_resent": result.sent.bytes_sent,
    }


def test_bench_resume_to_first_new_chunk(
    benchmark: Any, discard_server: str, source: Path, tmp_path: Path, figures: list[str]
) -> None:
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        outcome = benchmark.pedantic(
            lambda: asyncio.run(_interrupted_then_resumed(discard_server, source, ledger, 0.9)),
            rounds=1,
            iterations=1,
        )
    started = time.perf_counter()
    xxh3_128_file(source)
    hash_pass = time.perf_counter() - started
    size = source.stat().st_size
    unsent = size - outcome["accepted_before"] * CHUNK_SIZE
    figures.append(
        f"resume at {outcome['accepted_before']}/{outcome['chunks']} chunks of "
        f"{size / MiB:,.0f} MiB: restart to first new chunk {outcome['to_first_chunk']:.3f} s, "
        f"one xxh3-128 pass over the file {hash_pass:.3f} s (ratio "
        f"{outcome['to_first_chunk'] / hash_pass:.2f}); re-sent {outcome['bytes_resent']:,} "
        f"bytes for {unsent:,} not recorded accepted (SQLite ledger, page-cached file)"
    )
    benchmark.extra_info.update({**outcome, "hash_pass": hash_pass})
