"""Receives through the ledger, on SQLite and PostgreSQL: the state machine, chunks, hooks."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshpipe.ledger import HookOutcome, Ledger, LedgerError, ReceiveRecord
from tests.ledger.helpers import MAILBOX, RECIPIENT, begin_receive, checksum, receive_all


def test_begin_receive_keeps_the_mex_headers(ledger: Ledger, tmp_path: Path) -> None:
    record = begin_receive(ledger, tmp_path)
    assert record.state == "downloading"
    assert (record.mailbox, record.message_id) == (RECIPIENT, "MSG-IN-1")
    assert (record.sender, record.workflow_id, record.local_id, record.subject) == (
        MAILBOX,
        "WF_A",
        "extract-1",
        "nightly",
    )
    assert "Content-Type" not in record.headers
    assert record.headers["mex-Chunk-Range"] == "1:3"
    assert (record.chunk_count, record.chunk_size, record.codec) == (3, None, "gzip")
    assert record.destination == str(tmp_path / "MSG-IN-1.dat")
    assert record.partial_path == str(tmp_path / ".MSG-IN-1.partial")
    assert record.hook is None and record.xxh3_128 is None
    assert ledger.find_receive(RECIPIENT, "MSG-IN-1") == record
    assert ledger.find_receive(RECIPIENT, "MSG-OTHER") is None
    assert ledger.find_receive(MAILBOX, "MSG-IN-1") is None
    with pytest.raises(LedgerError) as again:
        begin_receive(ledger, tmp_path)
    assert again.value.code == "exists" and again.value.transfer == record.id


def test_a_full_receive_moves_through_its_states(ledger: Ledger, tmp_path: Path) -> None:
    record = begin_receive(ledger, tmp_path)
    ledger.chunk_written(record, 2, checksum(2), 5 << 20)
    with pytest.raises(LedgerError) as early:
        ledger.mark_verified(record, "f" * 32)
    assert early.value.code == "incomplete"
    ledger.chunk_written(record, 1, checksum(1), 5 << 20)
    ledger.chunk_written(record, 1, checksum(1), 5 << 20)  # again: a no-op
    ledger.chunk_written(record, 3, checksum(3), 17)
    assert ledger.written_chunks(record) == {n: checksum(n) for n in (1, 2, 3)}
    with pytest.raises(LedgerError) as not_verified:
        ledger.mark_delivered(record)
    assert not_verified.value.code == "invalid-state"
    verified = ledger.mark_verified(record, "f" * 32)
    assert (verified.state, verified.xxh3_128, verified.chunks_done) == ("verified", "f" * 32, 3)
    assert verified.chunk_size == 5 << 20  # chunk 1's length
    assert ledger.mark_delivered(record).state == "delivered"
    assert ledger.record_hook(record, False, "exit status 3") == HookOutcome(
        False, "exit status 3", 1
    )
    assert ledger.record_hook(record, True, None) == HookOutcome(True, None, 2)
    done = ledger.mark_acknowledged(record)
    assert (done.state, done.hook) == ("acknowledged", HookOutcome(True, None, 2))
    assert done.finished_at is not None
    again = ledger.mark_acknowledged(record)  # MESH delivered it again
    assert again.state == "acknowledged" and again.finished_at == done.finished_at
    acks = [e.detail for e in ledger.events(record) if e.kind == "acknowledged"]
    assert acks == [{"again": False}, {"again": True}]
    with pytest.raises(LedgerError) as no_hook:
        ledger.record_hook(record, True)
    assert no_hook.value.code == "invalid-state"
    lengths = [(c.number, c.state, c.length) for c in ledger.chunks(record)]
    assert lengths == [(1, "written", 5 << 20), (2, "written", 5 << 20), (3, "written", 17)]


def test_chunk_refusals(ledger: Ledger, tmp_path: Path) -> None:
    record = begin_receive(ledger, tmp_path)
    ledger.chunk_written(record, 1, checksum(1), 10)
    with pytest.raises(LedgerError) as changed:
        ledger.chunk_written(record, 1, checksum(9), 10)
    assert changed.value.code == "checksum-mismatch"
    with pytest.raises(LedgerError) as outside:
        ledger.chunk_written(record, 0, checksum(0), 10)
    assert outside.value.code == "chunk-number"
    with pytest.raises(LedgerError) as wrong_way:
        ledger.chunk_sent(record, 2, checksum(2), 10)
    assert wrong_way.value.code == "wrong-direction"


def test_discarded_chunks_are_fetched_again(ledger: Ledger, tmp_path: Path) -> None:
    record = begin_receive(ledger, tmp_path)
    for number in (1, 2, 3):
        ledger.chunk_written(record, number, checksum(number), 10)
    ledger.discard_chunks(record, [2, 3, 7], "chunk 2 and 3 failed their re-check on reopen")
    assert ledger.written_chunks(record) == {1: checksum(1)}
    assert ledger.transfer(record).chunks_done == 1
    discarded = [e.detail for e in ledger.events(record) if e.kind == "chunks_discarded"]
    assert discarded == [
        {"numbers": [2, 3], "reason": "chunk 2 and 3 failed their re-check on reopen"}
    ]
    ledger.discard_chunks(record, [5], "nothing there")  # nothing to discard: no event
    assert len([e for e in ledger.events(record) if e.kind == "chunks_discarded"]) == 1
    ledger.chunk_written(record, 2, checksum(2), 10)
    assert ledger.transfer(record).chunks_done == 2


def test_a_failed_receive_resumes_downloading(ledger: Ledger, tmp_path: Path) -> None:
    record = begin_receive(ledger, tmp_path)
    ledger.chunk_written(record, 1, checksum(1), 10)
    failed = ledger.mark_failed(record, "No space left on device")
    assert (failed.state, failed.error) == ("failed", "No space left on device")
    with pytest.raises(LedgerError):
        ledger.chunk_written(record, 2, checksum(2), 10)
    resumed = ledger.resume(record)
    assert isinstance(resumed, ReceiveRecord) and resumed.state == "downloading"
    assert ledger.written_chunks(record) == {1: checksum(1)}
    assert receive_all(ledger, record).state == "acknowledged"


def test_a_delivered_message_cannot_fail(ledger: Ledger, tmp_path: Path) -> None:
    record = begin_receive(ledger, tmp_path, chunk_count=1)
    ledger.chunk_written(record, 1, checksum(1), 10)
    ledger.mark_verified(record, "f" * 32)
    ledger.mark_delivered(record)
    with pytest.raises(LedgerError) as refused:
        ledger.mark_failed(record, "acknowledgement failed")
    assert refused.value.code == "invalid-state"
    ledger.record_event(record, "error", message="acknowledgement failed: 503")
    assert ledger.transfer(record).state == "delivered"
    assert ledger.events(record)[-1].detail == {"message": "acknowledgement failed: 503"}
