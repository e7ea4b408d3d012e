"""What the ledger hands back: frozen records of transfers, chunks and events, and the
filter that history() takes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from meshpipe.units import Codec

Direction = Literal["send", "receive"]
SendState = Literal["preparing", "uploading", "completed", "failed"]
ReceiveState = Literal["downloading", "verified", "delivered", "acknowledged", "failed"]
TransferState = SendState | ReceiveState
ChunkState = Literal["sent", "accepted", "written"]
SendOutcome = Literal["completed", "failed"]

EventKind = Literal[
    "created",
    "chunk_sent",
    "chunk_accepted",
    "chunk_written",
    "chunks_discarded",
    "message_id",
    "source_checksum",
    "completed",
    "verified",
    "delivered",
    "hook",
    "acknowledged",
    "failed",
    "resumed",
    "restarted",
    "claimed",
    "taken_over",
    "released",
    # recorded by the pipeline through Ledger.record_event
    "report",  # an error or non-delivery report MESH sent about this send
    "retry",
    "error",
    "note",
]


@dataclass(frozen=True, slots=True)
class SourceFile:
    """A send's source as it was when the send began: its identity on disk (size, mtime,
    inode, device) and, once known, the whole file's xxh3-128."""

    path: str
    size: int
    mtime_ns: int
    inode: int
    device: int
    xxh3_128: str | None = None

    @classmethod
    def stat(cls, path: str | os.PathLike[str], xxh3_128: str | None = None) -> SourceFile:
        """The file at ``path`` as it is now (absolute path; ``xxh3_128`` if already known)."""
        absolute = os.path.abspath(os.fspath(path))
        info = os.stat(absolute)
        return cls(absolute, info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev, xxh3_128)

    def differences(self, now: SourceFile) -> list[str]:
        """What changed from this recorded source to ``now``, one phrase each, in the order a
        resume checks them (cheapest first); empty if it is the same file. A checksum is
        compared only when both are known."""
        found: list[str] = []
        if now.path != self.path:
            found.append(f"path {self.path} is now {now.path}")
        if now.size != self.size:
            found.append(f"size {self.size} bytes is now {now.size}")
        if now.mtime_ns != self.mtime_ns:
            found.append("modification time changed")
        if (now.inode, now.device) != (self.inode, self.device):
            found.append("it is a different file (inode or device changed)")
        if self.xxh3_128 and now.xxh3_128 and now.xxh3_128 != self.xxh3_128:
            found.append(f"xxh3-128 {self.xxh3_128} is now {now.xxh3_128}")
        return found


@dataclass(frozen=True, slots=True)
class Claim:
    """Who holds a transfer: ``owner`` is ``pid@host``; the lease runs to ``expires_at``."""

    owner: str
    pid: int
    host: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class SendRecord:
    """One send. ``sequence`` is 1 for the first send of a local id from this mailbox, 2 for
    the next deliberate repeat, and so on. ``chunks_done`` counts chunks recorded accepted."""

    id: int
    mailbox: str
    local_id: str | None
    sequence: int
    recipient: str
    workflow_id: str
    subject: str | None
    headers: Mapping[str, str]
    source: SourceFile
    chunk_size: int
    chunk_count: int
    codec: Codec
    level: int | None
    message_id: str | None
    state: SendState
    error: str | None
    chunks_done: int
    claim: Claim | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    direction: Literal["send"] = field(default="send", init=False)


@dataclass(frozen=True, slots=True)
class HookOutcome:
    """The last run of the application hook; ``attempts`` counts every run so far."""

    ok: bool
    detail: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class ReceiveRecord:
    """One received message. ``headers`` holds every ``mex-`` header as received;
    ``xxh3_128`` is the whole file's, once verified. ``chunks_done`` counts chunks written
    (written, fsynced and verified)."""

    id: int
    mailbox: str
    message_id: str
    sender: str | None
    workflow_id: str | None
    local_id: str | None
    subject: str | None
    headers: Mapping[str, str]
    size: int | None
    chunk_count: int
    chunk_size: int | None
    codec: Codec
    destination: str
    partial_path: str
    xxh3_128: str | None
    state: ReceiveState
    error: str | None
    hook: HookOutcome | None
    chunks_done: int
    claim: Claim | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    direction: Literal["receive"] = field(default="receive", init=False)


TransferRecord = SendRecord | ReceiveRecord


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One chunk. Sends: ``sent`` then ``accepted`` with the payload size on the wire;
    receives: ``written`` (written, fsynced, verified) with its uncompressed length.
    ``worker``: the fleet worker that sent it last (None outside the fleet)."""

    number: int
    state: ChunkState
    xxh3_128: str
    payload_size: int | None
    length: int | None
    sent_at: datetime | None
    done_at: datetime | None
    worker: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of a transfer's append-only lifecycle, in the order it was recorded."""

    id: int
    transfer_id: int
    at: datetime
    kind: str
    detail: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class TransferSummary:
    """One line of history: either direction, with chunk progress ``chunks_done`` of
    ``chunk_count`` (accepted for sends, written for receives)."""

    id: int
    direction: Direction
    mailbox: str
    state: TransferState
    local_id: str | None
    message_id: str | None
    counterparty: str | None
    workflow_id: str | None
    subject: str | None
    path: str | None
    size: int | None
    codec: Codec | None
    chunks_done: int
    chunk_count: int | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    """history()'s filters; every one given must match. ``since``/``until`` bound the
    creation time (since inclusive, until exclusive)."""

    local_id: str | None = None
    message_id: str | None = None
    mailbox: str | None = None
    workflow_id: str | None = None
    state: TransferState | None = None
    direction: Direction | None = None
    since: datetime | None = None
    until: datetime | None = None


__all__ = [
    "ChunkRecord",
    "ChunkState",
    "Claim",
    "Direction",
    "Event",
    "EventKind",
    "HistoryFilter",
    "HookOutcome",
    "ReceiveRecord",
    "ReceiveState",
    "SendOutcome",
    "SendRecord",
    "SendState",
    "SourceFile",
    "TransferRecord",
    "TransferState",
    "TransferSummary",
]
