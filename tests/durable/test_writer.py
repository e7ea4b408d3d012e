"""The ledger writer: calls run in order on one thread, off the event loop; a failed call
stops every later one and is raised to the caller."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

from meshpipe.durable import LedgerWriter


async def test_calls_run_in_order_on_one_other_thread() -> None:
    writer = LedgerWriter()
    seen: list[tuple[int, str]] = []

    def record(number: int) -> None:
        time.sleep(0.001 * (5 - number % 5))  # later calls are quicker: order must still hold
        seen.append((number, threading.current_thread().name))

    for number in range(20):
        writer.submit(record, number)
    assert await writer.call(lambda: len(seen)) == 20
    await writer.close()
    assert [number for number, _ in seen] == list(range(20))
    threads = {name for _, name in seen}
    assert len(threads) == 1
    assert threads != {threading.current_thread().name}


async def test_submit_does_not_wait_for_the_call() -> None:
    writer = LedgerWriter()
    release = threading.Event()
    writer.submit(release.wait)
    # The event loop goes on while the queued call blocks its own thread.
    await asyncio.sleep(0)
    assert not release.is_set()
    release.set()
    await writer.close()


async def test_a_failed_call_is_raised_and_stops_later_calls() -> None:
    writer = LedgerWriter()
    later: list[int] = []
    both_queued = threading.Event()

    def fail() -> None:
        both_queued.wait()
        raise ValueError("disk I/O error")

    writer.submit(fail)
    writer.submit(later.append, 1)  # queued before the failure is known
    both_queued.set()
    with pytest.raises(ValueError, match="disk I/O error"):
        await writer.drain()
    assert later == []
    with pytest.raises(ValueError, match="disk I/O error"):
        writer.submit(later.append, 2)
    with pytest.raises(ValueError, match="disk I/O error"):
        await writer.close()
    assert later == []


class CountingBatch:
    """A batch factory that counts its transactions and what ran in each."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        self.batches.append([])
        yield


async def test_calls_queued_while_one_runs_commit_as_one_batch() -> None:
    batch = CountingBatch()
    writer = LedgerWriter(batch=batch)
    busy, release = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        release.wait()

    def record(number: int) -> int:
        batch.batches[-1].append(number)
        return number * 10

    writer.submit(hold)
    assert await asyncio.to_thread(busy.wait, 10)
    for number in range(1, 11):
        writer.submit(record, number)  # all queued while the first batch is still open
    release.set()
    assert await writer.call(record, 11) == 110
    await writer.close()
    assert batch.batches[0] == []  # hold() alone
    assert [n for b in batch.batches[1:] for n in b] == list(range(1, 12))
    assert len(batch.batches) <= 3  # not one transaction per call


async def test_a_failure_fails_its_whole_batch() -> None:
    batch = CountingBatch()
    writer = LedgerWriter(batch=batch)
    busy, release = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        release.wait()

    def fail() -> None:
        raise ValueError("constraint failed")

    writer.submit(hold)
    assert await asyncio.to_thread(busy.wait, 10)
    # Queued in the same batch as the failure: the batch is rolled back and run again call by
    # call, so this one's fact is kept; its caller, waiting for everything before, is told of
    # the failure all the same.
    earlier = asyncio.ensure_future(writer.call(lambda: 1))
    await asyncio.sleep(0)
    writer.submit(fail)
    release.set()
    with pytest.raises(ValueError, match="constraint failed"):
        await earlier
    with pytest.raises(ValueError, match="constraint failed"):
        await writer.drain()
    with pytest.raises(ValueError, match="constraint failed"):
        await writer.close()
