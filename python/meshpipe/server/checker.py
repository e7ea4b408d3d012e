"""Checks a chunk as it streams in: decodes gzip or zstd in bounded pieces, counts the decoded
bytes and records their xxh3-128. Nothing is kept but the running digest.

The work is the engine's (``meshpipe._meshpipe.BodyChecker``: ISA-L inflate, libzstd, xxh3),
with the GIL released, in every installation: no optional package decides the server's speed.
Decoded bytes are hashed and dropped one 256 KiB buffer at a time, whatever the ratio of the
body. With a ``decoded_limit``, :class:`DecodedTooLarge` is raised as soon as the count passes
it, so a decompression bomb is never expanded past its limit. Decoding a compressed piece can
take a while (a 1 MiB gzip piece may expand to 1 GiB): the caller runs
:meth:`ChunkChecker.update_all` off its event loop, a batch of pieces at a time, when
:attr:`ChunkChecker.decodes` is true.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from meshpipe._meshpipe import BodyChecker
from meshpipe.errors import ChunkLengthError, CodecError
from meshpipe.units import MiB

PIECE_SIZE = 1 * MiB
#: The largest zstd window a payload may need, as a power of two: zstd levels 1 to 19 (all
#: meshpipe's client offers) use windows of at most 8 MiB; a frame asking for more is refused
#: rather than given up to 128 MiB of decoder memory (zstd's own default ceiling).
MAX_ZSTD_WINDOW_LOG = 23


def new_inflater() -> Any:
    """A decompressobj for one gzip member (for serving a gzip-stored chunk decoded)."""
    return zlib.decompressobj(wbits=31)


class ChunkCheckError(ValueError):
    """The chunk's bytes do not decode with the encoding it was sent with."""


class DecodedTooLarge(Exception):
    """The chunk decodes to more than ``limit`` bytes (raised as soon as it passes the limit)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the chunk decodes to more than {limit} bytes")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class CheckResult:
    """``stored_size``: bytes received; ``size``: after HTTP Content-Encoding is undone (what the
    platform's size rules look at); ``payload_size`` and ``xxh3_128``: after any payload-level
    zstd is undone too."""

    stored_size: int
    size: int
    payload_size: int
    xxh3_128: str


class ChunkChecker:
    """Feed the body in pieces with ``update`` (or ``update_all``); ``finish`` returns a
    ``CheckResult``.

    ``encoding`` is the HTTP Content-Encoding (``gzip`` or empty). With ``payload_compressed``
    (the sender's ``mex-Content-Compressed: Y``) a body that starts with zstd's magic number is
    decoded as zstd too, since zstd can only travel that way. ``decoded_limit``: the most bytes
    the body may decode to (:class:`DecodedTooLarge` beyond it).
    """

    def __init__(
        self, encoding: str, *, payload_compressed: bool = False, decoded_limit: int | None = None
    ) -> None:
        self._encoding = encoding
        self._limit = decoded_limit
        mode: Literal["identity", "gzip", "sniff-zstd"]
        if encoding == "gzip":
            mode = "gzip"
        elif payload_compressed and encoding == "":
            mode = "sniff-zstd"
        else:
            mode = "identity"
        self.decodes = mode != "identity"
        limit = {} if decoded_limit is None else {"limit": decoded_limit}
        self._check = BodyChecker(mode, window_log_max=MAX_ZSTD_WINDOW_LOG, **limit)

    @property
    def stored_size(self) -> int:
        return self._check.stored_size

    def update(self, data: bytes) -> None:
        self.update_all((data,))

    def update_all(self, pieces: Iterable[bytes]) -> None:
        """Feed several pieces in one call (one hop off the event loop for a batch)."""
        try:
            for piece in pieces:
                self._check.update(piece)
        except CodecError as exc:
            raise ChunkCheckError(f"body does not decode: {exc}") from None
        except ChunkLengthError:
            assert self._limit is not None
            raise DecodedTooLarge(self._limit) from None

    def finish(self) -> CheckResult:
        try:
            report = self._check.finish()
        except CodecError as exc:
            raise ChunkCheckError(f"body does not decode: {exc}") from None
        http_size = report.decoded_size if self._encoding == "gzip" else report.stored_size
        return CheckResult(report.stored_size, http_size, report.decoded_size, report.xxh3_128)
