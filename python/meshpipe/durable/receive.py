"""A durable receive: a message downloaded, delivered and acknowledged with every step in
the ledger, so that a receive killed part-way resumes where it was and a message is
delivered into its destination once.

Where the partial file lives: beside the destination, as
``.<destination name>.<message id>.meshpipe-partial`` (:func:`partial_path_for`), on the
destination's filesystem so that the finished file is renamed into place atomically. The
ledger records its path and each chunk written into it (after the chunk is fsynced).

What a run does, by the state the ledger holds for the message (the transfer claimed for
this process first: a second process is refused with TransferBusyError, never two writers):

* none, ``downloading``, ``failed``: download. The partial file is reopened with the chunks
  recorded written; each is re-read and re-checked against its recorded xxh3-128, torn or
  changed ones are discarded and fetched again, and only the missing chunks are downloaded.
  The whole-file checksum (when the sender gave one) is computed over the finished file. A
  plain sender's chunk size is unknown until chunk 1 is written; from then on it is chunk 1's
  length, recorded with it, so a resume works as soon as chunk 1 is written. A kept zstd
  stream (``decode_payload=False`` of a meshpipe zstd message) has chunks of varying size and
  is downloaded again from the start. If every chunk was written and the finished file is
  already at the destination (a crash between the rename and its record), the file is
  re-read chunk by chunk against the ledger and adopted, not downloaded again.
* ``verified``: the file was renamed into place; it is re-checked and recorded delivered.
* ``delivered``, ``acknowledged``: the message shows up again (an acknowledgement that was
  lost): if it declares the same payload (its meshpipe checksum, else its chunk count) it is
  acknowledged without being written or handed on again; otherwise refused, unacknowledged.

After delivery the application hook (:mod:`meshpipe.durable.hook`) runs, unless a run
already succeeded; then the message is acknowledged and recorded so.

A report (non-delivery or error report) is never received as data: it is recorded on the send
it is about (:mod:`meshpipe.durable.reports`), before anything acknowledges it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from typing_extensions import Unpack

from meshpipe._meshpipe import Splitter, xxh3_128_file
from meshpipe.client import MeshClient
from meshpipe.durable.hook import Delivery, Hook, HookError, HookFunction, as_hook
from meshpipe.durable.receive_journal import LedgerReceiveJournal
from meshpipe.durable.reports import record_report
from meshpipe.durable.writer import LedgerWriter
from meshpipe.errors import MeshHTTPError, MeshpipeError
from meshpipe.ledger import (
    ChunkRecord,
    HookOutcome,
    Ledger,
    LedgerError,
    ReceiveRecord,
    TransferBusyError,
    resolve_state_dir,
)
from meshpipe.models import MessageMetadata, ReportMessage
from meshpipe.retry import RetryingClient
from meshpipe.transfer import (
    Download,
    ReceiveFailure,
    ReceiveOptions,
    ReceivePlan,
    ReceiveResult,
    ReportHandler,
    receive_all,
)

log = logging.getLogger("meshpipe.durable")

PARTIAL_SUFFIX: Final = ".meshpipe-partial"
Outcome = Literal["delivered", "already-delivered"]
RecordedDestination = Literal["refuse", "use"]


#: The longest file name most filesystems take (ext4, xfs, btrfs: bytes of UTF-8).
MAX_NAME_BYTES: Final = 255


def partial_path_for(destination: Path, message_id: str) -> Path:
    """The stable partial file of ``message_id`` received into ``destination``:
    ``.<name>.<message id>.meshpipe-partial``, or with a long name, a hash of it in its place
    (the same for every run), so that the partial's name fits where the destination's does."""
    name = f".{destination.name}.{message_id}{PARTIAL_SUFFIX}"
    if len(name.encode()) > MAX_NAME_BYTES:
        digest = hashlib.sha256(destination.name.encode()).hexdigest()[:16]
        name = f".{digest}.{message_id}{PARTIAL_SUFFIX}"
    return destination.with_name(name)


@dataclass(frozen=True, slots=True)
class DurableReceiveResult:
    """A durable receive's outcome: ``delivered`` this run, or ``already-delivered`` (by an
    earlier run: acknowledged now, not written again). ``kept_chunks`` were verified by an
    earlier run and not downloaded again; ``hook`` is the hook's last recorded run."""

    result: ReceiveResult
    transfer_id: int
    outcome: Outcome
    kept_chunks: int
    hook: HookOutcome | None


def find_or_begin_receive(
    ledger: Ledger,
    mailbox: str,
    metadata: MessageMetadata,
    destination: Path,
    plan: ReceivePlan,
    overwrite: bool = False,
) -> ReceiveRecord:
    """The ledger's record of the message, begun now if there is none (blocking: run it on
    the ledger's thread). A destination that exists is refused before anything is recorded,
    unless ``overwrite``. Another process beginning it at the same moment is no error: its
    record is returned."""
    found = ledger.find_receive(mailbox, metadata.message_id)
    if found is not None:
        return found
    target = Path(os.path.abspath(destination))
    if target.exists() and not overwrite:
        raise MeshpipeError(
            f"destination {target} already exists; remove it, choose another --out, or "
            "pass --overwrite"
        )
    checksum = plan.checksum
    try:
        return ledger.begin_receive(
            mailbox,
            metadata.message_id,
            metadata.headers,
            chunk_count=plan.chunk_count,
            codec=plan.codec,
            destination=target,
            partial_path=partial_path_for(target, metadata.message_id),
            chunk_size=checksum.chunk_size if checksum is not None else None,
            size=checksum.size if checksum is not None else None,
        )
    except LedgerError as error:
        again = ledger.find_receive(mailbox, metadata.message_id)
        if error.code != "exists" or again is None:
            raise
        return again  # another process began it a moment ago


class DurableReceiver:
    """Receives messages through ``ledger``, with an optional application ``hook`` (a
    :class:`~meshpipe.durable.hook.Hook`, a Python function, or a command line).
    ``state_dir`` holds the hook's metadata files; ``claim_wait`` is how long to wait for a
    transfer another process holds (0: refuse at once)."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        hook: Hook | HookFunction | str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        claim_wait: float = 0.0,
    ) -> None:
        self.ledger = ledger
        self.hook = as_hook(hook)
        self.state_dir = resolve_state_dir(state_dir)
        self.claim_wait = claim_wait

    # --- the entry points --------------------------------------------------------------------

    async def receive(
        self,
        client: MeshClient,
        message_id: str,
        destination: str | os.PathLike[str],
        *,
        recorded_destination: RecordedDestination = "refuse",
        **options: Unpack[ReceiveOptions],
    ) -> DurableReceiveResult:
        """Receive ``message_id`` into ``destination`` (options as for receive_message). A
        message already recorded with another destination is refused, or with
        ``recorded_destination="use"`` received into the recorded one."""
        given = options.get("metadata")
        metadata = given if given is not None else await self._head(client, message_id)
        if isinstance(metadata, DurableReceiveResult):
            return metadata
        if metadata.is_report:  # recorded on its send, then refused as data (never written)
            await self.record_report(client.mailbox, ReportMessage.from_metadata(metadata))
            await Download(client, message_id, destination, metadata=metadata).inspect()
        plan = ReceivePlan.of(metadata, options.get("decode_payload", True))
        async with _writer(self.ledger) as writer:
            record = await writer.call(
                find_or_begin_receive,
                self.ledger,
                client.mailbox,
                metadata,
                Path(destination),
                plan,
                options.get("overwrite", False),
            )
            _check_destination(record, Path(destination), recorded_destination)
            async with self._claimed(writer, record) as claimed:
                return await self._run(client, writer, claimed, {**options, "metadata": metadata})

    async def receive_message(
        self,
        client: MeshClient,
        message_id: str,
        destination: str | os.PathLike[str],
        **options: Unpack[ReceiveOptions],
    ) -> ReceiveResult:
        """:meth:`receive` as a :class:`~meshpipe.transfer.MessageReceiver` (for
        receive_all: a message already recorded goes to its recorded destination)."""
        received = await self.receive(
            client, message_id, destination, recorded_destination="use", **options
        )
        return received.result

    async def receive_all(
        self, client: MeshClient, out_dir: str | os.PathLike[str], **options: Any
    ) -> list[ReceiveResult | ReportMessage | ReceiveFailure]:
        """Every message in the inbox, each through :meth:`receive` (see
        :func:`meshpipe.transfer.receive_all` for ``options``); each report recorded on its
        send before it is acknowledged."""
        return await receive_all(
            client,
            out_dir,
            receiver=self.receive_message,
            on_report=self.report_handler(client.mailbox),
            **options,
        )

    async def record_report(self, mailbox: str, report: ReportMessage) -> ReportMessage:
        """Record ``report`` on the send of ``mailbox`` it is about (see
        :mod:`meshpipe.durable.reports`); returned with the send's ledger id, if found."""
        return await asyncio.to_thread(record_report, self.ledger, mailbox, report)

    def report_handler(self, mailbox: str) -> ReportHandler:
        """:meth:`record_report` for ``mailbox``, as receive_all's ``on_report``."""

        async def handle(report: ReportMessage) -> ReportMessage:
            return await self.record_report(mailbox, report)

        return handle

    # --- the stages --------------------------------------------------------------------------

    async def _head(
        self, client: MeshClient, message_id: str
    ) -> MessageMetadata | DurableReceiveResult:
        """The message's headers; or, if it is gone from the inbox after this ledger
        recorded it acknowledged, the earlier outcome (nothing left to do)."""
        try:
            return await RetryingClient(client).head(message_id)
        except MeshHTTPError as error:
            if error.status not in (404, 410):
                raise
            record = await asyncio.to_thread(self.ledger.find_receive, client.mailbox, message_id)
            if record is None or record.state != "acknowledged":
                raise
            result = ReceiveResult(
                message_id=message_id,
                path=Path(record.destination),
                size=_size_of(record),
                chunk_count=record.chunk_count,
                verified=[],
                acknowledged=True,
                metadata=MessageMetadata.from_headers(message_id, dict(record.headers)),
            )
            return DurableReceiveResult(result, record.id, "already-delivered", 0, record.hook)

    @contextlib.asynccontextmanager
    async def _claimed(
        self, writer: LedgerWriter, record: ReceiveRecord
    ) -> AsyncIterator[ReceiveRecord]:
        """Hold the transfer for this process (refused if another holds it), and yield its
        record as it is once held."""
        stack = contextlib.ExitStack()
        try:
            # Not on the writer: a refused claim must not stop the writer taking work.
            await writer.drain()
            await asyncio.to_thread(
                stack.enter_context, self.ledger.claim(record, wait=self.claim_wait)
            )
        except TransferBusyError as error:
            raise TransferBusyError(
                f"message {record.message_id} is being received by another process: {error}",
                transfer=record.id,
                owner=error.owner,
                expires_at=error.expires_at,
                location=error.location,
            ) from None
        try:
            held = await writer.call(self.ledger.transfer, record)
            assert isinstance(held, ReceiveRecord)
            yield held
        finally:
            await asyncio.to_thread(stack.close)

    async def _run(
        self,
        client: MeshClient,
        writer: LedgerWriter,
        record: ReceiveRecord,
        options: ReceiveOptions,
    ) -> DurableReceiveResult:
        metadata = options["metadata"]
        assert metadata is not None
        acknowledge = options.get("acknowledge", True)
        if record.state in ("delivered", "acknowledged"):
            _check_same_payload(record, metadata, options.get("decode_payload", True))
            record, hook = await self._finish(client, writer, record, metadata, acknowledge)
            return DurableReceiveResult(
                _result(record, metadata, [], acknowledge), record.id, "already-delivered", 0, hook
            )
        if record.state == "verified":
            record = await self._redeliver_verified(writer, record)
        kept = 0
        if record.state == "delivered":
            verified = ["file xxh3-128 (re-read)"]
        else:
            if record.state == "failed" or record.chunks_done:
                # A new attempt at a receive an earlier run began: an event marks it.
                resumed = await writer.call(self.ledger.resume, record, "receive run again")
                assert isinstance(resumed, ReceiveRecord)
                record = resumed
            record, verified, kept = await self._download(client, writer, record, options)
        record, hook = await self._finish(client, writer, record, metadata, acknowledge)
        result = _result(record, metadata, verified, acknowledge)
        return DurableReceiveResult(result, record.id, "delivered", kept, hook)

    async def _download(
        self,
        client: MeshClient,
        writer: LedgerWriter,
        record: ReceiveRecord,
        options: ReceiveOptions,
    ) -> tuple[ReceiveRecord, list[str], int]:
        """Download what is missing into the partial file (or adopt a file already renamed
        into place); return the delivered record, what was verified, the chunks kept."""
        chunks = await writer.call(self.ledger.chunks, record)
        adopted = await self._adopt(writer, record, chunks)
        if adopted is not None:
            return adopted, ["chunks xxh3-128 (re-read)"], len(chunks)
        metadata = options["metadata"]
        assert metadata is not None
        plan = ReceivePlan.of(metadata, options.get("decode_payload", True))
        completed = {chunk.number: chunk.xxh3_128 for chunk in chunks}
        chunk_size = record.chunk_size or _first_length(chunks)
        if completed and (plan.in_order or chunk_size is None):
            await writer.call(
                self.ledger.discard_chunks, record, list(completed), "cannot resume this stream"
            )
            completed = {}
        journal = LedgerReceiveJournal(self.ledger, writer, record, completed)
        download_options: ReceiveOptions = {
            **options,
            "acknowledge": False,
            "journal": journal,
            "partial_path": record.partial_path,
            "keep_partial": True,
            "completed": completed,
            "chunk_size": chunk_size,
            "sync_chunks": True,
        }
        download = Download(client, record.message_id, record.destination, **download_options)
        try:
            received = await download.run()
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            raise MeshpipeError(
                f"no space left on the device of {record.destination} while receiving message "
                f"{record.message_id}; it was not acknowledged, and the "
                f"{len(journal.written)} chunk(s) written so far are kept in "
                f"{record.partial_path}: free some space and run the same command again to "
                "resume"
            ) from error
        return journal.record, received.verified, len(journal.kept)

    async def _adopt(
        self, writer: LedgerWriter, record: ReceiveRecord, chunks: list[ChunkRecord]
    ) -> ReceiveRecord | None:
        """A finished file already at the destination (renamed just before a crash): if it
        holds exactly the recorded chunks, record it verified and delivered."""
        destination = Path(record.destination)
        if len(chunks) != record.chunk_count:
            return None
        recorded = {chunk.number: chunk.xxh3_128 for chunk in chunks}
        chunk_size = record.chunk_size or _first_length(chunks)
        whole = await asyncio.to_thread(_matching_file, destination, recorded, chunk_size)
        if whole is None or (record.xxh3_128 and record.xxh3_128 != whole):
            return None
        await writer.call(self.ledger.mark_verified, record, whole)
        delivered = await writer.call(self.ledger.mark_delivered, record)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(record.partial_path)
        return delivered

    async def _redeliver_verified(
        self, writer: LedgerWriter, record: ReceiveRecord
    ) -> ReceiveRecord:
        """A verified file (renamed into place, then a crash): record it delivered if it is
        still intact, else fail the record and download again."""
        destination = Path(record.destination)
        intact = await asyncio.to_thread(_xxh3_or_none, destination) == record.xxh3_128
        if intact:
            return await writer.call(self.ledger.mark_delivered, record)
        await writer.call(
            self.ledger.mark_failed, record, f"{destination} is missing or changed since verified"
        )
        numbers = [chunk.number for chunk in await writer.call(self.ledger.chunks, record)]
        resumed = await writer.call(self.ledger.resume, record, "downloading again")
        await writer.call(self.ledger.discard_chunks, record, numbers, "the file must be fetched")
        assert isinstance(resumed, ReceiveRecord)
        return resumed

    async def _finish(
        self,
        client: MeshClient,
        writer: LedgerWriter,
        record: ReceiveRecord,
        metadata: MessageMetadata,
        acknowledge: bool,
    ) -> tuple[ReceiveRecord, HookOutcome | None]:
        """The hook (unless a run already succeeded), then the acknowledgement."""
        hook = record.hook
        if self.hook is not None and record.state == "delivered" and not (hook and hook.ok):
            hook = await self._run_hook(writer, record, metadata)
        if not acknowledge:
            return record, hook
        try:
            await RetryingClient(client).acknowledge(record.message_id)
        except MeshpipeError as error:
            await writer.call(self.ledger.record_event, record, "error", error=f"{error}"[:500])
            raise MeshpipeError(
                f"message {record.message_id} was delivered to {record.destination} but could "
                f"not be acknowledged ({error}); run the same command again: it is then "
                "acknowledged without being written again"
            ) from error
        acknowledged = await writer.call(self.ledger.mark_acknowledged, record)
        return acknowledged, hook

    async def _run_hook(
        self, writer: LedgerWriter, record: ReceiveRecord, metadata: MessageMetadata
    ) -> HookOutcome:
        assert self.hook is not None and record.xxh3_128 is not None
        delivery = Delivery(
            message_id=record.message_id,
            path=Path(record.destination),
            metadata_path=self.state_dir / "hooks" / f"{record.message_id}.json",
            xxh3_128=record.xxh3_128,
            size=_size_of(record),
            attempt=(record.hook.attempts if record.hook else 0) + 1,
            transfer_id=record.id,
            metadata=metadata,
        )
        try:
            await self.hook.run(delivery)
        except HookError as error:
            await writer.call(self.ledger.record_hook, record, False, str(error))
            raise HookError(
                f"message {record.message_id} was delivered to {record.destination}, but "
                f"{error}; it was not acknowledged: fix the cause and run the same command "
                f"again (the hook runs again with idempotency key {delivery.idempotency_key})"
            ) from error
        return await writer.call(self.ledger.record_hook, record, True, None)


# --- helpers -----------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _writer(ledger: Ledger) -> AsyncIterator[LedgerWriter]:
    """A LedgerWriter closed at the end; a queued write's error is raised unless another
    error is already on its way (which matters more: the ledger keeps its last state)."""
    writer = LedgerWriter("meshpipe-receive-ledger", batch=ledger.batch)
    try:
        yield writer
    except BaseException as failure:
        try:
            await writer.close()
        except BaseException as error:
            if error is not failure:
                log.error("the ledger could not record everything: %s", error)
        raise
    await writer.close()


def _check_destination(record: ReceiveRecord, destination: Path, use: RecordedDestination) -> None:
    wanted = os.path.abspath(destination)
    if use == "refuse" and wanted != record.destination and record.state != "acknowledged":
        raise MeshpipeError(
            f"message {record.message_id} is already being received into {record.destination} "
            f"(transfer {record.id}, {record.state}); give that --out to resume it"
        )


def _check_same_payload(
    record: ReceiveRecord, metadata: MessageMetadata, decode_payload: bool
) -> None:
    """A message delivered before is the same payload: the same meshpipe checksum, or (a
    sender that declares none) the same chunk count under the same unique message id."""
    checksum = ReceivePlan.of(metadata, decode_payload).checksum
    declared = checksum.xxh3_128 if checksum is not None else None
    if declared and record.xxh3_128 and declared != record.xxh3_128:
        problem = f"declares xxh3-128 {declared}, but {record.xxh3_128} was delivered"
    elif max(1, metadata.chunk_count) != record.chunk_count:
        problem = f"has {metadata.chunk_count} chunks, but {record.chunk_count} were delivered"
    else:
        return
    raise MeshpipeError(
        f"message {record.message_id} was delivered before to {record.destination} and shows "
        f"up again, but it {problem}; it was not acknowledged: ask the sender what changed"
    )


def _result(
    record: ReceiveRecord, metadata: MessageMetadata, verified: list[str], acknowledge: bool
) -> ReceiveResult:
    return ReceiveResult(
        message_id=record.message_id,
        path=Path(record.destination),
        size=_size_of(record),
        chunk_count=record.chunk_count,
        verified=list(verified),
        acknowledged=acknowledge and record.state == "acknowledged",
        metadata=metadata,
    )


def _size_of(record: ReceiveRecord) -> int:
    try:
        return os.stat(record.destination).st_size
    except OSError:
        return record.size or 0


def _first_length(chunks: list[ChunkRecord]) -> int | None:
    first = next((chunk for chunk in chunks if chunk.number == 1), None)
    return first.length if first is not None else None


def _xxh3_or_none(path: Path) -> str | None:
    try:
        return xxh3_128_file(path)
    except OSError:
        return None


def _matching_file(path: Path, recorded: dict[int, str], chunk_size: int | None) -> str | None:
    """The xxh3-128 of ``path`` if its chunks are exactly ``recorded``, else None (also if
    there is no such file)."""
    if not path.exists():
        return None
    if len(recorded) == 1:
        whole = xxh3_128_file(path)
        return whole if recorded.get(1) == whole else None
    if chunk_size is None:
        return None
    with Splitter(path, chunk_size=chunk_size, min_chunk_size=1) as splitter:
        if splitter.plan.chunk_count != len(recorded):
            return None
        for chunk in splitter:
            matches = recorded.get(chunk.number) == chunk.xxh3_128
            chunk.release()
            if not matches:
                return None
        return splitter.digest().xxh3_128


__all__ = [
    "PARTIAL_SUFFIX",
    "DurableReceiveResult",
    "DurableReceiver",
    "find_or_begin_receive",
    "partial_path_for",
]
