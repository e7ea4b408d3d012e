"""Submitting a send to the fleet: the file is planned and its send begun in the ledger before
anything is enqueued, then its first job goes on the mailbox's queue. Nothing is read or sent
here (chunk 1's job hashes the file), so a submit returns at once whatever the file's size.

Submitting a local id again is safe: a completed send is reported, not sent again (unless
``again``); an unfinished or failed one is taken up again where the ledger says it was (its
first job enqueued anew: it skips what the ledger shows done).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from meshpipe._meshpipe import ChunkPlan
from meshpipe.errors import MeshpipeError
from meshpipe.fleet.queue import SEND_FIRST, AlreadyEnqueued, apply_schema, make_app, queue_name
from meshpipe.headers import SendHeaders
from meshpipe.ledger import Ledger, SendRecord, SourceFile
from meshpipe.transfer.upload import new_local_id
from meshpipe.units import DEFAULT_CHUNK_SIZE, MAX_FILE_SIZE, Codec

#: Chunks of one range job: small enough to spread a message over many workers, large
#: enough that a job's own round trips stay small beside its chunks' transfer.
DEFAULT_CHUNKS_PER_JOB: Final = 4

SubmitOutcome = Literal["submitted", "resubmitted", "already-sent"]


@dataclass(frozen=True, slots=True)
class Submitted:
    """A send on the fleet's queue: its ledger transfer, local id and chunk count;
    ``outcome`` says whether it is new, taken up again, or was already sent (nothing
    enqueued)."""

    outcome: SubmitOutcome
    transfer_id: int
    local_id: str
    chunk_count: int
    message_id: str | None = None


async def submit(
    ledger_location: str,
    mailbox: str,
    source: str | os.PathLike[str],
    headers: SendHeaders,
    *,
    codec: Codec = "none",
    level: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunks_per_job: int = DEFAULT_CHUNKS_PER_JOB,
    max_file_size: int = MAX_FILE_SIZE,
    again: bool = False,
    ledger: Ledger | None = None,
) -> Submitted:
    """Record a send of ``source`` from ``mailbox`` with ``headers`` in the PostgreSQL ledger
    at ``ledger_location`` and enqueue it for the workers of that mailbox (module doc).
    The headers are checked and the plan made before anything is recorded. ``ledger``: one
    already open on that location, for a caller that submits many files (opening one costs
    tens of milliseconds); else one is opened for the call."""
    if chunks_per_job < 1:
        raise ValueError("chunks_per_job must be at least 1")
    mailbox = mailbox.strip().upper()
    identity = await asyncio.to_thread(SourceFile.stat, source)
    path = Path(identity.path)
    if codec == "none" and identity.size == 0:
        codec = "gzip"  # MESH refuses an empty body; an empty gzip stream is not empty
    plan = ChunkPlan(identity.size, chunk_size, codec=codec, max_file_size=max_file_size)
    headers = _complete_headers(headers, path, codec).validate()
    assert headers.local_id is not None
    await apply_schema(ledger_location)
    with contextlib.nullcontext(ledger) if ledger else Ledger.open(ledger_location) as opened:
        found = await asyncio.to_thread(opened.find_send, mailbox, headers.local_id)
        if found is not None and not again:
            return await _again(opened, ledger_location, found, chunks_per_job)
        record = await asyncio.to_thread(
            opened.begin_send,
            mailbox,
            headers,
            identity,
            chunk_size=plan.chunk_size,
            chunk_count=plan.chunk_count,
            codec=codec,
            level=level,
            again=again,
        )
    await _enqueue_first(ledger_location, record, chunks_per_job)
    return Submitted("submitted", record.id, headers.local_id, plan.chunk_count)


async def _again(
    ledger: Ledger, location: str, record: SendRecord, chunks_per_job: int
) -> Submitted:
    assert record.local_id is not None
    if record.state == "completed":
        return Submitted(
            "already-sent", record.id, record.local_id, record.chunk_count, record.message_id
        )
    if record.state == "failed":
        resumed = await asyncio.to_thread(ledger.resume, record, "submitted again")
        assert isinstance(resumed, SendRecord)
        record = resumed
    await _enqueue_first(location, record, chunks_per_job)
    assert record.local_id is not None
    return Submitted(
        "resubmitted", record.id, record.local_id, record.chunk_count, record.message_id
    )


async def _enqueue_first(location: str, record: SendRecord, chunks_per_job: int) -> None:
    app = make_app(location)
    async with app.open_async():
        with contextlib.suppress(AlreadyEnqueued):
            await app.configure_task(
                SEND_FIRST,
                queue=queue_name(record.mailbox),
                queueing_lock=f"meshpipe-first-{record.id}",
            ).defer_async(transfer_id=record.id, chunks_per_job=chunks_per_job)


def _complete_headers(headers: SendHeaders, path: Path, codec: Codec) -> SendHeaders:
    """The defaults a send fills in (as meshpipe.transfer.Upload does): a local id, the
    file's name, and for zstd the ``.zst`` name, ``application/zstd`` and
    ``mex-Content-Compressed: Y``."""
    zstd = codec == "zstd"
    if headers.checksum:
        raise MeshpipeError(
            "the fleet writes mex-Content-Checksum itself (the whole file's xxh3-128, "
            "computed by chunk 1's job): leave it out"
        )
    return headers.replace(
        local_id=headers.local_id or new_local_id(),
        filename=headers.filename or path.name + (".zst" if zstd else ""),
        content_type=headers.content_type or ("application/zstd" if zstd else None),
        compressed=True if zstd else headers.compressed,
    )


__all__ = ["DEFAULT_CHUNKS_PER_JOB", "SubmitOutcome", "Submitted", "submit"]
