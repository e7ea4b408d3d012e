"""A send's stages recorded in the ledger: the :class:`~meshpipe.transfer.SendJournal` that a
durable send gives its :class:`~meshpipe.transfer.Upload`.

What waits and what does not (through one :class:`~meshpipe.durable.writer.LedgerWriter`, so
facts are committed in the order they happened):

* ``prepared``: the whole-file xxh3-128 (set_source_checksum) is kept, and committed with
  chunk 1's record (nothing is sent before that, so there is nothing to resume without it);
* chunk 1 ``chunk_sending``: awaited, so that a process killed while chunk 1 is on the wire
  leaves a record that chunk 1 went, and a resume asks MESH for the message by local id;
* ``message_created``: set_message_id, awaited before chunk 2 may go (a resume needs the id).
  A message of one chunk has no chunk 2: its id is committed with its completion, in one
  transaction (a crash between the two leaves the state of a crash while chunk 1 was on the
  wire, which a resume settles by asking MESH for the local id);
* chunks 2..N-1: nothing is written when one goes; once MESH accepted it, its sent and accepted
  facts are queued (``submit``) as one transaction, committed while the next chunk is on the
  wire (one commit per chunk, not two: a resume needs only what was accepted, and a chunk in
  flight at a crash is simply sent again);
* chunk N ``chunk_sending``: awaited, after every earlier fact (the queue drains first), so
  that when MESH completes the message every other chunk is already recorded accepted;
* retries: queued as ``retry`` events; ``completed``/``failed``: awaited.
"""

from __future__ import annotations

import logging

from meshpipe._meshpipe import ChunkPlan
from meshpipe.durable.writer import LedgerWriter
from meshpipe.ledger import Ledger, SendRecord
from meshpipe.transfer import SendJournal, SendResult

log = logging.getLogger("meshpipe.durable")


class LedgerSendJournal(SendJournal):
    """Records one send (``transfer``, already begun in ``ledger`` and claimed by this
    process) through ``writer``."""

    def __init__(self, ledger: Ledger, writer: LedgerWriter, transfer: SendRecord) -> None:
        self._ledger = ledger
        self._writer = writer
        self._id = transfer.id
        self._chunk_count = transfer.chunk_count
        self._in_flight: dict[int, tuple[str, int]] = {}  # chunks 2..N-1: xxh3-128, size
        self._source_checksum: str | None = None  # from prepared, committed with chunk 1
        self._message_id: str | None = None  # a one-chunk message's, committed at completion

    async def prepared(self, local_id: str, plan: ChunkPlan, xxh3_128: str) -> None:
        self._source_checksum = xxh3_128 or None

    async def source_hashed(self, xxh3_128: str) -> None:
        await self._writer.call(self._ledger.set_source_checksum, self._id, xxh3_128)

    async def chunk_sending(self, number: int, xxh3_128: str, payload_size: int) -> None:
        if number in (1, self._chunk_count):
            checksum, self._source_checksum = self._source_checksum, None
            await self._writer.call(self._record_sending, number, xxh3_128, payload_size, checksum)
        else:
            self._in_flight[number] = (xxh3_128, payload_size)

    async def chunk_retrying(self, number: int, attempt: int, error: BaseException) -> None:
        self._writer.submit(
            self._ledger.record_event,
            self._id,
            "retry",
            chunk=number,
            attempt=attempt,
            error=str(error),
        )

    async def message_created(self, message_id: str) -> None:
        if self._chunk_count == 1:
            self._message_id = message_id
        else:
            await self._writer.call(self._ledger.set_message_id, self._id, message_id)

    async def chunk_accepted(self, number: int) -> None:
        if number == 1:
            return  # set_message_id recorded chunk 1 accepted
        if number in self._in_flight:
            xxh3_128, payload_size = self._in_flight.pop(number)
            self._writer.submit(self._record_accepted, number, xxh3_128, payload_size)
        else:
            self._writer.submit(self._ledger.chunk_accepted, self._id, number)

    def _record_accepted(self, number: int, xxh3_128: str, payload_size: int) -> None:
        # On the writer's thread: one transaction (or part of the writer's batch).
        with self._ledger.batch():
            self._ledger.chunk_sent(self._id, number, xxh3_128, payload_size)
            self._ledger.chunk_accepted(self._id, number)

    def _record_sending(
        self, number: int, xxh3_128: str, payload_size: int, source_checksum: str | None
    ) -> None:
        with self._ledger.batch():
            if source_checksum is not None:
                self._ledger.set_source_checksum(self._id, source_checksum)
            self._ledger.chunk_sent(self._id, number, xxh3_128, payload_size)

    async def completed(self, result: SendResult) -> None:
        await self._writer.call(self._record_completed, self._message_id)

    def _record_completed(self, message_id: str | None) -> None:
        with self._ledger.batch():
            if message_id is not None:
                self._ledger.set_message_id(self._id, message_id)
            self._ledger.finish_send(self._id, "completed")

    def _record_failed(self, reason: str) -> None:
        with self._ledger.batch():
            if self._message_id is not None:  # a one-chunk message MESH created
                self._ledger.set_message_id(self._id, self._message_id)
            self._ledger.mark_failed(self._id, reason)

    async def failed(self, error: BaseException) -> None:
        try:
            await self._writer.call(self._record_failed, str(error) or repr(error))
        except Exception as ledger_error:  # the send's own error is the one to report
            log.warning("transfer %d: could not record the failure: %s", self._id, ledger_error)


__all__ = ["LedgerSendJournal"]
