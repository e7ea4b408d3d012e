"""Receive with the ledger on (DurableReceiver: per-chunk fdatasync, chunk_written queued on
the LedgerWriter, claim, verified/delivered/acknowledged awaited) against the same receive
with it off (receive_message), side by side in one run, 20 MiB chunks. The server is
``meshpipe serve`` in its own process with synthetic messages (generated on download); the
file lands in pytest's temporary directory. The two cases alternate, round by round, so
that drift in the machine hits both; each figure is the best round.

    .venv/bin/python -m pytest benches/bench_durable_receive.py -s       # 512 MiB, 3 rounds
    MESHPIPE_BENCH_MB=40 MESHPIPE_BENCH_ROUNDS=1 .venv/bin/python -m pytest \\
        benches/bench_durable_receive.py -s                              # a quick check
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.durable.receiving import RECIPIENT, SENDER, Serve
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY
from tests.server.processes import serve_with

from meshpipe.client import MeshClient
from meshpipe.config import MeshConfig
from meshpipe.durable import DurableReceiver
from meshpipe.ledger import Ledger
from meshpipe.transfer import receive_message
from meshpipe.units import MiB

SIZE = int(os.environ.get("MESHPIPE_BENCH_MB", "512")) * MiB
ROUNDS = int(os.environ.get("MESHPIPE_BENCH_ROUNDS", "3"))
CHUNK = 20 * MiB


@pytest.fixture(scope="module")
def server() -> Iterator[Serve]:
    with serve_with("--store", "memory", "--log-level", "ERROR") as (url, process):
        yield Serve(url, process)


def new_message(server: Serve, seed: int) -> str:
    made = server.admin(
        "POST",
        "synthetic",
        {
            "mailbox_id": RECIPIENT,
            "sender": SENDER,
            "size": SIZE,
            "chunk_size": CHUNK,
            "seed": seed,
        },
    )
    return str(made["message_id"])


async def receive_once(url: str, message_id: str, out: Path, ledger: Ledger | None) -> float:
    """Seconds for one receive (connection set-up included)."""
    config = MeshConfig(url, RECIPIENT, SANDBOX_PASSWORD, SANDBOX_SHARED_KEY)
    async with MeshClient(config) as client:
        start = time.perf_counter()
        if ledger is None:
            await receive_message(client, message_id, out)
        else:
            await DurableReceiver(ledger).receive(client, message_id, out)
        return time.perf_counter() - start


def test_receive_ledger_on_vs_off(server: Serve, tmp_path: Path, figures: list[str]) -> None:
    best: dict[str, float] = {"off": float("inf"), "on": float("inf")}
    with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        for round_number in range(ROUNDS):
            for case in ("off", "on"):
                message_id = new_message(server, seed=2 * round_number + (case == "on"))
                out = tmp_path / f"{case}.bin"
                elapsed = asyncio.run(
                    receive_once(server.url, message_id, out, ledger if case == "on" else None)
                )
                out.unlink()
                best[case] = min(best[case], elapsed)
        records = ledger.history()
    assert len(records) == ROUNDS and all(r.state == "acknowledged" for r in records)
    rate = {case: SIZE / seconds / 1e6 for case, seconds in best.items()}
    figures.append(
        f"receive {SIZE // MiB} MiB in {CHUNK // MiB} MiB chunks: ledger off "
        f"{rate['off']:.0f} MB/s, on {rate['on']:.0f} MB/s (on/off {rate['on'] / rate['off']:.3f}, "
        f"best of {ROUNDS})"
    )
