"""Small builders shared by the ledger tests."""

from __future__ import annotations

from pathlib import Path

from meshpipe.headers import SendHeaders
from meshpipe.ledger import Ledger, ReceiveRecord, SendRecord, SourceFile

MAILBOX = "X26ABC001"
RECIPIENT = "X26ABC002"


def checksum(number: int) -> str:
    """A distinct 32-hex-digit xxh3-128 for chunk ``number``."""
    return f"{number:032x}"


def begin_send(
    ledger: Ledger,
    source: Path,
    *,
    local_id: str | None = "extract-1",
    chunk_count: int = 3,
    mailbox: str = MAILBOX,
    workflow_id: str = "WF_A",
    again: bool = False,
) -> SendRecord:
    headers = SendHeaders(
        to=RECIPIENT.lower(), workflow_id=workflow_id, local_id=local_id, subject="nightly"
    )
    return ledger.begin_send(
        mailbox,
        headers,
        SourceFile.stat(source),
        chunk_size=5 << 20,
        chunk_count=chunk_count,
        codec="zstd",
        level=3,
        again=again,
    )


def send_all(ledger: Ledger, record: SendRecord, message_id: str = "MSG-1") -> SendRecord:
    """Send every chunk of ``record`` and complete it."""
    ledger.chunk_sent(record, 1, checksum(1), 100)
    ledger.set_message_id(record, message_id)
    for number in range(2, record.chunk_count + 1):
        ledger.chunk_sent(record, number, checksum(number), 100)
        ledger.chunk_accepted(record, number)
    return ledger.finish_send(record, "completed")


def begin_receive(
    ledger: Ledger,
    tmp_path: Path,
    *,
    message_id: str = "MSG-IN-1",
    chunk_count: int = 3,
    mailbox: str = RECIPIENT,
    workflow_id: str = "WF_A",
) -> ReceiveRecord:
    headers = {
        "mex-From": MAILBOX,
        "mex-To": mailbox,
        "mex-WorkflowID": workflow_id,
        "mex-LocalID": "extract-1",
        "mex-Subject": "nightly",
        "mex-Chunk-Range": f"1:{chunk_count}",
        "Content-Type": "application/octet-stream",
    }
    return ledger.begin_receive(
        mailbox,
        message_id,
        headers,
        chunk_count=chunk_count,
        codec="gzip",
        destination=tmp_path / f"{message_id}.dat",
        partial_path=tmp_path / f".{message_id}.partial",
    )


def receive_all(ledger: Ledger, record: ReceiveRecord) -> ReceiveRecord:
    """Write, verify, deliver and acknowledge every chunk of ``record``."""
    for number in range(1, record.chunk_count + 1):
        ledger.chunk_written(record, number, checksum(number), 5 << 20)
    ledger.mark_verified(record, "f" * 32)
    ledger.mark_delivered(record)
    return ledger.mark_acknowledged(record)
