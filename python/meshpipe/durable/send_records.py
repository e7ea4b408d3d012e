"""The ledger reads a durable send makes before it sends anything (blocking: run them with
``asyncio.to_thread``), and the checks of a recorded source against the file as it is now."""

from __future__ import annotations

import os
from collections.abc import Iterator

from meshpipe._meshpipe import xxh3_128_file
from meshpipe.errors import SourceChangedError
from meshpipe.headers import SendHeaders
from meshpipe.ledger import (
    HistoryFilter,
    Ledger,
    SendRecord,
    SendState,
    SourceFile,
    TransferSummary,
)
from meshpipe.models import ContentChecksum

#: The states of a send that is not finished: it can be resumed.
UNFINISHED: tuple[SendState, ...] = ("preparing", "uploading", "failed")


def anything_sent(ledger: Ledger, record: SendRecord) -> bool:
    """Whether any chunk of the send may have reached MESH (a message id, or chunk 1 recorded
    as sent)."""
    return record.message_id is not None or any(
        chunk.number == 1 for chunk in ledger.chunks(record)
    )


def unfinished_send_of(
    ledger: Ledger, mailbox: str, path: str, recipient: str, workflow_id: str
) -> SendRecord | None:
    """The newest unfinished send from ``mailbox`` of the file at absolute ``path`` to
    ``recipient`` in ``workflow_id`` that may have put something on MESH (one that sent
    nothing saves nothing by being resumed) and that no later send of the file completed
    (``--again`` sent it anew), if any."""

    def same(item: TransferSummary) -> bool:
        return item.path == path and (item.counterparty or "").upper() == recipient

    found: list[int] = []
    for state in UNFINISHED:
        found += [item.id for item in _sends(ledger, mailbox, workflow_id, state) if same(item)]
    for transfer_id in sorted(found, reverse=True):
        for item in _sends(ledger, mailbox, workflow_id, "completed"):
            if item.id < transfer_id:
                break
            if same(item):
                return None  # superseded, as is every older one
        record = ledger.transfer(transfer_id)
        if isinstance(record, SendRecord) and anything_sent(ledger, record):
            return record
    return None


def _sends(
    ledger: Ledger, mailbox: str, workflow_id: str, state: SendState
) -> Iterator[TransferSummary]:
    """The sends from ``mailbox`` in ``workflow_id`` in ``state``, newest first, page by page."""
    before: int | None = None
    while True:
        page = ledger.history(
            HistoryFilter(mailbox=mailbox, workflow_id=workflow_id, state=state, direction="send"),
            before_id=before,
            limit=200,
        )
        if not page:
            return
        yield from page
        before = page[-1].id


def check_source(record: SendRecord) -> str:
    """The file of ``record`` is the one recorded: size, modification time and inode first,
    then (if recorded) the whole-file xxh3-128, which is returned (``""`` if none was
    recorded). SourceChangedError naming what changed otherwise."""
    recorded = record.source
    try:
        now = SourceFile.stat(recorded.path)
    except FileNotFoundError:
        raise SourceChangedError(
            f"{recorded.path}, the source of the interrupted send of local id "
            f"{record.local_id!r}, no longer exists; nothing was sent"
        ) from None
    changes = recorded.differences(now)
    if not changes and recorded.xxh3_128:
        now = SourceFile.stat(recorded.path, xxh3_128_file(recorded.path))
        changes = recorded.differences(now)
    if changes:
        raise SourceChangedError(
            f"{recorded.path} changed since the interrupted send of local id "
            f"{record.local_id!r} began ({'; '.join(changes)}); nothing was sent. Restore the "
            "file to resume, or send it as it is now as a new message with --again"
        )
    return recorded.xxh3_128 or ""


def recorded_headers(record: SendRecord) -> SendHeaders:
    """The headers chunk 1 of ``record`` was sent with; ``mex-Content-Checksum`` is rebuilt
    from the recorded facts it was made of (the file's xxh3-128, size, chunk size, codec),
    unless it was recorded in the form whose hash travels at the end of the last chunk."""
    headers = SendHeaders.from_request(record.headers)
    recorded = ContentChecksum.parse(headers.checksum)
    if record.source.xxh3_128 is None or (recorded is not None and recorded.trailer):
        return headers
    checksum = ContentChecksum(
        xxh3_128=record.source.xxh3_128,
        size=record.source.size,
        chunk_size=record.chunk_size,
        codec=record.codec,
    ).header_value()
    return headers.replace(checksum=checksum)


def absolute(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


__all__ = [
    "UNFINISHED",
    "absolute",
    "anything_sent",
    "check_source",
    "recorded_headers",
    "unfinished_send_of",
]
