"""The messages a server holds, the state changes MESH defines for them (send, receive a chunk,
accept, acknowledge, reports, expiry with non-delivery reports, GP routing with its error
reports (:mod:`meshpipe.server.demographics`), resets) and MESH's rules for
each: what breaks one raises a :class:`~meshpipe.server.refusals.Refusal`. The rule set in force
(:class:`~meshpipe.server.rules.RuleSet`) says which of the optional rules apply.

Handlers parse requests and render answers; every decision about a message is made here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from meshpipe.gp_route import ROUTING_ERRORS, is_gp_address, mask_address
from meshpipe.headers import SendHeaders
from meshpipe.server.checker import ChunkChecker, ChunkCheckError, DecodedTooLarge
from meshpipe.server.config import Directory, Mailbox, ServerConfig
from meshpipe.server.demographics import Demographics, RoutingFailure
from meshpipe.server.mailbox_index import MailboxIndex
from meshpipe.server.models import (
    ACCEPTED,
    ACKNOWLEDGED,
    DATA,
    ERROR,
    REPORT,
    UNDELIVERABLE,
    UPLOADING,
    ChunkRecord,
    Clock,
    Event,
    Message,
    SyntheticSpec,
)
from meshpipe.server.refusals import Refusal
from meshpipe.server.rules import RuleSet
from meshpipe.server.store import MessageStore
from meshpipe.units import MiB

log = logging.getLogger("meshpipe.server")

NDR_DESCRIPTION = "Message not collected by recipient after {days} days"
#: Compressed bytes checked per hop off the event loop (a thread hop costs tens of microseconds;
#: ISA-L inflates 1 MiB of gzip in about a millisecond).
DECODE_BATCH = 1 * MiB


#: How the mailroom reads a chunk's body: given the message and the chunk number, the body's
#: pieces as they arrive.
BodyReader = Callable[[Message, int], AsyncIterable[bytes]]


@dataclass(frozen=True, slots=True)
class ChunkUpload:
    """What a handler parsed from a chunk upload's request, besides the mailbox and (chunk 1)
    the send headers: ``mex-Chunk-Range`` (None when malformed or not the URL's chunk), the
    Content-Encoding, the declared body length, and the body."""

    chunk_range: tuple[int, int] | None
    content_encoding: str
    content_length: int | None
    body: BodyReader


def new_message_id() -> str:
    return uuid.uuid4().hex.upper()


@contextlib.contextmanager
def _refused_if_malformed(message: Message, number: int) -> Iterator[None]:
    """A body the checker cannot decode (bad gzip or zstd) is refused: 400."""
    try:
        yield
    except ChunkCheckError as exc:
        log.warning("chunk %d of %s refused: %s", number, message.message_id, exc)
        raise Refusal(400, "invalid_file_format", message_id=message.message_id) from None


@contextlib.contextmanager
def _refused_if_too_large(refusal: Refusal) -> Iterator[None]:
    """A body that decodes past its cap is refused (413) there, the rest never decoded."""
    try:
        yield
    except DecodedTooLarge as exc:
        log.warning("upload refused: %s", exc)
        raise refusal from None


class Mailroom:
    def __init__(
        self, config: ServerConfig, directory: Directory, store: MessageStore, clock: Clock
    ) -> None:
        self.config = config
        self.rules: RuleSet = config.rule_set
        self.directory = directory
        self.store = store
        self.clock = clock
        self.demographics = Demographics(config.demographics)
        self.messages: dict[str, Message] = {}
        self.index = MailboxIndex()
        # Messages sent from a mailbox since reset: the sender's outbox forgets them, their
        # recipients keep them (as the sandbox's reset does).
        self._outbox_forgotten: set[str] = set()
        self.load()

    # -- loading and resets -------------------------------------------------------------------

    def load(self) -> None:
        self.messages = {}
        self.index.clear()
        self._outbox_forgotten = set()
        if self.rules.mailboxes_from_data_dir:
            for name in self.store.mailbox_dirs():
                self.directory.add(Mailbox(name, "Unknown"))
        loaded = sorted(self.store.load(), key=lambda m: m.created)
        retention = timedelta(days=self.config.retention_days)
        now = self.clock.now()
        for message in loaded:
            if message.created + retention <= now:
                continue
            self.messages[message.message_id] = message
            self.index.add(message)

    def reset(self) -> None:
        """Everything: non-durable stores are emptied; ``dir`` reloads from disk (as the
        sandbox's file store does)."""
        self.store.clear()
        if self.store.mode == "dir":
            self.load()
        else:
            self.messages = {}
            self.index.clear()

    def reset_mailbox(self, mailbox_id: str) -> None:
        """Empty the mailbox's inbox (deleting those messages and their files) and forget its
        outbox; what it sent stays in its recipients' inboxes."""
        if self.directory.get(mailbox_id) is None:
            raise Refusal(404, "mailbox_does_not_exist")
        received = self.index.received(mailbox_id)
        for message in received:
            self.store.delete(message)
            del self.messages[message.message_id]
        self.index.remove(received)
        self._outbox_forgotten.update(m.message_id for m in self.index.sent(mailbox_id))
        self.index.forget_outbox(mailbox_id)

    # -- queries ------------------------------------------------------------------------------

    def get(self, message_id: str) -> Message | None:
        return self.messages.get(message_id.upper())

    def inbox(self, mailbox_id: str, *, all_statuses: bool = False) -> list[Message]:
        """Oldest first; by default only accepted messages (what the inbox list shows)."""
        received = self.index.received(mailbox_id)
        return received if all_statuses else [m for m in received if m.status == ACCEPTED]

    def outbox(self, mailbox_id: str) -> list[Message]:
        """Newest first, every status (uploading included)."""
        return [message for message, _ in self.index.newest_first(mailbox_id, "outbox")]

    def in_outbox(self, message: Message) -> bool:
        """Whether ``message`` is in its sender's outbox (a reset of the sender forgets it)."""
        return message.message_id not in self._outbox_forgotten

    def inbox_count(self, mailbox_id: str) -> int:
        return sum(1 for m in self.index.received(mailbox_id) if m.status == ACCEPTED)

    # -- changes ------------------------------------------------------------------------------

    def new_data_message(
        self,
        *,
        sender: str,
        headers: SendHeaders,
        total_chunks: int,
        content_encoding: str = "",
        message_id: str | None = None,
    ) -> Message:
        """A message object for chunk 1 (``headers.to`` its recipient); not registered until
        ``register``."""
        now = self.clock.now()
        message_id = message_id or new_message_id()
        return Message(
            message_id=message_id,
            sender=sender,
            recipient=headers.to,
            workflow_id=headers.workflow_id,
            message_type=DATA,
            total_chunks=total_chunks,
            created=now,
            inbox_expiry=now + timedelta(days=self.config.inbox_expiry_days),
            events=[Event(UPLOADING, now)],
            subject=headers.subject or "",
            local_id=headers.local_id or "",
            partner_id=headers.partner_id or "",
            file_name=headers.filename or f"{message_id}.dat",
            content_type=headers.content_type or "",
            content_encoding=content_encoding,
            checksum=headers.checksum or "",
            encrypted=bool(headers.encrypted),
            compressed=bool(headers.compressed),
            discarded=not self.store.keeps_bodies,
        )

    def register(self, message: Message, *, accepted: bool = False) -> None:
        """Make the message known (and durable); ``accepted`` when chunk 1 was the only one."""
        if accepted and message.status != ACCEPTED:
            message.add_event(Event(ACCEPTED, self.clock.now()))
        self.messages[message.message_id] = message
        self.index.add(message)
        self.store.save(message)

    def add_chunk(self, message: Message, record: ChunkRecord) -> None:
        message.chunks[record.number] = record
        message.file_size = sum(c.stored_size for c in message.chunks.values())

    def missing_chunks(self, message: Message) -> list[int]:
        return [n for n in range(1, message.total_chunks + 1) if n not in message.chunks]

    def accept(self, message: Message) -> None:
        if message.status != ACCEPTED:
            now = self.clock.now()
            message.add_event(Event(ACCEPTED, now))
            # The inbox clock starts when the message becomes visible.
            message.inbox_expiry = now + timedelta(days=self.config.inbox_expiry_days)
        self.store.save(message)

    def save(self, message: Message) -> None:
        self.store.save(message)

    def acknowledge(self, message: Message) -> None:
        if message.status != ACCEPTED:
            return
        message.add_event(Event(ACKNOWLEDGED, self.clock.now()))
        self.store.save(message)

    def add_event(self, message: Message, event: Event) -> None:
        message.add_event(event)
        self.store.save(message)

    def create_report(
        self,
        *,
        recipient: Mailbox,
        workflow_id: str,
        code: str,
        event: str,
        description: str,
        status: str = ERROR,
        subject: str = "",
        local_id: str = "",
        file_name: str = "",
        linked_message_id: str | None = None,
    ) -> Message:
        """A REPORT in ``recipient``'s inbox (sender: the central system mailbox, empty id)."""
        now = self.clock.now()
        message = Message(
            message_id=new_message_id(),
            sender="",
            recipient=recipient.mailbox_id,
            workflow_id=workflow_id,
            message_type=REPORT,
            total_chunks=0,
            created=now,
            inbox_expiry=now + timedelta(days=self.config.inbox_expiry_days),
            # The sandbox lists the accepted event after the error one, so a report's status is
            # "accepted" (downloadable) while its error event gives the report's details.
            events=[
                Event(status, now, code, event, description, linked_message_id),
                Event(ACCEPTED, now),
            ],
            subject=subject,
            local_id=local_id,
            file_name=file_name,
        )
        self.register(message)
        return message

    def create_ndr(
        self,
        *,
        recipient: Mailbox,
        workflow_id: str,
        subject: str | None = None,
        local_id: str = "",
        linked_message_id: str | None = None,
    ) -> Message:
        """A non-delivery report (code 14) for a message nobody collected in time."""
        return self.create_report(
            recipient=recipient,
            workflow_id=workflow_id,
            code="14",
            event="SEND",
            description=NDR_DESCRIPTION.format(days=self.config.inbox_expiry_days),
            subject=f"NDR: {subject}" if subject else "NDR",
            local_id=local_id,
            linked_message_id=linked_message_id,
        )

    def create_synthetic(
        self,
        *,
        sender: str,
        recipient: str,
        workflow_id: str,
        spec: SyntheticSpec,
        subject: str = "",
        local_id: str = "",
        file_name: str = "",
        checksum: str = "",
    ) -> Message:
        """An accepted DATA message whose bytes are generated on download (``checksum``: the
        mex-Content-Checksum it carries, see streaming.synthetic_checksum)."""
        sizes = spec.chunk_sizes()
        headers = SendHeaders(
            to=recipient,
            workflow_id=workflow_id,
            subject=subject,
            local_id=local_id,
            filename=file_name,
            checksum=checksum,
        )
        message = self.new_data_message(sender=sender, headers=headers, total_chunks=len(sizes))
        message.synthetic = spec
        message.discarded = False
        for number, size in enumerate(sizes, start=1):
            self.add_chunk(message, ChunkRecord(number, size, size))
        message.add_event(Event(ACCEPTED, message.created))
        self.register(message)
        return message

    # -- MESH's rules for the client-facing API ------------------------------------------------

    async def send(self, sender: Mailbox, headers: SendHeaders, upload: ChunkUpload) -> Message:
        """Chunk 1 of a new message (the whole message when it has one chunk)."""
        message = self._begin_send(sender, headers, upload)
        record = await self._receive_chunk(message, 1, upload.body(message, 1))
        self.add_chunk(message, record)
        complete = message.total_chunks == 1
        self.register(message, accepted=complete and not message.routing_error)
        log.info(
            "created message %s from %s to %s workflow %s chunks %d",
            message.message_id,
            message.sender,
            message.recipient,
            message.workflow_id,
            message.total_chunks,
        )
        if complete and message.routing_error:
            self._not_routed(message)
        return message

    def _route(self, headers: SendHeaders) -> tuple[str, str]:
        """(recipient, routing error code): a GP-routing recipient resolved to its practice
        when the rules route and a demographics table is given (``""`` and the code when it
        fails: the message is accepted but never delivered, see :meth:`_not_routed`); any
        other recipient as it is."""
        if not (self.rules.gp_routing and self.demographics and is_gp_address(headers.to)):
            return headers.to, ""
        try:
            return self.demographics.resolve(headers.to, self.directory.mailboxes), ""
        except RoutingFailure as failure:
            return "", failure.code

    def _complete(self, message: Message) -> None:
        """Every chunk is in: deliver it, or report the routing failure."""
        if message.routing_error:
            self._not_routed(message)
        else:
            self.accept(message)

    def _not_routed(self, message: Message) -> None:
        """A complete message GP routing found no practice for: its error event, and MESH's
        error report in the sender's inbox (linked to it, with its local id)."""
        code = message.routing_error
        description = ROUTING_ERRORS[code][1]
        now = self.clock.now()
        message.add_event(Event(ERROR, now, code, "SEND", description))
        self.store.save(message)
        sender = self.directory.get(message.sender)
        if sender is None:  # a mailbox removed since it sent
            return
        report = self.create_report(
            recipient=sender,
            workflow_id=message.workflow_id,
            code=code,
            event="SEND",
            description=description,
            local_id=message.local_id,
            linked_message_id=message.message_id,
        )
        log.info(
            "message %s not delivered: GP routing failed (%s %s); error report %s sent to %s",
            message.message_id,
            code,
            description,
            report.message_id,
            sender.mailbox_id,
        )

    def _begin_send(self, sender: Mailbox, headers: SendHeaders, upload: ChunkUpload) -> Message:
        chunk_range = upload.chunk_range
        content_encoding = upload.content_encoding
        found = {problem.rule for problem in headers.problems()}
        if found & {"control_character", "url"}:
            raise Refusal(400, "malformed_control_file")
        if "checksum_characters" in found:
            raise Refusal(400, "invalid_checksum")
        if not headers.to:
            raise Refusal(400, "missing_to")
        routed_to, routing_error = self._route(headers)
        if content_encoding and content_encoding != "gzip":
            raise Refusal(422, "unsupported_encoding")
        if chunk_range is None or chunk_range[0] != 1:
            raise Refusal(417, "invalid_chunks")
        if chunk_range[1] > self.rules.max_chunks:
            raise Refusal(
                417, "too_many_chunks", maximum=self.rules.max_chunks, total=chunk_range[1]
            )
        if routing_error:
            self._check_request_size(upload.content_length)
            message = self.new_data_message(
                sender=sender.mailbox_id,
                headers=headers.replace(to=mask_address(headers.to)),
                total_chunks=chunk_range[1],
                content_encoding=content_encoding,
            )
            message.routing_error = routing_error
            return message
        recipient = self.directory.get(routed_to)
        if recipient is None:
            raise Refusal(417, "unregistered_recipient")
        if self.rules.workflow_entitlement and not self.directory.may_send(
            sender.mailbox_id, recipient.mailbox_id, headers.workflow_id
        ):
            raise Refusal(417, "not_registered_for_workflow")
        self._check_request_size(upload.content_length)
        return self.new_data_message(
            sender=sender.mailbox_id,
            headers=headers.replace(to=recipient.mailbox_id),
            total_chunks=chunk_range[1],
            content_encoding=content_encoding,
        )

    async def send_chunk(
        self, sender: Mailbox, message_id: str, number: int, upload: ChunkUpload
    ) -> Message:
        """Chunk ``number`` ≥ 2 of a message being uploaded; the last one completes it."""
        message_id = message_id.upper()
        if upload.chunk_range is None or upload.chunk_range[0] != number:
            raise Refusal(417, "invalid_chunks", message_id=message_id)
        message = self.get(message_id)
        if message is None or (
            message.sender != sender.mailbox_id and self.rules.others_messages_hidden
        ):
            raise Refusal(404, "not_found")
        if message.sender != sender.mailbox_id:
            raise Refusal(403, "forbidden")
        if message.status != UPLOADING:
            raise Refusal(423, "internal")
        if number > message.total_chunks or message.message_type != DATA:
            raise Refusal(406, "internal")
        if upload.content_encoding != message.content_encoding:
            raise Refusal(417, "encoding_changed")
        self._check_request_size(upload.content_length)
        record = await self._receive_chunk(message, number, upload.body(message, number))
        if message.status != UPLOADING:  # completed while this chunk streamed in
            raise Refusal(423, "internal")
        self.add_chunk(message, record)
        if number < message.total_chunks:
            self.save(message)
            return message
        missing = self.missing_chunks(message)
        if missing:
            # Like the sandbox's file store: the last chunk arrived before the others; it is
            # kept, the message stays uploading, and the last chunk must be sent again.
            self.save(message)
            log.warning("last chunk of %s arrived before chunks %s", message_id, missing)
            raise Refusal(500, "internal")
        self._complete(message)
        log.info("message %s complete (%d chunks)", message_id, message.total_chunks)
        return message

    def _check_request_size(self, length: int | None) -> None:
        limit = self.rules.max_request_size
        if limit is not None and length is not None and length >= limit:
            raise Refusal(413, "request_too_large", maximum=limit)

    async def _receive_chunk(
        self, message: Message, number: int, body: AsyncIterable[bytes]
    ) -> ChunkRecord:
        """Stream the body through the checker into the store (committed only when every rule
        holds); the decoded size and digest are recorded. A compressed body is decoded off the
        event loop, in bounded pieces, and refused as soon as it decodes past its cap."""
        writer = self.store.chunk_writer(message, number)
        cap, refusal = self._decoded_cap(message, number)
        checker = ChunkChecker(
            message.content_encoding, payload_compressed=message.compressed, decoded_limit=cap
        )
        limit = self.rules.max_request_size
        committed = False
        received = 0
        batch: list[bytes] = []  # pieces not yet checked (a compressed body is checked in
        batched = 0  # batches of about DECODE_BATCH, each one hop off the event loop)
        try:
            async for piece in body:
                received += len(piece)
                if limit is not None and received >= limit:
                    raise Refusal(413, "request_too_large", maximum=limit)
                writer.write(piece)
                with _refused_if_malformed(message, number), _refused_if_too_large(refusal):
                    if not checker.decodes:
                        checker.update(piece)
                        continue
                    batch.append(piece)
                    batched += len(piece)
                    if batched >= DECODE_BATCH:
                        await asyncio.to_thread(checker.update_all, batch)
                        batch, batched = [], 0
            with _refused_if_malformed(message, number), _refused_if_too_large(refusal):
                if batch:
                    await asyncio.to_thread(checker.update_all, batch)
                result = checker.finish()
            self._check_chunk_size(message, number, result.size)
            if result.stored_size == 0 and number == 1:
                raise Refusal(417, "missing_data_file")
            if number > 1 and message.status != UPLOADING:
                raise Refusal(423, "internal")  # completed while this chunk streamed in
            # fsync of a large chunk can take a while: keep the event loop serving meanwhile.
            await asyncio.to_thread(writer.commit)
            committed = True
            return ChunkRecord(
                number, result.stored_size, result.size, result.xxh3_128, message.content_encoding
            )
        finally:
            if not committed:
                writer.abort()

    def _decoded_cap(self, message: Message, number: int) -> tuple[int, Refusal]:
        """The most bytes chunk ``number`` may decode to, and the refusal past it: the rule
        set's chunk cap, or what is left of the message limit when that is less."""
        cap = self.rules.max_decoded_chunk_size
        refusal = Refusal(
            413, "chunk_decodes_too_large", message_id=message.message_id, maximum=cap
        )
        largest = self.rules.max_message_size
        if largest is not None:
            earlier = sum(c.size or c.stored_size for n, c in message.chunks.items() if n != number)
            if largest - earlier < cap:
                cap = max(largest - earlier, 0)
                refusal = Refusal(413, "message_too_large", maximum=largest)
        return cap, refusal

    def _check_chunk_size(self, message: Message, number: int, size: int) -> None:
        smallest = self.rules.min_chunk_size
        if smallest is not None and number < message.total_chunks and size < smallest:
            raise Refusal(
                417,
                "chunk_too_small",
                message_id=message.message_id,
                minimum=smallest,
                number=number,
                size=size,
            )
        largest = self.rules.max_message_size
        if largest is not None:
            earlier = sum(c.size or c.stored_size for n, c in message.chunks.items() if n != number)
            if earlier + size > largest:
                raise Refusal(413, "message_too_large", maximum=largest)

    def received(self, mailbox: Mailbox, message_id: str) -> Message:
        """A message in ``mailbox``'s inbox (any status), for download or acknowledgement."""
        message = self.get(message_id)
        if message is None or (
            message.recipient != mailbox.mailbox_id and self.rules.others_messages_hidden
        ):
            raise Refusal(404, "does_not_exist")
        if message.recipient != mailbox.mailbox_id:
            raise Refusal(403, "forbidden")
        return message

    def download(
        self, mailbox: Mailbox, message_id: str, number: int
    ) -> tuple[Message, ChunkRecord | None]:
        """The message and its chunk ``number`` to download (no chunk for a REPORT)."""
        message = self.received(mailbox, message_id)
        downloadable: tuple[str, ...] = (ACCEPTED, ACKNOWLEDGED)
        if not self.rules.download_after_acknowledgement:
            downloadable = (ACCEPTED,)
        if message.status not in downloadable:
            raise Refusal(410, "message_gone")
        if message.message_type != DATA:
            return message, None
        record = message.chunks.get(number) if 1 <= number <= message.total_chunks else None
        if record is None:
            raise Refusal(404, "does_not_exist")
        return message, record

    def describe(self, mailbox: Mailbox, message_id: str) -> Message:
        """A message its sender or recipient may see the headers of (HEAD)."""
        message = self.get(message_id)
        if message is None or mailbox.mailbox_id not in (message.recipient, message.sender):
            raise Refusal(404, "does_not_exist")
        is_recipient = message.recipient == mailbox.mailbox_id
        if is_recipient and message.status not in (ACCEPTED, ACKNOWLEDGED):
            raise Refusal(410, "message_gone")
        return message

    def sent(self, mailbox: Mailbox, message_id: str) -> Message:
        """A message ``mailbox`` sent (tracking by message id)."""
        message = self.get(message_id)
        if message is None or message.sender != mailbox.mailbox_id:
            raise Refusal(404, "not_found")
        return message

    def sent_with_local_id(self, mailbox: Mailbox, local_id: str) -> Message:
        """The one message in ``mailbox``'s outbox with ``local_id`` (tracking by local id)."""
        found = [m for m in self.outbox(mailbox.mailbox_id) if m.local_id == local_id]
        if not found:
            raise Refusal(404, "not_found")
        if len(found) > 1:
            raise Refusal(300, "multiple_choices")
        return found[0]

    def mailbox(self, mailbox_id: str) -> Mailbox:
        """A known mailbox (admin API), else 404."""
        mailbox = self.directory.get(mailbox_id)
        if mailbox is None:
            raise Refusal(404, "mailbox_does_not_exist")
        return mailbox

    # -- expiry -------------------------------------------------------------------------------

    def expire(self, now: datetime | None = None) -> list[Message]:
        """Messages accepted but not acknowledged by their inbox expiry become undeliverable and
        their senders get a non-delivery report (code 14); messages older than the retention
        period are deleted. Returns the reports created."""
        now = now or self.clock.now()
        reports: list[Message] = []
        days = self.config.inbox_expiry_days
        description = NDR_DESCRIPTION.format(days=days)
        deleted: list[Message] = []
        for message in list(self.messages.values()):
            if message.created + timedelta(days=self.config.retention_days) <= now:
                self.store.delete(message)
                del self.messages[message.message_id]
                deleted.append(message)
                continue
            if message.status != ACCEPTED or message.inbox_expiry > now:
                continue
            message.add_event(Event(UNDELIVERABLE, now, "14", "SEND", description))
            self.store.save(message)
            sender = self.directory.get(message.sender) if message.sender else None
            if message.message_type != DATA or sender is None:
                continue
            report = self.create_ndr(
                recipient=sender,
                workflow_id=message.workflow_id,
                subject=message.subject,
                local_id=message.local_id,
                linked_message_id=message.message_id,
            )
            log.info(
                "message %s expired; NDR %s sent to %s",
                message.message_id,
                report.message_id,
                sender.mailbox_id,
            )
            reports.append(report)
        self.index.remove(deleted)
        return reports

    def all(self) -> Iterable[Message]:
        return self.messages.values()
