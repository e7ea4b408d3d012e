"""A worker's retried requests are ledger events, as a single-process send's are: chunk 1 (a
503 to it is ambiguous: MESH is asked first, then it is posted again) and a chunk of a range."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshpipe.ledger import Ledger
from meshpipe.server.process import server_process
from meshpipe.synthetic import write_csv
from meshpipe.units import MiB
from tests.fleet.conftest import Fleet, wait_for_send
from tests.fleet.test_faults import assert_sent_once
from tests.peers import SANDBOX_SHARED_KEY

REFUSED_ONCE = [
    {"kind": "status", "route": "send", "status": 503, "retry_after": 0},
    {"kind": "status", "route": "send_chunk", "chunk": 3, "status": 503, "retry_after": 0},
]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[str]:
    """``meshpipe serve`` that answers 503 once to chunk 1 and once to chunk 3."""
    plan = tmp_path / "faults.json"
    plan.write_text(json.dumps({"faults": REFUSED_ONCE}))
    with server_process(
        "--rules", "sandbox", "--shared-key", SANDBOX_SHARED_KEY, "--store", "dir",
        "--data-dir", str(tmp_path / "store"), "--faults", str(plan), "--log-level", "WARNING",
    ) as (url, _process):  # fmt: skip
        yield url


def test_retries_of_chunk_requests_are_recorded_with_the_worker(
    fleet: Fleet, tmp_path: Path, workflow: str
) -> None:
    source = write_csv(tmp_path / "extract.csv", 20 * MiB)
    fleet.start_all(names=("w1",))
    submitted = fleet.submit(source, workflow, chunks_per_job=2)
    with Ledger.open(fleet.ledger) as ledger:
        record = wait_for_send(ledger, submitted.transfer_id, fleet)
        assert_sent_once(ledger, record, fleet, source)
        retries = [e.detail for e in ledger.events(record) if e.kind == "retry"]
    assert [(r["chunk"], r["attempt"], r["worker"]) for r in retries] == [
        (1, 2, "w1"),
        (3, 2, "w1"),
    ]
    assert all("503" in str(r["error"]) for r in retries)
