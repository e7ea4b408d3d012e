"""Deterministic synthetic message bodies: CSV-like text of any size, generated on download.

The bytes at offset ``o`` of a message with seed ``s`` are ``block(s)[o % len(block(s))]``,
where the block is a little over 1 MiB of lines from meshpipe's seeded extract generator
(``meshpipe.synthetic``). Serving is slicing a doubled block, so it costs no more than copying;
anyone can regenerate the same bytes to verify.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

from meshpipe.server.config import MiB
from meshpipe.synthetic import csv_block

BLOCK_SIZE = 1 * MiB + 4093  # not a multiple of the write size, so writes do not line up


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
    (``meshpipe/1 xxh3-128:<hex> size:<n> chunk:<n> codec:none``), so meshpipe's client verifies
    the download like any other. Costs one pass over the stream (xxh3: many GB/s)."""
    digest = synthetic_xxh3_128(seed, size)
    return f"meshpipe/1 xxh3-128:{digest} size:{size} chunk:{chunk_size} codec:none"
