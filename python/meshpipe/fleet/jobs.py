"""The jobs of one send, each safe to run again (after a retry, or a worker's death): what
the ledger records as done is never done twice.

``send_first``: checks the source against the ledger, hashes the whole file while chunk 1 is
read, posts chunk 1 through :func:`meshpipe.retry.post_first_chunk_safely` (it creates the
message: never twice, even when the answer was lost) and records the message id; a run after
a crash that may have posted chunk 1 asks MESH for the local id first. Then it enqueues the
chunk-range jobs (or the last chunk at once for a two-chunk message).

``send_range`` (chunks ``first..last`` of 2..N-1): reads only the chunks of its range the
ledger does not show accepted, with the engine's chunk-subset splitting (compressed and
checksummed exactly as a full split), and posts each (retried: chunks 2..N overwrite) in a
fleet-wide slot of its mailbox, recording it sent and accepted with the worker's name. The
range that finds every chunk but the last accepted enqueues the last chunk's job.

``send_last``: only when the ledger shows every other chunk accepted (one at a time per
transfer: a procrastinate lock), checks the source again, posts chunk N and records the send
completed.

A failure is retried by the queue (exponential back-off); one that cannot pass (the source is
gone or changed, a chunk MESH refuses, a transfer that is no longer uploading), or the last
try of any, marks the send failed in the ledger with the reason and ends the job failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from procrastinate import App, JobContext, RetryStrategy
from procrastinate.jobs import Job
from typing_extensions import Unpack

from meshpipe._meshpipe import Chunk, Splitter, xxh3_128_file
from meshpipe.client import MeshClient
from meshpipe.durable import DurableReceiver
from meshpipe.durable.send_records import recorded_headers
from meshpipe.errors import (
    MeshConnectionError,
    MeshHTTPError,
    MeshMessageLockedError,
    MeshpipeError,
    PlanError,
    SourceChangedError,
)
from meshpipe.fleet import receive as distributed
from meshpipe.fleet.limits import FleetLimiter
from meshpipe.fleet.queue import SEND_LAST, SEND_RANGE, AlreadyEnqueued, queue_name
from meshpipe.ledger import Ledger, LedgerError, ReceiveRecord, SendRecord, SourceFile
from meshpipe.models import MessageMetadata
from meshpipe.retry import RetryingClient, call_with_retry, post_first_chunk_safely
from meshpipe.transfer import (
    ReceiveFailure,
    ReceiveOptions,
    ReceiveResult,
    find_sent_message,
    receive_all,
)
from meshpipe.transfer.results import first_failure, release
from meshpipe.transfer.upload import check_request_size

log = logging.getLogger("meshpipe.fleet")

#: Tries of a job after its first (the queue's retries; each job also retries each request
#: under the client's retry policy first).
JOB_RETRIES: Final = 5
#: Chunks a range job reads ahead of the ones it is sending.
READ_AHEAD: Final = 2
#: Chunks of one range job in flight at once when chunks go side by side (one in turn).
JOB_LANES: Final = 2
#: In turn (module doc): how often a chunk looks whether the chunk before it was accepted,
#: and how long it waits before its job steps aside (enqueued again) so as not to hold a
#: worker while an earlier chunk's job waits for one.
TURN_POLL_INTERVAL: Final = 0.02
TURN_WAIT: Final = 30.0


class PoisonJob(MeshpipeError):
    """A job that cannot succeed however often it is tried; the send is marked failed."""


class _FleetRetry(RetryStrategy):
    """The queue's retries, except for a PoisonJob."""

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> Any:
        if isinstance(exception, PoisonJob):
            return None
        return super().get_retry_decision(exception=exception, job=job)


RETRY: Final = _FleetRetry(max_attempts=JOB_RETRIES, exponential_wait=2)


@dataclass
class FleetContext:
    """What every job of one worker shares: its MESH client (one mailbox), the ledger, its
    name (recorded against each chunk it sends), the fleet-wide limiter, the minimum
    payload size MESH enforces, the folder its periodic polls receive into (None: the
    worker does not receive), and whether chunks go in turn (module doc)."""

    client: MeshClient
    ledger: Ledger
    name: str
    limiter: FleetLimiter
    min_payload_size: int
    inbox: Path | None = None
    in_turn: bool = False
    turn_wait: float = TURN_WAIT

    @property
    def mailbox(self) -> str:
        return self.client.mailbox


def fleet_context(job: JobContext) -> FleetContext:
    context = job.additional_context["meshpipe"]
    assert isinstance(context, FleetContext)
    return context


# --- the jobs ---------------------------------------------------------------------------------


async def send_first(job: JobContext, transfer_id: int, chunks_per_job: int) -> None:
    await _guarded(
        job, transfer_id, "chunk 1", lambda: _send_first(job, transfer_id, chunks_per_job)
    )


async def send_range(job: JobContext, transfer_id: int, first: int, last: int) -> None:
    await _guarded(
        job,
        transfer_id,
        f"chunks {first}..{last}",
        lambda: _send_range(job, transfer_id, first, last),
    )


async def send_last(job: JobContext, transfer_id: int) -> None:
    await _guarded(job, transfer_id, "the last chunk", lambda: _send_last(job, transfer_id))


async def _guarded(
    job: JobContext, transfer_id: int, what: str, run: Callable[[], Awaitable[None]]
) -> None:
    """Run a job; on a failure that will not be retried, record the send failed (unless an
    earlier failure already did: its reason stands)."""
    context = fleet_context(job)
    try:
        await run()
    except Exception as error:
        final = isinstance(error, PoisonJob) or job.job.attempts >= JOB_RETRIES
        tries = job.job.attempts + 1
        plural = "try" if tries == 1 else "tries"
        reason = f"{what} failed on worker {context.name} after {tries} {plural}: {error}"
        if final:
            await asyncio.to_thread(_record_failure, context.ledger, transfer_id, reason)
        else:
            await asyncio.to_thread(_record_retry, context.ledger, transfer_id, reason)
        raise


def _record_failure(ledger: Ledger, transfer_id: int, reason: str) -> None:
    try:
        if ledger.transfer(transfer_id).state in ("preparing", "uploading"):
            ledger.mark_failed(transfer_id, reason)
    except LedgerError as error:
        log.error("transfer %d: could not record its failure (%s): %s", transfer_id, error, reason)


def _record_retry(
    ledger: Ledger, transfer_id: int, reason: str | None = None, **detail: Any
) -> None:
    """A retry as a ledger event: a job's (its ``reason``) or one request's (its chunk,
    attempt and error); one that cannot be recorded is logged, the work goes on."""
    if reason is not None:
        detail["reason"] = reason
    try:
        ledger.record_event(transfer_id, "retry", **detail)
    except LedgerError as error:
        log.warning("transfer %d: could not record a retry (%s): %s", transfer_id, error, detail)


# --- chunk 1 ------------------------------------------------------------------------------------


async def _send_first(job: JobContext, transfer_id: int, chunks_per_job: int) -> None:
    context = fleet_context(job)
    record = await _working_send(context, transfer_id)
    if record is None:
        return
    if record.message_id is None:
        record = await _create_message(context, record)
    await _enqueue_rest(job.app, context, record, chunks_per_job)


async def _create_message(context: FleetContext, record: SendRecord) -> SendRecord:
    ledger = context.ledger
    _check_identity(record)
    if not record.source.xxh3_128:
        # The whole-file hash goes in chunk 1's header (meshpipe/1): no worker reads the
        # whole file otherwise. It is computed here, once, while chunk 1 is read.
        xxh3_128, first = await asyncio.gather(
            asyncio.to_thread(xxh3_128_file, record.source.path),
            asyncio.to_thread(_read_chunks, record, [1]),
        )
        _check_identity(record)
        await asyncio.to_thread(ledger.set_source_checksum, record, xxh3_128)
        record = await _read_send(context, record.id)
    else:
        first = await asyncio.to_thread(_read_chunks, record, [1])
    chunk = first[0]
    headers = recorded_headers(record).validate()
    assert headers.local_id is not None
    local_id = headers.local_id
    started = datetime.now(UTC)
    try:
        check_request_size(chunk, record.codec, context.min_payload_size)
        chunks = await asyncio.to_thread(ledger.chunks, record)
        message_id: str | None = None
        if any(found.number == 1 for found in chunks):
            # An earlier run may have posted chunk 1 before it died: MESH knows.
            message_id = await find_sent_message(context.client, local_id)
            if message_id is not None:
                log.info(
                    "transfer %d: adopting message %s made by an earlier try", record.id, message_id
                )
        if message_id is None:
            await asyncio.to_thread(
                ledger.chunk_sent,
                record,
                1,
                chunk.xxh3_128,
                chunk.payload_size,
                worker=context.name,
            )
            async with context.limiter.request():
                message_id = await post_first_chunk_safely(
                    lambda: context.client.send_message(
                        headers,
                        chunk,
                        chunk_count=chunk.count,
                        content_encoding=_content_encoding(record),
                    ),
                    lambda: find_sent_message(
                        context.client, local_id, since=started - timedelta(minutes=10)
                    ),
                    context.client.settings.retry,
                    local_id=local_id,
                    before_retry=lambda attempt, error: _record_chunk_retry(
                        context, record, 1, attempt, error
                    ),
                )
    except (MeshHTTPError, MeshConnectionError) as error:
        _raise_if_refused(error, f"chunk 1 of {record.chunk_count}")
        raise
    finally:
        release(chunk)
    log.info(
        "transfer %d: message %s created (chunk 1 of %d)", record.id, message_id, record.chunk_count
    )
    return await asyncio.to_thread(ledger.set_message_id, record, message_id)


async def _enqueue_rest(
    app: App, context: FleetContext, record: SendRecord, chunks_per_job: int
) -> None:
    count = record.chunk_count
    if count == 1:
        await asyncio.to_thread(_complete, context.ledger, record)
        return
    queue = queue_name(context.mailbox)
    for first in range(2, count, chunks_per_job):
        last = min(first + chunks_per_job - 1, count - 1)
        await _defer(
            app,
            SEND_RANGE,
            queue,
            f"meshpipe-range-{record.id}-{first}",
            None,
            transfer_id=record.id,
            first=first,
            last=last,
        )
    if count == 2:
        await _defer_last(app, context, record)


# --- chunks 2..N-1 -----------------------------------------------------------------------------


async def _send_range(job: JobContext, transfer_id: int, first: int, last: int) -> None:
    context = fleet_context(job)
    record = await _working_send(context, transfer_id)
    if record is None:
        return
    if record.message_id is None:
        raise PoisonJob(f"transfer {transfer_id} has no message id: chunk 1 was not sent")
    span = range(first, last + 1)
    accepted = await asyncio.to_thread(context.ledger.accepted_chunks, record, span)
    remaining = [n for n in span if n not in accepted]
    if remaining:
        _check_identity(record)
        try:
            await _send_chunks(context, record, remaining)
        except _NotYourTurn as waiting:
            log.info(
                "transfer %d: chunk %d steps aside after %.0f s waiting for its turn",
                transfer_id,
                waiting.number,
                context.turn_wait,
            )
            await _defer_range_again(job.app, context, transfer_id, waiting.number, last)
            return
    done = await _read_send(context, transfer_id)
    if done.chunks_done >= done.chunk_count - 1:
        await _defer_last(job.app, context, done)


async def _send_chunks(context: FleetContext, record: SendRecord, numbers: list[int]) -> None:
    """Read ``numbers`` with the engine's subset splitting and post them: in turn one after
    another, else ``JOB_LANES`` side by side (the engine reads ahead of both)."""
    lanes = 1 if context.in_turn else JOB_LANES
    splitter = await asyncio.to_thread(_splitter, record, numbers, READ_AHEAD + lanes)
    free = asyncio.Semaphore(lanes)

    async def post(chunk: Chunk) -> None:
        try:
            await _post_chunk(context, record, chunk)
        finally:
            release(chunk)
            free.release()

    try:
        async with asyncio.TaskGroup() as group:
            while True:
                await free.acquire()
                chunk = await asyncio.to_thread(next, splitter, None)
                if chunk is None:
                    free.release()
                    break
                group.create_task(post(chunk))
    except BaseExceptionGroup as failed:
        failure = first_failure(failed)
        raise failure from failure.__cause__
    finally:
        await asyncio.to_thread(splitter.close)


class _NotYourTurn(Exception):
    """In turn, the chunk before this one was not accepted within the turn wait."""

    def __init__(self, number: int) -> None:
        super().__init__(number)
        self.number = number


async def _wait_for_turn(context: FleetContext, record: SendRecord, number: int) -> None:
    """In turn: until the ledger shows chunk ``number - 1`` accepted (each chunk waits so
    for the one before it, so then every earlier chunk is accepted too)."""
    if not context.in_turn or number == record.chunk_count:
        return  # the last chunk's job starts only once every other chunk was accepted
    before = range(number - 1, number)
    deadline = asyncio.get_running_loop().time() + context.turn_wait
    while not await asyncio.to_thread(context.ledger.accepted_chunks, record, before):
        if asyncio.get_running_loop().time() >= deadline:
            raise _NotYourTurn(number)
        await asyncio.sleep(TURN_POLL_INTERVAL)


async def _defer_range_again(
    app: App, context: FleetContext, transfer_id: int, first: int, last: int
) -> None:
    """Enqueue chunks ``first..last`` of the send again, a second from now."""
    await app.configure_task(
        SEND_RANGE, queue=queue_name(context.mailbox), schedule_in={"seconds": 1}
    ).defer_async(transfer_id=transfer_id, first=first, last=last)


async def _post_chunk(context: FleetContext, record: SendRecord, chunk: Chunk) -> None:
    """Chunk n ≥ 2: in its turn (if in turn), recorded sent, posted (retried) in a slot of
    the mailbox, recorded accepted, all with this worker's name."""
    message_id = record.message_id
    assert message_id is not None
    ledger = context.ledger
    what = f"chunk {chunk.number} of {chunk.count} of message {message_id}"
    check_request_size(chunk, record.codec, context.min_payload_size)
    await _wait_for_turn(context, record, chunk.number)
    tries = 0
    last_error: BaseException | None = None

    async def post() -> None:
        nonlocal tries, last_error
        tries += 1
        if last_error is not None:
            await _record_chunk_retry(context, record, chunk.number, tries, last_error)
        try:
            await context.client.send_chunk(
                message_id,
                chunk.number,
                chunk.count,
                chunk,
                content_encoding=_content_encoding(record),
            )
        except Exception as error:
            # A 423 to a repeated try of the last chunk: an earlier one may have completed it.
            if (
                isinstance(error, MeshMessageLockedError)
                and tries > 1
                and chunk.number == chunk.count
                and await _is_complete(context, message_id)
            ):
                return
            last_error = error
            raise

    async with context.limiter.request():
        await asyncio.to_thread(
            ledger.chunk_sent,
            record,
            chunk.number,
            chunk.xxh3_128,
            chunk.payload_size,
            worker=context.name,
        )
        try:
            await call_with_retry(post, context.client.settings.retry, idempotent=True, what=what)
        except (MeshHTTPError, MeshConnectionError) as error:
            _raise_if_refused(error, what)
            raise
        await asyncio.to_thread(ledger.chunk_accepted, record, chunk.number, worker=context.name)


async def _record_chunk_retry(
    context: FleetContext, record: SendRecord, number: int, attempt: int, error: BaseException
) -> None:
    """A retry of one chunk's request, as a ledger event (as DurableSend records them)."""
    await asyncio.to_thread(
        _record_retry,
        context.ledger,
        record.id,
        chunk=number,
        attempt=attempt,
        worker=context.name,
        error=str(error)[:500],
    )


# --- the last chunk ------------------------------------------------------------------------------


async def _send_last(job: JobContext, transfer_id: int) -> None:
    context = fleet_context(job)
    record = await _working_send(context, transfer_id)
    if record is None:
        return
    count = record.chunk_count
    accepted = await asyncio.to_thread(context.ledger.accepted_chunks, record)
    missing = [n for n in range(1, count) if n not in accepted]
    if missing:
        # Enqueued early (or chunks were lost since): the range jobs enqueue it again.
        log.info("transfer %d: last chunk waits for chunks %s", transfer_id, missing[:10])
        return
    if count not in accepted:
        _check_identity(record)
        await _send_chunks(context, record, [count])
    await asyncio.to_thread(_complete, context.ledger, await _read_send(context, transfer_id))


def _complete(ledger: Ledger, record: SendRecord) -> None:
    if ledger.transfer(record).state != "completed":
        ledger.finish_send(record, "completed")
        log.info("transfer %d: message %s completed", record.id, record.message_id)


async def _defer_last(app: App, context: FleetContext, record: SendRecord) -> None:
    await _defer(
        app,
        SEND_LAST,
        queue_name(context.mailbox),
        f"meshpipe-last-{record.id}",
        f"meshpipe-last-{record.id}",
        transfer_id=record.id,
    )


async def _defer(
    app: App, task: str, queue: str, queueing_lock: str, lock: str | None, **arguments: Any
) -> None:
    """Enqueue a job unless the same one is already waiting (its queueing lock)."""
    with contextlib.suppress(AlreadyEnqueued):
        await app.configure_task(
            task, queue=queue, queueing_lock=queueing_lock, lock=lock
        ).defer_async(**arguments)


# --- plumbing ------------------------------------------------------------------------------------


async def _read_send(context: FleetContext, transfer_id: int) -> SendRecord:
    record = await asyncio.to_thread(context.ledger.transfer, transfer_id)
    if not isinstance(record, SendRecord):
        raise PoisonJob(f"transfer {transfer_id} is not a send")
    return record


async def _working_send(context: FleetContext, transfer_id: int) -> SendRecord | None:
    """The send, if there is work on it: None when completed; PoisonJob when failed (a
    failed send is resumed by submitting it again)."""
    record = await _read_send(context, transfer_id)
    if record.state == "completed":
        return None
    if record.state == "failed":
        raise PoisonJob(f"transfer {transfer_id} has failed ({record.error})")
    if record.mailbox != context.mailbox:
        raise PoisonJob(
            f"transfer {transfer_id} sends from {record.mailbox}, not this worker's mailbox "
            f"{context.mailbox}"
        )
    return record


def _check_identity(record: SendRecord) -> None:
    """The source is the file submitted: size and modification time (a shared path has
    other inode and device numbers on other machines, so those are not compared)."""
    recorded = record.source
    try:
        now = SourceFile.stat(recorded.path)
    except FileNotFoundError:
        raise PoisonJob(
            f"{recorded.path}, the source of transfer {record.id}, no longer exists (is the "
            "shared path mounted on this worker?): restore it and submit it again"
        ) from None
    except OSError as error:
        raise PoisonJob(f"{recorded.path} cannot be read: {error}") from error
    if (now.size, now.mtime_ns) != (recorded.size, recorded.mtime_ns):
        raise PoisonJob(
            f"{recorded.path} changed since it was submitted (size or modification time); the "
            "message was not completed: submit it again"
        )


def _splitter(record: SendRecord, numbers: list[int], window: int) -> Splitter:
    try:
        return Splitter(
            record.source.path,
            codec=record.codec,
            level=record.level,
            chunk_size=record.chunk_size,
            window=window,
            chunks=numbers,
        )
    except (OSError, PlanError, SourceChangedError) as error:
        raise PoisonJob(f"{record.source.path} cannot be split as planned: {error}") from error


def _read_chunks(record: SendRecord, numbers: list[int]) -> list[Chunk]:
    splitter = _splitter(record, numbers, len(numbers) + 1)
    try:
        return list(splitter)
    finally:
        splitter.close()


def _content_encoding(record: SendRecord) -> str | None:
    return "gzip" if record.codec == "gzip" else None


async def _is_complete(context: FleetContext, message_id: str) -> bool:
    tracking = await RetryingClient(context.client).track(message_id)
    return (tracking.status or "").lower() in ("accepted", "acknowledged")


def _raise_if_refused(error: MeshHTTPError | MeshConnectionError, what: str) -> None:
    """A refusal MESH will repeat (a 4xx that is not retryable) is poison; the rest are
    tried again by the queue."""
    if isinstance(error, MeshHTTPError) and not error.retryable and 400 <= error.status < 500:
        raise PoisonJob(f"MESH refused {what}: {error}") from error


# --- receiving ----------------------------------------------------------------------------------


async def poll(job: JobContext, timestamp: int) -> None:
    """The periodic receive of the worker's mailbox (one worker per tick across the fleet:
    procrastinate defers each tick once): every message in the inbox is received into the
    worker's inbox folder through the ledger (DurableReceiver: a message another worker is
    receiving is left to it, a message received before is not delivered again)."""
    context = fleet_context(job)
    if context.inbox is None:
        return
    receiver = DurableReceiver(context.ledger)

    async def receive_one(
        client: MeshClient,
        message_id: str,
        destination: str | os.PathLike[str],
        **options: Unpack[ReceiveOptions],
    ) -> ReceiveResult:
        metadata = options.get("metadata")
        if isinstance(metadata, MessageMetadata) and distributed.spreads(metadata):
            return await distributed.begin(
                job.app, client, context.ledger, context.name, metadata, Path(destination)
            )
        return await receiver.receive_message(client, message_id, destination, **options)

    results = await receive_all(
        context.client,
        context.inbox,
        receiver=receive_one,
        on_report=receiver.report_handler(context.mailbox),
    )
    failed = [result for result in results if isinstance(result, ReceiveFailure)]
    for failure in failed:
        log.warning("poll of %s: %s", context.mailbox, failure)
    log.info(
        "poll of %s: %d message(s), %d failed (tick %d)",
        context.mailbox,
        len(results),
        len(failed),
        timestamp,
    )


async def receive_range(job: JobContext, transfer_id: int, first: int, last: int) -> None:
    """Chunks ``first..last`` of a receive spread over the fleet (meshpipe.fleet.receive)."""
    context = fleet_context(job)
    await _guarded_receive(
        job,
        transfer_id,
        f"chunks {first}..{last}",
        lambda: distributed.receive_range(
            job.app, context.client, context.ledger, context.name, transfer_id, first, last
        ),
    )


async def receive_final(job: JobContext, transfer_id: int) -> None:
    """The final job of a receive spread over the fleet: verify, rename, acknowledge."""
    context = fleet_context(job)
    await _guarded_receive(
        job,
        transfer_id,
        "the final check",
        lambda: distributed.receive_final(context.client, context.ledger, transfer_id),
    )


async def _guarded_receive(
    job: JobContext, transfer_id: int, what: str, run: Callable[[], Awaitable[None]]
) -> None:
    """Run a receive job; a ReceiveFailed (recorded in the ledger) is not retried, and the
    last try's failure is recorded on the receive."""
    context = fleet_context(job)
    try:
        await run()
    except distributed.ReceiveFailed as error:
        raise PoisonJob(str(error)) from error
    except Exception as error:
        tries = job.job.attempts + 1
        reason = f"{what} failed on worker {context.name} after {tries} tries: {error}"
        if job.job.attempts >= JOB_RETRIES:
            await asyncio.to_thread(_record_receive_failure, context.ledger, transfer_id, reason)
        else:
            await asyncio.to_thread(_record_retry, context.ledger, transfer_id, reason)
        raise


def _record_receive_failure(ledger: Ledger, transfer_id: int, reason: str) -> None:
    try:
        record = ledger.transfer(transfer_id)
        if isinstance(record, ReceiveRecord) and record.state in ("downloading", "verified"):
            ledger.mark_failed(transfer_id, reason)
    except LedgerError as error:
        log.error("transfer %d: could not record its failure (%s): %s", transfer_id, error, reason)


def worker_name() -> str:
    """The default name of this worker: ``pid@host``, as the ledger's claims."""
    from meshpipe.ledger.store import this_host

    return f"{os.getpid()}@{this_host()}"


__all__ = [
    "JOB_RETRIES",
    "RETRY",
    "FleetContext",
    "PoisonJob",
    "poll",
    "receive_final",
    "receive_range",
    "send_first",
    "send_last",
    "send_range",
    "worker_name",
]
