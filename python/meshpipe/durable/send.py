"""A send recorded in the ledger: idempotent (a local id this mailbox already sent is not sent
again) and resumable (a send killed part-way goes on with the chunks MESH does not hold, into
the same message).

:class:`DurableSend` runs in phases, each a method:

**find** the send this one continues: ``--resume LOCAL_ID``, else the latest send of the
given local id, else (no local id given) the newest unfinished send of the same file (its
absolute path) to the same recipient and workflow from this mailbox.

**already sent**: a completed send of the local id (or, when the ledger has no record of a
local id the caller gave, a message in MESH's outbox with it) is reported, nothing sent;
``again=True`` sends a second message deliberately (the ledger's next sequence number).

**resume**: the transfer is claimed (a second process resuming it at the same time is refused
at once with TransferBusyError naming the holder: there is never a second writer); the source
is checked (size, modification time, inode, then the whole-file xxh3-128: the resume's only
pass over the file before the first new chunk; SourceChangedError naming what changed, nothing
sent); the recorded plan (chunk size, codec, level) and headers are reused. A known message
id is tracked: completed on MESH (accepted, acknowledged, or undeliverable: read by nobody
before its expiry) -> recorded completed; gone (404/410 to tracking or to a chunk, or
tracking says error) -> the send restarts into a new message, said so; uploading -> only the
chunks not recorded accepted are sent, into the same message, the last one last. No message
id yet (a crash
before MESH answered chunk 1) -> MESH is asked for the local id: a message found is adopted,
else the file is sent from chunk 1 with the same local id.

**send new**: the file is planned, the send begun in the ledger and claimed before anything
is read or sent, then sent with :class:`LedgerSendJournal` recording each stage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Literal

from typing_extensions import Unpack

from meshpipe.client import MeshClient
from meshpipe.durable.send_journal import LedgerSendJournal
from meshpipe.durable.send_records import (
    UNFINISHED,
    absolute,
    anything_sent,
    check_source,
    recorded_headers,
    unfinished_send_of,
)
from meshpipe.durable.writer import LedgerWriter
from meshpipe.errors import (
    ChunkTransferError,
    MeshHTTPError,
    MeshNotFoundError,
    MeshpipeError,
    MeshProtocolError,
    SourceChangedError,
)
from meshpipe.gp_route import is_gp_address, mask_address
from meshpipe.headers import SendHeaders
from meshpipe.ledger import Ledger, LedgerError, SendRecord, SourceFile
from meshpipe.retry import RetryingClient
from meshpipe.transfer import (
    FileIdentity,
    ProgressCallback,
    SendOptions,
    SendResult,
    Upload,
    find_sent_message,
)

log = logging.getLogger("meshpipe.durable")

SendOutcome = Literal["sent", "resumed", "already-sent", "restarted"]
"""``sent``: a new message; ``resumed``: an interrupted send finished into its message;
``already-sent``: nothing sent, the message exists; ``restarted``: MESH had lost the
interrupted send's message, so the file went as a new one."""

_COMPLETE = ("accepted", "acknowledged")
#: Tracking states of a message that was completed: undeliverable is a completed message left
#: unread past its inbox expiry (sending it again is the sender's decision: --again).
_WAS_COMPLETED = (*_COMPLETE, "undeliverable")
_GONE_STATUSES = (404, 410)


@dataclass(frozen=True, slots=True)
class DurableSendResult:
    """What a durable send did. ``already_accepted``: chunks MESH held before this run (not
    sent again); ``sent``: this run's upload, None when nothing was sent."""

    outcome: SendOutcome
    message_id: str
    local_id: str
    transfer_id: int | None
    already_accepted: int = 0
    sent: SendResult | None = None


class _MessageGone(MeshpipeError):
    """MESH no longer holds the interrupted send's message."""


class DurableSend:
    """One send of ``source`` with ``headers`` from ``client``'s mailbox, recorded in
    ``ledger`` (see the module doc). ``resume_local_id``: resume that send (``source`` may be
    None, else it must be the recorded source). ``notice(text)`` is told each outcome worth a
    line to the user (resumed, already sent, a new message because MESH lost the old one)."""

    def __init__(
        self,
        client: MeshClient,
        ledger: Ledger,
        source: str | os.PathLike[str] | None,
        headers: SendHeaders,
        *,
        again: bool = False,
        resume_local_id: str | None = None,
        notice: Callable[[str], None] | None = None,
        progress: ProgressCallback | None = None,
        **options: Unpack[SendOptions],
    ) -> None:
        if source is None and resume_local_id is None:
            raise ValueError("give the file to send, or the local id of a send to resume")
        self.client = client
        self.ledger = ledger
        self.source = absolute(source) if source is not None else None
        self.headers = headers
        self.again = again
        self.resume_local_id = resume_local_id
        self.options = options
        self._notice = notice or (lambda text: None)
        self._progress = progress

    @property
    def mailbox(self) -> str:
        return self.client.mailbox

    async def run(self) -> DurableSendResult:
        record = await self.find()
        if record is None:
            if self.headers.local_id and not self.again:
                found = await self.already_on_mesh(self.headers.local_id)
                if found is not None:
                    return found
            return await self.send_new()
        if record.state == "completed" and not self.again:
            return self.already_sent(record)
        if record.state in UNFINISHED:
            self._check_matches(record)
            return await self.resume(record)
        return await self.send_new()

    def _check_matches(self, record: SendRecord) -> None:
        """An interrupted send is resumed only as what it was: the same file, recipient and
        workflow (those given; --resume may give none)."""
        recorded = {
            "file": record.source.path,
            "recipient": record.recipient.upper(),
            "workflow id": record.workflow_id,
        }
        given = {
            "file": self.source,
            "recipient": mask_address(self.headers.to.strip().upper()) or None,
            "workflow id": self.headers.workflow_id.strip() or None,
        }
        for what, value in given.items():
            if value is not None and value != recorded[what]:
                raise MeshpipeError(
                    f"local id {record.local_id!r} is an interrupted send of "
                    f"{recorded['file']} to {recorded['recipient']} ({recorded['workflow id']}), "
                    f"not of this {what} ({value}): resume it with --resume {record.local_id}, "
                    "or give another --local-id"
                )

    # --- find ------------------------------------------------------------------------------

    async def find(self) -> SendRecord | None:
        """The send this one continues, if any (see the module doc)."""
        if self.resume_local_id is not None:
            record = await asyncio.to_thread(
                self.ledger.find_send, self.mailbox, self.resume_local_id
            )
            if record is None:
                raise MeshpipeError(
                    f"the ledger {self.ledger.location} has no send of local id "
                    f"{self.resume_local_id!r} from {self.mailbox}: check the local id, the "
                    "mailbox and --state-dir/--ledger"
                )
            return record
        if self.headers.local_id:
            return await asyncio.to_thread(
                self.ledger.find_send, self.mailbox, self.headers.local_id
            )
        if self.again or self.source is None:
            return None
        record = await asyncio.to_thread(
            unfinished_send_of,
            self.ledger,
            self.mailbox,
            self.source,
            mask_address(self.headers.to.strip().upper()),
            self.headers.workflow_id.strip(),
        )
        if record is not None:
            self._notice(
                f"resuming the interrupted send of {self.source} (local id {record.local_id}); "
                "pass --again to send it as a new message instead"
            )
        return record

    # --- already sent ------------------------------------------------------------------

    def already_sent(self, record: SendRecord) -> DurableSendResult:
        assert record.message_id is not None and record.local_id is not None
        self._notice(
            f"local id {record.local_id} was already sent from {self.mailbox} as message "
            f"{record.message_id}; nothing sent (pass --again to send it again)"
        )
        return DurableSendResult("already-sent", record.message_id, record.local_id, record.id)

    async def already_on_mesh(self, local_id: str) -> DurableSendResult | None:
        """A message in MESH's outbox with ``local_id`` that the ledger does not know."""
        message_id = await find_sent_message(self.client, local_id)
        if message_id is None:
            return None
        status = ((await RetryingClient(self.client).track(message_id)).status or "").lower()
        if status not in _COMPLETE:
            raise MeshpipeError(
                f"MESH holds message {message_id} with local id {local_id!r} "
                f"({status or 'no status'}), which the ledger {self.ledger.location} has no "
                "record of, so it "
                "cannot be resumed from here: send with --again for a new message, or use "
                "another --local-id"
            )
        self._notice(
            f"local id {local_id} was already sent from {self.mailbox} as message {message_id} "
            "(found in MESH's outbox; the ledger had no record); nothing sent (pass --again "
            "to send it again)"
        )
        return DurableSendResult("already-sent", message_id, local_id, None)

    # --- send new ------------------------------------------------------------------------

    async def send_new(self) -> DurableSendResult:
        """Plan the file, begin and claim its send in the ledger, and send it."""
        if self.source is None:
            raise MeshpipeError("no file to send")
        identity = await asyncio.to_thread(SourceFile.stat, self.source)
        upload = Upload(
            self.client, self.source, self.headers, progress=self._progress, **self.options
        )
        try:
            await upload.plan_file()
            record = await asyncio.to_thread(
                self.ledger.begin_send,
                self.mailbox,
                upload.headers,
                identity,
                chunk_size=upload.plan.chunk_size,
                chunk_count=upload.plan.chunk_count,
                codec=upload.codec,
                level=upload.level,
                again=self.again,
            )
            async with self._claimed(record), self._journal(record, upload):
                result = await upload.run()
        finally:
            await upload.close()  # run() closes it too; again is harmless
        return DurableSendResult("sent", result.message_id, result.local_id, record.id, 0, result)

    # --- resume --------------------------------------------------------------------------

    async def resume(self, record: SendRecord) -> DurableSendResult:
        """Claim the interrupted send, check its source, and finish it (module doc)."""
        async with self._claimed(record):
            try:
                xxh3_128 = await asyncio.to_thread(check_source, record)
            except SourceChangedError as error:
                if not (self.again and self.resume_local_id is None):
                    raise
                await asyncio.to_thread(self.ledger.mark_failed, record, str(error))
                self._notice(f"{error}; sending the file as it is now, as a new message")
                abandoned = True
            else:
                abandoned = False
            if not abandoned:
                return await self._resume_checked(record, xxh3_128)
        self.headers = self.headers.replace(local_id=record.local_id)
        return await self.send_new()

    async def _resume_checked(self, record: SendRecord, xxh3_128: str) -> DurableSendResult:
        record = await self._resume_record(record)
        if record.message_id is None and await asyncio.to_thread(
            anything_sent, self.ledger, record
        ):
            record = await self._adopt(record)
        if record.message_id is None:
            return await self._send_again(record, xxh3_128, "resumed")
        try:
            return await self._continue_message(record, xxh3_128)
        except _MessageGone as gone:
            restarted = await asyncio.to_thread(self.ledger.restart_send, record, str(gone))
            self._notice(f"{gone}: sending the file as a new message (local id {record.local_id})")
            return await self._send_again(restarted, xxh3_128, "restarted")

    async def _resume_record(self, record: SendRecord) -> SendRecord:
        resumed = await asyncio.to_thread(self.ledger.resume, record)
        assert isinstance(resumed, SendRecord)
        return resumed

    async def _adopt(self, record: SendRecord) -> SendRecord:
        """Chunk 1 went but its answer was never recorded: MESH may hold the message."""
        assert record.local_id is not None
        message_id = await find_sent_message(self.client, record.local_id)
        if message_id is None:
            return record
        self._notice(
            f"MESH holds message {message_id} for local id {record.local_id}, created before "
            "the interruption: continuing it"
        )
        return await asyncio.to_thread(self.ledger.set_message_id, record, message_id)

    async def _continue_message(self, record: SendRecord, xxh3_128: str) -> DurableSendResult:
        """Track the recorded message; finish it, or report it complete, or _MessageGone."""
        assert record.message_id is not None and record.local_id is not None
        message_id = record.message_id
        status = await self._tracked_status(message_id)
        if not status:
            raise MeshProtocolError(
                f"MESH tracking gave no status for message {message_id}, so whether to resume "
                f"or replace it is unknown; check it with `meshpipe track {message_id}`"
            )
        if status in _WAS_COMPLETED:
            await asyncio.to_thread(self._record_completed, record)
            self._notice(
                f"message {message_id} (local id {record.local_id}) was completed on MESH "
                f"before the interruption ({status}); nothing sent"
            )
            return DurableSendResult(
                "already-sent", message_id, record.local_id, record.id, record.chunk_count
            )
        if status != "uploading":
            raise _MessageGone(f"MESH reports message {message_id} as {status}")
        accepted = await asyncio.to_thread(self.ledger.accepted_chunks, record)
        self._notice(
            f"resuming message {message_id} (local id {record.local_id}): {len(accepted)} of "
            f"{record.chunk_count} chunks already accepted, sending the rest"
        )
        upload = self._upload_for(record)
        try:
            async with self._journal(record, upload):
                result = await upload.run_resumed(message_id, xxh3_128, accepted, _identity(record))
        except ChunkTransferError as error:
            cause = error.__cause__
            if isinstance(cause, MeshHTTPError) and cause.status in _GONE_STATUSES:
                raise _MessageGone(
                    f"MESH no longer holds message {message_id} (HTTP {cause.status} to chunk "
                    f"{error.chunk})"
                ) from error
            raise
        return DurableSendResult(
            "resumed", message_id, record.local_id, record.id, len(accepted), result
        )

    async def _tracked_status(self, message_id: str) -> str:
        try:
            tracking = await RetryingClient(self.client).track(message_id)
        except MeshNotFoundError as error:
            raise _MessageGone(f"MESH no longer holds message {message_id} (HTTP 404)") from error
        except MeshHTTPError as error:
            if error.status in _GONE_STATUSES:
                raise _MessageGone(
                    f"MESH no longer holds message {message_id} (HTTP {error.status})"
                ) from error
            raise
        return (tracking.status or "").lower()

    def _record_completed(self, record: SendRecord) -> None:
        """MESH completed the message: every chunk it holds is recorded accepted (the last
        chunk's answer may not have been recorded before the crash), then the send."""
        for chunk in self.ledger.chunks(record):
            if chunk.state == "sent":
                self.ledger.chunk_accepted(record, chunk.number)
        self.ledger.finish_send(record, "completed")

    async def _send_again(
        self, record: SendRecord, xxh3_128: str, outcome: SendOutcome
    ) -> DurableSendResult:
        """The whole file, from chunk 1, with the recorded local id, plan and headers."""
        upload = self._upload_for(record)
        upload.xxh3_128 = xxh3_128
        async with self._journal(record, upload):
            result = await upload.run()
        return DurableSendResult(outcome, result.message_id, result.local_id, record.id, 0, result)

    # --- plumbing --------------------------------------------------------------------------

    def _upload_for(self, record: SendRecord) -> Upload:
        options: SendOptions = {
            **self.options,
            "chunk_size": record.chunk_size,
            "codec": record.codec,
            "level": record.level,
        }
        return Upload(
            self.client,
            record.source.path,
            self._resent_headers(record),
            progress=self._progress,
            **options,
        )

    def _resent_headers(self, record: SendRecord) -> SendHeaders:
        """The recorded headers, sent again from chunk 1. The ledger keeps a GP-routing
        recipient masked (no patient details), so the address (and subject) come from this
        send's headers, which must be the same route; without them nothing is sent."""
        headers = recorded_headers(record)
        if not is_gp_address(record.recipient):
            return headers
        given = self.headers.to.strip().upper()
        if not given or mask_address(given) != record.recipient.upper():
            raise MeshpipeError(
                f"local id {record.local_id!r} is a GP-routed send to {record.recipient}; the "
                "ledger keeps no patient details, so give the same address again to resume it "
                "(--to-gp NHS_NUMBER,DOB,SURNAME or --to GPPROVIDER_...)"
            )
        return headers.replace(to=given, subject=self.headers.subject or headers.subject)

    @contextlib.asynccontextmanager
    async def _claimed(self, record: SendRecord) -> AsyncIterator[None]:
        """Hold the transfer for this process (TransferBusyError at once if another live
        process holds it)."""
        claim = self.ledger.claim(record)
        await asyncio.to_thread(claim.__enter__)
        try:
            yield
        finally:
            await asyncio.to_thread(claim.__exit__, None, None, None)

    @contextlib.asynccontextmanager
    async def _journal(self, record: SendRecord, upload: Upload) -> AsyncIterator[None]:
        """Give ``upload`` a ledger journal on a writer of its own for the block."""
        writer = LedgerWriter(batch=self.ledger.batch)
        upload.journal = LedgerSendJournal(self.ledger, writer, record)
        try:
            yield
        finally:
            try:
                await writer.close()
            except LedgerError as error:
                log.warning("transfer %d: a ledger write failed: %s", record.id, error)


def _identity(record: SendRecord) -> FileIdentity:
    source = record.source
    return source.size, source.mtime_ns, source.inode, source.device


async def send_durably(
    client: MeshClient,
    ledger: Ledger,
    source: str | os.PathLike[str] | None,
    headers: SendHeaders,
    **options: Unpack[SendOptions],
) -> DurableSendResult:
    """A :class:`DurableSend` with default settings (no notices, no progress)."""
    return await DurableSend(client, ledger, source, headers, **options).run()


__all__ = ["DurableSend", "DurableSendResult", "SendOutcome", "send_durably"]
