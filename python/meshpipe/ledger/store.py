"""The Ledger: every read and state change of transfers, chunks, events and claims, each
change in one committed transaction (see the package docstring for the rules)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Final, Self, cast

from sqlalchemy import Connection, Integer, Row, bindparam, delete, func, insert, select, update
from sqlalchemy.sql.elements import ColumnElement

from meshpipe.gp_route import mask_patient_details
from meshpipe.headers import SendHeaders
from meshpipe.ledger.database import (
    DEFAULT_BUSY_TIMEOUT,
    Location,
    check_sqlite_file,
    create_ledger_engine,
    migrate,
    parse_location,
    transaction,
)
from meshpipe.ledger.errors import LedgerError, TransferBusyError
from meshpipe.ledger.records import (
    ChunkRecord,
    Claim,
    Direction,
    Event,
    EventKind,
    HistoryFilter,
    HookOutcome,
    ReceiveRecord,
    SendOutcome,
    SendRecord,
    SourceFile,
    TransferRecord,
    TransferState,
    TransferSummary,
)
from meshpipe.ledger.schema import SCHEMA_VERSION, chunks, events, transfers
from meshpipe.processes import process_is_alive
from meshpipe.units import Codec

#: How long a claim lasts without a renewal; a claim renews itself every third of it.
DEFAULT_LEASE: Final = 30.0
#: How often a claim that waits for a busy transfer looks again.
CLAIM_POLL_INTERVAL: Final = 0.25

TransferRef = int | SendRecord | ReceiveRecord
"""A transfer: its id, or a record of it (only the id is used)."""

_SEND_WORKING: Final = ("preparing", "uploading")
_TERMINAL: Final = ("completed", "acknowledged")
_HEADER_FIELDS: Final = {
    "sender": "mex-from",
    "workflow_id": "mex-workflowid",
    "local_id": "mex-localid",
    "subject": "mex-subject",
}


def _transfer_id(transfer: TransferRef) -> int:
    return transfer if isinstance(transfer, int) else transfer.id


def this_host() -> str:
    """The host name a claim records (and compares, to tell whether its owner is alive)."""
    return socket.gethostname()


class Ledger:
    """A durable record of transfers in SQLite or PostgreSQL. Open it with :meth:`open` (or
    as a context manager); every method that changes something commits before it returns."""

    def __init__(
        self,
        location: Location,
        *,
        busy_timeout: float,
        lease: float,
        clock: Callable[[], datetime],
    ) -> None:
        self._location = location
        self._lease = timedelta(seconds=lease)
        self._clock = clock
        self._claims: dict[int, _Heartbeat] = {}
        self._batching = threading.local()  # .connection: this thread's batch, if any
        # SQLite: this process's writers queue on a lock (see _transaction); PostgreSQL
        # writers run side by side (row locks).
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if location.is_sqlite else contextlib.nullcontext()
        )
        if location.path is not None:
            check_sqlite_file(location)
        self._engine = create_ledger_engine(location, busy_timeout=busy_timeout)
        self._closed = False
        try:
            self.migrated_from = migrate(self._engine, location)
        except BaseException:
            self._engine.dispose()
            raise

    @classmethod
    def open(
        cls,
        location: str | os.PathLike[str],
        *,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        lease: float = DEFAULT_LEASE,
        clock: Callable[[], datetime] | None = None,
    ) -> Ledger:
        """Open (creating or migrating if needed) the ledger at ``location``: a path,
        ``sqlite:///PATH`` or ``postgresql://...``. LedgerError, changing nothing, if it is
        not an intact meshpipe ledger of this or an older schema version."""
        return cls(
            parse_location(location),
            busy_timeout=busy_timeout,
            lease=lease,
            clock=clock or (lambda: datetime.now(UTC)),
        )

    @property
    def location(self) -> str:
        """The SQLite file, or the PostgreSQL URL with its password hidden."""
        return self._location.display

    @property
    def schema_version(self) -> int:
        return SCHEMA_VERSION

    def __repr__(self) -> str:
        return f"Ledger({self.location!r})"

    def close(self) -> None:
        """Release this process's claims and close every connection."""
        if self._closed:
            return
        for transfer_id in list(self._claims):
            self._release(transfer_id)
        self._engine.dispose()
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Run every change this thread makes in the block as one transaction, committed when
        the block ends (group commit: one fsync for many facts). An error must leave the block
        (catching a ledger error inside it would commit that change's half), and then rolls
        all of them back, so a caller acts on a change only after the block has ended. Other
        threads' changes are not part of it (a SQLite writer waits for the block to end)."""
        if getattr(self._batching, "connection", None) is not None:
            yield  # already in a batch: part of it
            return
        with self._transaction(write=True) as connection:
            self._batching.connection = connection
            try:
                yield
            finally:
                self._batching.connection = None

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        if self._closed:
            raise LedgerError(
                f"ledger {self.location} was used after close()",
                code="closed",
                location=self.location,
            )
        batched: Connection | None = getattr(self._batching, "connection", None)
        if batched is not None:
            yield batched
            return
        # SQLite has one writer at a time; threads of this process that wait for it in
        # SQLite's busy handler sleep in steps of milliseconds, so they queue here instead and
        # the lock passes at once. (Other processes still meet the busy timeout.)
        lock = self._write_lock if write else contextlib.nullcontext()
        with lock, transaction(self._engine, self._location, write=write) as connection:
            yield connection

    def _error(self, message: str, code: Any, transfer: int) -> LedgerError:
        return LedgerError(
            f"transfer {transfer}: {message}", code=code, location=self.location, transfer=transfer
        )

    def _event(
        self, connection: Connection, transfer_id: int, kind: EventKind, **detail: Any
    ) -> None:
        connection.execute(
            _EVENT,
            {
                "transfer_id": transfer_id,
                "at": self._clock(),
                "kind": kind,
                "detail": _without_patient_details(detail),
            },
        )

    def _change(
        self,
        connection: Connection,
        transfer: TransferRef,
        direction: Direction | None,
        states: Collection[str],
        action: str,
    ) -> Row[Any]:
        """The guard that opens every change: stamps the transfer (renewing this process's
        lease, and on PostgreSQL locking its row until commit) only if no other process holds
        it, then checks its direction and state. Returns the transfer's row."""
        transfer_id = _transfer_id(transfer)
        now = self._clock()
        heartbeat = self._claims.get(transfer_id)
        if heartbeat is None:
            row = connection.execute(
                _STAMP_UNCLAIMED, {"transfer": transfer_id, "now": now}
            ).first()
        else:
            row = connection.execute(
                _STAMP_CLAIMED,
                {
                    "transfer": transfer_id,
                    "now": now,
                    "token": heartbeat.token,
                    "expires": now + self._lease,
                },
            ).first()
        if row is None:
            found = connection.execute(
                select(transfers).where(transfers.c.id == transfer_id)
            ).first()
            if found is None:
                raise self._error("no such transfer in this ledger", "not-found", transfer_id)
            raise self._busy(found, action)
        if direction is not None and row.direction != direction:
            raise self._error(
                f"is a {row.direction}, so it cannot {action}", "wrong-direction", transfer_id
            )
        if row.state not in states:
            raise self._error(
                f"is {row.state}; it can {action} only when {' or '.join(states)}",
                "invalid-state",
                transfer_id,
            )
        return row

    def _busy(self, row: Row[Any], action: str) -> TransferBusyError:
        expires = row.lease_expires_at
        if row.owner_token is None or row.id in self._claims:
            message = (
                f"transfer {row.id}: this process's claim was taken over by another process "
                f"(its lease ran out), so this process cannot {action}; stop working on it"
            )
        else:
            until = f"{expires:%Y-%m-%d %H:%M:%S} UTC" if expires else "unknown"
            message = (
                f"transfer {row.id} is held by meshpipe process {row.owner} (lease until "
                f"{until}), so this process cannot {action}; wait for it to finish, or stop "
                "it: its claim is taken over once it has exited"
            )
        return TransferBusyError(
            message,
            transfer=row.id,
            owner=row.owner or "?",
            expires_at=expires,
            location=self.location,
        )

    def _check_chunk(self, row: Row[Any], number: int) -> None:
        if not 1 <= number <= (row.chunk_count or 0):
            raise self._error(
                f"chunk {number} is outside 1..{row.chunk_count}", "chunk-number", row.id
            )

    def _chunk(self, connection: Connection, transfer_id: int, number: int) -> Row[Any] | None:
        return connection.execute(_CHUNK, {"transfer": transfer_id, "chunk_number": number}).first()

    def _count_done(self, connection: Connection, transfer_id: int, delta: int) -> None:
        connection.execute(_COUNT_DONE, {"transfer": transfer_id, "delta": delta})

    def _set(self, connection: Connection, transfer_id: int, **values: Any) -> None:
        connection.execute(update(transfers).where(transfers.c.id == transfer_id).values(**values))

    def _read(self, connection: Connection, transfer_id: int) -> TransferRecord:
        row = connection.execute(select(transfers).where(transfers.c.id == transfer_id)).first()
        if row is None:
            raise self._error("no such transfer in this ledger", "not-found", transfer_id)
        return _record(row)

    # --- reading -------------------------------------------------------------------------

    def transfer(self, transfer: TransferRef) -> TransferRecord:
        """The transfer as recorded now."""
        with self._transaction(write=False) as connection:
            return self._read(connection, _transfer_id(transfer))

    def find_send(self, mailbox: str, local_id: str) -> SendRecord | None:
        """The latest send of ``local_id`` from ``mailbox`` (highest sequence), if any."""
        with self._transaction(write=False) as connection:
            row = connection.execute(
                select(transfers)
                .where(
                    transfers.c.direction == "send",
                    transfers.c.mailbox == mailbox,
                    transfers.c.local_id == local_id,
                )
                .order_by(transfers.c.sequence.desc())
                .limit(1)
            ).first()
        return cast(SendRecord, _record(row)) if row is not None else None

    def find_receive(self, mailbox: str, message_id: str) -> ReceiveRecord | None:
        """The receive of ``message_id`` into ``mailbox``, if any."""
        with self._transaction(write=False) as connection:
            row = connection.execute(
                select(transfers).where(
                    transfers.c.direction == "receive",
                    transfers.c.mailbox == mailbox,
                    transfers.c.message_id == message_id,
                )
            ).first()
        return cast(ReceiveRecord, _record(row)) if row is not None else None

    def chunks(self, transfer: TransferRef) -> list[ChunkRecord]:
        """Every chunk recorded for the transfer, by number."""
        with self._transaction(write=False) as connection:
            rows = connection.execute(
                select(chunks)
                .where(chunks.c.transfer_id == _transfer_id(transfer))
                .order_by(chunks.c.number)
            ).all()
        return [
            ChunkRecord(
                row.number,
                row.state,
                row.xxh3_128,
                row.payload_size,
                row.length,
                row.sent_at,
                row.done_at,
                row.worker,
            )
            for row in rows
        ]

    def accepted_chunks(
        self, transfer: TransferRef, numbers: range | None = None
    ) -> dict[int, str]:
        """A send's chunks that MESH accepted: {number: xxh3-128}, of ``numbers`` (a range:
        a fleet job asks only about its own chunks) or of all. Resume sends the rest."""
        return self._done_chunks(transfer, "accepted", numbers)

    def written_chunks(self, transfer: TransferRef) -> dict[int, str]:
        """A receive's chunks written, fsynced and verified: {number: xxh3-128}. Resume
        re-checks them in the partial file and fetches the rest."""
        return self._done_chunks(transfer, "written")

    def _done_chunks(
        self, transfer: TransferRef, state: str, numbers: range | None = None
    ) -> dict[int, str]:
        query = select(chunks.c.number, chunks.c.xxh3_128).where(
            chunks.c.transfer_id == _transfer_id(transfer), chunks.c.state == state
        )
        if numbers is not None:
            if numbers.step != 1:
                raise ValueError("numbers must be a range with step 1")
            query = query.where(chunks.c.number >= numbers.start, chunks.c.number < numbers.stop)
        with self._transaction(write=False) as connection:
            rows = connection.execute(query.order_by(chunks.c.number)).all()
        return {row.number: row.xxh3_128 for row in rows}

    def events(
        self, transfer: TransferRef, *, after_id: int | None = None, limit: int | None = None
    ) -> list[Event]:
        """The transfer's events in the order they were recorded; ``after_id`` and ``limit``
        page through a long one."""
        query = select(events).where(events.c.transfer_id == _transfer_id(transfer))
        if after_id is not None:
            query = query.where(events.c.id > after_id)
        query = query.order_by(events.c.id)
        if limit is not None:
            query = query.limit(limit)
        with self._transaction(write=False) as connection:
            rows = connection.execute(query).all()
        return [Event(row.id, row.transfer_id, row.at, row.kind, row.detail) for row in rows]

    def history(
        self,
        filters: HistoryFilter | None = None,
        *,
        limit: int = 50,
        offset: int = 0,
        before_id: int | None = None,
    ) -> list[TransferSummary]:
        """Transfers matching ``filters``, newest first. Page with ``before_id`` (the last id
        of the previous page: constant time however deep) or ``offset``."""
        query = select(transfers).where(*_conditions(filters or HistoryFilter()))
        if before_id is not None:
            query = query.where(transfers.c.id < before_id)
        query = query.order_by(transfers.c.id.desc()).limit(limit).offset(offset)
        with self._transaction(write=False) as connection:
            rows = connection.execute(query).all()
        return [_summary(row) for row in rows]

    def count(self, filters: HistoryFilter | None = None) -> int:
        """How many transfers match ``filters``."""
        query = select(func.count()).select_from(transfers)
        query = query.where(*_conditions(filters or HistoryFilter()))
        with self._transaction(write=False) as connection:
            return int(connection.execute(query).scalar_one())

    # --- sends ---------------------------------------------------------------------------

    def begin_send(
        self,
        mailbox: str,
        headers: SendHeaders,
        source: SourceFile,
        *,
        chunk_size: int,
        chunk_count: int,
        codec: Codec,
        level: int | None = None,
        again: bool = False,
    ) -> SendRecord:
        """Record a new send (state ``preparing``) before anything is sent. A local id that
        this mailbox already sent is refused (code ``exists``: resume that send, or pass
        ``again`` for a deliberate second send, which gets the next sequence number). Patient
        details are never recorded: a GP-routing recipient (and any NHS number in a header
        or the subject) is kept masked (:func:`~meshpipe.gp_route.mask_patient_details`)."""
        request = _headers_without_patient_details(headers.to_request())
        now = self._clock()
        with self._transaction(write=True) as connection:
            sequence = 1
            if headers.local_id is not None:
                latest = connection.execute(
                    select(func.max(transfers.c.sequence)).where(
                        transfers.c.direction == "send",
                        transfers.c.mailbox == mailbox,
                        transfers.c.local_id == headers.local_id,
                    )
                ).scalar()
                if latest is not None and not again:
                    raise LedgerError(
                        f"{mailbox} already sent local id {headers.local_id!r} (sequence "
                        f"{latest}); resume or report that send, or send it again deliberately",
                        code="exists",
                        location=self.location,
                    )
                sequence = (latest or 0) + 1
            transfer_id = connection.execute(
                insert(transfers)
                .values(
                    direction="send",
                    mailbox=mailbox,
                    state="preparing",
                    local_id=headers.local_id,
                    sequence=sequence,
                    counterparty=request["mex-To"],
                    workflow_id=request["mex-WorkflowID"],
                    subject=mask_patient_details(headers.subject or "") or None,
                    headers=request,
                    path=source.path,
                    size=source.size,
                    mtime_ns=source.mtime_ns,
                    inode=source.inode,
                    device=source.device,
                    xxh3_128=source.xxh3_128,
                    chunk_size=chunk_size,
                    chunk_count=chunk_count,
                    codec=codec,
                    level=level,
                    chunks_done=0,
                    hook_attempts=0,
                    created_at=now,
                    updated_at=now,
                )
                .returning(transfers.c.id)
            ).scalar_one()
            self._event(
                connection,
                transfer_id,
                "created",
                direction="send",
                local_id=headers.local_id,
                sequence=sequence,
                source=source.path,
                size=source.size,
                chunk_size=chunk_size,
                chunk_count=chunk_count,
                codec=codec,
                level=level,
            )
            return cast(SendRecord, self._read(connection, transfer_id))

    def set_source_checksum(self, transfer: TransferRef, xxh3_128: str) -> None:
        """Record the source's whole-file xxh3-128 once known (e.g. after the last chunk was
        read); a different one than recorded is refused (``checksum-mismatch``)."""
        with self._transaction(write=True) as connection:
            row = self._change(
                connection, transfer, "send", (*_SEND_WORKING, "failed"), "record a checksum"
            )
            if row.xxh3_128 == xxh3_128:
                return
            if row.xxh3_128 is not None:
                raise self._error(
                    f"the source's xxh3-128 was {row.xxh3_128}, now {xxh3_128}: the source changed",
                    "checksum-mismatch",
                    row.id,
                )
            self._set(connection, row.id, xxh3_128=xxh3_128)
            self._event(connection, row.id, "source_checksum", xxh3_128=xxh3_128)

    def chunk_sent(
        self,
        transfer: TransferRef,
        number: int,
        xxh3_128: str,
        payload_size: int,
        *,
        worker: str | None = None,
    ) -> None:
        """Record that chunk ``number`` is about to go on the wire (again, after a retry or a
        crash), by ``worker`` (a fleet worker's name). Refused for a chunk already accepted,
        or with a different checksum."""
        with self._transaction(write=True) as connection:
            row = self._change(connection, transfer, "send", _SEND_WORKING, "send a chunk")
            self._check_chunk(row, number)
            now = self._clock()
            existing = self._chunk(connection, row.id, number)
            if existing is None:
                connection.execute(
                    _INSERT_CHUNK,
                    {
                        "transfer_id": row.id,
                        "number": number,
                        "state": "sent",
                        "xxh3_128": xxh3_128,
                        "payload_size": payload_size,
                        "length": None,
                        "sent_at": now,
                        "done_at": None,
                        "worker": worker,
                    },
                )
            elif existing.state == "accepted":
                raise self._error(
                    f"chunk {number} was already accepted; it is not sent again",
                    "invalid-state",
                    row.id,
                )
            elif existing.xxh3_128 != xxh3_128:
                raise self._error(
                    f"chunk {number} was recorded with xxh3-128 {existing.xxh3_128}, now "
                    f"{xxh3_128}: the source changed",
                    "checksum-mismatch",
                    row.id,
                )
            else:
                connection.execute(
                    update(chunks)
                    .where(chunks.c.transfer_id == row.id, chunks.c.number == number)
                    .values(payload_size=payload_size, sent_at=now, worker=worker)
                )
            detail: dict[str, Any] = {"worker": worker} if worker is not None else {}
            self._event(
                connection,
                row.id,
                "chunk_sent",
                number=number,
                xxh3_128=xxh3_128,
                payload_size=payload_size,
                again=existing is not None,
                **detail,
            )

    def set_message_id(self, transfer: TransferRef, message_id: str) -> SendRecord:
        """Record the message id MESH gave chunk 1: chunk 1 (recorded sent) is accepted and
        the send is ``uploading``. The same id again is a no-op."""
        with self._transaction(write=True) as connection:
            row = self._change(connection, transfer, "send", _SEND_WORKING, "set a message id")
            if row.message_id == message_id:
                return cast(SendRecord, self._read(connection, row.id))
            if row.message_id is not None:
                raise self._error(
                    f"already has message id {row.message_id}; restart_send() before a new one",
                    "invalid-state",
                    row.id,
                )
            first = self._chunk(connection, row.id, 1)
            if first is None:
                raise self._error(
                    "chunk 1 was never recorded sent (chunk_sent before posting it)",
                    "chunk-not-sent",
                    row.id,
                )
            now = self._clock()
            if first.state != "accepted":
                connection.execute(
                    update(chunks)
                    .where(chunks.c.transfer_id == row.id, chunks.c.number == 1)
                    .values(state="accepted", done_at=now)
                )
                self._count_done(connection, row.id, 1)
            self._set(connection, row.id, message_id=message_id, state="uploading")
            self._event(connection, row.id, "message_id", message_id=message_id)
            self._event(connection, row.id, "chunk_accepted", number=1)
            return cast(SendRecord, self._read(connection, row.id))

    def chunk_accepted(
        self, transfer: TransferRef, number: int, *, worker: str | None = None
    ) -> bool:
        """Record that MESH accepted chunk ``number`` (recorded sent), sent by ``worker`` (a
        fleet worker's name). Chunk 1 is accepted by set_message_id; accepting a chunk twice
        is a no-op, counted once. Returns whether this call recorded it."""
        with self._transaction(write=True) as connection:
            row = self._change(connection, transfer, "send", ("uploading",), "accept a chunk")
            self._check_chunk(row, number)
            existing = self._chunk(connection, row.id, number)
            if existing is None:
                raise self._error(
                    f"chunk {number} was never recorded sent", "chunk-not-sent", row.id
                )
            if existing.state == "accepted":
                return False
            values = {"transfer": row.id, "chunk_number": number, "now": self._clock()}
            if worker is None:
                connection.execute(_ACCEPT_CHUNK, values)
            else:
                connection.execute(_ACCEPT_CHUNK.values(worker=worker), values)
            self._count_done(connection, row.id, 1)
            detail: dict[str, Any] = {"worker": worker} if worker is not None else {}
            self._event(connection, row.id, "chunk_accepted", number=number, **detail)
            return True

    def finish_send(
        self, transfer: TransferRef, outcome: SendOutcome, error: str | None = None
    ) -> SendRecord:
        """End the send: ``completed`` (every chunk accepted) or ``failed`` (``error`` says
        why; the send can be resumed)."""
        if outcome == "failed":
            return cast(SendRecord, self.mark_failed(transfer, error or "failed"))
        with self._transaction(write=True) as connection:
            row = self._change(connection, transfer, "send", ("uploading",), "complete")
            if row.chunks_done != row.chunk_count:
                raise self._error(
                    f"only {row.chunks_done} of {row.chunk_count} chunks are accepted",
                    "incomplete",
                    row.id,
                )
            now = self._clock()
            self._set(connection, row.id, state="completed", error=None, finished_at=now)
            self._event(connection, row.id, "completed", message_id=row.message_id)
            return cast(SendRecord, self._read(connection, row.id))

    def restart_send(self, transfer: TransferRef, reason: str) -> SendRecord:
        """Forget the message and its chunks (MESH no longer holds the partial message): the
        send is ``preparing`` again, to be sent into a new message."""
        with self._transaction(write=True) as connection:
            row = self._change(connection, transfer, "send", (*_SEND_WORKING, "failed"), "restart")
            connection.execute(delete(chunks).where(chunks.c.transfer_id == row.id))
            self._set(
                connection,
                row.id,
                state="preparing",
                message_id=None,
                chunks_done=0,
                error=None,
                finished_at=None,
            )
            self._event(
                connection, row.id, "restarted", old_message_id=row.message_id, reason=reason
            )
            return cast(SendRecord, self._read(connection, row.id))

    # --- receives ------------------------------------------------------------------------

    def begin_receive(
        self,
        mailbox: str,
        message_id: str,
        headers: Mapping[str, str],
        *,
        chunk_count: int,
        codec: Codec,
        destination: str | os.PathLike[str],
        partial_path: str | os.PathLike[str],
        chunk_size: int | None = None,
        size: int | None = None,
    ) -> ReceiveRecord:
        """Record a message about to be downloaded (state ``downloading``). ``headers`` may
        hold any response headers; every ``mex-`` one is kept. A message already recorded
        for this mailbox is refused (code ``exists``: find_receive it)."""
        kept = {name: value for name, value in headers.items() if name.lower().startswith("mex-")}
        kept = _headers_without_patient_details(kept)
        lowered = {name.lower(): value for name, value in kept.items()}
        fields = {column: lowered.get(header) or None for column, header in _HEADER_FIELDS.items()}
        now = self._clock()
        with self._transaction(write=True) as connection:
            existing = connection.execute(
                select(transfers.c.id).where(
                    transfers.c.direction == "receive",
                    transfers.c.mailbox == mailbox,
                    transfers.c.message_id == message_id,
                )
            ).first()
            if existing is not None:
                raise LedgerError(
                    f"message {message_id} into {mailbox} is already recorded (transfer "
                    f"{existing.id}); resume it instead",
                    code="exists",
                    location=self.location,
                    transfer=existing.id,
                )
            transfer_id = connection.execute(
                insert(transfers)
                .values(
                    direction="receive",
                    mailbox=mailbox,
                    state="downloading",
                    message_id=message_id,
                    counterparty=fields["sender"],
                    workflow_id=fields["workflow_id"],
                    local_id=fields["local_id"],
                    subject=fields["subject"],
                    headers=kept,
                    path=os.fspath(destination),
                    partial_path=os.fspath(partial_path),
                    size=size,
                    chunk_size=chunk_size,
                    chunk_count=chunk_count,
                    codec=codec,
                    chunks_done=0,
                    hook_attempts=0,
                    created_at=now,
                    updated_at=now,
                )
                .returning(transfers.c.id)
            ).scalar_one()
            self._event(
                connection,
                transfer_id,
                "created",
                direction="receive",
                message_id=message_id,
                chunk_count=chunk_count,
                codec=codec,
                destination=os.fspath(destination),
            )
            return cast(ReceiveRecord, self._read(connection, transfer_id))

    def chunk_written(
        self,
        transfer: TransferRef,
        number: int,
        xxh3_128: str,
        length: int,
        *,
        worker: str | None = None,
    ) -> None:
        """Record chunk ``number`` written, fsynced and verified in the partial file (call it
        only after the fsync), by ``worker`` (a fleet worker's name). The same chunk again is
        a no-op; a different checksum is refused. Chunk 1 of a multi-chunk message also
        records the chunk size, if unknown."""
        with self._transaction(write=True) as connection:
            row = self._change(connection, transfer, "receive", ("downloading",), "write a chunk")
            self._check_chunk(row, number)
            existing = self._chunk(connection, row.id, number)
            if existing is not None:
                if existing.xxh3_128 != xxh3_128:
                    raise self._error(
                        f"chunk {number} was recorded with xxh3-128 {existing.xxh3_128}, now "
                        f"{xxh3_128}",
                        "checksum-mismatch",
                        row.id,
                    )
                return
            connection.execute(
                _INSERT_CHUNK,
                {
                    "transfer_id": row.id,
                    "number": number,
                    "state": "written",
                    "xxh3_128": xxh3_128,
                    "payload_size": None,
                    "length": length,
                    "sent_at": None,
                    "done_at": self._clock(),
                    "worker": worker,
                },
            )
            self._count_done(connection, row.id, 1)
            if number == 1 and row.chunk_size is None and row.chunk_count > 1:
                self._set(connection, row.id, chunk_size=length)
            detail: dict[str, Any] = {"worker": worker} if worker is not None else {}
            self._event(
                connection,
                row.id,
                "chunk_written",
                number=number,
                xxh3_128=xxh3_128,
                length=length,
                **detail,
            )

    def discard_chunks(self, transfer: TransferRef, numbers: Collection[int], reason: str) -> None:
        """Forget written chunks that failed their re-check in the partial file (a torn or
        tampered write), so that they are fetched again."""
        with self._transaction(write=True) as connection:
            row = self._change(connection, transfer, "receive", ("downloading",), "discard chunks")
            removed = connection.execute(
                delete(chunks)
                .where(chunks.c.transfer_id == row.id, chunks.c.number.in_(sorted(numbers)))
                .returning(chunks.c.number)
            ).all()
            if not removed:
                return
            self._count_done(connection, row.id, -len(removed))
            self._event(
                connection,
                row.id,
                "chunks_discarded",
                numbers=sorted(r.number for r in removed),
                reason=reason,
            )

    def mark_verified(self, transfer: TransferRef, xxh3_128: str) -> ReceiveRecord:
        """Every chunk is written and the whole file checked: record its xxh3-128."""
        with self._transaction(write=True) as connection:
            row = self._change(connection, transfer, "receive", ("downloading",), "be verified")
            if row.chunks_done != row.chunk_count:
                raise self._error(
                    f"only {row.chunks_done} of {row.chunk_count} chunks are written",
                    "incomplete",
                    row.id,
                )
            self._set(connection, row.id, state="verified", xxh3_128=xxh3_128, error=None)
            self._event(connection, row.id, "verified", xxh3_128=xxh3_128)
            return cast(ReceiveRecord, self._read(connection, row.id))

    def mark_delivered(self, transfer: TransferRef) -> ReceiveRecord:
        """The verified file is fsynced and renamed to its destination."""
        with self._transaction(write=True) as connection:
            row = self._change(connection, transfer, "receive", ("verified",), "be delivered")
            self._set(connection, row.id, state="delivered")
            self._event(connection, row.id, "delivered", destination=row.path)
            return cast(ReceiveRecord, self._read(connection, row.id))

    def record_hook(
        self, transfer: TransferRef, ok: bool, detail: str | None = None
    ) -> HookOutcome:
        """Record one run of the application hook (after delivery, before acknowledgement)."""
        with self._transaction(write=True) as connection:
            row = self._change(connection, transfer, "receive", ("delivered",), "run a hook")
            attempts = row.hook_attempts + 1
            self._set(connection, row.id, hook_ok=ok, hook_detail=detail, hook_attempts=attempts)
            self._event(connection, row.id, "hook", ok=ok, detail=detail, attempt=attempts)
            return HookOutcome(ok, detail, attempts)

    def mark_acknowledged(self, transfer: TransferRef) -> ReceiveRecord:
        """MESH confirmed the acknowledgement. Again for an acknowledged message (MESH
        delivered it again) records another acknowledgement and keeps the state."""
        with self._transaction(write=True) as connection:
            row = self._change(
                connection, transfer, "receive", ("delivered", "acknowledged"), "be acknowledged"
            )
            again = row.state == "acknowledged"
            if not again:
                self._set(connection, row.id, state="acknowledged", finished_at=self._clock())
            self._event(connection, row.id, "acknowledged", again=again)
            return cast(ReceiveRecord, self._read(connection, row.id))

    # --- either direction ----------------------------------------------------------------

    def mark_failed(self, transfer: TransferRef, error: str) -> TransferRecord:
        """The transfer failed for now (``error`` says why); resume() takes it up again. A
        delivered receive cannot fail: its file is in place (record_event an error instead)."""
        with self._transaction(write=True) as connection:
            row = self._change(
                connection,
                transfer,
                None,
                (*_SEND_WORKING, "downloading", "verified", "failed"),
                "fail",
            )
            error = mask_patient_details(error)
            self._set(connection, row.id, state="failed", error=error, finished_at=self._clock())
            self._event(connection, row.id, "failed", error=error, previous_state=row.state)
            return self._read(connection, row.id)

    def resume(self, transfer: TransferRef, reason: str = "resumed") -> TransferRecord:
        """Take up a transfer again (after a crash or a failure): a failed send is
        ``uploading`` again if it has a message id, else ``preparing``; a failed receive
        ``downloading``. Other unfinished states stay as they are; either way an event
        marks the new attempt."""
        with self._transaction(write=True) as connection:
            row = self._change(
                connection,
                transfer,
                None,
                (*_SEND_WORKING, "downloading", "verified", "delivered", "failed"),
                "resume",
            )
            if row.state == "failed":
                if row.direction == "receive":
                    state = "downloading"
                else:
                    state = "uploading" if row.message_id else "preparing"
                self._set(connection, row.id, state=state, finished_at=None)
            else:
                state = row.state
            self._event(
                connection, row.id, "resumed", reason=reason, previous_state=row.state, state=state
            )
            return self._read(connection, row.id)

    def record_event(self, transfer: TransferRef, kind: EventKind, **detail: Any) -> None:
        """Append an event that changes no state (a retry and its cause, an error, a note);
        ``detail`` must be JSON-serialisable."""
        with self._transaction(write=True) as connection:
            row = self._change(connection, transfer, None, _ALL_STATES, f"record a {kind} event")
            self._event(connection, row.id, kind, **detail)

    # --- claims --------------------------------------------------------------------------

    @contextmanager
    def claim(
        self, transfer: TransferRef, *, wait: float = 0.0, lease: float | None = None
    ) -> Iterator[Claim]:
        """Hold the transfer for this process for the block: no other process can change it
        meanwhile. Refuses at once with TransferBusyError (naming the owner) if another live
        process holds it, or keeps trying for up to ``wait`` seconds. A claim whose owner
        has exited (same host) or whose lease ran out is taken over. The claim renews its
        lease in the background while the block runs and is released when it ends."""
        transfer_id = _transfer_id(transfer)
        if transfer_id in self._claims:
            raise self._error("is already claimed by this ledger", "invalid-state", transfer_id)
        seconds = self._lease.total_seconds() if lease is None else lease
        deadline = self._clock() + timedelta(seconds=wait)
        token = uuid.uuid4().hex
        while True:
            try:
                held = self._take(transfer_id, token, timedelta(seconds=seconds))
                break
            except TransferBusyError:
                if self._clock() >= deadline:
                    raise
                threading.Event().wait(CLAIM_POLL_INTERVAL)
        heartbeat = _Heartbeat(self, transfer_id, token, seconds)
        self._claims[transfer_id] = heartbeat
        heartbeat.start()
        try:
            yield held
        finally:
            self._release(transfer_id)

    def _take(self, transfer_id: int, token: str, lease: timedelta) -> Claim:
        host, pid = this_host(), os.getpid()
        owner = f"{pid}@{host}"
        with self._transaction(write=True) as connection:
            row = connection.execute(
                select(transfers).where(transfers.c.id == transfer_id).with_for_update()
            ).first()
            if row is None:
                raise self._error("no such transfer in this ledger", "not-found", transfer_id)
            now = self._clock()
            previous: str | None = None
            if row.owner_token is not None:
                if row.lease_expires_at is not None and row.lease_expires_at <= now:
                    previous = "its lease expired"
                elif row.owner_host == host and not process_is_alive(row.owner_pid):
                    previous = "its process has exited"
                else:
                    raise self._busy(row, "claim it")
            expires = now + lease
            self._set(
                connection,
                transfer_id,
                owner=owner,
                owner_pid=pid,
                owner_host=host,
                owner_token=token,
                lease_expires_at=expires,
                updated_at=now,
            )
            if previous is None:
                self._event(connection, transfer_id, "claimed", owner=owner)
            else:
                self._event(
                    connection,
                    transfer_id,
                    "taken_over",
                    owner=owner,
                    previous_owner=row.owner,
                    because=previous,
                )
            return Claim(owner, pid, host, expires)

    def _renew(self, transfer_id: int, token: str, lease: timedelta) -> bool:
        """Extend this process's lease; False if the claim is no longer this process's."""
        with self._transaction(write=True) as connection:
            renewed = connection.execute(
                update(transfers)
                .where(transfers.c.id == transfer_id, transfers.c.owner_token == token)
                .values(lease_expires_at=self._clock() + lease)
                .returning(transfers.c.id)
            ).first()
        return renewed is not None

    def _release(self, transfer_id: int) -> None:
        heartbeat = self._claims.pop(transfer_id, None)
        if heartbeat is None:
            return
        heartbeat.stop()
        with self._transaction(write=True) as connection:
            released = connection.execute(
                update(transfers)
                .where(transfers.c.id == transfer_id, transfers.c.owner_token == heartbeat.token)
                .values(
                    owner=None,
                    owner_pid=None,
                    owner_host=None,
                    owner_token=None,
                    lease_expires_at=None,
                )
                .returning(transfers.c.owner)
            ).first()
            if released is not None:
                self._event(
                    connection, transfer_id, "released", owner=f"{os.getpid()}@{this_host()}"
                )


# The statements of every change, built once (the per-chunk calls run them for each chunk).
_GUARD_COLUMNS: Final = [
    transfers.c[name]
    for name in (
        "id",
        "direction",
        "state",
        "message_id",
        "path",
        "xxh3_128",
        "chunk_size",
        "chunk_count",
        "chunks_done",
        "hook_attempts",
    )
]
_STAMP_UNCLAIMED: Final = (
    update(transfers)
    .where(transfers.c.id == bindparam("transfer"), transfers.c.owner_token.is_(None))
    .values(updated_at=bindparam("now", type_=transfers.c.updated_at.type))
    .returning(*_GUARD_COLUMNS)
)
_STAMP_CLAIMED: Final = (
    update(transfers)
    .where(transfers.c.id == bindparam("transfer"), transfers.c.owner_token == bindparam("token"))
    .values(
        updated_at=bindparam("now", type_=transfers.c.updated_at.type),
        lease_expires_at=bindparam("expires", type_=transfers.c.lease_expires_at.type),
    )
    .returning(*_GUARD_COLUMNS)
)
_CHUNK: Final = select(chunks).where(
    chunks.c.transfer_id == bindparam("transfer"), chunks.c.number == bindparam("chunk_number")
)
_COUNT_DONE: Final = (
    update(transfers)
    .where(transfers.c.id == bindparam("transfer"))
    .values(chunks_done=transfers.c.chunks_done + bindparam("delta", type_=Integer))
)
_ACCEPT_CHUNK: Final = (
    update(chunks)
    .where(
        chunks.c.transfer_id == bindparam("transfer"), chunks.c.number == bindparam("chunk_number")
    )
    .values(state="accepted", done_at=bindparam("now", type_=chunks.c.done_at.type))
)
_INSERT_CHUNK: Final = insert(chunks)
_EVENT: Final = insert(events)

_ALL_STATES: Final = (
    "preparing",
    "uploading",
    "completed",
    "failed",
    "downloading",
    "verified",
    "delivered",
    "acknowledged",
)


class _Heartbeat:
    """Renews one claim's lease every third of the lease, on its own thread."""

    def __init__(self, ledger: Ledger, transfer_id: int, token: str, lease: float) -> None:
        self.token = token
        self.lost = False
        self._ledger = ledger
        self._transfer_id = transfer_id
        self._lease = timedelta(seconds=lease)
        self._interval = lease / 3
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"meshpipe-ledger-claim-{transfer_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                if not self._ledger._renew(self._transfer_id, self.token, self._lease):
                    self.lost = True  # taken over; the next change refuses with busy
                    return
            except LedgerError:
                continue  # busy or unreachable for now: the next beat tries again


#: Event details that are never patient details but may hold ten digits in a row (a file's
#: path): recorded as they are.
_PATHS: Final = frozenset({"source", "path", "destination", "partial_path"})
#: The headers that may carry patient details (a GP-routing recipient, a subject naming the
#: patient); the others are recorded as they are (a checksum holds sizes, a local id is
#: refused for a GP send when it holds the NHS number).
_PATIENT_HEADERS: Final = frozenset({"mex-to", "mex-subject", "mex-statusdescription"})


def _without_patient_details(value: Any) -> Any:
    """Event details (JSON: mappings, lists, text) with patient details masked in every text
    but a path's."""
    if isinstance(value, str):
        return mask_patient_details(value)
    if isinstance(value, Mapping):
        return {
            key: item if key in _PATHS else _without_patient_details(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_without_patient_details(item) for item in value]
    return value


def _headers_without_patient_details(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` with the values of :data:`_PATIENT_HEADERS` masked."""
    return {
        name: mask_patient_details(value) if name.lower() in _PATIENT_HEADERS else value
        for name, value in headers.items()
    }


def _conditions(filters: HistoryFilter) -> list[ColumnElement[bool]]:
    found: list[ColumnElement[bool]] = []
    for column, value in (
        (transfers.c.local_id, filters.local_id),
        (transfers.c.message_id, filters.message_id),
        (transfers.c.mailbox, filters.mailbox),
        (transfers.c.workflow_id, filters.workflow_id),
        (transfers.c.state, filters.state),
        (transfers.c.direction, filters.direction),
    ):
        if value is not None:
            found.append(column == value)
    if filters.since is not None:
        found.append(transfers.c.created_at >= filters.since)
    if filters.until is not None:
        found.append(transfers.c.created_at < filters.until)
    return found


def _claim(row: Row[Any]) -> Claim | None:
    if row.owner_token is None:
        return None
    return Claim(row.owner, row.owner_pid, row.owner_host, row.lease_expires_at)


def _record(row: Row[Any]) -> TransferRecord:
    if row.direction == "send":
        return SendRecord(
            id=row.id,
            mailbox=row.mailbox,
            local_id=row.local_id,
            sequence=row.sequence,
            recipient=row.counterparty,
            workflow_id=row.workflow_id,
            subject=row.subject,
            headers=dict(row.headers),
            source=SourceFile(
                row.path, row.size, row.mtime_ns, row.inode, row.device, row.xxh3_128
            ),
            chunk_size=row.chunk_size,
            chunk_count=row.chunk_count,
            codec=row.codec,
            level=row.level,
            message_id=row.message_id,
            state=row.state,
            error=row.error,
            chunks_done=row.chunks_done,
            claim=_claim(row),
            created_at=row.created_at,
            updated_at=row.updated_at,
            finished_at=row.finished_at,
        )
    hook = None
    if row.hook_attempts:
        hook = HookOutcome(bool(row.hook_ok), row.hook_detail, row.hook_attempts)
    return ReceiveRecord(
        id=row.id,
        mailbox=row.mailbox,
        message_id=row.message_id,
        sender=row.counterparty,
        workflow_id=row.workflow_id,
        local_id=row.local_id,
        subject=row.subject,
        headers=dict(row.headers),
        size=row.size,
        chunk_count=row.chunk_count,
        chunk_size=row.chunk_size,
        codec=row.codec,
        destination=row.path,
        partial_path=row.partial_path,
        xxh3_128=row.xxh3_128,
        state=row.state,
        error=row.error,
        hook=hook,
        chunks_done=row.chunks_done,
        claim=_claim(row),
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


def _summary(row: Row[Any]) -> TransferSummary:
    state: TransferState = row.state
    return TransferSummary(
        id=row.id,
        direction=row.direction,
        mailbox=row.mailbox,
        state=state,
        local_id=row.local_id,
        message_id=row.message_id,
        counterparty=row.counterparty,
        workflow_id=row.workflow_id,
        subject=row.subject,
        path=row.path,
        size=row.size,
        codec=row.codec,
        chunks_done=row.chunks_done,
        chunk_count=row.chunk_count,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


__all__ = [
    "CLAIM_POLL_INTERVAL",
    "DEFAULT_LEASE",
    "Ledger",
    "TransferRef",
    "this_host",
]
