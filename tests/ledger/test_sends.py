"""Sends through the ledger, on SQLite and PostgreSQL: the state machine, chunks, refusals."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshpipe.ledger import Ledger, LedgerError, SendRecord, SourceFile
from tests.ledger.helpers import MAILBOX, RECIPIENT, begin_send, checksum, send_all


def test_begin_send_records_everything_and_is_found_by_local_id(
    ledger: Ledger, source: Path
) -> None:
    record = begin_send(ledger, source)
    assert record.state == "preparing"
    assert (record.mailbox, record.local_id, record.sequence) == (MAILBOX, "extract-1", 1)
    assert record.recipient == RECIPIENT  # as sent: upper case
    assert (record.workflow_id, record.subject) == ("WF_A", "nightly")
    assert record.headers["mex-LocalID"] == "extract-1"
    info = os.stat(source)
    assert record.source == SourceFile(
        str(source), info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev, None
    )
    assert (record.chunk_size, record.chunk_count, record.codec, record.level) == (
        5 << 20,
        3,
        "zstd",
        3,
    )
    assert record.message_id is None and record.chunks_done == 0 and record.claim is None
    assert record.created_at.tzinfo is not None
    assert ledger.find_send(MAILBOX, "extract-1") == record
    assert ledger.find_send(MAILBOX, "other") is None
    assert ledger.find_send("X26OTHER", "extract-1") is None
    assert ledger.transfer(record.id) == record


def test_a_full_send_moves_through_its_states(ledger: Ledger, source: Path) -> None:
    record = begin_send(ledger, source)
    ledger.chunk_sent(record, 1, checksum(1), 90)
    assert ledger.accepted_chunks(record) == {}
    uploading = ledger.set_message_id(record, "MSG-1")
    assert (uploading.state, uploading.message_id, uploading.chunks_done) == (
        "uploading",
        "MSG-1",
        1,
    )
    assert ledger.accepted_chunks(record) == {1: checksum(1)}
    ledger.chunk_sent(record, 3, checksum(3), 70)
    ledger.chunk_accepted(record, 3)
    assert ledger.accepted_chunks(record) == {1: checksum(1), 3: checksum(3)}
    with pytest.raises(LedgerError) as refused:
        ledger.finish_send(record, "completed")
    assert refused.value.code == "incomplete"
    ledger.chunk_sent(record, 2, checksum(2), 80)
    ledger.chunk_accepted(record, 2)
    ledger.chunk_accepted(record, 2)  # again: a no-op
    done = ledger.finish_send(record, "completed")
    assert (done.state, done.chunks_done, done.error) == ("completed", 3, None)
    assert done.finished_at is not None
    chunk_rows = ledger.chunks(record)
    assert [(c.number, c.state, c.payload_size) for c in chunk_rows] == [
        (1, "accepted", 90),
        (2, "accepted", 80),
        (3, "accepted", 70),
    ]
    assert all(c.sent_at and c.done_at and c.done_at >= c.sent_at for c in chunk_rows)
    with pytest.raises(LedgerError) as after:
        ledger.chunk_sent(record, 2, checksum(2), 80)
    assert after.value.code == "invalid-state"


def test_the_same_local_id_is_refused_unless_sent_again_deliberately(
    ledger: Ledger, source: Path
) -> None:
    first = send_all(ledger, begin_send(ledger, source))
    with pytest.raises(LedgerError) as refused:
        begin_send(ledger, source)
    assert refused.value.code == "exists" and "extract-1" in str(refused.value)
    second = begin_send(ledger, source, again=True)
    assert second.sequence == 2 and second.id != first.id
    assert ledger.find_send(MAILBOX, "extract-1") == second
    # another mailbox, or no local id at all, is a different send
    assert begin_send(ledger, source, mailbox="X26OTHER").sequence == 1
    assert begin_send(ledger, source, local_id=None).sequence == 1
    assert begin_send(ledger, source, local_id=None).sequence == 1


def test_chunk_refusals(ledger: Ledger, source: Path) -> None:
    record = begin_send(ledger, source)
    with pytest.raises(LedgerError) as outside:
        ledger.chunk_sent(record, 4, checksum(4), 1)
    assert outside.value.code == "chunk-number" and outside.value.transfer == record.id
    with pytest.raises(LedgerError) as no_chunk_one:
        ledger.set_message_id(record, "MSG-1")
    assert no_chunk_one.value.code == "chunk-not-sent"
    ledger.chunk_sent(record, 1, checksum(1), 100)
    ledger.chunk_sent(record, 1, checksum(1), 101)  # a retry of the same chunk
    with pytest.raises(LedgerError) as changed:
        ledger.chunk_sent(record, 1, checksum(99), 100)
    assert changed.value.code == "checksum-mismatch"
    with pytest.raises(LedgerError) as too_early:
        ledger.chunk_accepted(record, 2)  # no message id yet
    assert too_early.value.code == "invalid-state"
    ledger.set_message_id(record, "MSG-1")
    assert ledger.set_message_id(record, "MSG-1").chunks_done == 1  # again: a no-op
    with pytest.raises(LedgerError) as other_id:
        ledger.set_message_id(record, "MSG-2")
    assert other_id.value.code == "invalid-state"
    with pytest.raises(LedgerError) as never_sent:
        ledger.chunk_accepted(record, 2)
    assert never_sent.value.code == "chunk-not-sent"
    with pytest.raises(LedgerError) as accepted:
        ledger.chunk_sent(record, 1, checksum(1), 100)
    assert accepted.value.code == "invalid-state"
    with pytest.raises(LedgerError) as wrong_way:
        ledger.chunk_written(record, 2, checksum(2), 10)
    assert wrong_way.value.code == "wrong-direction"
    with pytest.raises(LedgerError) as missing:
        ledger.chunk_sent(record.id + 1000, 1, checksum(1), 1)
    assert missing.value.code == "not-found"


def test_a_failed_send_resumes_where_it_was(ledger: Ledger, source: Path) -> None:
    record = begin_send(ledger, source)
    ledger.chunk_sent(record, 1, checksum(1), 100)
    ledger.set_message_id(record, "MSG-1")
    ledger.chunk_sent(record, 2, checksum(2), 100)
    failed = ledger.finish_send(record, "failed", "connection reset")
    assert (failed.state, failed.error) == ("failed", "connection reset")
    with pytest.raises(LedgerError):
        ledger.chunk_sent(record, 3, checksum(3), 100)
    resumed = ledger.resume(record, "meshpipe send --resume")
    assert isinstance(resumed, SendRecord)
    assert (resumed.state, resumed.message_id, resumed.finished_at) == ("uploading", "MSG-1", None)
    assert ledger.accepted_chunks(record) == {1: checksum(1)}
    ledger.chunk_sent(record, 2, checksum(2), 100)  # the chunk in flight at the failure
    ledger.chunk_accepted(record, 2)
    ledger.chunk_sent(record, 3, checksum(3), 100)
    ledger.chunk_accepted(record, 3)
    assert ledger.finish_send(record, "completed").state == "completed"
    with pytest.raises(LedgerError) as finished:
        ledger.resume(record)
    assert finished.value.code == "invalid-state"


def test_a_failed_send_without_a_message_id_resumes_preparing(ledger: Ledger, source: Path) -> None:
    record = begin_send(ledger, source)
    ledger.mark_failed(record, "MESH unreachable")
    assert ledger.resume(record).state == "preparing"


def test_restart_forgets_the_lost_message(ledger: Ledger, source: Path) -> None:
    record = begin_send(ledger, source)
    ledger.chunk_sent(record, 1, checksum(1), 100)
    ledger.set_message_id(record, "MSG-OLD")
    ledger.chunk_sent(record, 2, checksum(2), 100)
    ledger.chunk_accepted(record, 2)
    restarted = ledger.restart_send(record, "MESH answered 410 on chunk 3")
    assert (restarted.state, restarted.message_id, restarted.chunks_done) == ("preparing", None, 0)
    assert ledger.chunks(record) == []
    restarted_event = [e for e in ledger.events(record) if e.kind == "restarted"]
    assert restarted_event[0].detail == {
        "old_message_id": "MSG-OLD",
        "reason": "MESH answered 410 on chunk 3",
    }
    assert send_all(ledger, record, "MSG-NEW").message_id == "MSG-NEW"


def test_source_checksum_is_recorded_once(ledger: Ledger, source: Path) -> None:
    record = begin_send(ledger, source)
    ledger.set_source_checksum(record, "a" * 32)
    ledger.set_source_checksum(record, "a" * 32)
    stored = ledger.transfer(record)
    assert isinstance(stored, SendRecord) and stored.source.xxh3_128 == "a" * 32
    with pytest.raises(LedgerError) as changed:
        ledger.set_source_checksum(record, "b" * 32)
    assert changed.value.code == "checksum-mismatch"
    assert [e.kind for e in ledger.events(record)].count("source_checksum") == 1


def test_source_differences_name_what_changed(source: Path) -> None:
    recorded = SourceFile.stat(source, "a" * 32)
    assert recorded.differences(SourceFile.stat(source, "a" * 32)) == []
    assert recorded.differences(SourceFile.stat(source)) == []  # hash not known yet
    with source.open("ab") as appended:
        appended.write(b"more\n")
    changed = recorded.differences(SourceFile.stat(source, "b" * 32))
    assert changed[0].startswith(f"size {recorded.size} bytes is now {recorded.size + 5}")
    assert any("xxh3-128" in text for text in changed)
    replaced = source.with_suffix(".new")
    replaced.write_bytes(source.read_bytes())
    os.replace(replaced, source)
    assert any("different file" in text for text in recorded.differences(SourceFile.stat(source)))


def test_inode_and_device_above_63_bits_round_trip(ledger: Ledger, source: Path) -> None:
    from meshpipe.headers import SendHeaders

    big = SourceFile(str(source), 10, 1, (1 << 64) - 2, (1 << 63) + 5, None)
    record = ledger.begin_send(
        MAILBOX,
        SendHeaders(to=RECIPIENT, workflow_id="WF"),
        big,
        chunk_size=10,
        chunk_count=1,
        codec="none",
    )
    stored = ledger.transfer(record)
    assert isinstance(stored, SendRecord) and stored.source == big
