"""One writer per transfer across processes: claims, refusals naming the owner, waiting,
takeover of a dead owner's or an expired claim, and the lease's renewal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import meshpipe
from meshpipe.ledger import Ledger, LedgerError, TransferBusyError
from meshpipe.ledger.store import this_host
from tests.ledger.helpers import begin_receive, begin_send, checksum

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def worker(*args: str) -> Iterator[subprocess.Popen[str]]:
    """tests/ledger/worker.py in its own process, with this checkout's meshpipe."""
    python_dir = str(Path(meshpipe.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([python_dir, str(REPO)])}
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.ledger.worker", *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()


def read_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, f"worker exited ({process.wait(timeout=30)}) before answering"
    return line.strip()


def test_a_second_process_is_refused_then_waits(
    ledger: Ledger, ledger_location: str, source: Path
) -> None:
    record = begin_send(ledger, source)
    with worker("claim", ledger_location, str(record.id)) as holder:
        assert read_line(holder) == f"claimed {holder.pid}@{this_host()}"
        with pytest.raises(TransferBusyError) as busy, ledger.claim(record):
            pass
        assert busy.value.owner == f"{holder.pid}@{this_host()}"
        assert busy.value.code == "busy" and busy.value.transfer == record.id
        assert str(holder.pid) in str(busy.value)
        assert busy.value.expires_at is not None
        claim = ledger.transfer(record).claim
        assert claim is not None and claim.pid == holder.pid
        with pytest.raises(TransferBusyError):  # no change without the claim either
            ledger.chunk_sent(record, 1, checksum(1), 10)
        assert ledger.chunks(record) == []
        assert holder.stdin is not None
        holder.stdin.write("release\n")
        holder.stdin.flush()
        with ledger.claim(record, wait=60) as mine:
            assert mine.pid == os.getpid()
            ledger.chunk_sent(record, 1, checksum(1), 10)
        assert read_line(holder) == "released"
    assert ledger.transfer(record).claim is None
    owners = [(e.kind, e.detail.get("owner")) for e in ledger.events(record)]
    assert owners[1:4] == [
        ("claimed", f"{holder.pid}@{this_host()}"),
        ("released", f"{holder.pid}@{this_host()}"),
        ("claimed", f"{os.getpid()}@{this_host()}"),
    ]


def test_a_killed_owners_claim_is_taken_over(
    ledger: Ledger, ledger_location: str, tmp_path: Path
) -> None:
    record = begin_receive(ledger, tmp_path)
    with worker("claim", ledger_location, str(record.id)) as holder:
        read_line(holder)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with ledger.claim(record) as mine:  # at once: its pid is gone on this host
        assert mine.pid == os.getpid()
        ledger.chunk_written(record, 1, checksum(1), 10)
    taken = [e.detail for e in ledger.events(record) if e.kind == "taken_over"]
    assert taken == [
        {
            "owner": f"{os.getpid()}@{this_host()}",
            "previous_owner": f"{holder.pid}@{this_host()}",
            "because": "its process has exited",
        }
    ]


def test_an_expired_lease_is_taken_over_and_the_old_owner_stops(
    ledger: Ledger, ledger_location: str, source: Path
) -> None:
    record = begin_send(ledger, source)
    later = datetime.now(UTC) + timedelta(hours=1)
    with Ledger.open(ledger_location, clock=lambda: later) as other, ledger.claim(record):
        with (
            Ledger.open(ledger_location) as now,
            pytest.raises(TransferBusyError),
            now.claim(record),
        ):
            pass
        with other.claim(record) as taken:  # an hour on, the lease has run out
            assert taken.expires_at > later
            with pytest.raises(TransferBusyError) as lost:
                ledger.chunk_sent(record, 1, checksum(1), 10)
            assert "taken over" in str(lost.value)
            other.chunk_sent(record, 1, checksum(1), 10)
    kinds = [e.kind for e in ledger.events(record)]
    assert "taken_over" in kinds
    assert [e.detail["because"] for e in ledger.events(record) if e.kind == "taken_over"] == [
        "its lease expired"
    ]


def test_a_claim_renews_its_lease(ledger: Ledger, source: Path) -> None:
    record = begin_send(ledger, source)
    with ledger.claim(record, lease=0.6) as held:
        renewed = held.expires_at
        for _ in range(200):
            claim = ledger.transfer(record).claim
            assert claim is not None
            renewed = claim.expires_at
            if renewed > held.expires_at:
                break
            time.sleep(0.05)
        assert renewed > held.expires_at


def test_a_claim_is_not_taken_twice_by_one_ledger(ledger: Ledger, source: Path) -> None:
    record = begin_send(ledger, source)
    with ledger.claim(record):
        with pytest.raises(LedgerError) as twice, ledger.claim(record):
            pass
        assert twice.value.code == "invalid-state"
    with ledger.claim(record):  # released: free again
        pass


def test_readers_go_on_while_another_process_writes(tmp_path: Path) -> None:
    location = str(tmp_path / "ledger.sqlite3")
    count = 150
    with Ledger.open(location) as ledger:
        record = begin_receive(ledger, tmp_path, chunk_count=count)
        with worker("write", location, str(record.id)) as writer:
            assert read_line(writer) == "started"
            seen: list[int] = []
            while writer.poll() is None or not seen or seen[-1] < count:
                done = ledger.history()[0].chunks_done
                assert len(ledger.written_chunks(record)) >= done
                seen.append(done)
                if writer.poll() is not None and done < count:
                    assert writer.returncode == 0
            assert read_line(writer) == "done"
        assert seen == sorted(seen) and seen[-1] == count
        assert any(0 < done < count for done in seen)  # read while the writer was writing
        assert ledger.written_chunks(record) == {n: checksum(n) for n in range(1, count + 1)}
