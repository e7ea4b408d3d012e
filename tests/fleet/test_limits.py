"""Fleet-wide limits per mailbox, enforced through PostgreSQL: three workers of three jobs
each never have more chunk requests in flight than the mailbox's bound, and start them no
faster than its rate (read from the ledger: a chunk is recorded sent after it took its slot
and turn, and accepted before it gave its slot back, so each recorded interval contains its
request)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from meshpipe.ledger import Ledger
from meshpipe.server.process import server_process
from meshpipe.synthetic import write_csv
from meshpipe.units import MiB
from tests.fleet.conftest import Fleet, wait_for_send
from tests.peers import SANDBOX_SHARED_KEY


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[str]:
    """``meshpipe serve`` taking 0.3 s over every chunk after the first, so requests overlap."""
    plan = tmp_path / "faults.json"
    plan.write_text(
        json.dumps(
            {"faults": [{"kind": "stall", "route": "send_chunk", "seconds": 0.3, "times": 0}]}
        )
    )
    with server_process(
        "--rules", "sandbox", "--shared-key", SANDBOX_SHARED_KEY, "--store", "dir",
        "--data-dir", str(tmp_path / "store"), "--faults", str(plan), "--log-level", "WARNING",
    ) as (url, _process):  # fmt: skip
        yield url


def _most_at_once(intervals: list[tuple[datetime, datetime]]) -> int:
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = now = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        now += step
        most = max(most, now)
    return most


def _send(
    fleet: Fleet, tmp_path: Path, workflow: str, *limits: str
) -> list[tuple[datetime, datetime]]:
    source = write_csv(tmp_path / "extract.csv", 40 * MiB)
    fleet.start_all("--concurrency", "3", *limits)
    submitted = fleet.submit(source, workflow)
    with Ledger.open(fleet.ledger) as ledger:
        record = wait_for_send(ledger, submitted.transfer_id, fleet)
        assert record.state == "completed", (record.error, fleet.log_text())
        chunks = ledger.chunks(record)
    assert len({chunk.worker for chunk in chunks}) >= 2
    intervals = []
    for chunk in chunks:
        assert chunk.sent_at is not None and chunk.done_at is not None
        intervals.append((chunk.sent_at, chunk.done_at))
    return intervals


def test_chunks_in_flight_never_exceed_the_mailbox_bound(
    fleet: Fleet, tmp_path: Path, workflow: str
) -> None:
    intervals = _send(fleet, tmp_path, workflow, "--max-in-flight", "2")
    assert _most_at_once(intervals[1:]) == 2  # the bound, reached and never exceeded


def test_requests_start_no_faster_than_the_mailbox_rate(
    fleet: Fleet, tmp_path: Path, workflow: str
) -> None:
    intervals = _send(fleet, tmp_path, workflow, "--max-rps", "5")
    starts = sorted(start for start, _ in intervals)
    # Five starts a second across the fleet: the sixth after a start is a second later (on
    # the database's clock; the ledger's times are the workers', a few ms apart).
    gaps = [(starts[i + 5] - starts[i]).total_seconds() for i in range(len(starts) - 5)]
    assert min(gaps) >= 0.9, gaps
