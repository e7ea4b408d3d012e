"""Receive a MESH message into a file, in stages: :class:`Download` (inspect, attempts per
message, attempts per chunk, acknowledge).

**inspect**: HEAD gives the chunk count and metadata (a REPORT is surfaced, never written as
data) and decides the codec. **message attempt**: chunks download concurrently into the
engine's Assembler, streamed; the Assembler checks the whole-file xxh3-128 when the sender gave
one, fsyncs and renames; a whole-file mismatch downloads the message again (``message_attempts``
in all). **chunk attempt**: one download of one chunk; a chunk that fails verification (gzip
CRC, zstd checksum, length) is tried again, ``chunk_attempts`` in all; one that fails on the
network is tried again within the client's retry budget (meshpipe.config.RetryPolicy); a
chunk refused as a decompression bomb is never downloaded again. **acknowledge**: only after
the file is in place. Nothing is ever left at the destination unless verified; with
``require_verified`` a message that carries nothing to verify it against is refused.

``Accept-Encoding`` is ``gzip`` only for messages stored gzip (then the stored bytes arrive as
they are and the engine inflates them); otherwise ``identity``, so that no server compresses an
uncompressed message on the fly (NHS's sandbox does it at gzip level 9: about 10 MB/s).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol, TypedDict

from typing_extensions import Unpack

from meshpipe._meshpipe import Assembler, AssemblyReport, ChunkWriter
from meshpipe.client import MeshClient
from meshpipe.errors import (
    ChecksumMismatchError,
    ChunkLengthError,
    ChunkTransferError,
    CodecError,
    MeshConnectionError,
    MeshHTTPError,
    MeshpipeError,
    MeshReportError,
    UnverifiedMessageError,
)
from meshpipe.models import ContentChecksum, MessageMetadata, ReportMessage
from meshpipe.retry import RetryingClient, call_with_retry, is_retryable
from meshpipe.transfer.journal import ReceiveJournal
from meshpipe.transfer.leftovers import remove_abandoned_parts
from meshpipe.transfer.results import (
    DEFAULT_CONCURRENCY,
    Progress,
    ProgressCallback,
    ReceiveResult,
    first_failure,
)
from meshpipe.units import Codec, MiB

log = logging.getLogger("meshpipe.transfer")

#: Pieces handed to a compressed chunk's writer (decompression runs off the event loop).
RECEIVE_PIECE_SIZE: Final = 1 * MiB

_VERIFICATION_ERRORS: Final = (ChecksumMismatchError, CodecError, ChunkLengthError)


def receive_codec(metadata: MessageMetadata, decode_payload: bool) -> tuple[Codec, str]:
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


class ReceiveOptions(TypedDict, total=False):
    """How a message is received (each optional; the default in brackets).

    ``acknowledge`` [True]: acknowledge once the file is in place. ``concurrency`` [4]: chunks
    in flight. ``overwrite`` [False]: replace an existing destination. ``decode_payload``
    [True]: restore the original of a meshpipe zstd send (False keeps the ``.zst`` stream).
    ``chunk_attempts`` [3]: downloads of one chunk that fails verification (network failures
    are retried within the client's retry budget instead). ``require_verified`` [False]:
    refuse (unwritten, unacknowledged) a message with nothing to verify it against: no
    meshpipe checksum and no compression. ``message_attempts`` [2]: downloads of the whole
    message after a whole-file checksum failure. ``metadata`` [read with HEAD]: the
    message's headers, when already read.
    ``progress`` [None]: ``progress(done, total)`` per chunk written (total: the size a
    meshpipe sender declared, else the bytes written so far). ``journal`` [a no-op]: told each
    stage.

    Resuming (a durable receive passes these; the transfer itself keeps no record):
    ``partial_path`` [a fresh temporary file]: a stable partial file beside the destination.
    ``keep_partial`` [False]: leave it in place when the receive fails. ``completed`` [none]:
    chunks already in it (number -> xxh3-128), re-checked when reopened (the journal is told
    which were kept and which were torn or changed) and not downloaded again; only the first
    message attempt uses them. ``chunk_size`` [the sender's declared one]: the chunk size when
    the sender declared none (a resumed plain sender's: chunk 1's length). ``sync_chunks``
    [False]: make each chunk durable (fdatasync) before the journal is told it was verified.
    """

    acknowledge: bool
    concurrency: int
    overwrite: bool
    decode_payload: bool
    chunk_attempts: int
    require_verified: bool
    message_attempts: int
    metadata: MessageMetadata | None
    progress: ProgressCallback | None
    journal: ReceiveJournal | None
    partial_path: str | os.PathLike[str] | None
    keep_partial: bool
    completed: Mapping[int, str] | None
    chunk_size: int | None
    sync_chunks: bool


@dataclass(frozen=True, slots=True)
class ReceivePlan:
    """How a message is received, decided from its headers by :meth:`Download.inspect`.

    Only meshpipe's own checksum form is trusted (another sender's free text may describe
    something else, the compressed file say). It describes the original file, so it applies
    unless a zstd payload is kept as it is; such a kept stream has chunks of varying size,
    which can only be written in order."""

    codec: Codec
    accept_encoding: str
    chunk_count: int
    checksum: ContentChecksum | None
    in_order: bool

    @classmethod
    def of(cls, metadata: MessageMetadata, decode_payload: bool) -> ReceivePlan:
        codec, accept_encoding = receive_codec(metadata, decode_payload)
        checksum = metadata.checksum if metadata.checksum and metadata.checksum.meshpipe else None
        kept_zstd = checksum is not None and checksum.codec == "zstd" and codec != "zstd"
        return cls(
            codec=codec,
            accept_encoding=accept_encoding,
            chunk_count=max(1, metadata.chunk_count),
            checksum=None if kept_zstd else checksum,
            in_order=kept_zstd,
        )


class Download:
    """One receive of ``message_id`` into ``destination`` (see the module doc). ``run()`` runs
    every stage; the chunk attempts and the message attempts are methods of their own."""

    def __init__(
        self,
        client: MeshClient,
        message_id: str,
        destination: str | os.PathLike[str],
        **options: Unpack[ReceiveOptions],
    ) -> None:
        if options.get("concurrency", DEFAULT_CONCURRENCY) < 1:
            raise ValueError("concurrency must be at least 1")
        self.client = client
        self.endpoints = RetryingClient(client)
        self.message_id = message_id
        self.destination = Path(destination)
        self.acknowledge = options.get("acknowledge", True)
        self.concurrency = options.get("concurrency", DEFAULT_CONCURRENCY)
        self.overwrite = options.get("overwrite", False)
        self.decode_payload = options.get("decode_payload", True)
        self.chunk_policy = client.settings.retry
        self.chunk_attempts = options.get("chunk_attempts", 3)
        self.require_verified = options.get("require_verified", False)
        self.message_attempts = options.get("message_attempts", 2)
        self.metadata = options.get("metadata")
        self.journal = options.get("journal") or ReceiveJournal()
        self.partial_path = options.get("partial_path")
        self.keep_partial = options.get("keep_partial", False)
        self.completed = dict(options.get("completed") or {})
        self.chunk_size = options.get("chunk_size")
        self.sync_chunks = options.get("sync_chunks", False)
        self._progress_callback = options.get("progress")
        self.progress = Progress(self._progress_callback, None)
        self.plan: ReceivePlan | None = None

    # --- stages ------------------------------------------------------------------------------

    async def inspect(self) -> ReceivePlan:
        """Read the message's headers (unless given) and decide how to receive it."""
        if self.metadata is None:
            self.metadata = await self.endpoints.head(self.message_id)
        if self.metadata.is_report:
            report = ReportMessage.from_metadata(self.metadata)
            raise MeshReportError(
                f"{report.describe()}; it is a report, not data: handle it with receive_report()",
                report=report,
            )
        self.plan = ReceivePlan.of(self.metadata, self.decode_payload)
        if self.require_verified and self.plan.checksum is None and self.plan.codec == "none":
            raise UnverifiedMessageError(
                f"message {self.message_id} carries nothing to verify it against (the sender "
                "gave no meshpipe checksum and no compression), and verification is required; "
                "it was neither written nor acknowledged. Receive it without --require-verified "
                "(require_verified=False) to accept it unverified.",
                message_id=self.message_id,
            )
        declared = self.plan.checksum.size if self.plan.checksum is not None else None
        self.progress = Progress(self._progress_callback, None, declared=declared or 0)
        await self.journal.started(self.metadata)
        return self.plan

    async def assemble(self) -> AssemblyReport:
        """Message attempts until one assembles a verified file."""
        if self.partial_path is None:
            await asyncio.to_thread(remove_abandoned_parts, self.destination)
        for attempt in range(1, self.message_attempts + 1):
            try:
                return await self.attempt_message()
            except ChecksumMismatchError as error:
                if error.chunk is not None or attempt >= self.message_attempts:
                    raise
                log.warning(
                    "message %s failed whole-file verification; downloading again",
                    self.message_id,
                )
        raise ValueError("message_attempts must be at least 1")

    async def attempt_message(self) -> AssemblyReport:
        """Download every missing chunk into an Assembler, then verify, fsync and rename."""
        plan = self._require_plan()
        checksum = plan.checksum
        completed, self.completed = self.completed, {}  # a later attempt starts afresh
        chunk_size = checksum.chunk_size if checksum is not None else self.chunk_size
        assembler = Assembler(
            self.destination,
            chunk_count=plan.chunk_count,
            codec=plan.codec,
            chunk_size=chunk_size,
            file_size=checksum.size if checksum is not None else None,
            xxh3_128=checksum.xxh3_128 if checksum is not None else None,
            sha256=checksum.sha256 if checksum is not None else None,
            overwrite=self.overwrite,
            partial_path=self.partial_path,
            completed=completed or None,
            keep_partial=self.keep_partial,
            trailer=checksum.trailer if checksum is not None else False,
        )
        self.progress.restart()
        try:
            if completed:
                await self.journal.reopened(assembler.accepted, assembler.rejected)
                for _ in assembler.accepted:
                    self.progress.add(chunk_size or 0)
            await self._fetch_all(assembler, chunk_size)
            return await asyncio.to_thread(assembler.finish)
        except BaseException:
            assembler.abort()
            raise

    async def fetch_chunk(self, assembler: Assembler, number: int) -> None:
        """Chunk attempts for chunk ``number``; failures name the chunk."""
        try:
            await call_with_retry(
                lambda: self.attempt_chunk(assembler, number),
                self.chunk_policy,
                idempotent=True,
                what=f"chunk {number} of message {self.message_id}",
                also=_VERIFICATION_ERRORS,
                also_attempts=self.chunk_attempts,
                also_when=lambda error: not self._refused_for_good(number, error),
            )
        except _VERIFICATION_ERRORS as error:
            if self._refused_for_good(number, error):
                raise ChunkTransferError(
                    f"chunk {number} of message {self.message_id} was refused: {error}; it was "
                    "not downloaded again (it would be refused again) and the message was not "
                    "acknowledged: ask the sender about it",
                    chunk=number,
                    message_id=self.message_id,
                ) from error
            raise self._chunk_failed(number, error) from error
        except (MeshConnectionError, MeshHTTPError) as error:
            if not is_retryable(error, idempotent=True):
                raise ChunkTransferError(
                    f"chunk {number} of message {self.message_id} could not be downloaded: {error}",
                    chunk=number,
                    message_id=self.message_id,
                ) from error
            raise self._chunk_failed(number, error) from error

    async def attempt_chunk(self, assembler: Assembler, number: int) -> None:
        """One download of chunk ``number`` into its writer (aborted if anything fails)."""
        plan = self._require_plan()
        writer = assembler.open_chunk(number)
        sink = _ChunkSink(writer, offload=plan.codec != "none")
        try:
            await self.client.download_chunk(
                self.message_id,
                number,
                sink,
                accept_encoding=plan.accept_encoding,
                expect_encoding="gzip" if plan.codec == "gzip" else "identity",
            )
            await sink.flush()
            report = await asyncio.to_thread(lambda: writer.finish(sync=self.sync_chunks))
        except BaseException as error:
            writer.abort()
            if isinstance(error, _VERIFICATION_ERRORS):
                log.warning(
                    "chunk %d of %s failed verification (%s)", number, self.message_id, error
                )
            raise
        self.progress.add(report.length)
        await self.journal.chunk_verified(number, report.xxh3_128, report.length)

    async def run(self) -> ReceiveResult:
        """Every stage in order; the journal is told the outcome."""
        try:
            await self.inspect()
            assembled = await self.assemble()
            await self.journal.assembled(assembled)
            if self.acknowledge:
                await self.endpoints.acknowledge(self.message_id)
                await self.journal.acknowledged()
        except Exception as error:
            await self.journal.failed(error)
            raise
        assert self.metadata is not None
        return ReceiveResult(
            message_id=self.message_id,
            path=Path(assembled.path),
            size=assembled.size,
            chunk_count=assembled.chunk_count,
            verified=list(assembled.verified),
            acknowledged=self.acknowledge,
            metadata=self.metadata,
        )

    # --- pieces --------------------------------------------------------------------------------

    async def _fetch_all(self, assembler: Assembler, chunk_size: int | None) -> None:
        plan = self._require_plan()
        numbers = assembler.missing
        if plan.in_order:
            for number in numbers:
                await self.fetch_chunk(assembler, number)
            return
        if chunk_size is None and plan.chunk_count > 1:
            # A plain sender: chunk 1's length is every chunk's but the last.
            await self.fetch_chunk(assembler, 1)
            assembler.assume_fixed_chunk_size()
            numbers = [number for number in numbers if number != 1]
        window = asyncio.Semaphore(self.concurrency)

        async def fetch(number: int) -> None:
            async with window:
                await self.fetch_chunk(assembler, number)

        try:
            async with asyncio.TaskGroup() as group:
                for number in numbers:
                    group.create_task(fetch(number))
        except BaseExceptionGroup as group_error:
            failure = first_failure(group_error)
            raise failure from failure.__cause__

    def _refused_for_good(self, number: int, error: Exception) -> bool:
        """Whether chunk ``number`` decoded past a size cap (a decompression bomb, stopped
        there): the same stored bytes would again, so it is not downloaded again. Past an
        exact planned length (a meshpipe checksum's, or a plain sender's middle chunk, as long
        as chunk 1) it may be damage on the way (a flipped byte can lengthen a gzip stream),
        retried like a checksum or codec failure."""
        if not (isinstance(error, ChunkLengthError) and error.actual > error.expected):
            return False
        plan = self._require_plan()
        exact = plan.checksum is not None or 1 < number < plan.chunk_count
        return not exact

    def _chunk_failed(self, number: int, error: BaseException) -> ChunkTransferError:
        return ChunkTransferError(
            f"chunk {number} of message {self.message_id} could not be received (last: "
            f"{error}); the message was not acknowledged: try again later, or ask the sender "
            "to resend",
            chunk=number,
            message_id=self.message_id,
        )

    def _require_plan(self) -> ReceivePlan:
        if self.plan is None:
            raise RuntimeError("inspect() decides the plan first")
        return self.plan


async def receive_message(
    client: MeshClient,
    message_id: str,
    destination: str | os.PathLike[str],
    **options: Unpack[ReceiveOptions],
) -> ReceiveResult:
    """Download a message to ``destination``, verified, and acknowledge it (unless told not to;
    ``options`` are :class:`ReceiveOptions`).

    A REPORT message raises MeshReportError carrying the typed ReportMessage (see
    :func:`receive_report`). Nothing is ever left at ``destination`` unless verified.
    """
    return await Download(client, message_id, destination, **options).run()


async def download_message(client: MeshClient, message_id: str) -> tuple[MessageMetadata, bytes]:
    """A whole (small) message in memory, every chunk (each retried), decompressed by MESH.
    For large messages use :func:`receive_message`, which streams to disk and verifies."""
    parts: list[bytes] = []

    async def chunk(number: int) -> MessageMetadata:
        pieces: list[bytes] = []  # one try's bytes: kept only if the try succeeds

        async def sink(piece: bytes) -> None:
            pieces.append(piece)

        downloaded = await client.download_chunk(message_id, number, sink)
        parts.extend(pieces)
        return downloaded.metadata

    async def retried(number: int) -> MessageMetadata:
        return await call_with_retry(
            lambda: chunk(number),
            client.settings.retry,
            idempotent=True,
            what=f"download of chunk {number} of {message_id}",
        )

    metadata = await retried(1)
    for number in range(2, metadata.chunk_count + 1):
        await retried(number)
    return metadata, b"".join(parts)


async def receive_report(
    client: MeshClient, message_id: str, *, acknowledge: bool = True
) -> ReportMessage:
    """Read a REPORT message's details and (by default) acknowledge it."""
    endpoints = RetryingClient(client)
    metadata = await endpoints.head(message_id)
    if not metadata.is_report:
        raise MeshpipeError(f"message {message_id} is DATA, not a report: use receive_message")
    if acknowledge:
        await endpoints.acknowledge(message_id)
    return ReportMessage.from_metadata(metadata)


_UNSAFE_NAME: Final = re.compile(r"[^A-Za-z0-9._-]")
#: The longest received file name, in bytes: 255 (the usual file-name limit) less the 44 bytes
#: the Assembler adds for its temporary file (``.{name}.meshpipe-{pid}-{counter}.part``: pid up
#: to 7 digits, counter up to 20) and 11 to spare, so the temporary name fits too.
MAX_NAME_BYTES: Final = 200
#: An extension longer than this is not kept when a name is shortened.
_MAX_EXTENSION: Final = 16


def _fit(name: str, limit: int, original: str) -> str:
    """``name`` (ASCII) cut to ``limit`` bytes keeping its extension, made unique by a hash of
    ``original``; unchanged when it fits."""
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    stem, dot, extension = name.rpartition(".")
    if not dot or not stem or len(extension) > _MAX_EXTENSION:
        stem, extension = name, ""
    suffix = f"-{digest}" + (f".{extension}" if extension else "")
    return stem[: max(1, limit - len(suffix))] + suffix


def safe_filename(name: str | None, message_id: str, *, limit: int = MAX_NAME_BYTES) -> str:
    """A file name from mex-FileName: no directory part, only ``A-Za-z0-9._-`` (others become
    ``_``), not starting with ``.`` or ``-`` (so never hidden, nor taken as an option by a
    shell command), and at most ``limit`` bytes: a longer name is cut, keeping its extension,
    with a hash of the full name so that two long names stay apart."""
    original = (name or "").replace("\\", "/")
    base = os.path.basename(original).strip()
    base = _UNSAFE_NAME.sub("_", base).lstrip(".")
    if base.startswith("-"):
        base = "_" + base.lstrip("-")
    if not base.strip("_"):
        base = ""
    if not base:
        base = _UNSAFE_NAME.sub("_", message_id).lstrip(".-") + ".dat"
    return _fit(base, limit, original or message_id)


@dataclass(frozen=True, slots=True)
class ReceiveFailure:
    message_id: str
    error: BaseException


def inbox_names(metadata: MessageMetadata, decode_payload: bool) -> tuple[str, str]:
    """The names a message received into a folder may take: from mex-FileName made safe
    (``.zst`` dropped when the payload is decoded), and that name prefixed with the message
    id, for when the first is taken."""
    message_id = metadata.message_id
    name = safe_filename(metadata.filename, message_id)
    if decode_payload and name.endswith(".zst") and receive_codec(metadata, True)[0] == "zstd":
        name = name[: -len(".zst")] or safe_filename(None, message_id)
    prefixed = f"{_UNSAFE_NAME.sub('_', message_id)}-{name}"
    return name, _fit(prefixed, MAX_NAME_BYTES, f"{message_id}-{metadata.filename}")


def _inbox_target(
    directory: Path, metadata: MessageMetadata, decode_payload: bool, taken: set[Path]
) -> Path:
    """Where ``receive_all`` puts a message (:func:`inbox_names`): the prefixed name if the
    first is taken (on disk, or in ``taken``: by a message of the same run, which the target
    is added to)."""
    name, prefixed = inbox_names(metadata, decode_payload)
    target = directory / name
    if target.exists() or target in taken:
        target = directory / prefixed
    taken.add(target)
    return target


#: What :func:`receive_all` hands each report to before acknowledging it: the report back,
#: perhaps with more facts (e.g. the ledger transfer it was recorded on).
ReportHandler = Callable[[ReportMessage], Awaitable[ReportMessage]]


class MessageReceiver(Protocol):
    """How :func:`receive_all` receives one DATA message: :func:`receive_message` by default;
    a durable receive (resume, exactly-once) passes its own."""

    async def __call__(
        self,
        client: MeshClient,
        message_id: str,
        destination: str | os.PathLike[str],
        **options: Unpack[ReceiveOptions],
    ) -> ReceiveResult: ...


async def receive_all(
    client: MeshClient,
    out_dir: str | os.PathLike[str],
    *,
    workflow_filter: str | None = None,
    acknowledge: bool = True,
    concurrency: int = DEFAULT_CONCURRENCY,
    decode_payload: bool = True,
    receiver: MessageReceiver | None = None,
    require_verified: bool = False,
    messages_at_once: int = 1,
    on_report: ReportHandler | None = None,
) -> list[ReceiveResult | ReportMessage | ReceiveFailure]:
    """Receive every message in the inbox into ``out_dir`` (see :func:`_inbox_target`), each
    with ``receiver`` (default :func:`receive_message`), up to ``messages_at_once`` messages
    side by side (each with ``concurrency`` chunks in flight); results in inbox order.
    Reports are returned typed, each first handed to ``on_report`` (a durable receive records
    it on its send; what it returns is returned) and only then acknowledged when
    ``acknowledge`` (a report ``on_report`` fails on is left in the inbox); a failed message is
    returned as ReceiveFailure and left in the inbox (with ``require_verified``, so is one that
    carries nothing to verify it against)."""
    if messages_at_once < 1:
        raise ValueError("messages_at_once must be at least 1")
    directory = Path(out_dir)
    await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    endpoints = RetryingClient(client)
    gate = asyncio.Semaphore(messages_at_once)
    taken: set[Path] = set()

    async def one(message_id: str) -> ReceiveResult | ReportMessage | ReceiveFailure:
        async with gate:
            try:
                metadata = await endpoints.head(message_id)
                if metadata.is_report:
                    report = ReportMessage.from_metadata(metadata)
                    if on_report is not None:
                        report = await on_report(report)
                    if acknowledge:
                        await endpoints.acknowledge(message_id)
                    return report
                return await (receiver or receive_message)(
                    client,
                    message_id,
                    _inbox_target(directory, metadata, decode_payload, taken),
                    acknowledge=acknowledge,
                    concurrency=concurrency,
                    decode_payload=decode_payload,
                    require_verified=require_verified,
                    metadata=metadata,
                )
            except (MeshpipeError, OSError) as error:
                # returned to the caller, who reports it (the CLI prints it once)
                log.info("message %s not received: %s", message_id, error)
                return ReceiveFailure(message_id, error)

    ids = await endpoints.list_inbox(workflow_filter=workflow_filter)
    async with asyncio.TaskGroup() as group:  # a bug or a cancellation stops them all
        tasks = [group.create_task(one(message_id)) for message_id in ids]
    return [task.result() for task in tasks]
