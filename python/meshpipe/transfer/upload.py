"""Send a file as one MESH message, in stages: :class:`Upload` (prepare, first, middle, last).

**prepare** (``plan_file`` then ``read_first``): the headers are checked and the engine's
Splitter plans the file (so a durable record can begin before anything is read); then it reads
and compresses it on its own threads. Where the whole-file xxh3-128 goes decides when it is
computed (see "The whole-file checksum" below).
**first**: chunk 1 goes alone (it creates the message and returns its id), never re-posted
blindly (retry.post_first_chunk_safely). **middle**: chunks 2..N-1 go in the upload's order
(config.UploadOrder): ``in-order`` pipelines them in chunk order, at most two requests
outstanding (meshpipe.transfer.order says what that guarantees on the wire); ``concurrent``
sends ``concurrency`` side by side; ``sequential`` one request at a time. A slot of the window
is taken *before* the next chunk is read, so memory stays at about ``max(window, 4) + 1``
chunk buffers (the engine reads and compresses at least 4 chunks ahead, so that in order the
codec still runs ahead of the link); one failed chunk cancels its siblings (TaskGroup) and the
error names the chunk. **last**: chunk N goes only
after every other chunk was accepted (a server that stores chunks as files may refuse, with
500, a last chunk that overtakes an earlier one, as mesh-sandbox does, leaving the message
``uploading``), and only if the Splitter's own digest still equals the hash sent in chunk 1: a
file that changed while it was sent is never completed.
Bodies go to the socket straight from the engine's buffers in pieces of ≤ 1 MiB.

The whole-file checksum (models.ContentChecksum), in one of two places:

- **trailer** (gzip and zstd with more than one chunk, unless ``checksum_in_header``): chunk 1
  says ``meshpipe/2 xxh3-128:trailer size:<bytes> chunk:<chunk size> codec:<codec>``, and the
  engine ends the last chunk with a manifest of the whole file's xxh3-128 and size, computed as
  the Splitter reads: the file is read once. A resume whose hash was not recorded hashes the
  file for the manifest (one read) after its size, modification time and inode checked out.
- **header** (codec none, a one-chunk message, or ``checksum_in_header``): chunk 1 says
  ``meshpipe/1 xxh3-128:<hex> size:<bytes> chunk:<chunk size> codec:<codec>``; the hash of a
  one-chunk message is that chunk's, read anyway; otherwise the file is hashed while chunk 1 is
  read (a second read of the file, a fast one from the page cache).

Either way, before the last chunk the file's size, modification time and inode are compared
with what they were when the send planned it, and a full split's own digest with the hash sent:
a file that changed while it was sent is never completed.

The message id and the chunk source are the upload's state, and the middle and last stages
read chunks from that one source. **resume** (``run_resumed``) sets them for a message created
before: the message id, the hash sent in its chunk 1, and a Splitter over the chunks MESH does
not hold (and always the last); such a subset has no whole-file digest, so before the last
chunk the file's size, modification time and inode are compared with what they were when the
resume began. The durable layer (meshpipe.durable) decides what to resume; this module knows
nothing of the ledger.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Collection, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypedDict

from typing_extensions import Unpack

from meshpipe._meshpipe import Chunk, ChunkPlan, Splitter, xxh3_128_file
from meshpipe.client import MeshClient
from meshpipe.config import UPLOAD_ORDERS, UploadOrder
from meshpipe.errors import (
    ChunkSizeError,
    ChunkTransferError,
    MeshConnectionError,
    MeshHTTPError,
    MeshMessageLockedError,
    MeshNotFoundError,
    MeshpipeError,
    MeshProtocolError,
    SourceChangedError,
)
from meshpipe.headers import SendHeaders
from meshpipe.models import ContentChecksum
from meshpipe.retry import RetryingClient, call_with_retry, post_first_chunk_safely
from meshpipe.transfer.journal import SendJournal
from meshpipe.transfer.order import InOrder, Pacing, Turn
from meshpipe.transfer.results import (
    DEFAULT_CONCURRENCY,
    Progress,
    ProgressCallback,
    SendResult,
    first_failure,
    release,
)
from meshpipe.units import (
    DEFAULT_CHUNK_SIZE,
    MAX_FILE_SIZE,
    MAX_REQUEST_SIZE,
    MIN_CHUNK_SIZE,
    Codec,
)

log = logging.getLogger("meshpipe.transfer")

#: Chunk requests alive at once in order: one awaiting its answer, one sending its body, one
#: read and waiting for its turn (so that it starts the moment the body before it is through).
IN_ORDER_WINDOW = 3

FileIdentity = tuple[int, int, int, int]
"""A file as a resume knows it: (size, modification time in ns, inode, device)."""


def new_local_id() -> str:
    """A unique mex-LocalID (no patient data), kept for every retry of one send."""
    return f"meshpipe-{uuid.uuid4().hex}"


async def find_sent_message(
    client: MeshClient, local_id: str, *, since: datetime | None = None, max_pages: int = 20
) -> str | None:
    """The id of a message this mailbox sent with ``local_id`` (any state, including
    ``uploading``), or None when MESH says there is none. Asks the rich outbox, and falls
    back to tracking by local id where the rich outbox is not offered."""
    endpoints = RetryingClient(client)
    since = since or datetime.now(UTC) - timedelta(days=1)
    try:
        sent = await endpoints.outbox_rich(start_time=since, max_pages=max_pages)
    except MeshHTTPError as error:
        if error.status not in (404, 405, 501):
            raise
    else:
        matches = [item for item in sent if item.local_id == local_id]
        if len(matches) > 1:
            raise MeshProtocolError(
                f"{len(matches)} messages carry local id {local_id!r}; check them with "
                "`meshpipe track` before sending again"
            )
        return matches[0].message_id if matches else None
    try:
        return (await endpoints.track_local_id(local_id)).message_id
    except MeshNotFoundError:
        return None


class SendOptions(TypedDict, total=False):
    """How a file is sent (each optional; the default in brackets).

    ``codec`` ["none"]: ``gzip`` (Content-Encoding: gzip per chunk, any MESH recipient gets the
    original file) or ``zstd`` (the recipient gets a standard ``.zst`` file, flagged with
    ``mex-Content-Compressed: Y``; a meshpipe recipient restores the original). ``level``
    [the codec's default]. ``chunk_size`` [DEFAULT_CHUNK_SIZE]: uncompressed bytes a chunk.
    ``order`` [the client's ``config.effective_upload_order``: ``in-order`` for NHS's
    integration, deployment and live environments, else ``concurrent``]: how chunks 2..N-1 go
    (config.UploadOrder). ``concurrency`` [4]: chunks in flight when concurrent.
    ``sequential`` [False]: the same as ``order="sequential"`` (one request at a time, the next
    only after the previous was answered). ``max_file_size`` [MAX_FILE_SIZE]: larger files are
    refused. ``min_payload_size`` [MIN_CHUNK_SIZE]: MESH sees only the compressed bytes of a
    zstd payload, so every chunk but the last must compress to at least this (0 for a server
    that does not check, such as mesh-sandbox); a chunk that does not is refused before it is
    sent. ``checksum_in_header`` [False]: with gzip or zstd, put the whole-file xxh3-128 in
    chunk 1's header (``meshpipe/1``, which meshpipe receivers older than the trailer form
    verify) at the cost of reading the file twice, instead of at the end of the last chunk.
    """

    codec: Codec
    level: int | None
    chunk_size: int
    concurrency: int
    order: UploadOrder
    sequential: bool
    max_file_size: int
    min_payload_size: int
    checksum_in_header: bool


def check_request_size(chunk: Chunk, codec: Codec, min_payload_size: int) -> None:
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


class _ChunkPost:
    """Tries of one chunk n ≥ 2 (an overwrite: safe to repeat). A 423 to a repeated try of the
    *last* chunk means an earlier try may have completed the message: MESH tracking tells."""

    def __init__(self, upload: Upload, chunk: Chunk, turn: Turn | None = None) -> None:
        self._upload = upload
        self._chunk = chunk
        self._turn = turn
        self.tries = 0
        self._last_error: BaseException | None = None

    async def __call__(self) -> None:
        upload, chunk = self._upload, self._chunk
        self.tries += 1
        if self._last_error is not None:
            await upload.journal.chunk_retrying(chunk.number, self.tries, self._last_error)
        try:
            await self._post()
        except Exception as error:
            self._last_error = error
            raise

    async def _post(self) -> None:
        """One try; in order, it waits for its turn, and a request that steps aside for the
        chunk before it (being sent again) is begun afresh, not counted as a failure."""
        turn = self._turn
        while True:
            pacing = None
            if turn is not None:
                pacing = turn.pacing_after(await turn.begin())
            try:
                await self._post_once(pacing)
            except Exception:
                if turn is not None:
                    turn.ended(accepted=False)
                if pacing is not None and pacing.stepped_aside:
                    continue
                raise
            if turn is not None:
                turn.ended(accepted=True)
            return

    async def _post_once(self, pacing: Pacing | None) -> None:
        upload, chunk = self._upload, self._chunk
        try:
            await upload.client.send_chunk(
                upload.require_message_id(),
                chunk.number,
                chunk.count,
                chunk,
                content_encoding=upload.content_encoding,
                pacing=pacing,
            )
        except MeshMessageLockedError:
            if self.tries > 1 and chunk.number == chunk.count and await upload.is_complete():
                return
            raise


class Upload:
    """One send of ``source`` with ``headers``, in stages (see the module doc). ``run()`` runs
    them all; each stage is a method, so that a resume can run a subset of them.

    State: ``message_id`` (set by :meth:`send_first`), ``chunks`` (the one chunk source, read
    only through ``_next_chunk``), ``xxh3_128`` (the whole-file hash sent in chunk 1),
    ``bytes_sent`` and ``progress``. The middle and last stages read nothing else: a resumed
    send sets ``message_id`` to the message it created before, points ``chunks`` at the
    chunks not yet accepted, and runs :meth:`send_middle` and :meth:`send_last`.
    """

    def __init__(
        self,
        client: MeshClient,
        source: str | os.PathLike[str],
        headers: SendHeaders,
        *,
        progress: ProgressCallback | None = None,
        journal: SendJournal | None = None,
        **options: Unpack[SendOptions],
    ) -> None:
        concurrency = options.get("concurrency", DEFAULT_CONCURRENCY)
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.order = _order_of(client, options)
        self.client = client
        self.source = Path(source)
        self.headers = headers
        self.codec: Codec = options.get("codec", "none")
        self.level = options.get("level")
        self.chunk_size = options.get("chunk_size", DEFAULT_CHUNK_SIZE)
        self.window_size = {"in-order": IN_ORDER_WINDOW, "sequential": 1}.get(
            self.order, concurrency
        )
        self.max_file_size = options.get("max_file_size", MAX_FILE_SIZE)
        self.min_payload_size = options.get("min_payload_size", MIN_CHUNK_SIZE)
        self.checksum_in_header = options.get("checksum_in_header", False)
        self.journal = journal or SendJournal()
        self._progress_callback = progress
        # State, set by the stages:
        self.message_id: str | None = None
        self.splitter: Splitter | None = None
        self.chunks: Iterator[Chunk] = iter(())
        self.first: Chunk | None = None
        self.xxh3_128 = ""
        self.bytes_sent = 0
        self.progress = Progress(progress, 0)
        self._identity: FileIdentity | None = None
        self._resuming = False
        self.trailer = False

    @property
    def local_id(self) -> str:
        assert self.headers.local_id is not None, "prepare() sets the local id"
        return self.headers.local_id

    @property
    def plan(self) -> ChunkPlan:
        if self.splitter is None:
            raise RuntimeError("the upload is not prepared")
        return self.splitter.plan

    @property
    def content_encoding(self) -> str | None:
        return "gzip" if self.codec == "gzip" else None

    def require_message_id(self) -> str:
        if self.message_id is None:
            raise RuntimeError("chunk 1 has not been sent")
        return self.message_id

    # --- stages ------------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Check the headers, plan the file, read chunk 1 and hash the whole file."""
        if self.splitter is None:
            await self.plan_file()
        await self.read_first()

    async def plan_file(self) -> None:
        """Check the headers and plan the file (nothing is read yet): after this the local id,
        the codec and the plan are known, so a durable record can be begun."""
        self.headers = self._complete_headers().validate()
        if self.codec == "none" and (await asyncio.to_thread(os.stat, self.source)).st_size == 0:
            # MESH refuses an empty body (417, code 02). An empty gzip stream (20 bytes) is not
            # empty, and every MESH client undoes Content-Encoding: the recipient gets an empty
            # file.
            log.info(
                "%s is empty: sending it gzip-encoded, as MESH refuses an empty body", self.source
            )
            self.codec = "gzip"
        self._identity = await asyncio.to_thread(_identity, self.source)
        plan = await asyncio.to_thread(
            ChunkPlan,
            self._identity[0],
            self.chunk_size,
            codec=self.codec,
            max_file_size=self.max_file_size,
        )
        self.trailer = self._uses_trailer(plan.chunk_count)
        if self.trailer:
            # Known from the plan alone: a durable record of these headers can say which form
            # chunk 1 carries, for a resume to end the message the same way.
            self.headers = self.headers.replace(checksum=self._trailer_header(plan))
        await self._open_splitter()
        self.progress = Progress(self._progress_callback, self.plan.file_size)

    def _trailer_header(self, plan: ChunkPlan) -> str:
        return ContentChecksum(
            size=plan.file_size, chunk_size=plan.chunk_size, codec=self.codec, trailer=True
        ).header_value()

    def _uses_trailer(self, chunk_count: int) -> bool:
        """Whether the whole-file hash goes at the end of the last chunk (module doc)."""
        return self.codec in ("gzip", "zstd") and chunk_count > 1 and not self.checksum_in_header

    async def read_first(self) -> None:
        """Read chunk 1 and, for the header form, hash the whole file (unless ``xxh3_128`` is
        already known, as on a resume that has just checked it); put the checksum in the
        headers."""
        self.first, self.xxh3_128 = await self._read_first_and_hash(self.xxh3_128)
        checksum = ContentChecksum(
            xxh3_128=None if self.trailer else self.xxh3_128,
            size=self.plan.file_size,
            chunk_size=self.plan.chunk_size,
            codec=self.codec,
            trailer=self.trailer,
        ).header_value()
        self.headers = self.headers.replace(checksum=checksum)
        await self.journal.prepared(self.local_id, self.plan, "" if self.trailer else self.xxh3_128)

    async def resume(
        self,
        message_id: str,
        xxh3_128: str,
        accepted: Collection[int],
        identity: FileIdentity | None = None,
    ) -> None:
        """Take up a message created before: ``message_id``, whose chunks ``accepted`` MESH
        already holds, of this file whose whole-file hash was just checked to be
        ``xxh3_128`` while it had ``identity`` (size, mtime in ns, inode, device; by default
        as it is now). The chunk source becomes the other chunks, and always the last (MESH
        overwrites a re-sent chunk 2..N of an uploading message), so that :meth:`send_middle`
        and :meth:`send_last` finish the message. ``headers`` must be those sent in chunk 1."""
        self.headers = self.headers.validate()
        if identity is None:
            identity = await asyncio.to_thread(_identity, self.source)
        self._identity = identity
        self._resuming = True
        self._check_source()
        whole = await asyncio.to_thread(
            ChunkPlan,
            identity[0],
            self.chunk_size,
            codec=self.codec,
            max_file_size=self.max_file_size,
        )
        count = whole.chunk_count
        if count < 2:
            raise MeshpipeError(f"message {message_id} has one chunk: nothing to resume")
        remaining = sorted({n for n in range(2, count + 1) if n not in accepted} | {count})
        sent = ContentChecksum.parse(self.headers.checksum)
        if sent is not None and sent.meshpipe:
            self.trailer = sent.trailer
        else:
            self.trailer = self._uses_trailer(count)
        if self.trailer and not xxh3_128:
            # The hash was not recorded (the send stopped before its last chunk was read): the
            # manifest needs it. The file's identity was checked above.
            xxh3_128 = await asyncio.to_thread(xxh3_128_file, self.source)
            self._check_source()
            await self.journal.source_hashed(xxh3_128)
        await self._open_splitter(remaining, trailer_xxh3_128=xxh3_128 if self.trailer else None)
        self.message_id = message_id
        self.xxh3_128 = xxh3_128
        self.progress = Progress(self._progress_callback, self.plan.file_size)
        done = [n for n in range(1, count + 1) if n not in remaining]
        self.progress.add(sum(self.plan.chunk_length(n) for n in done))

    async def send_first(self) -> str:
        """Send chunk 1 (it creates the message); the message id becomes the upload's."""
        first, self.first = self.first, None
        if first is None:
            raise RuntimeError("prepare() reads chunk 1 before it is sent")
        try:
            check_request_size(first, self.codec, self.min_payload_size)
            await self.journal.chunk_sending(1, first.xxh3_128, first.payload_size)
            started = datetime.now(UTC)
            self.message_id = await post_first_chunk_safely(
                lambda: self.client.send_message(
                    self.headers,
                    first,
                    chunk_count=self.plan.chunk_count,
                    content_encoding=self.content_encoding,
                ),
                lambda: find_sent_message(
                    self.client, self.local_id, since=started - timedelta(minutes=10)
                ),
                self.client.settings.retry,
                local_id=self.local_id,
                before_retry=lambda attempt, error: self.journal.chunk_retrying(1, attempt, error),
            )
            self._count_sent(first)
        finally:
            release(first)
        await self.journal.message_created(self.message_id)
        await self.journal.chunk_accepted(1)
        log.info(
            "message %s (local id %s): chunk 1 of %d sent",
            self.message_id,
            self.local_id,
            self.plan.chunk_count,
        )
        return self.message_id

    async def send_middle(self) -> Chunk | None:
        """Send every chunk before the last from the chunk source, ``window_size`` at a time
        (in order: each taking its turn after the one read before it); return the last chunk,
        read but not sent (None for a one-chunk message)."""
        window = asyncio.Semaphore(self.window_size)
        sequence = InOrder() if self.order == "in-order" else None
        last: Chunk | None = None
        try:
            async with asyncio.TaskGroup() as group:
                while True:
                    await window.acquire()
                    chunk = await self._next_chunk()
                    if chunk is None or chunk.number == chunk.count:
                        window.release()
                        last = chunk
                        break
                    turn = sequence.turn(chunk.number) if sequence is not None else None
                    group.create_task(self.send_chunk(chunk, window, turn))
        except BaseExceptionGroup as group_error:
            release(last)
            failure = first_failure(group_error)
            raise failure from failure.__cause__
        return last

    async def send_last(self, last: Chunk) -> None:
        """Send the last chunk, once the file is known unchanged."""
        try:
            self._check_source()
        except BaseException:
            release(last)
            raise
        await self.send_chunk(last)

    async def run(self) -> SendResult:
        """Every stage in order; the journal is told the outcome."""

        async def stages() -> None:
            await self.prepare()
            await self.send_first()
            if self.plan.chunk_count > 1:
                await self._send_rest()

        return await self._run(stages())

    async def run_resumed(
        self,
        message_id: str,
        xxh3_128: str,
        accepted: Collection[int],
        identity: FileIdentity | None = None,
    ) -> SendResult:
        """:meth:`resume`, then the chunks MESH does not hold, the last one last; the
        journal is told the outcome."""

        async def stages() -> None:
            await self.resume(message_id, xxh3_128, accepted, identity)
            await self._send_rest()

        return await self._run(stages())

    async def _send_rest(self) -> None:
        last = await self.send_middle()
        if last is None:
            raise MeshpipeError(f"the engine yielded no chunk {self.plan.chunk_count}")
        await self.send_last(last)

    async def _run(self, stages: Coroutine[Any, Any, None]) -> SendResult:
        try:
            await stages
            result = self.result()
        except Exception as error:
            await self.journal.failed(error)
            raise
        finally:
            await self.close()
        await self.journal.completed(result)
        return result

    # --- pieces --------------------------------------------------------------------------------

    async def send_chunk(
        self, chunk: Chunk, window: asyncio.Semaphore | None = None, turn: Turn | None = None
    ) -> None:
        """Send chunk n ≥ 2 (retried: it overwrites), in its ``turn`` when in order; failures
        name the chunk."""
        message_id = self.require_message_id()
        try:
            check_request_size(chunk, self.codec, self.min_payload_size)
            await self.journal.chunk_sending(chunk.number, chunk.xxh3_128, chunk.payload_size)
            await call_with_retry(
                _ChunkPost(self, chunk, turn),
                self.client.settings.retry,
                idempotent=True,
                what=f"chunk {chunk.number} of {chunk.count} of message {message_id}",
            )
            self._count_sent(chunk)
        except (MeshHTTPError, MeshConnectionError) as error:
            raise ChunkTransferError(
                f"chunk {chunk.number} of {chunk.count} of message {message_id} failed: {error}",
                chunk=chunk.number,
                message_id=message_id,
            ) from error
        finally:
            release(chunk)
            if window is not None:
                window.release()
        await self.journal.chunk_accepted(chunk.number)

    async def is_complete(self) -> bool:
        """Whether MESH tracking says the message was completed (accepted or acknowledged)."""
        tracking = await RetryingClient(self.client).track(self.require_message_id())
        return (tracking.status or "").lower() in ("accepted", "acknowledged")

    def result(self) -> SendResult:
        return SendResult(
            message_id=self.require_message_id(),
            local_id=self.local_id,
            chunk_count=self.plan.chunk_count,
            file_size=self.plan.file_size,
            bytes_sent=self.bytes_sent,
            xxh3_128=self.xxh3_128,
            codec=self.codec,
            checksum_header=self.headers.checksum or "",
        )

    async def close(self) -> None:
        release(self.first)
        self.first = None
        if self.splitter is not None:
            await asyncio.to_thread(self.splitter.close)

    def _complete_headers(self) -> SendHeaders:
        """The defaults a send fills in: a local id, the file's name, and for zstd the ``.zst``
        name, ``application/zstd`` and ``mex-Content-Compressed: Y``, said in every header a
        plain recipient can read."""
        headers = self.headers
        zstd = self.codec == "zstd"
        return headers.replace(
            local_id=headers.local_id or new_local_id(),
            filename=headers.filename or self.source.name + (".zst" if zstd else ""),
            content_type=headers.content_type or ("application/zstd" if zstd else None),
            compressed=True if zstd else headers.compressed,
        )

    async def _open_splitter(
        self, chunks: list[int] | None = None, *, trailer_xxh3_128: str | None = None
    ) -> None:
        """The one chunk source: the engine's Splitter over the file, or over ``chunks``. It
        reads and compresses ahead by at least DEFAULT_CONCURRENCY chunks, also when one chunk
        is sent at a time (``sequential``), so that the codec does not wait for the link. With
        the trailer form the last chunk ends with the manifest: of the Splitter's own digest,
        or, for ``chunks``, of ``trailer_xxh3_128``."""
        self.splitter = await asyncio.to_thread(
            Splitter,
            self.source,
            codec=self.codec,
            level=self.level,
            chunk_size=self.chunk_size,
            window=max(self.window_size, DEFAULT_CONCURRENCY) + 1,
            max_file_size=self.max_file_size,
            chunks=chunks,
            trailer=self.trailer,
            trailer_xxh3_128=trailer_xxh3_128,
        )
        self.chunks = iter(self.splitter)

    async def _next_chunk(self) -> Chunk | None:
        """The one place chunks come from. With the trailer form, taking the last chunk of a
        full split makes the whole-file hash known: it becomes the upload's (and the journal's);
        a hash known before (a restarted send) must equal it."""
        chunk = await asyncio.to_thread(next, self.chunks, None)
        if chunk is None or not self.trailer or self._resuming or chunk.number < chunk.count:
            return chunk
        try:
            digest = await asyncio.to_thread(self._require_splitter().digest)
            if self.xxh3_128 and digest.xxh3_128 != self.xxh3_128:
                raise SourceChangedError(
                    f"{self.source} changed (xxh3-128 {self.xxh3_128} when checked, "
                    f"{digest.xxh3_128} as sent); the message was not completed: send it again"
                )
        except BaseException:
            release(chunk)
            raise
        self.xxh3_128 = digest.xxh3_128
        await self.journal.source_hashed(self.xxh3_128)
        return chunk

    def _require_splitter(self) -> Splitter:
        if self.splitter is None:
            raise RuntimeError("the upload is not prepared")
        return self.splitter

    async def _read_first_and_hash(self, known: str) -> tuple[Chunk, str]:
        if self.trailer:
            # The hash comes from the Splitter's digest with the last chunk (_next_chunk).
            first = await self._next_chunk()
            expected = known
        elif known and self.plan.chunk_count > 1:
            # Checked just now by the caller; the Splitter's digest is compared with it before
            # the last chunk, as for a first send.
            first = await self._next_chunk()
            expected = known
        elif self.plan.chunk_count == 1:
            # The only chunk has been read, so the Splitter's digest is already the file's.
            first = await self._next_chunk()
            expected = self.splitter.digest().xxh3_128 if self.splitter else ""
        else:
            # The checksum goes in chunk 1's headers: hash the file (a fast pass over the page
            # cache) while the engine reads chunk 1; the Splitter's own digest is compared with
            # it before the last chunk, so a file that changes meanwhile is never completed.
            expected, first = await asyncio.gather(
                asyncio.to_thread(xxh3_128_file, self.source), self._next_chunk()
            )
        if first is None:
            raise MeshpipeError("the engine yielded no chunk for the file")
        if known and expected != known:
            release(first)
            raise SourceChangedError(
                f"{self.source} changed (xxh3-128 {known} before, {expected} now); nothing was sent"
            )
        return first, expected

    def _check_source(self) -> None:
        """Before the last chunk: the file is what chunk 1 said it is. Its size, modification
        time and inode are compared with what they were when the send planned it (or the
        resume checked its hash); a full split also compares its own digest with the hash
        sent (with the trailer form they are one: the manifest is of the bytes sent)."""
        if self._identity is not None and _identity(self.source) != self._identity:
            doing = "resumed" if self._resuming else "sent"
            raise SourceChangedError(
                f"{self.source} changed while it was being {doing} (size, modification "
                "time or inode differ); the message was not completed: send it again"
            )
        if self._resuming:
            return
        actual = self.splitter.digest().xxh3_128 if self.splitter else ""
        if actual != self.xxh3_128:
            raise SourceChangedError(
                f"{self.source} changed while it was being sent (xxh3-128 {self.xxh3_128} "
                f"before, {actual} now); the message was not completed: send it again"
            )

    def _count_sent(self, chunk: Chunk) -> None:
        self.bytes_sent += chunk.payload_size
        self.progress.add(chunk.length)


def _order_of(client: MeshClient, options: SendOptions) -> UploadOrder:
    """The order asked for: ``order``, else ``sequential``, else the client's default."""
    order = options.get("order")
    if order is not None and order not in UPLOAD_ORDERS:
        raise ValueError(f"order {order!r} is not one of {', '.join(UPLOAD_ORDERS)}")
    if options.get("sequential", False):
        if order not in (None, "sequential"):
            raise ValueError(f"sequential=True contradicts order={order!r}: give one of them")
        return "sequential"
    return order or client.config.effective_upload_order


def _identity(path: Path) -> FileIdentity:
    """(size, modification time in ns, inode, device) of the file at ``path`` now."""
    info = os.stat(path)
    return info.st_size, info.st_mtime_ns, info.st_ino, info.st_dev


async def send_file(
    client: MeshClient,
    source: str | os.PathLike[str],
    headers: SendHeaders,
    *,
    progress: ProgressCallback | None = None,
    journal: SendJournal | None = None,
    **options: Unpack[SendOptions],
) -> SendResult:
    """Send a file as one MESH message with ``headers`` (chunked when larger than
    ``chunk_size``).

    The headers are checked before anything is sent (MessageHeaderError names the header and
    the rule); a missing local id or file name is filled in. ``options`` are
    :class:`SendOptions`. ChunkSizeError, before anything is sent, when the plan breaks MESH's
    chunk rules. ``progress(done, total)`` is called per chunk accepted; ``journal`` is told
    each stage. Nothing is recorded: :class:`meshpipe.durable.DurableSend` is the resumable,
    idempotent send.
    """
    return await Upload(
        client, source, headers, progress=progress, journal=journal, **options
    ).run()
