"""What the store view shows, read from the mailroom without changing it: the mailboxes with
their counts, a mailbox's messages (filtered by box and status, in pages), one message with its
chunks, events and tracking, and the evidence bundle. Also who may open the view
(:func:`view_access`).

Nothing here writes: no event is added, no status changes, the clock is only read (its
``now()``), and no message is expired or acknowledged by being looked at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal

from multidict import MultiMapping

from meshpipe.server.config import ADMIN_TOKEN_ENV, Mailbox, ServerConfig
from meshpipe.server.mailbox_index import Box
from meshpipe.server.mailroom import Mailroom
from meshpipe.server.models import ACCEPTED, STATUSES, Message
from meshpipe.server.views import message_headers, tracking_body

PAGE_SIZE: Final = 50
#: A message page lists at most this many chunks (the evidence bundle has them all).
MAX_CHUNK_ROWS: Final = 2000
BOXES: Final = ("all", "inbox", "outbox")
#: The evidence bundle's format (a field of the bundle, raised when its shape changes).
EVIDENCE_FORMAT: Final = 1


class BadQuery(ValueError):
    """A query parameter the view cannot use (a 400 page naming it and the fix)."""


class NotFound(LookupError):
    """No such mailbox or message in the store (a 404 page)."""


# -- access -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Access:
    """Who may open the view: with ``token``, whoever presents the admin token; with
    ``refusal``, nobody (the text says why and what to do); with neither, anyone who can reach
    the port (a loopback bind)."""

    token: str | None = field(default=None, repr=False)
    refusal: str | None = None


def view_access(config: ServerConfig) -> Access:
    """The one rule: on a loopback bind the view is open (only this machine reaches it); on
    any other it needs the admin token, and is refused when there is none."""
    if config.loopback_only:
        return Access()
    if config.admin_token is not None:
        return Access(token=config.admin_token)
    return Access(
        refusal=(
            f"the store view is off: this server listens on {config.host!r}, reachable from the "
            "network, and has no admin token, so anyone who can reach the port would read every "
            f"message. Start it with an admin token (set {ADMIN_TOKEN_ENV}) and open the view "
            "with ?token=TOKEN once or 'Authorization: Bearer TOKEN', or listen on 127.0.0.1"
        )
    )


# -- rows -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MailboxRow:
    """One mailbox of the directory and what its store holds (``oldest_waiting``: when the
    oldest message accepted into its inbox and not yet acknowledged was accepted)."""

    mailbox_id: str
    name: str
    ods_code: str
    org_code: str
    org_name: str
    inbox: int
    outbox: int
    oldest_waiting: datetime | None
    waiting_seconds: float | None


@dataclass(frozen=True, slots=True)
class MessageRow:
    """One message as a list shows it; ``box`` is ``inbox`` or ``outbox`` (of the mailbox the
    list is for; a message a mailbox sent to itself is in both)."""

    box: str
    message_id: str
    message_type: str
    sender: str
    recipient: str
    workflow_id: str
    subject: str
    file_name: str
    status: str
    chunks_received: int
    total_chunks: int
    stored_size: int
    created: datetime
    expiry: datetime


@dataclass(frozen=True, slots=True)
class BoxQuery:
    """Which of a mailbox's messages a list shows: the box, a status (None: any), a page."""

    box: str = "all"
    status: str | None = None
    page: int = 1


@dataclass(frozen=True, slots=True)
class MessagePage:
    rows: list[MessageRow]
    total: int
    query: BoxQuery
    pages: int


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """One chunk: as stored (``stored_size``), decoded (``size``, ``xxh3_128``: of the decoded
    bytes, which are the stored bytes for a chunk without Content-Encoding), and where its bytes
    are (``on disk``, ``not kept`` for the discard store, ``generated`` for a synthetic message,
    ``missing`` when the file is gone, ``not received`` for a chunk still to come)."""

    number: int
    stored_size: int | None
    size: int | None
    xxh3_128: str | None
    encoding: str
    where: str


def parse_box_query(params: MultiMapping[str]) -> BoxQuery:
    """The list's query from the address's parameters; BadQuery names a wrong one."""
    box = params.get("box") or "all"
    if box not in BOXES:
        raise BadQuery(f"box: {box!r} is not a box; choose one of {', '.join(BOXES)}")
    status = params.get("status") or None
    if status is not None and status not in STATUSES:
        raise BadQuery(
            f"status: {status!r} is not a message status; choose one of {', '.join(STATUSES)}"
        )
    text = (params.get("page") or "1").strip()
    if not text.isdigit() or int(text) < 1:
        raise BadQuery(f"page: {text!r} is not a page number; give a whole number from 1")
    return BoxQuery(box, status, int(text))


def _box(box: str) -> Box | Literal["all"]:
    """A box name parse_box_query checked."""
    if box == "inbox":
        return "inbox"
    if box == "outbox":
        return "outbox"
    if box == "all":
        return "all"
    raise BadQuery(f"box: {box!r} is not a box")


def _stored_size(message: Message) -> int:
    return sum(chunk.stored_size for chunk in message.chunks.values())


def _row(message: Message, box: str) -> MessageRow:
    return MessageRow(
        box=box,
        message_id=message.message_id,
        message_type=message.message_type,
        sender=message.sender,
        recipient=message.recipient,
        workflow_id=message.workflow_id,
        subject=message.subject,
        file_name=message.file_name,
        status=message.status,
        chunks_received=len(message.chunks),
        total_chunks=message.total_chunks,
        stored_size=_stored_size(message),
        created=message.created,
        expiry=message.inbox_expiry,
    )


class StoreView:
    """Read-only questions about one server's store."""

    def __init__(self, mailroom: Mailroom) -> None:
        self.mailroom = mailroom

    def now(self) -> datetime:
        """The server's time (its clock, moved forward by tests), read, never changed."""
        return self.mailroom.clock.now()

    def mailboxes(self) -> list[MailboxRow]:
        """Every mailbox of the directory, by id (a pass over what each received; what each
        sent is counted by the index)."""
        directory = self.mailroom.directory.mailboxes
        index = self.mailroom.index
        now = self.now()
        rows: list[MailboxRow] = []
        for mailbox_id in sorted(directory):
            mailbox = directory[mailbox_id]
            waiting = 0
            since: datetime | None = None
            for message in index.received(mailbox_id):
                last = message.events[-1]  # its status, and for an accepted one when it was
                if last.status == ACCEPTED:
                    waiting += 1
                    if since is None or last.timestamp < since:
                        since = last.timestamp
            rows.append(
                MailboxRow(
                    mailbox_id=mailbox_id,
                    name=mailbox.mailbox_name,
                    ods_code=mailbox.ods_code,
                    org_code=mailbox.org_code,
                    org_name=mailbox.org_name,
                    inbox=waiting,
                    outbox=index.count(mailbox_id, "outbox"),
                    oldest_waiting=since,
                    waiting_seconds=(now - since).total_seconds() if since else None,
                )
            )
        return rows

    def mailbox(self, mailbox_id: str) -> Mailbox:
        """A mailbox of the directory; NotFound otherwise."""
        mailbox = self.mailroom.directory.get(mailbox_id)
        if mailbox is None:
            raise NotFound(f"there is no mailbox {mailbox_id!r} on this server")
        return mailbox

    def messages(self, mailbox_id: str, query: BoxQuery) -> MessagePage:
        """A page of the mailbox's messages, newest first: its inbox (every status, uploads
        still under way included) and its outbox, as the query selects. Without a status the
        page is read straight from the mailroom's index; a status filter passes over the
        mailbox's messages once."""
        mailbox_id = self.mailbox(mailbox_id).mailbox_id
        index = self.mailroom.index
        box = _box(query.box)
        start = (query.page - 1) * PAGE_SIZE
        if query.status is None:
            total = index.count(mailbox_id, box)
            found = index.page(mailbox_id, box, start, PAGE_SIZE)
        else:
            status = query.status
            matching = [m for m in index.newest_first(mailbox_id, box) if m[0].status == status]
            total = len(matching)
            found = matching[start : start + PAGE_SIZE]
        pages = max(1, -(-total // PAGE_SIZE))
        return MessagePage([_row(m, box) for m, box in found], total, query, pages)

    def message(self, message_id: str) -> Message:
        """A message in the store; NotFound otherwise."""
        message = self.mailroom.get(message_id)
        if message is None:
            raise NotFound(f"there is no message {message_id!r} in this server's store")
        return message

    def chunks(self, message: Message, limit: int | None = None) -> list[ChunkRow]:
        """The message's chunks from 1 to its total (the first ``limit``), received or not."""
        rows: list[ChunkRow] = []
        last = message.total_chunks if limit is None else min(limit, message.total_chunks)
        for number in range(1, last + 1):
            record = message.chunks.get(number)
            if record is None:
                rows.append(ChunkRow(number, None, None, None, "", "not received"))
                continue
            rows.append(
                ChunkRow(
                    number,
                    record.stored_size,
                    record.size,
                    record.xxh3_128,
                    record.encoding,
                    self._where(message, number),
                )
            )
        return rows

    def _where(self, message: Message, number: int) -> str:
        if message.synthetic is not None:
            return "generated"
        if message.discarded or not self.mailroom.store.keeps_bodies:
            return "not kept"
        return "on disk" if self.mailroom.store.chunk_path(message, number) else "missing"

    def download_headers(self, message: Message) -> dict[str, str]:
        """The headers a download of chunk 1 would carry now."""
        return message_headers(message, 1, self.now())

    def tracking(self, message: Message) -> dict[str, Any]:
        """What tracking (API v2) would answer for the message now."""
        return tracking_body(message, self.mailroom.directory, 2)

    def party(self, mailbox_id: str) -> str:
        """A mailbox id with its name from the directory (``X26ABC1 (TESTMB1)``)."""
        if not mailbox_id:
            return "the central system"
        mailbox = self.mailroom.directory.get(mailbox_id)
        if mailbox is None or not mailbox.mailbox_name:
            return mailbox_id
        return f"{mailbox_id} ({mailbox.mailbox_name})"

    def evidence(self, message: Message) -> dict[str, Any]:
        """The evidence bundle: the message as stored (every field, its events and chunk
        records), where each chunk's bytes are, the headers a download carries and the
        tracking answer, stamped with the server's time."""
        return {
            "format": EVIDENCE_FORMAT,
            "generated_at": self.now().isoformat(),
            "server": {
                "store": self.mailroom.store.mode,
                "rules": self.mailroom.config.rules,
                "build": self.mailroom.config.build_label,
            },
            "message": message.to_json(),
            "status": message.status,
            "chunks": [
                {
                    "number": row.number,
                    "stored_size": row.stored_size,
                    "size": row.size,
                    "xxh3_128": row.xxh3_128,
                    "encoding": row.encoding,
                    "where": row.where,
                }
                for row in self.chunks(message)
            ],
            "download_headers": self.download_headers(message),
            "tracking": self.tracking(message),
        }
