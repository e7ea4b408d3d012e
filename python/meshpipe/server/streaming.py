"""Message bodies as they stream, in pieces of at most 1 MiB: an upload's request body (as an
async iterator the mailroom consumes), and a chunk download from its file (sendfile), through
gunzip, or from the synthetic generator. Body faults act through one
:class:`~meshpipe.server.faults.FaultyStream` either way.

Synthetic bodies: the bytes at offset ``o`` of a message with seed ``s`` are
``block(s)[o % len(block(s))]``, where the block is a little over 1 MiB of lines from meshpipe's
seeded extract generator (``meshpipe.synthetic``). Serving is slicing a doubled block, so it
costs no more than copying; anyone can regenerate the same bytes to verify.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from aiohttp import web

from meshpipe.models import ContentChecksum
from meshpipe.server.checker import new_inflater
from meshpipe.server.faults import FaultyStream, cut_connection
from meshpipe.server.models import ChunkRecord, Message
from meshpipe.server.store import MessageStore
from meshpipe.synthetic import csv_block
from meshpipe.units import MiB

PIECE_SIZE = 1 * MiB
SOCKET_READ_SIZE = 1 * MiB
BLOCK_SIZE = 1 * MiB + 4093  # not a multiple of the write size, so writes do not line up


# -- uploads ----------------------------------------------------------------------------------


async def request_body(request: web.Request, faults: FaultyStream) -> AsyncIterator[bytes]:
    """The request body as it arrives; ConnectionResetError when a fault cuts it."""
    _read_larger_pieces(request)
    while piece := await request.content.readany():
        piece, cut = await faults.admit(piece)
        if cut:
            cut_connection(request)
            raise ConnectionResetError("a planned fault reset the upload")
        yield piece


def _read_larger_pieces(request: web.Request) -> None:
    """asyncio's socket transport reads 256 KiB at a time; a chunk body streams in with fewer
    system calls and parser passes when it reads more (CPython's selector transport honours a
    ``max_size`` attribute; other transports are left alone)."""
    transport = request.transport
    if transport is not None and isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = max(transport.max_size, SOCKET_READ_SIZE)  # type: ignore[attr-defined]


# -- downloads --------------------------------------------------------------------------------


def chunk_source(
    store: MessageStore, message: Message, number: int, record: ChunkRecord, wants_gzip: bool
) -> tuple[Iterator[bytes], int | None, str, Path | None] | None:
    """(pieces, length, Content-Encoding, the file when its bytes are served as stored), or
    None when the chunk's file is gone."""
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
    request: web.Request,
    status: int,
    headers: dict[str, str],
    pieces: Iterator[bytes],
    length: int | None,
    faults: FaultyStream,
) -> web.StreamResponse:
    """Send ``pieces`` as the response body, through the request's body faults."""
    response = web.StreamResponse(status=status, headers=headers)
    if length is not None:
        response.content_length = length
    await response.prepare(request)
    try:
        for piece in pieces:
            piece, cut = await faults.admit(piece)
            await response.write(piece)
            if cut:
                cut_connection(request)
                return response
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
    await response.write_eof()
    return response


async def send_stored_chunk(
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


# -- synthetic bodies -------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _doubled_block(seed: int) -> bytes:
    block = csv_block(BLOCK_SIZE, seed)
    return block + block


def synthetic_pieces(seed: int, offset: int, length: int, piece: int = MiB) -> Iterator[bytes]:
    """The bytes [offset, offset+length) of the synthetic stream, in pieces of at most ``piece``."""
    doubled = memoryview(_doubled_block(seed))
    position = offset
    end = offset + length
    while position < end:
        take = min(piece, end - position, BLOCK_SIZE)
        start = position % BLOCK_SIZE
        yield bytes(doubled[start : start + take])
        position += take


def synthetic_bytes(seed: int, offset: int, length: int) -> bytes:
    return b"".join(synthetic_pieces(seed, offset, length))


def synthetic_xxh3_128(seed: int, size: int) -> str:
    """xxh3-128 (hex) of a whole synthetic message, to verify a download against."""
    import xxhash

    digest = xxhash.xxh3_128()
    for piece in synthetic_pieces(seed, 0, size):
        digest.update(piece)
    return str(digest.hexdigest())


def synthetic_checksum(seed: int, size: int, chunk_size: int) -> str:
    """The ``mex-Content-Checksum`` a synthetic message carries, in meshpipe's own form
    (:class:`meshpipe.models.ContentChecksum`, codec ``none``), so meshpipe's client verifies the
    download like any other. Costs one pass over the stream (xxh3: many GB/s)."""
    digest = synthetic_xxh3_128(seed, size)
    return ContentChecksum(
        xxh3_128=digest, size=size, chunk_size=chunk_size, codec="none", meshpipe=True
    ).header_value()
