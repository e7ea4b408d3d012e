"""The messages a server holds and the state changes MESH defines for them: create, receive a
chunk, accept, acknowledge, reports, expiry with non-delivery reports, resets."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from meshpipe.server.config import Directory, Mailbox, ServerConfig
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
from meshpipe.server.store import MessageStore

log = logging.getLogger("meshpipe.server")

NDR_DESCRIPTION = "Message not collected by recipient after {days} days"


def new_message_id() -> str:
    return uuid.uuid4().hex.upper()


class Mailroom:
    def __init__(
        self, config: ServerConfig, directory: Directory, store: MessageStore, clock: Clock
    ) -> None:
        self.config = config
        self.directory = directory
        self.store = store
        self.clock = clock
        self.messages: dict[str, Message] = {}
        self.load()

    # -- loading and resets -------------------------------------------------------------------

    def load(self) -> None:
        self.messages = {}
        if not self.config.strict:
            # Like the sandbox: an upper-case directory in the store is a mailbox (password
            # "password") even when no data file names it.
            for name in self.store.mailbox_dirs():
                self.directory.add(Mailbox(name, "Unknown"))
        loaded = sorted(self.store.load(), key=lambda m: m.created)
        retention = timedelta(days=self.config.retention_days)
        now = self.clock.now()
        for message in loaded:
            if message.created + retention <= now:
                continue
            self.messages[message.message_id] = message

    def reset(self) -> None:
        """Everything: non-durable stores are emptied; ``dir`` reloads from disk (as the
        sandbox's file store does)."""
        self.store.clear()
        if self.store.mode == "dir":
            self.load()
        else:
            self.messages = {}

    def reset_mailbox(self, mailbox_id: str) -> None:
        """Forget the mailbox's inbox and outbox (and their files)."""
        for message in list(self.messages.values()):
            if mailbox_id in (message.recipient, message.sender):
                self.store.delete(message)
                del self.messages[message.message_id]

    # -- queries ------------------------------------------------------------------------------

    def get(self, message_id: str) -> Message | None:
        return self.messages.get(message_id.upper())

    def inbox(self, mailbox_id: str, *, all_statuses: bool = False) -> list[Message]:
        """Oldest first; by default only accepted messages (what the inbox list shows)."""
        return [
            m
            for m in self.messages.values()
            if m.recipient == mailbox_id and (all_statuses or m.status == ACCEPTED)
        ]

    def outbox(self, mailbox_id: str) -> list[Message]:
        """Newest first, every status (uploading included)."""
        return [m for m in reversed(self.messages.values()) if m.sender == mailbox_id]

    def inbox_count(self, mailbox_id: str) -> int:
        return sum(
            1 for m in self.messages.values() if m.recipient == mailbox_id and m.status == ACCEPTED
        )

    # -- changes ------------------------------------------------------------------------------

    def new_data_message(
        self,
        *,
        sender: str,
        recipient: str,
        workflow_id: str,
        total_chunks: int,
        headers: dict[str, str],
        content_encoding: str,
        compressed: bool,
        encrypted: bool,
        message_id: str | None = None,
    ) -> Message:
        """A message object for chunk 1; not registered until ``register``."""
        now = self.clock.now()
        message_id = message_id or new_message_id()
        return Message(
            message_id=message_id,
            sender=sender,
            recipient=recipient,
            workflow_id=workflow_id,
            message_type=DATA,
            total_chunks=total_chunks,
            created=now,
            inbox_expiry=now + timedelta(days=self.config.inbox_expiry_days),
            events=[Event(UPLOADING, now)],
            subject=headers.get("subject", ""),
            local_id=headers.get("local_id", ""),
            partner_id=headers.get("partner_id", ""),
            file_name=headers.get("file_name") or f"{message_id}.dat",
            content_type=headers.get("content_type", ""),
            content_encoding=content_encoding,
            checksum=headers.get("checksum", ""),
            encrypted=encrypted,
            compressed=compressed,
            discarded=not self.store.keeps_bodies,
        )

    def register(self, message: Message, *, accepted: bool = False) -> None:
        """Make the message known (and durable); ``accepted`` when chunk 1 was the only one."""
        if accepted and message.status != ACCEPTED:
            message.add_event(Event(ACCEPTED, self.clock.now()))
        self.messages[message.message_id] = message
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
        mex-Content-Checksum it carries, see synthetic.synthetic_checksum)."""
        sizes = spec.chunk_sizes()
        message = self.new_data_message(
            sender=sender,
            recipient=recipient,
            workflow_id=workflow_id,
            total_chunks=len(sizes),
            headers={
                "subject": subject,
                "local_id": local_id,
                "file_name": file_name,
                "checksum": checksum,
            },
            content_encoding="",
            compressed=False,
            encrypted=False,
        )
        message.synthetic = spec
        message.discarded = False
        for number, size in enumerate(sizes, start=1):
            self.add_chunk(message, ChunkRecord(number, size, size))
        message.add_event(Event(ACCEPTED, message.created))
        self.register(message)
        return message

    # -- expiry -------------------------------------------------------------------------------

    def expire(self, now: datetime | None = None) -> list[Message]:
        """Messages accepted but not acknowledged by their inbox expiry become undeliverable and
        their senders get a non-delivery report (code 14); messages older than the retention
        period are deleted. Returns the reports created."""
        now = now or self.clock.now()
        reports: list[Message] = []
        days = self.config.inbox_expiry_days
        description = NDR_DESCRIPTION.format(days=days)
        for message in list(self.messages.values()):
            if message.created + timedelta(days=self.config.retention_days) <= now:
                self.store.delete(message)
                del self.messages[message.message_id]
                continue
            if message.status != ACCEPTED or message.inbox_expiry > now:
                continue
            message.add_event(Event(UNDELIVERABLE, now, "14", "SEND", description))
            self.store.save(message)
            sender = self.directory.get(message.sender) if message.sender else None
            if message.message_type != DATA or sender is None:
                continue
            report = self.create_report(
                recipient=sender,
                workflow_id=message.workflow_id,
                code="14",
                event="SEND",
                description=description,
                subject=f"NDR: {message.subject}" if message.subject else "NDR",
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
        return reports

    def all(self) -> Iterable[Message]:
        return self.messages.values()
