"""meshpipe.web.detail on records built by hand: chunk durations, the chart's points (grouped
to at most 120), credential-like headers withheld."""

from __future__ import annotations

import datetime as dt

from meshpipe.ledger import ChunkRecord, ReceiveRecord
from meshpipe.web.detail import WITHHELD, chunk_rows, safe_headers, throughput_points

START = dt.datetime(2026, 12, 4, 1, 0, tzinfo=dt.UTC)


def receive(chunk_count: int, size: int) -> ReceiveRecord:
    return ReceiveRecord(
        id=1, mailbox="X26ABC1", message_id="M", sender="X26ABC2", workflow_id="WF",
        local_id=None, subject=None, headers={}, size=size, chunk_count=chunk_count,
        chunk_size=1000, codec="none", destination="/d", partial_path="/d.part", xxh3_128=None,
        state="delivered", error=None, hook=None, chunks_done=chunk_count, claim=None,
        created_at=START, updated_at=START, finished_at=None,
    )  # fmt: skip


def written(number: int, seconds: float, length: int = 1000) -> ChunkRecord:
    done = START + dt.timedelta(seconds=seconds)
    return ChunkRecord(number, "written", f"{number:032x}", None, length, None, done)


def test_durations_run_from_the_chunk_finished_before() -> None:
    record = receive(3, 3000)
    # chunk 3 finished before chunk 2 (side by side)
    rows = chunk_rows(record, [written(1, 2.0), written(2, 5.0), written(3, 3.5)])
    assert [(row.number, row.duration) for row in rows] == [(1, 2.0), (2, 1.5), (3, 1.5)]
    points = throughput_points(record, rows)
    assert points == [(2.0, 500.0), (3.5, 1000 / 1.5), (5.0, 1000 / 1.5)]


def test_many_chunks_make_at_most_120_points() -> None:
    count = 1000
    record = receive(count, count * 1000)
    rows = chunk_rows(record, [written(n, n * 0.01) for n in range(1, count + 1)])
    points = throughput_points(record, rows)
    assert len(points) <= 120 and points[-1][0] == 10.0
    assert all(abs(rate - 100_000) < 1 for _, rate in points)  # 1000 B every 10 ms


def test_credential_like_headers_are_withheld() -> None:
    shown = safe_headers(
        {"Authorization": "NHSMESH x", "mex-Subject": "s", "X-Shared-Key": "k", "mex-LocalID": "l"}
    )
    assert shown == {
        "Authorization": WITHHELD, "mex-Subject": "s", "X-Shared-Key": WITHHELD, "mex-LocalID": "l"
    }  # fmt: skip
