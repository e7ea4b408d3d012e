"""An outbox whose sends go to the fleet's workers (``fleet = true`` in the watch settings):
each complete file is *submitted* (:func:`meshpipe.fleet.submit`: the send recorded in the
PostgreSQL ledger, chunk 1's job enqueued) instead of sent by this process, and it stays in
``out/`` until the ledger shows the send ended.

The same files are picked up, with the same local id (the control file's ``LocalId``, else
:func:`~meshpipe.watch.outbox.file_local_id`), headers, codec and chunk size as for a send in
this process (:mod:`meshpipe.watch.outbox`). The workers read the file from its path, so
``out/`` must be at the same path on every worker (a shared directory).

A submitted file is **in flight**: it is not submitted again by later scans, and it holds no
sending slot (the workers send it; the scan returns once it is on the queue: a submit is a
few database round trips, ``send_concurrency`` of them at once). Each scan first reads the
ledger state of every file in flight:

- ``completed``: moved to ``sent/`` with its status control file, as a send in this process
  (outcome ``sent``); counted in the transfers, chunks and bytes sent, its transfer time
  taken from the ledger (from submit to the last chunk);
- ``failed`` (the fleet gave up: MESH refused it, or a job's last try failed): moved to
  ``failed/`` with the ledger's reason;
- the file changed or gone since it was submitted (a fleet job fails such a send, or it
  completed with the content as submitted): never moved to ``sent/`` (nor ``failed/``); it
  is left in place (outcome ``deferred``) and taken as a new file once it settles (a new
  local id for a rule-folder file; for a control file's ``LocalId``, a failed send is sent
  again as the next sequence, and a completed one is refused as a ``LocalId`` used twice,
  as in this process);
- otherwise still under way: looked at again at the next scan.

**Crashes.** Nothing about the files in flight is kept but the ledger: a restarted watch sees
the file again, finds its send by its local id and submits it again, which enqueues nothing
new for a send under way (the fleet's queueing locks; every job skips what the ledger shows
done) and reports a completed one "already sent" (then moved to ``sent/``). A send the fleet
failed while watch was stopped is taken up again once (the next scan then sees it end).

**Stalls.** A send the workers make no progress on (no worker running for the mailbox's
queue, or all of them stuck) shows in ``meshpipe_fleet_send_stalled_seconds``: the longest
time, by this process's clock, since any send in flight last changed in the ledger (its
state, message id or chunks accepted), beside ``meshpipe_fleet_sends_in_flight``. A send
stalled ``stall_seconds`` (300 by default) is logged once as a warning naming the queue that
needs a worker, and again after it moves and stalls anew.

**Stopping** holds nothing up: sends in flight are the workers', and go on. ``--once`` submits
what is complete and exits; the next run moves what the fleet finished meanwhile.

A submit that cannot reach the database defers the file (left in place for the next scan),
as a ledger error does in this process. :mod:`meshpipe.fleet` (``meshpipe[fleet]``) is
imported only when such an outbox is made (:func:`fleet_ledger`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from meshpipe.client import MeshClient
from meshpipe.errors import ConfigError, MeshpipeError
from meshpipe.ledger import Ledger, LedgerError, SendRecord, SourceFile
from meshpipe.ledger.database import parse_location
from meshpipe.watch.metrics import WatchMetrics
from meshpipe.watch.outbox import (
    Outbox,
    OutgoingFile,
    SendOutcome,
    _check_unchanged,
    _classified,
    _Deferred,
    _Failed,
    listed_source,
)
from meshpipe.watch.settings import MailboxSettings

if TYPE_CHECKING:
    from meshpipe.fleet import Submitted

log = logging.getLogger("meshpipe.watch.outbox")


def fleet_ledger(location: str) -> str:
    """``location`` if the fleet can use it: a PostgreSQL ledger, with ``meshpipe[fleet]``
    installed; ConfigError saying what to change otherwise."""
    if parse_location(location).is_sqlite:
        raise ConfigError(
            "[watch] fleet = true needs the PostgreSQL ledger the workers share, not a SQLite "
            'file: give ledger = "postgresql://USER@HOST/DATABASE" (or --ledger), or set '
            "fleet = false to send from this process"
        )
    try:
        import meshpipe.fleet  # noqa: F401  (procrastinate and psycopg: an optional extra)
    except ImportError as error:
        raise ConfigError(f"[watch] fleet = true: {error}") from None
    return location


#: A send in flight that has not moved for this long is logged as stalled (module doc).
STALL_SECONDS: Final = 300.0


@dataclass(slots=True)
class _InFlight:
    """A submitted file: as listed when submitted, and its send in the ledger; ``progress``
    is what the ledger last showed of it, ``since`` when (monotonic) that was first seen."""

    item: OutgoingFile
    transfer_id: int
    local_id: str
    progress: tuple[str, str | None, int] | None = None
    since: float = field(default_factory=time.monotonic)
    warned: bool = False

    def stalled_for(self, record: SendRecord, now: float) -> float:
        """Seconds since the send last moved, ``record`` being how the ledger shows it now."""
        progress = (record.state, record.message_id, record.chunks_done)
        if self.progress is None:  # the first look: still as submitted, since the submit
            self.progress = progress
        elif progress != self.progress:
            self.progress, self.since, self.warned = progress, now, False
        return now - self.since


class FleetOutbox(Outbox):
    """The outbox of one mailbox whose sends the fleet makes (see the module doc); the
    ledger at ``location`` is the PostgreSQL one the workers share (``ledger`` is open on
    it). ``chunks_per_job``: chunks of one range job (None: the fleet's default)."""

    def __init__(
        self,
        settings: MailboxSettings,
        client: MeshClient,
        ledger: Ledger,
        metrics: WatchMetrics,
        *,
        location: str,
        settle_seconds: float,
        concurrency: int,
        chunks_per_job: int | None = None,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        super().__init__(
            settings,
            client,
            ledger,
            metrics,
            settle_seconds=settle_seconds,
            concurrency=concurrency,
        )
        self.location = fleet_ledger(location)
        self.chunks_per_job = chunks_per_job
        self.stall_seconds = stall_seconds
        self._sending: dict[Path, _InFlight] = {}

    @property
    def in_flight(self) -> list[Path]:
        """The files submitted whose send has not yet ended, as far as this process knows."""
        return sorted(self._sending)

    async def run_once(self, stopping: asyncio.Event) -> list[SendOutcome]:
        """Look at the sends in flight (moving those that ended), then scan and submit each
        complete file. Returns what became of each file: ``submitted`` for those newly on
        the queue, and the outcome of each send that ended."""
        if stopping.is_set():
            return []
        outcomes = await self.check_in_flight()
        slots = asyncio.Semaphore(self.concurrency)

        async def submit_one(item: OutgoingFile) -> SendOutcome | None:
            async with slots:
                return None if stopping.is_set() else await self.send(item)

        submitted = await asyncio.gather(*(submit_one(item) for item in await self.scan()))
        self.metrics.fleet_in_flight.labels(self.mailbox).set(len(self._sending))
        return outcomes + [outcome for outcome in submitted if outcome is not None]

    async def check_in_flight(self) -> list[SendOutcome]:
        """The outcome of every send in flight that ended since the last look (module doc)."""
        outcomes: list[SendOutcome] = []
        stalled = 0.0
        for path, sending in list(self._sending.items()):
            try:
                record = await asyncio.to_thread(self.ledger.transfer, sending.transfer_id)
            except LedgerError as error:
                log.warning("%s: the ledger cannot say how %s is: %s", self.mailbox, path, error)
                continue
            assert isinstance(record, SendRecord)
            if record.state not in ("completed", "failed"):
                stalled = max(stalled, self._watch_progress(sending, record))
                continue
            self._forget(path)
            outcomes.append(await self._ended(sending, record))
        self.metrics.fleet_stalled.labels(self.mailbox).set(stalled)
        self.metrics.fleet_in_flight.labels(self.mailbox).set(len(self._sending))
        return outcomes

    def _watch_progress(self, sending: _InFlight, record: SendRecord) -> float:
        """Seconds the send has not moved; warned of once past ``stall_seconds``."""
        stalled = sending.stalled_for(record, time.monotonic())
        if stalled >= self.stall_seconds and not sending.warned:
            sending.warned = True
            from meshpipe.fleet.queue import queue_name

            where = (
                f"after chunk {record.chunks_done} of {record.chunk_count} was accepted"
                if record.chunks_done
                else "since it was submitted"
            )
            log.warning(
                "%s: %s (transfer %d) has not moved for %.0f s %s: is a meshpipe worker "
                "running for this mailbox (queue %s), and can it reach MESH?",
                self.mailbox,
                sending.item.name,
                record.id,
                stalled,
                where,
                queue_name(self.mailbox),
                extra={"mailbox": self.mailbox, "local_id": sending.local_id},
            )
        return stalled

    async def _ended(self, sending: _InFlight, record: SendRecord) -> SendOutcome:
        item = sending.item
        changed = await asyncio.to_thread(_changes, record, item.data.path)
        if changed:
            reason = (
                f"{item.name} {changed} since it was submitted to the fleet (transfer "
                f"{record.id}, {record.state}): left in the outbox; it is taken as a new file "
                "once it settles"
            )
            log.warning("%s: %s", self.mailbox, reason)
            return SendOutcome(item, "deferred", record.message_id, reason=reason)
        if record.state == "failed":
            reason = record.error or f"the fleet's send (transfer {record.id}) failed"
            return await self._fail(item, _Failed(reason))
        assert record.message_id is not None
        self._count_fleet_sent(record)
        return await self._finish_sent(item, "sent", record.message_id, sending.local_id)

    async def _deliver(self, item: OutgoingFile) -> SendOutcome:
        """Submit one complete file to the fleet (or, sent before, move it: module doc)."""
        submitted = await self._submit(item)
        if submitted.outcome == "already-sent":
            assert submitted.message_id is not None
            self.metrics.transfers.labels(self.mailbox, "send", "already-sent").inc()
            return await self._finish_sent(
                item, "already-sent", submitted.message_id, submitted.local_id
            )
        self._sending[item.data.path] = _InFlight(item, submitted.transfer_id, submitted.local_id)
        self._in_flight.add(item.data.path)
        log.info(
            "%s: %s %s to the fleet (transfer %d, %d chunks, local id %s)",
            self.mailbox,
            item.name,
            "submitted" if submitted.outcome == "submitted" else "submitted again",
            submitted.transfer_id,
            submitted.chunk_count,
            submitted.local_id,
            extra={"mailbox": self.mailbox, "local_id": submitted.local_id},
        )
        return SendOutcome(item, "submitted")

    async def _submit(self, item: OutgoingFile) -> Submitted:
        """The ledger's send of this local id decides: completed -> already sent (if it was
        this file); failed from a file since changed -> a new send of the local id (the
        next sequence); otherwise submit (new, or taken up again)."""
        from meshpipe.fleet import DEFAULT_CHUNKS_PER_JOB, Submitted, submit

        headers, _generated = self._headers(item)
        local_id = headers.local_id
        assert local_id is not None
        try:
            record = await asyncio.to_thread(self.ledger.find_send, self.mailbox, local_id)
            if record is not None and record.state == "completed":
                done = self._already_sent(item, record)
                return Submitted(
                    "already-sent", record.id, local_id, record.chunk_count, done.message_id
                )
            again = record is not None and record.state == "failed" and _moved_on(record, item)
            await asyncio.to_thread(_check_unchanged, item.data)
            options = self._options(item)
            return await submit(
                self.location,
                self.mailbox,
                item.data.path,
                headers,
                codec=options.get("codec", "none"),
                chunk_size=options.get("chunk_size", self.settings.chunk_size),
                chunks_per_job=self.chunks_per_job or DEFAULT_CHUNKS_PER_JOB,
                again=again,
                ledger=self.ledger,
            )
        except (_Failed, _Deferred):
            raise
        except (MeshpipeError, OSError) as error:
            raise _classified(error) from error
        except Exception as error:
            # The queue's database (psycopg, procrastinate): down or busy, as a ledger error.
            raise _Deferred(f"the fleet's queue cannot be reached: {error}") from error

    def _forget(self, path: Path) -> None:
        self._sending.pop(path, None)
        self._in_flight.discard(path)

    def _count_fleet_sent(self, record: SendRecord) -> None:
        """A send the fleet completed, counted as a send of this process is: its chunks and
        bytes, and its time from submit to the last chunk (the ledger's clock)."""
        self.metrics.transfers.labels(self.mailbox, "send", "sent").inc()
        self.metrics.chunks_sent.labels(self.mailbox).inc(record.chunk_count)
        self.metrics.bytes_sent.labels(self.mailbox).inc(record.source.size)
        if record.finished_at is not None:
            seconds = (record.finished_at - record.created_at).total_seconds()
            self.metrics.transfer_seconds.labels(self.mailbox, "send").observe(max(seconds, 0))


def _source_now(path: Path) -> SourceFile | None:
    try:
        return SourceFile.stat(path)
    except FileNotFoundError:
        return None


def _changes(record: SendRecord, path: Path) -> str | None:
    """How the file at ``path`` differs from the send's recorded source (None: the same)."""
    now = _source_now(path)
    if now is None:
        return "is gone"
    found = record.source.differences(now)
    return "changed (" + "; ".join(found) + ")" if found else None


def _moved_on(record: SendRecord, item: OutgoingFile) -> bool:
    """Whether the file listed is not the source of ``record`` (a failed send of the same
    local id from a file changed since)."""
    return bool(record.source.differences(listed_source(item)))


__all__ = ["FleetOutbox", "fleet_ledger"]
