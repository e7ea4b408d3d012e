"""Pipelined MESH transfers between files and the engine: send a file, receive a message.

**Send** (:func:`send_file`): the engine's Splitter reads and compresses the file on its own
threads; chunk 1 goes alone (it creates the message and returns its id); chunks 2..N-1 go
concurrently within a bounded window, a slot being taken *before* the next chunk is read, so
memory stays at about ``concurrency + 1`` chunk buffers; chunk N goes only after every other
chunk was accepted (the sandbox's file store refuses, with 500, a last chunk that overtakes an
earlier one, and leaves the message ``uploading``; protocol reference §7). Bodies go to the
socket straight from the engine's buffers in pieces of ≤ 1 MiB. Chunk 1 is never re-posted
blindly (retry.post_first_chunk_safely). One failed chunk cancels its siblings (TaskGroup) and
the error names the chunk.

The whole-file xxh3-128 travels in ``mex-Content-Checksum`` as
``meshpipe/1 xxh3-128:<hex> size:<bytes> chunk:<chunk size> codec:<codec>``
(models.ContentChecksum).
It is computed before chunk 1 is sent and compared with the Splitter's own digest before chunk N:
a file that changed while it was sent is never completed.

**Receive** (:func:`receive_message`): HEAD gives the chunk count and metadata (a REPORT is
surfaced, never written as data); chunks download concurrently into the engine's Assembler,
streamed; a chunk that fails verification (gzip CRC, zstd checksum, length) is downloaded
again, a bounded number of times; the Assembler checks the whole-file xxh3-128 when the sender
gave one, fsyncs and renames. Only then is the message acknowledged.
``Accept-Encoding`` is ``gzip`` only for messages stored gzip (then the stored bytes arrive as
they are and the engine inflates them); otherwise ``identity``, so that no server compresses an
uncompressed message on the fly (NHS's sandbox does it at gzip level 9: about 10 MB/s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal

from meshpipe._meshpipe import (
    DEFAULT_CHUNK_SIZE,
    MAX_FILE_SIZE,
    MAX_REQUEST_SIZE,
    MIN_CHUNK_SIZE,
    Assembler,
    Chunk,
    ChunkWriter,
    Splitter,
    xxh3_128_file,
)
from meshpipe.client import MeshClient
from meshpipe.errors import (
    ChecksumMismatchError,
    ChunkLengthError,
    ChunkSizeError,
    ChunkTransferError,
    CodecError,
    MeshConnectionError,
    MeshHTTPError,
    MeshMessageLockedError,
    MeshpipeError,
    MeshReportError,
    MessageHeaderError,
    SourceChangedError,
)
from meshpipe.headers import CONTROL_CHARACTERS, SEND_HEADER_LIMITS
from meshpipe.models import ContentChecksum, MessageMetadata, ReportMessage
from meshpipe.retry import call_with_retry, is_retryable, post_first_chunk_safely

log = logging.getLogger("meshpipe.transfer")

Codec = Literal["none", "gzip", "zstd"]
MiB: Final = 1024 * 1024
#: Chunks 2..N-1 in flight at once. Measured on loopback against mesh-sandbox (benches/).
DEFAULT_CONCURRENCY: Final = 4
#: Pieces handed to a compressed chunk's writer (decompression runs off the event loop).
RECEIVE_PIECE_SIZE: Final = 1 * MiB

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)`` in uncompressed bytes, called once per finished chunk."""

_SEND_HEADERS: Final = {
    "recipient": "mex-To",
    "workflow id": "mex-WorkflowID",
    "local id": "mex-LocalID",
    "subject": "mex-Subject",
    "file name": "mex-FileName",
    "partner id": "mex-PartnerID",
    "content type": "mex-Content-Type",
}


def new_local_id() -> str:
    """A unique mex-LocalID (no patient data), kept for every retry of one send."""
    return f"meshpipe-{uuid.uuid4().hex}"


def validate_send_headers(
    *,
    to: str,
    workflow_id: str,
    local_id: str | None = None,
    subject: str | None = None,
    filename: str | None = None,
    partner_id: str | None = None,
    content_type: str | None = None,
) -> None:
    """MESH's header rules, checked before anything is sent (MessageHeaderError says which)."""
    if not to or not to.strip():
        raise MessageHeaderError("no recipient: give the recipient mailbox id (--to)")
    if to.lower().startswith(("http://", "https://")):
        raise MessageHeaderError("the recipient must be a mailbox id, not a URL")
    if not workflow_id or not workflow_id.strip():
        raise MessageHeaderError(
            "no workflow id: every MESH message needs one (--workflow-id); ask the recipient "
            "which workflow they are registered for"
        )
    values = (to, workflow_id, local_id, subject, filename, partner_id, content_type)
    for (name, header), value in zip(_SEND_HEADERS.items(), values, strict=True):
        if value is None:
            continue
        limit = SEND_HEADER_LIMITS[header]
        if len(value) > limit:
            raise MessageHeaderError(
                f"{name} ({header}) is {len(value)} characters; MESH allows {limit}"
            )
        if CONTROL_CHARACTERS.search(value):
            raise MessageHeaderError(
                f"{name} ({header}) contains a control character (tab, newline, ...); "
                "MESH refuses them"
            )


@dataclass(frozen=True, slots=True)
class SendResult:
    message_id: str
    local_id: str
    chunk_count: int
    file_size: int
    bytes_sent: int
    xxh3_128: str
    codec: str
    checksum_header: str


@dataclass(frozen=True, slots=True)
class ReceiveResult:
    message_id: str
    path: Path
    size: int
    chunk_count: int
    verified: list[str]
    acknowledged: bool
    metadata: MessageMetadata = field(repr=False)


def _release(chunk: Chunk | None) -> None:
    if chunk is None:
        return
    with contextlib.suppress(BufferError):
        chunk.release()


def _first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that made a TaskGroup fail, preferring a named chunk failure."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        elif not isinstance(error, asyncio.CancelledError):
            leaves.append(error)

    walk(group)
    for error in leaves:
        if isinstance(error, ChunkTransferError):
            return error
    return leaves[0] if leaves else group


async def _next_chunk(chunks: Iterator[Chunk]) -> Chunk | None:
    return await asyncio.to_thread(next, chunks, None)


def _check_request_size(chunk: Chunk, codec: Codec, min_payload_size: int) -> None:
    """MESH's per-request rules, checked on each chunk as it comes out of the engine."""
    if codec == "zstd" and chunk.number < chunk.count and chunk.payload_size < min_payload_size:
        # MESH cannot decode a zstd payload, so its 5 MiB minimum applies to the bytes sent.
        raise ChunkSizeError(
            f"chunk {chunk.number} compresses to {chunk.payload_size} bytes with zstd, below "
            f"MESH's {min_payload_size}-byte minimum for every chunk but the last (MESH sees "
            "the compressed bytes of a zstd payload): use a larger --chunk-size, or gzip"
        )
    if chunk.payload_size >= MAX_REQUEST_SIZE:
        raise ChunkSizeError(
            f"chunk {chunk.number} is {chunk.payload_size} bytes as sent; MESH accepts less than "
            f"{MAX_REQUEST_SIZE} per request: use a smaller --chunk-size"
        )


async def send_file(
    client: MeshClient,
    source: str | os.PathLike[str],
    *,
    to: str,
    workflow_id: str,
    local_id: str | None = None,
    subject: str | None = None,
    filename: str | None = None,
    partner_id: str | None = None,
    content_type: str | None = None,
    codec: Codec = "none",
    level: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    sequential: bool = False,
    max_file_size: int = MAX_FILE_SIZE,
    min_payload_size: int = MIN_CHUNK_SIZE,
    progress: ProgressCallback | None = None,
) -> SendResult:
    """Send a file as one MESH message (chunked when larger than ``chunk_size``).

    ``codec``: ``none``; ``gzip`` (Content-Encoding: gzip per chunk, any MESH recipient gets
    the original file); ``zstd`` (the recipient gets a standard ``.zst`` file, flagged with
    ``mex-Content-Compressed: Y``; a meshpipe recipient restores the original). ``sequential``
    sends one chunk at a time, for servers that want strict order. ChunkSizeError, before
    anything is sent, when the plan breaks MESH's chunk rules. ``min_payload_size``: MESH sees
    only the compressed bytes of a zstd payload, so every chunk but the last must compress to
    at least this (MESH's 5 MiB; 0 for a server that does not check, such as mesh-sandbox); a
    chunk that does not is refused before it is sent.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    source_path = Path(source)
    if filename is None:
        filename = source_path.name + (".zst" if codec == "zstd" else "")
    if codec == "zstd" and content_type is None:
        # Said in every header a plain recipient can read: .zst name, this type, compressed=Y.
        content_type = "application/zstd"
    local_id = local_id or new_local_id()
    validate_send_headers(
        to=to,
        workflow_id=workflow_id,
        local_id=local_id,
        subject=subject,
        filename=filename,
        partner_id=partner_id,
        content_type=content_type,
    )
    window_size = 1 if sequential else concurrency
    if codec == "none" and (await asyncio.to_thread(os.stat, source_path)).st_size == 0:
        # MESH refuses an empty body (417, code 02). An empty gzip stream (20 bytes) is not
        # empty, and every MESH client undoes Content-Encoding: the recipient gets an empty file.
        log.info("%s is empty: sending it gzip-encoded, as MESH refuses an empty body", source)
        codec = "gzip"
    splitter = await asyncio.to_thread(
        Splitter,
        source_path,
        codec=codec,
        level=level,
        chunk_size=chunk_size,
        window=window_size + 1,
        max_file_size=max_file_size,
    )
    try:
        plan = splitter.plan
        count = plan.chunk_count
        chunks = iter(splitter)
        first: Chunk | None
        if count == 1:
            # The only chunk has been read, so the Splitter's digest is already the file's.
            first = await _next_chunk(chunks)
            expected = splitter.digest().xxh3_128
        else:
            # The checksum goes in chunk 1's headers: hash the file (a fast pass over the page
            # cache) while the engine reads chunk 1; the Splitter's own digest is compared with
            # it before the last chunk, so a file that changes meanwhile is never completed.
            expected, first = await asyncio.gather(
                asyncio.to_thread(xxh3_128_file, source_path), _next_chunk(chunks)
            )
        if first is None:
            raise MeshpipeError("the engine yielded no chunk for the file")
        checksum = ContentChecksum(
            xxh3_128=expected, size=plan.file_size, chunk_size=plan.chunk_size, codec=codec
        ).header_value()
        encoding = "gzip" if codec == "gzip" else None
        sent_bytes = 0
        done = 0

        def report(chunk_length: int) -> None:
            nonlocal done
            done += chunk_length
            if progress is not None:
                progress(done, plan.file_size)

        def check_source() -> None:
            actual = splitter.digest().xxh3_128
            if actual != expected:
                raise SourceChangedError(
                    f"{source_path} changed while it was being sent (xxh3-128 {expected} before, "
                    f"{actual} now); the message was not completed: send it again"
                )

        try:
            _check_request_size(first, codec, min_payload_size)
            started = datetime.now(UTC)
            message_id = await post_first_chunk_safely(
                lambda: client.send_message(
                    to,
                    workflow_id,
                    first,
                    chunk_count=count,
                    local_id=local_id,
                    subject=subject,
                    filename=filename,
                    partner_id=partner_id,
                    content_type=content_type,
                    content_encoding=encoding,
                    checksum=checksum,
                    compressed=True if codec == "zstd" else None,
                ),
                lambda: client.find_sent_message(local_id, since=started - timedelta(minutes=10)),
                client.settings.retry,
                local_id=local_id,
            )
            sent_bytes += first.payload_size
            report(first.length)
        finally:
            _release(first)
        log.info("message %s (local id %s): chunk 1 of %d sent", message_id, local_id, count)

        async def send_one(chunk: Chunk, window: asyncio.Semaphore | None) -> None:
            nonlocal sent_bytes
            number = chunk.number
            try:
                _check_request_size(chunk, codec, min_payload_size)
                await _send_chunk_with_retry(client, message_id, chunk, count, encoding)
                sent_bytes += chunk.payload_size
                report(chunk.length)
            except (MeshHTTPError, MeshConnectionError) as error:
                raise ChunkTransferError(
                    f"chunk {number} of {count} of message {message_id} failed: {error}",
                    chunk=number,
                    message_id=message_id,
                ) from error
            finally:
                _release(chunk)
                if window is not None:
                    window.release()

        if count > 1:
            window = asyncio.Semaphore(window_size)
            last: Chunk | None = None
            try:
                async with asyncio.TaskGroup() as group:
                    while True:
                        await window.acquire()
                        chunk = await _next_chunk(chunks)
                        if chunk is None or chunk.number == count:
                            window.release()
                            last = chunk
                            break
                        group.create_task(send_one(chunk, window))
            except BaseExceptionGroup as group_error:
                _release(last)
                failure = _first_failure(group_error)
                raise failure from failure.__cause__
            if last is None:
                raise MeshpipeError(f"the engine yielded fewer than {count} chunks")
            try:
                check_source()
            except BaseException:
                _release(last)
                raise
            await send_one(last, None)
        return SendResult(
            message_id=message_id,
            local_id=local_id,
            chunk_count=count,
            file_size=plan.file_size,
            bytes_sent=sent_bytes,
            xxh3_128=expected,
            codec=codec,
            checksum_header=checksum,
        )
    finally:
        await asyncio.to_thread(splitter.close)


async def _send_chunk_with_retry(
    client: MeshClient, message_id: str, chunk: Chunk, count: int, encoding: str | None
) -> None:
    attempts = 0

    async def once() -> None:
        nonlocal attempts
        attempts += 1
        try:
            await client.send_chunk(
                message_id, chunk.number, count, chunk, content_encoding=encoding
            )
        except MeshMessageLockedError:
            # 423 after an earlier try of the *last* chunk: that try may have completed the
            # message. MESH tracking tells.
            if attempts > 1 and chunk.number == count:
                tracking = await client.track(message_id)
                if (tracking.status or "").lower() in ("accepted", "acknowledged"):
                    return
            raise

    await call_with_retry(
        once,
        client.settings.retry,
        idempotent=True,
        what=f"chunk {chunk.number} of {count} of message {message_id}",
    )


# --- receive ------------------------------------------------------------------------------------


_VERIFICATION_ERRORS: Final = (ChecksumMismatchError, CodecError, ChunkLengthError)


def _receive_codec(metadata: MessageMetadata, decode_payload: bool) -> tuple[Codec, str]:
    """(assembler codec, Accept-Encoding) for a message."""
    stored_gzip = (metadata.content_encoding or "").lower() == "gzip"
    checksum = metadata.checksum
    if (
        decode_payload
        and checksum is not None
        and checksum.meshpipe
        and checksum.codec == "zstd"
        and not stored_gzip
    ):
        return "zstd", "identity"
    if stored_gzip:
        return "gzip", "gzip"
    return "none", "identity"


class _ChunkSink:
    """Feeds one chunk's bytes into its ChunkWriter; compressed data in ≤ 1 MiB pieces off the
    event loop (the engine releases the GIL while it inflates)."""

    def __init__(self, writer: ChunkWriter, *, offload: bool) -> None:
        self._writer = writer
        self._offload = offload
        self._pending: list[bytes] = []
        self._pending_size = 0

    async def __call__(self, piece: bytes) -> None:
        if not self._offload:
            self._writer.write(piece)
            return
        self._pending.append(piece)
        self._pending_size += len(piece)
        if self._pending_size >= RECEIVE_PIECE_SIZE:
            await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        pieces, self._pending, self._pending_size = self._pending, [], 0
        await asyncio.to_thread(self._write_all, pieces)

    def _write_all(self, pieces: list[bytes]) -> None:
        # One thread hop per ~1 MiB, but no joined copy of the pieces.
        for piece in pieces:
            self._writer.write(piece)


async def _fetch_chunk(
    client: MeshClient,
    assembler: Assembler,
    message_id: str,
    number: int,
    *,
    codec: Codec,
    accept_encoding: str,
    attempts: int,
    report: Callable[[int], None] | None = None,
) -> None:
    last_error: BaseException | None = None
    for attempt in range(1, attempts + 1):
        writer = assembler.open_chunk(number)
        sink = _ChunkSink(writer, offload=codec != "none")
        try:
            await client.download_chunk(
                message_id,
                number,
                sink,
                accept_encoding=accept_encoding,
                expect_encoding="gzip" if codec == "gzip" else "identity",
            )
            await sink.flush()
            chunk_report = await asyncio.to_thread(writer.finish)
            if report is not None:
                report(chunk_report.length)
            return
        except _VERIFICATION_ERRORS as error:
            writer.abort()
            last_error = error
            log.warning("chunk %d of %s failed verification (%s)", number, message_id, error)
        except (MeshConnectionError, MeshHTTPError) as error:
            writer.abort()
            if not is_retryable(error, idempotent=True):
                raise ChunkTransferError(
                    f"chunk {number} of message {message_id} could not be downloaded: {error}",
                    chunk=number,
                    message_id=message_id,
                ) from error
            last_error = error
        except BaseException:
            writer.abort()
            raise
        if attempt < attempts:
            wait = client.settings.retry.delay_after(attempt + 1, last_error)
            if wait is None:  # the server asks for a longer pause than we wait
                break
            await asyncio.sleep(wait)
    raise ChunkTransferError(
        f"chunk {number} of message {message_id} failed {attempts} times (last: {last_error}); "
        "the message was not acknowledged: try again later, or ask the sender to resend",
        chunk=number,
        message_id=message_id,
    ) from last_error


async def receive_message(
    client: MeshClient,
    message_id: str,
    destination: str | os.PathLike[str],
    *,
    acknowledge: bool = True,
    concurrency: int = DEFAULT_CONCURRENCY,
    overwrite: bool = False,
    decode_payload: bool = True,
    chunk_attempts: int = 3,
    message_attempts: int = 2,
    metadata: MessageMetadata | None = None,
    progress: ProgressCallback | None = None,
) -> ReceiveResult:
    """Download a message to ``destination``, verified, and acknowledge it (unless told not to).

    A REPORT message raises MeshReportError carrying the typed ReportMessage (see
    :func:`receive_report`). ``decode_payload`` restores the original of a meshpipe zstd send
    (False keeps the ``.zst`` stream). A whole-file checksum failure downloads the message again
    (``message_attempts`` in all); nothing is ever left at ``destination`` unless verified.
    ``progress(done, total)`` is called per chunk written (total: the size a meshpipe sender
    declared, else the bytes written so far).
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if metadata is None:
        metadata = await client.head(message_id)
    if metadata.is_report:
        report = ReportMessage.from_metadata(metadata)
        raise MeshReportError(
            f"{report.describe()}; it is a report, not data: handle it with receive_report()",
            report=report,
        )
    codec, accept_encoding = _receive_codec(metadata, decode_payload)
    count = max(1, metadata.chunk_count)
    # Only meshpipe's own checksum form is trusted: another sender's free text may describe
    # something else (the compressed file, say). It describes the original file, so it applies
    # unless a zstd payload is kept as it is.
    checksum = metadata.checksum if metadata.checksum and metadata.checksum.meshpipe else None
    kept_zstd = checksum is not None and checksum.codec == "zstd" and codec != "zstd"
    if kept_zstd:
        checksum = None
    known_chunk_size = checksum.chunk_size if checksum is not None else None
    # A kept zstd stream has chunks of varying size: they can only be written in order.
    in_order = kept_zstd
    destination_path = Path(destination)
    declared_size = checksum.size if checksum is not None else None
    done = 0

    def count_written(length: int) -> None:
        nonlocal done
        done += length
        if progress is not None:
            progress(done, max(done, declared_size or 0))

    for message_attempt in range(1, message_attempts + 1):
        done = 0
        assembler = Assembler(
            destination_path,
            chunk_count=count,
            codec=codec,
            chunk_size=known_chunk_size,
            file_size=checksum.size if checksum is not None else None,
            xxh3_128=checksum.xxh3_128 if checksum is not None else None,
            sha256=checksum.sha256 if checksum is not None else None,
            overwrite=overwrite,
        )
        try:
            window = asyncio.Semaphore(concurrency)

            async def fetch(number: int, window: asyncio.Semaphore = window) -> None:
                async with window:
                    await _fetch_chunk(
                        client,
                        assembler,  # noqa: B023
                        message_id,
                        number,
                        codec=codec,
                        accept_encoding=accept_encoding,
                        attempts=chunk_attempts,
                        report=count_written,
                    )

            numbers = range(1, count + 1)
            try:
                if in_order:
                    for number in numbers:
                        await fetch(number)
                    numbers = range(0)
                elif known_chunk_size is None and count > 1:
                    # A plain sender: chunk 1's length is every chunk's but the last.
                    await fetch(1)
                    assembler.assume_fixed_chunk_size()
                    numbers = range(2, count + 1)
                async with asyncio.TaskGroup() as group:
                    for number in numbers:
                        group.create_task(fetch(number))
            except BaseExceptionGroup as group_error:
                failure = _first_failure(group_error)
                raise failure from failure.__cause__
            assembled = await asyncio.to_thread(assembler.finish)
        except ChecksumMismatchError as error:
            assembler.abort()
            if error.chunk is None and message_attempt < message_attempts:
                log.warning(
                    "message %s failed whole-file verification; downloading again", message_id
                )
                continue
            raise
        except BaseException:
            assembler.abort()
            raise
        break
    acknowledged = False
    if acknowledge:
        await client.acknowledge(message_id)
        acknowledged = True
    return ReceiveResult(
        message_id=message_id,
        path=Path(assembled.path),
        size=assembled.size,
        chunk_count=assembled.chunk_count,
        verified=list(assembled.verified),
        acknowledged=acknowledged,
        metadata=metadata,
    )


async def receive_report(
    client: MeshClient, message_id: str, *, acknowledge: bool = True
) -> ReportMessage:
    """Read a REPORT message's details and (by default) acknowledge it."""
    metadata = await client.head(message_id)
    if not metadata.is_report:
        raise MeshpipeError(f"message {message_id} is DATA, not a report: use receive_message")
    if acknowledge:
        await client.acknowledge(message_id)
    return ReportMessage.from_metadata(metadata)


_UNSAFE_NAME: Final = re.compile(r"[^A-Za-z0-9._-]")


def safe_filename(name: str | None, message_id: str) -> str:
    """A file name from mex-FileName with no directory part or odd characters."""
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    base = _UNSAFE_NAME.sub("_", base).lstrip(".")
    return base or f"{message_id}.dat"


@dataclass(frozen=True, slots=True)
class ReceiveFailure:
    message_id: str
    error: BaseException


async def receive_all(
    client: MeshClient,
    out_dir: str | os.PathLike[str],
    *,
    workflow_filter: str | None = None,
    acknowledge: bool = True,
    concurrency: int = DEFAULT_CONCURRENCY,
    decode_payload: bool = True,
) -> list[ReceiveResult | ReportMessage | ReceiveFailure]:
    """Receive every message in the inbox into ``out_dir`` (named from mex-FileName, prefixed
    with the message id if that name is taken). Reports are returned typed (and acknowledged
    when ``acknowledge``); a failed message is returned as ReceiveFailure and left in the inbox.
    """
    directory = Path(out_dir)
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    results: list[ReceiveResult | ReportMessage | ReceiveFailure] = []
    for message_id in await client.list_inbox(workflow_filter=workflow_filter):
        try:
            metadata = await client.head(message_id)
            if metadata.is_report:
                if acknowledge:
                    await client.acknowledge(message_id)
                results.append(ReportMessage.from_metadata(metadata))
                continue
            name = safe_filename(metadata.filename, message_id)
            if (
                decode_payload
                and name.endswith(".zst")
                and _receive_codec(metadata, True)[0] == "zstd"
            ):
                name = name[: -len(".zst")] or f"{message_id}.dat"
            target = directory / name
            if target.exists():
                target = directory / f"{message_id}-{name}"
            results.append(
                await receive_message(
                    client,
                    message_id,
                    target,
                    acknowledge=acknowledge,
                    concurrency=concurrency,
                    decode_payload=decode_payload,
                    metadata=metadata,
                )
            )
        except (MeshpipeError, OSError) as error:
            log.error("message %s not received: %s", message_id, error)
            results.append(ReceiveFailure(message_id, error))
    return results
