"""Message bodies as they stream: a chunk upload through the checker into the store, and a
chunk download from its file (sendfile), through gunzip, or from the synthetic generator, in
pieces of at most 1 MiB. The fault plan's body faults (reset, stall, flip) act here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

from meshpipe.server.checker import ChunkChecker, ChunkCheckError, new_inflater
from meshpipe.server.config import MiB
from meshpipe.server.faults import Firing
from meshpipe.server.models import UPLOADING, ChunkRecord, Message
from meshpipe.server.responses import internal_error, mesh_error
from meshpipe.server.state import Refusal, ServerState, firings
from meshpipe.server.store import MessageStore
from meshpipe.server.synthetic import synthetic_pieces

log = logging.getLogger("meshpipe.server")

PIECE_SIZE = 1 * MiB


async def receive_chunk(
    state: ServerState, request: web.Request, message: Message, number: int, version: int
) -> ChunkRecord | None:
    """Stream the body to the store through the checker; None if a fault reset the link."""
    resets = firings(request, "reset")
    reset_at = min((f.fault.after_bytes for f in resets), default=None)
    stalls = [f for f in firings(request, "stall") if f.fault.after_bytes]
    _read_larger_pieces(request)
    writer = state.mailroom.store.chunk_writer(message, number)
    checker = ChunkChecker(message.content_encoding, payload_compressed=message.compressed)
    received = 0
    limit = state.config.max_request_size if state.config.strict else None
    committed = False
    try:
        while True:
            piece = await request.content.readany()
            if not piece:
                break
            if reset_at is not None and received + len(piece) >= reset_at:
                piece = piece[: reset_at - received]
                received += len(piece)
                state.faults.record(
                    resets[0],
                    "upload",
                    message_id=message.message_id,
                    chunk=number,
                    after_bytes=received,
                )
                if request.transport is not None:
                    request.transport.abort()
                return None
            received += len(piece)
            for stall in [f for f in stalls if received >= f.fault.after_bytes]:
                stalls.remove(stall)
                state.faults.record(
                    stall,
                    "upload",
                    message_id=message.message_id,
                    chunk=number,
                    seconds=stall.fault.seconds,
                    after_bytes=stall.fault.after_bytes,
                )
                await asyncio.sleep(stall.fault.seconds)
            if limit is not None and received >= limit:
                raise Refusal(mesh_error(413, "request_too_large", version, maximum=limit))
            try:
                checker.update(piece)
            except ChunkCheckError as exc:
                log.warning("chunk %d of %s refused: %s", number, message.message_id, exc)
                raise Refusal(
                    mesh_error(400, "invalid_file_format", version, message_id=message.message_id)
                ) from None
            writer.write(piece)
        try:
            result = checker.finish()
        except ChunkCheckError as exc:
            log.warning("chunk %d of %s refused: %s", number, message.message_id, exc)
            raise Refusal(
                mesh_error(400, "invalid_file_format", version, message_id=message.message_id)
            ) from None
        if state.config.strict:
            if number < message.total_chunks and result.size < state.config.min_chunk_size:
                raise Refusal(
                    mesh_error(
                        417,
                        "chunk_too_small",
                        version,
                        message_id=message.message_id,
                        minimum=state.config.min_chunk_size,
                        number=number,
                        size=result.size,
                    )
                )
            earlier = sum(c.size or c.stored_size for n, c in message.chunks.items() if n != number)
            if earlier + result.size > state.config.max_message_size:
                raise Refusal(
                    mesh_error(
                        413, "message_too_large", version, maximum=state.config.max_message_size
                    )
                )
        if result.stored_size == 0 and number == 1:
            return ChunkRecord(number, 0, 0, result.xxh3_128, message.content_encoding)
        if number > 1 and message.status != UPLOADING:
            raise Refusal(internal_error(423))  # completed while this chunk streamed in
        # fsync of a large chunk can take a while: keep the event loop serving meanwhile.
        await asyncio.to_thread(writer.commit)
        committed = True
        return ChunkRecord(
            number, result.stored_size, result.size, result.xxh3_128, message.content_encoding
        )
    finally:
        if not committed:
            writer.abort()


# -- inbox ----------------------------------------------------------------------------------


def chunk_source(
    store: MessageStore, message: Message, number: int, record: ChunkRecord, wants_gzip: bool
) -> tuple[Iterator[bytes], int | None, str, Path | None] | None:
    """(pieces, length, Content-Encoding, the file when its bytes are served as stored)."""
    if message.synthetic is not None or message.discarded:
        sizes = [message.chunks[n].size or 0 for n in range(1, number)]
        seed = message.synthetic.seed if message.synthetic else 0
        size = record.size if record.size is not None else record.stored_size
        return synthetic_pieces(seed, sum(sizes), size), size, "", None
    path = store.chunk_path(message, number)
    if path is None:
        return None
    if message.content_encoding == "gzip" and not wants_gzip:
        return _gunzip_file(path), record.size, "", None
    return _read_file(path), record.stored_size, message.content_encoding, path


async def stream_body(
    state: ServerState,
    request: web.Request,
    status: int,
    headers: dict[str, str],
    pieces: Iterator[bytes],
    length: int | None,
    message: Message,
    number: int,
) -> web.StreamResponse:
    flips = firings(request, "flip")
    resets = firings(request, "reset")
    stalls = [f for f in firings(request, "stall") if f.fault.after_bytes]
    response = web.StreamResponse(status=status, headers=headers)
    if length is not None:
        response.content_length = length
    await response.prepare(request)
    sent = 0
    flip_at: dict[int, Firing] = {}
    for firing in flips:
        assert firing.flip_position is not None
        limit = length if length else 1
        flip_at[firing.flip_position % limit] = firing
    reset_at = min((f.fault.after_bytes for f in resets), default=None)
    try:
        for piece in pieces:
            for position in [p for p in flip_at if sent <= p < sent + len(piece)]:
                firing = flip_at.pop(position)
                mutable = bytearray(piece)
                mutable[position - sent] ^= 0xFF
                piece = bytes(mutable)
                state.faults.record(
                    firing,
                    "download",
                    message_id=message.message_id,
                    chunk=number,
                    offset=position,
                )
            for stall in list(stalls):
                if sent + len(piece) >= stall.fault.after_bytes:
                    stalls.remove(stall)
                    state.faults.record(
                        stall,
                        "download",
                        message_id=message.message_id,
                        chunk=number,
                        seconds=stall.fault.seconds,
                        after_bytes=stall.fault.after_bytes,
                    )
                    await asyncio.sleep(stall.fault.seconds)
            if reset_at is not None and sent + len(piece) >= reset_at:
                await response.write(piece[: reset_at - sent])
                state.faults.record(
                    resets[0],
                    "download",
                    message_id=message.message_id,
                    chunk=number,
                    after_bytes=reset_at,
                )
                if request.transport is not None:
                    request.transport.abort()
                return response
            await response.write(piece)
            sent += len(piece)
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
    await response.write_eof()
    return response


# -- acknowledge ----------------------------------------------------------------------------


SOCKET_READ_SIZE = 1 * MiB


def _read_larger_pieces(request: web.Request) -> None:
    """asyncio's socket transport reads 256 KiB at a time; a chunk body streams in with fewer
    system calls and parser passes when it reads more (CPython's selector transport honours a
    ``max_size`` attribute; other transports are left alone)."""
    transport = request.transport
    if transport is not None and isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = max(transport.max_size, SOCKET_READ_SIZE)  # type: ignore[attr-defined]


async def send_file(
    request: web.Request, status: int, headers: dict[str, str], path: Path, length: int
) -> web.StreamResponse:
    """A stored chunk as stored: the kernel copies it (sendfile), or asyncio's fallback does in
    bounded pieces where sendfile is unavailable (TLS)."""
    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = length
    await response.prepare(request)
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("connection lost before the body was sent")
    loop = asyncio.get_running_loop()
    # Opening a local file does not block for long; the copying is the kernel's.
    with open(path, "rb", buffering=0) as handle:  # noqa: ASYNC230
        await loop.sendfile(transport, handle, 0, length)
    await response.write_eof()
    return response


def _read_file(path: Path) -> Iterator[bytes]:
    with open(path, "rb", buffering=0) as handle:
        while piece := handle.read(PIECE_SIZE):
            yield piece


def _gunzip_file(path: Path) -> Iterator[bytes]:
    inflater = new_inflater()
    for piece in _read_file(path):
        pending = piece
        while pending:
            out = inflater.decompress(pending, PIECE_SIZE)
            if out:
                yield out
            if inflater.eof:
                pending = inflater.unused_data
                inflater = new_inflater()
            else:
                pending = inflater.unconsumed_tail
    tail = inflater.flush()
    if tail:
        yield tail
