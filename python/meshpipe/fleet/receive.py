"""One large message received by many workers: chunk-range downloads into one preallocated
partial file on the shared inbox path, and a final job that verifies, renames and
acknowledges it.

Which messages (:func:`spreads`): a meshpipe sender's, of more than :data:`MIN_CHUNKS`
chunks, whose uncompressed file and chunk sizes are in chunk 1's ``mex-Content-Checksum``, in
either form: the header form (``meshpipe/1 xxh3-128:<hex> size:<bytes> chunk:<bytes>``: the
fleet's own sends, ``send --checksum-in-header``), whose whole-file hash is known before any
chunk, or the trailer form (``meshpipe/2 xxh3-128:trailer ...``, gzip or zstd: the default of
``meshpipe send --compress``), whose hash and size travel in a manifest at the end of the last
chunk. Every other message (a plain sender, one or two chunks) stays on the one-worker receive
(DurableReceiver).

``begin`` (in the poll job): records the receive (begin_receive), preallocates the partial
file beside the destination at its full size, downloads chunk 1 and enqueues chunk ranges
2..N (``RANGE_CHUNKS`` each, any worker) and the final job. A message already recorded is
not begun again; when no range or final job of it is waiting or running, its missing
ranges and the final job are enqueued again (which takes up a receive whose poll died
before it enqueued them, or whose acknowledgement was lost). A range job of a worker that
died is put back on the queue after its lease (meshpipe.fleet.worker). A receive that failed
stays failed (each poll logs it; the message stays unacknowledged on MESH): ``meshpipe
receive`` on the same ledger takes it up (DurableReceiver: the chunks recorded written are
re-checked and kept, the rest downloaded); while that process holds the transfer, the polls
leave it alone.

``receive_range``: each chunk the ledger does not show written is downloaded, decompressed and
verified by the engine (a one-chunk Assembler in a local scratch folder: gzip CRC, zstd
checksum, the exact length), copied to ``(n-1) * chunk_size`` of the partial file in the
kernel (copy_file_range; never held whole in memory; no lock: each writer owns its byte
range), fsynced and recorded written with its xxh3-128 and the
worker's name. A chunk failing verification is downloaded again, ``CHUNK_ATTEMPTS`` in all;
then the receive fails with the reason in the ledger and the message stays unacknowledged.
The range that finds every chunk written enqueues the final job.

The trailer form's last chunk: its job takes the manifest the engine found at the end of the
chunk (``ChunkReport.manifest``) and records it, as a ``note`` event whose ``manifest`` holds the
xxh3-128 and size, in the transaction that records the chunk written. A manifest that is
missing or malformed fails the chunk's verification (downloaded again, then the receive
fails); one whose size is not the size chunk 1's header declared fails the receive at once.
As the engine does for a whole message, a manifest in any other chunk, or at the end of the
header form's last chunk disagreeing with chunk 1's header, fails that chunk's verification.

``receive_final`` (one at a time per transfer): once every chunk is recorded written, the
whole file's xxh3-128 is checked against the sender's (chunk 1's header, or the recorded
manifest), the file fsynced and linked into place (never over an existing file), recorded
verified and delivered, then acknowledged and recorded so. A file that does not match fails
the receive with both hashes in the ledger, nothing placed. Nothing is acknowledged that was
not verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from procrastinate import App

from meshpipe._meshpipe import Assembler, ChunkReport, ChunkWriter, xxh3_128_file
from meshpipe.client import MeshClient
from meshpipe.durable.receive import find_or_begin_receive
from meshpipe.errors import (
    ChecksumMismatchError,
    ChunkLengthError,
    CodecError,
    MeshHTTPError,
    MeshpipeError,
)
from meshpipe.fleet.queue import (
    RECEIVE_FINAL,
    RECEIVE_RANGE,
    AlreadyEnqueued,
    queue_name,
    receive_jobs_pending,
)
from meshpipe.ledger import Ledger, ReceiveRecord
from meshpipe.models import ContentChecksum, MessageMetadata
from meshpipe.retry import RetryingClient, call_with_retry
from meshpipe.transfer import ReceivePlan, ReceiveResult
from meshpipe.units import MiB

log = logging.getLogger("meshpipe.fleet")

#: A message of more chunks than this is spread over the fleet.
MIN_CHUNKS: Final = 2
#: Chunks of one range job.
RANGE_CHUNKS: Final = 2
#: Downloads of one chunk that fails verification before the receive fails.
CHUNK_ATTEMPTS: Final = 3
#: Pieces handed to the engine off the event loop.
PIECE_SIZE: Final = 1 * MiB

_VERIFICATION_ERRORS: Final = (ChecksumMismatchError, CodecError, ChunkLengthError)


class ReceiveFailed(MeshpipeError):
    """A distributed receive that cannot complete (recorded failed in the ledger)."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """The whole file as the sender read it, from the manifest at the end of the last chunk."""

    xxh3_128: str
    size: int


def spreads(metadata: MessageMetadata) -> bool:
    """Whether ``metadata``'s message is received by many workers (module doc)."""
    plan = ReceivePlan.of(metadata, True)
    checksum = plan.checksum
    return (
        checksum is not None
        and (bool(checksum.xxh3_128) or (checksum.trailer and plan.codec in ("gzip", "zstd")))
        and checksum.chunk_size is not None
        and checksum.size is not None
        and plan.chunk_count > MIN_CHUNKS
        and not plan.in_order
    )


def _accept_encoding(codec: str) -> tuple[str, str]:
    """(Accept-Encoding, expected Content-Encoding) of a chunk stored with ``codec``."""
    return ("gzip", "gzip") if codec == "gzip" else ("identity", "identity")


def _checksum(record: ReceiveRecord) -> ContentChecksum:
    checksum = MessageMetadata.from_headers(record.message_id, dict(record.headers)).checksum
    assert checksum is not None and (checksum.xxh3_128 or checksum.trailer)
    return checksum


def _is_trailer(record: ReceiveRecord) -> bool:
    return _checksum(record).trailer


def _declared_xxh3(ledger: Ledger, record: ReceiveRecord) -> str | None:
    """The whole file's xxh3-128 as the sender declared it: from chunk 1's header, or for the
    trailer form from the manifest the last chunk's job recorded (None: none recorded)."""
    checksum = _checksum(record)
    if not checksum.trailer:
        assert checksum.xxh3_128
        return checksum.xxh3_128
    found = None
    for event in ledger.events(record):
        manifest = event.detail.get("manifest") if event.kind == "note" else None
        if isinstance(manifest, dict) and isinstance(manifest.get("xxh3_128"), str):
            found = manifest["xxh3_128"]  # the last one: of the last chunk's bytes written
    return found


def _held_elsewhere(record: ReceiveRecord) -> bool:
    """Whether another process holds the transfer (``meshpipe receive`` taking up a failed
    receive: DurableReceiver claims it), so no job of the fleet works on it meanwhile; a poll
    after the claim ends enqueues what is missing again."""
    claim = record.claim
    if claim is None or claim.expires_at <= datetime.now(UTC):
        return False
    log.info("message %s is being received by %s", record.message_id, claim.owner)
    return True


def _length(record: ReceiveRecord, number: int) -> int:
    assert record.chunk_size is not None and record.size is not None
    return min(record.chunk_size, record.size - (number - 1) * record.chunk_size)


# --- begin (in the poll job) ---------------------------------------------------------------------


async def begin(
    app: App,
    client: MeshClient,
    ledger: Ledger,
    worker: str,
    metadata: MessageMetadata,
    destination: Path,
) -> ReceiveResult:
    """Record, preallocate, download chunk 1 and enqueue the rest (module doc); a message
    recorded before is only enqueued again. The result is unacknowledged: the final job
    acknowledges."""
    record = await asyncio.to_thread(
        find_or_begin_receive,
        ledger,
        client.mailbox,
        metadata,
        destination,
        ReceivePlan.of(metadata, True),
    )
    if _held_elsewhere(record):
        pass  # another process took it up (meshpipe receive of a failed receive)
    elif await receive_jobs_pending(app, record.id):
        pass  # the fleet is at it
    elif record.state == "downloading":
        if record.size is not None:
            # Each time (it never truncates): a poll may have died between recording the
            # receive and preallocating its file.
            await asyncio.to_thread(_preallocate, Path(record.partial_path), record.size)
            log.info(
                "message %s: %d chunks spread over the fleet into %s",
                record.message_id,
                record.chunk_count,
                record.destination,
            )
        written = await asyncio.to_thread(ledger.written_chunks, record)
        if 1 not in written:
            await _receive_chunks(client, ledger, worker, record, [1])
        await _enqueue(app, client.mailbox, record, written)
    elif record.state in ("verified", "delivered"):
        await _defer_final(app, client.mailbox, record.id)
    elif record.state == "acknowledged" and await _still_in_inbox(client, record.message_id):
        await _acknowledge(client, ledger, record)  # MESH shows it again: it was delivered
    else:
        log.info("message %s: its receive failed (%s)", record.message_id, record.error)
    return ReceiveResult(
        message_id=record.message_id,
        path=Path(record.destination),
        size=record.size or 0,
        chunk_count=record.chunk_count,
        verified=[],
        acknowledged=False,
        metadata=metadata,
    )


async def _still_in_inbox(client: MeshClient, message_id: str) -> bool:
    """Whether a message recorded acknowledged is in the inbox now (MESH showing it again),
    not only when the poll listed it (before the final job acknowledged it)."""
    try:
        await RetryingClient(client).head(message_id)
    except MeshHTTPError as error:
        if error.status in (404, 410):
            return False
        raise
    return True


def _preallocate(path: Path, size: int) -> None:
    """The partial file at its full size (blocks reserved where the filesystem can), durable."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            os.posix_fallocate(descriptor, 0, size)
        except OSError:
            os.ftruncate(descriptor, size)
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


async def _enqueue(app: App, mailbox: str, record: ReceiveRecord, written: dict[int, str]) -> None:
    numbers = list(range(2, record.chunk_count + 1))
    for start in range(0, len(numbers), RANGE_CHUNKS):
        part = numbers[start : start + RANGE_CHUNKS]
        if all(number in written for number in part):
            continue
        key = f"meshpipe-rx-{record.id}-{part[0]}"
        with contextlib.suppress(AlreadyEnqueued):
            await app.configure_task(
                RECEIVE_RANGE, queue=queue_name(mailbox), queueing_lock=key, lock=key
            ).defer_async(transfer_id=record.id, first=part[0], last=part[-1])
    await _defer_final(app, mailbox, record.id)


async def _defer_final(app: App, mailbox: str, transfer_id: int) -> None:
    key = f"meshpipe-rx-final-{transfer_id}"
    with contextlib.suppress(AlreadyEnqueued):
        await app.configure_task(
            RECEIVE_FINAL, queue=queue_name(mailbox), queueing_lock=key, lock=key
        ).defer_async(transfer_id=transfer_id)


# --- the chunks ---------------------------------------------------------------------------------


async def receive_range(
    app: App,
    client: MeshClient,
    ledger: Ledger,
    worker: str,
    transfer_id: int,
    first: int,
    last: int,
) -> None:
    """Chunks ``first..last`` not yet recorded written (module doc)."""
    record = await _read(ledger, transfer_id)
    if record.state != "downloading" or _held_elsewhere(record):
        return
    written = await asyncio.to_thread(ledger.written_chunks, record)
    missing = [number for number in range(first, last + 1) if number not in written]
    await _receive_chunks(client, ledger, worker, record, missing)
    if len(await asyncio.to_thread(ledger.written_chunks, record)) == record.chunk_count:
        await _defer_final(app, client.mailbox, record.id)


async def _receive_chunks(
    client: MeshClient, ledger: Ledger, worker: str, record: ReceiveRecord, numbers: list[int]
) -> None:
    if not numbers:
        return
    with tempfile.TemporaryDirectory(prefix="meshpipe-fleet-rx-") as scratch:
        descriptor = await asyncio.to_thread(os.open, record.partial_path, os.O_WRONLY)
        try:
            for number in numbers:
                await _receive_chunk(client, ledger, worker, record, number, descriptor, scratch)
        finally:
            os.close(descriptor)


async def _receive_chunk(
    client: MeshClient,
    ledger: Ledger,
    worker: str,
    record: ReceiveRecord,
    number: int,
    descriptor: int,
    scratch: str,
) -> None:
    what = f"chunk {number} of {record.chunk_count} of message {record.message_id}"
    try:
        length, xxh3_128, manifest = await call_with_retry(
            lambda: _download_chunk(client, record, number, scratch, descriptor),
            client.settings.retry,
            idempotent=True,
            what=what,
            also=_VERIFICATION_ERRORS,
            also_attempts=CHUNK_ATTEMPTS,
        )
    except _VERIFICATION_ERRORS as error:
        reason = (
            f"{what} failed verification {CHUNK_ATTEMPTS} times (last: {_alone(error)}) on worker "
            f"{worker}; the message was not acknowledged: ask the sender to resend"
        )
        await asyncio.to_thread(ledger.mark_failed, record, reason)
        raise ReceiveFailed(reason) from error
    if manifest is not None and manifest.size != record.size:
        reason = (
            f"the manifest at the end of {what} is of a {manifest.size}-byte file, but its "
            f"headers declare {record.size} bytes; the message was not acknowledged: ask the "
            "sender to resend"
        )
        await asyncio.to_thread(ledger.mark_failed, record, reason)
        raise ReceiveFailed(reason)
    await asyncio.to_thread(
        _record_written, ledger, record, number, xxh3_128, length, worker, manifest
    )


def _record_written(
    ledger: Ledger,
    record: ReceiveRecord,
    number: int,
    xxh3_128: str,
    length: int,
    worker: str,
    manifest: Manifest | None,
) -> None:
    """Chunk ``number`` recorded written; with the last chunk's manifest, as a note in the same
    transaction (the final job checks the whole file against the last such note)."""
    with ledger.batch():
        if manifest is not None:
            ledger.record_event(
                record,
                "note",
                note=f"the whole-file manifest at the end of chunk {number}",
                manifest={"xxh3_128": manifest.xxh3_128, "size": manifest.size},
                worker=worker,
            )
        ledger.chunk_written(record, number, xxh3_128, length, worker=worker)


def _copy_at(source: str, descriptor: int, offset: int, length: int) -> None:
    """``length`` bytes of the file ``source`` written at ``offset`` of ``descriptor`` and made
    durable: copied in the kernel (copy_file_range), or 1 MiB at a time where it cannot."""
    with open(source, "rb") as handle:
        done = 0
        try:
            while done < length:
                copied = os.copy_file_range(
                    handle.fileno(), descriptor, length - done, done, offset + done
                )
                if copied == 0:
                    raise OSError(f"{source} ended after {done} of {length} bytes")
                done += copied
        except OSError as error:
            if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            while done < length:  # across filesystems the kernel may not copy: by hand
                piece = os.pread(handle.fileno(), min(PIECE_SIZE, length - done), done)
                if not piece:
                    raise OSError(f"{source} ended after {done} of {length} bytes") from None
                view = memoryview(piece)
                while view:
                    written = os.pwrite(descriptor, view, offset + done)
                    view, done = view[written:], done + written
    os.fdatasync(descriptor)


async def _download_chunk(
    client: MeshClient, record: ReceiveRecord, number: int, scratch: str, descriptor: int
) -> tuple[int, str, Manifest | None]:
    """One download of chunk ``number``, decoded and verified by the engine (a one-chunk
    Assembler of its exact length in ``scratch``), then copied to its offset in the partial
    file ``descriptor`` (never held whole in memory): its length, its xxh3-128 and, for the
    last chunk of the trailer form, the whole-file manifest at its end."""
    length = _length(record, number)
    last_of_trailer = number == record.chunk_count and _is_trailer(record)
    assembler = Assembler(
        Path(scratch) / f"chunk-{number}",
        chunk_count=1,
        codec=record.codec,
        chunk_size=length,
        file_size=length,
        overwrite=True,
    )
    try:
        writer = assembler.open_chunk(1)
        accept, expect = _accept_encoding(record.codec)
        pending: list[bytes] = []
        pending_size = 0

        async def sink(piece: bytes) -> None:
            nonlocal pending_size
            pending.append(piece)
            pending_size += len(piece)
            if pending_size >= PIECE_SIZE:
                await asyncio.to_thread(_feed, writer, pending[:])
                pending.clear()
                pending_size = 0

        try:
            await client.download_chunk(
                record.message_id, number, sink, accept_encoding=accept, expect_encoding=expect
            )
            await asyncio.to_thread(_feed, writer, pending)
            report = await asyncio.to_thread(writer.finish)
        except BaseException as error:
            writer.abort()
            if isinstance(error, _VERIFICATION_ERRORS):
                log.warning(
                    "chunk %d of %d of message %s failed verification (%s)",
                    number,
                    record.chunk_count,
                    record.message_id,
                    _alone(error),
                )
            raise
        what = f"chunk {number} of {record.chunk_count} of message {record.message_id}"
        if last_of_trailer:
            manifest: Manifest | None = _manifest_of(report, what)
        else:
            _check_unannounced(record, number, report, what)
            manifest = None
        assert record.chunk_size is not None
        offset = (number - 1) * record.chunk_size
        await asyncio.to_thread(
            _copy_at, assembler.temporary_path, descriptor, offset, report.length
        )
        return report.length, report.xxh3_128, manifest
    finally:
        assembler.abort()


def _alone(error: BaseException) -> str:
    """The engine's words for a chunk it refused, without the "chunk 1: " of the one-chunk
    assembler each chunk is checked in (the caller names the message's chunk)."""
    return str(error).removeprefix("chunk 1: ")


def _manifest_of(report: ChunkReport, what: str) -> Manifest:
    """The manifest the trailer form's last chunk (``what``) ended with, as the engine found
    it; a chunk without one fails verification (downloaded again, then the receive fails)."""
    if report.manifest is None:
        raise ChecksumMismatchError(
            f"{what} is the last of a message whose headers announce a whole-file manifest at "
            "its end (meshpipe/2), but it carries none"
        )
    xxh3_128, size = report.manifest
    return Manifest(xxh3_128, size)


def _check_unannounced(record: ReceiveRecord, number: int, report: ChunkReport, what: str) -> None:
    """The engine's rule for a manifest the headers did not announce, which a one-chunk
    assembler cannot apply itself: none in any chunk but the last (CodecError, as the engine
    says it), and at the end of the header form's last chunk only one that agrees with chunk
    1's header (ChecksumMismatchError). Either is downloaded again, then fails the receive."""
    if report.manifest is None:
        return
    found_xxh3, found_size = report.manifest
    if number != record.chunk_count:
        raise CodecError(f"{what} ends with a whole-file manifest; only the last chunk carries one")
    checksum = _checksum(record)
    if (found_xxh3, found_size) != (checksum.xxh3_128, checksum.size):
        raise ChecksumMismatchError(
            f"{what} ends with a whole-file manifest ({found_xxh3} of {found_size} bytes) "
            f"that disagrees with chunk 1's header ({checksum.xxh3_128} of {checksum.size} "
            "bytes)"
        )


def _feed(writer: ChunkWriter, pieces: list[bytes]) -> None:
    for piece in pieces:
        writer.write(piece)


# --- the final job ------------------------------------------------------------------------------


async def receive_final(client: MeshClient, ledger: Ledger, transfer_id: int) -> None:
    """Verify, rename, acknowledge (module doc), once every chunk is written."""
    record = await _read(ledger, transfer_id)
    if _held_elsewhere(record):
        return
    if record.state == "downloading":
        written = await asyncio.to_thread(ledger.written_chunks, record)
        if len(written) < record.chunk_count:
            log.info(
                "transfer %d: %d of %d chunks written",
                transfer_id,
                len(written),
                record.chunk_count,
            )
            return
        record = await asyncio.to_thread(_verify_and_place, ledger, record)
    if record.state == "verified":
        record = await asyncio.to_thread(_deliver_verified, ledger, record)
    if record.state == "delivered":  # acknowledged: a second final job has nothing to do
        await _acknowledge(client, ledger, record)
        log.info("message %s received by the fleet into %s", record.message_id, record.destination)


async def _acknowledge(client: MeshClient, ledger: Ledger, record: ReceiveRecord) -> None:
    await RetryingClient(client).acknowledge(record.message_id)
    await asyncio.to_thread(ledger.mark_acknowledged, record)


def _verify_and_place(ledger: Ledger, record: ReceiveRecord) -> ReceiveRecord:
    declared = _declared_xxh3(ledger, record)
    if declared is None:
        reason = (
            f"message {record.message_id}: every chunk is written, but no manifest of the last "
            "chunk is recorded to check the file against; it was not acknowledged"
        )
        ledger.mark_failed(record, reason)
        raise ReceiveFailed(reason)
    partial = Path(record.partial_path)
    whole = xxh3_128_file(partial)
    if whole != declared:
        where = " in the manifest at the end of the last chunk" if _is_trailer(record) else ""
        reason = (
            f"message {record.message_id}: the assembled file's xxh3-128 is {whole}, but the "
            f"sender declared {declared}{where}; it was not acknowledged: ask the sender to "
            "resend"
        )
        ledger.mark_failed(record, reason)
        raise ReceiveFailed(reason)
    descriptor = os.open(partial, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    verified = ledger.mark_verified(record, whole)
    return _deliver_verified(ledger, verified)


def _deliver_verified(ledger: Ledger, record: ReceiveRecord) -> ReceiveRecord:
    """Link the verified partial file into place (never over an existing file), then record
    it delivered; a crash after the link finds the destination and checks it."""
    destination, partial = Path(record.destination), Path(record.partial_path)
    if partial.exists():
        try:
            os.link(partial, destination)
        except FileExistsError:
            if xxh3_128_file(destination) != record.xxh3_128:
                reason = f"{destination} appeared before the received file was put there"
                ledger.record_event(record, "error", error=reason)
                raise ReceiveFailed(
                    f"{reason}; move it away: the message is not acknowledged"
                ) from None
        directory = os.open(destination.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        partial.unlink()
    elif xxh3_128_file(destination) != record.xxh3_128:
        raise ReceiveFailed(f"{destination} changed since it was verified")
    return ledger.mark_delivered(record)


async def _read(ledger: Ledger, transfer_id: int) -> ReceiveRecord:
    record = await asyncio.to_thread(ledger.transfer, transfer_id)
    if not isinstance(record, ReceiveRecord):
        raise ReceiveFailed(f"transfer {transfer_id} is not a receive")
    return record


__all__ = [
    "CHUNK_ATTEMPTS",
    "RANGE_CHUNKS",
    "ReceiveFailed",
    "begin",
    "receive_final",
    "receive_range",
    "spreads",
]
