"""The receive journal on the ledger: each stage of a :class:`~meshpipe.transfer.Download`
recorded as it happens.

* ``reopened`` (a resume): chunks the partial file no longer holds intact are discarded from
  the ledger (awaited), so they are fetched again.
* ``chunk_verified``: ``chunk_written`` is queued on the :class:`LedgerWriter` without
  waiting, so the commit overlaps the next chunk on the wire. The download makes each chunk
  durable (fdatasync of the partial file) before it reports it, so the ledger never says
  written for bytes that are not on disk.
* ``assembled`` (after fsync and rename): ``mark_verified`` and ``mark_delivered``, awaited.
* ``acknowledged``: ``mark_acknowledged``, awaited.
* ``failed``: ``mark_failed`` with the error (a delivered message cannot fail: its file is in
  place, so an ``error`` event is recorded instead).
"""

from __future__ import annotations

import logging
from typing import Final

from meshpipe._meshpipe import AssemblyReport
from meshpipe.durable.writer import LedgerWriter
from meshpipe.errors import MeshpipeError
from meshpipe.ledger import Ledger, ReceiveRecord
from meshpipe.models import MessageMetadata
from meshpipe.transfer import ReceiveJournal

log = logging.getLogger("meshpipe.durable")

#: The longest error text kept in the ledger.
ERROR_LIMIT: Final = 500


class LedgerReceiveJournal(ReceiveJournal):
    """Records one receive (``record``, already begun or found) in ``ledger`` through
    ``writer``. ``known`` are the chunks recorded written before this run."""

    def __init__(
        self,
        ledger: Ledger,
        writer: LedgerWriter,
        record: ReceiveRecord,
        known: dict[int, str] | None = None,
    ) -> None:
        self.ledger = ledger
        self.writer = writer
        self.record = record
        self.written: dict[int, str] = dict(known or {})
        self.kept: list[int] = []

    async def started(self, metadata: MessageMetadata) -> None:
        if metadata.message_id != self.record.message_id:
            raise MeshpipeError(
                f"the journal of message {self.record.message_id} was given the headers of "
                f"message {metadata.message_id}"
            )

    async def reopened(self, accepted: list[int], rejected: list[int]) -> None:
        self.kept = list(accepted)
        for number in rejected:
            self.written.pop(number, None)
        if rejected:
            await self.writer.call(
                self.ledger.discard_chunks,
                self.record,
                rejected,
                "torn or changed in the partial file since it was written",
            )

    async def chunk_verified(self, number: int, xxh3_128: str, length: int) -> None:
        known = self.written.get(number)
        if known is not None and known != xxh3_128:
            # Fetched again (a new message attempt) with other bytes: forget the old record.
            self.writer.submit(
                self.ledger.discard_chunks, self.record, [number], "downloaded again"
            )
        self.written[number] = xxh3_128
        self.writer.submit(self.ledger.chunk_written, self.record, number, xxh3_128, length)

    async def assembled(self, report: AssemblyReport) -> None:
        # The file is verified and renamed into place: both facts in one transaction (a
        # crash before it commits leaves every chunk written and the file in place, which a
        # resume adopts after re-reading it).
        self.record = await self.writer.call(self._record_delivered, report.xxh3_128)

    def _record_delivered(self, xxh3_128: str) -> ReceiveRecord:
        with self.ledger.batch():
            self.ledger.mark_verified(self.record, xxh3_128)
            return self.ledger.mark_delivered(self.record)

    async def acknowledged(self) -> None:
        self.record = await self.writer.call(self.ledger.mark_acknowledged, self.record)

    async def failed(self, error: BaseException) -> None:
        text = f"{error}"[:ERROR_LIMIT] or type(error).__name__
        try:
            if self.record.state in ("delivered", "acknowledged"):
                await self.writer.call(self.ledger.record_event, self.record, "error", error=text)
            else:
                await self.writer.call(self.ledger.mark_failed, self.record, text)
        except MeshpipeError as ledger_error:
            # The transfer's own error matters more; the ledger keeps its last state.
            log.error(
                "message %s: could not record the failure: %s",
                self.record.message_id,
                ledger_error,
            )


__all__ = ["LedgerReceiveJournal"]
