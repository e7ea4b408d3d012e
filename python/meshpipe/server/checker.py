"""Checks a chunk as it streams in: decodes gzip or zstd in bounded pieces, counts the decoded
bytes and records their xxh3-128. Nothing is kept but the running digest.

Decoding never holds more than one piece (:data:`PIECE_SIZE`) of output at a time, whatever
the ratio of the body: each piece is counted and hashed, then dropped. With a
``decoded_limit``, :class:`DecodedTooLarge` is raised as soon as the count passes it, so a
decompression bomb is never expanded past its limit. Decoding a compressed piece can take a
while (a 1 MiB gzip piece may expand to 1 GiB): the caller runs :meth:`ChunkChecker.update` off
its event loop when :attr:`ChunkChecker.decodes` is true.

``xxhash`` and ``zstandard`` are imported when first needed, so the server starts without them
until a chunk has to be checked. gzip is inflated with ISA-L (the ``isal`` package) when it is
installed, about 1.4× stdlib zlib here, else with zlib.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, Protocol, cast

from meshpipe.units import MiB


def _inflate_module() -> Any:
    """ISA-L's zlib-compatible module when installed (faster inflate), else zlib."""
    try:
        return importlib.import_module("isal.isal_zlib")
    except ImportError:
        return zlib


_INFLATE: Any = _inflate_module()
_INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, _INFLATE.error)


def new_inflater() -> Any:
    """A decompressobj for one gzip member."""
    return _INFLATE.decompressobj(wbits=31)


PIECE_SIZE = 1 * MiB
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: The largest zstd window a payload may need. zstd levels 1 to 19 (all meshpipe's client
#: offers) use windows of at most 8 MiB; a frame asking for more is refused rather than given
#: up to 128 MiB of decoder memory (zstd's own default ceiling).
MAX_ZSTD_WINDOW = 8 * MiB

Sink = Callable[[bytes], None]


class ChunkCheckError(ValueError):
    """The chunk's bytes do not decode with the encoding it was sent with."""


class DecodedTooLarge(Exception):
    """The chunk decodes to more than ``limit`` bytes (raised as soon as it passes the limit)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the chunk decodes to more than {limit} bytes")
        self.limit = limit


class _Decoder(Protocol):
    def feed(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class _Identity:
    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def feed(self, data: bytes) -> None:
        self._sink(data)

    def close(self) -> None:
        return None


class _Gzip:
    """Standalone gzip members (one or several, concatenated), decoded ≤ PIECE_SIZE at a time."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._inflater = new_inflater()
        self._started = False

    def feed(self, data: bytes) -> None:
        pending = data
        while pending:
            self._started = True
            try:
                piece = self._inflater.decompress(pending, PIECE_SIZE)
            except _INFLATE_ERRORS as exc:
                raise ChunkCheckError(f"gzip body does not decode: {exc}") from None
            if piece:
                self._sink(piece)
            if self._inflater.eof:
                pending = self._inflater.unused_data
                self._inflater = new_inflater()
                self._started = bool(pending)
            else:
                pending = self._inflater.unconsumed_tail

    def close(self) -> None:
        if not self._started:
            return
        try:
            piece = self._inflater.flush()
        except _INFLATE_ERRORS as exc:
            raise ChunkCheckError(f"gzip body does not decode: {exc}") from None
        if piece:
            self._sink(piece)
        if not self._inflater.eof:
            raise ChunkCheckError("gzip body is truncated")


class _ZstdFrames:
    """Follows a zstd stream's frame structure (frame and block headers; block contents are
    skipped, never decoded) to tell whether the stream ends where a frame ends. The decoder
    itself cannot say so while it writes its output in bounded pieces."""

    def __init__(self) -> None:
        self.frames = 0
        self._field = "magic"
        self._want = 4
        self._header = bytearray()
        self._skip = 0
        self._checksum = False

    @property
    def complete(self) -> bool:
        return self.frames > 0 and self._field == "magic" and not self._header and not self._skip

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        position = 0
        while position < len(view):
            if self._skip:
                taken = min(self._skip, len(view) - position)
                self._skip -= taken
                position += taken
                continue
            taken = min(self._want - len(self._header), len(view) - position)
            self._header += view[position : position + taken]
            position += taken
            if len(self._header) == self._want:
                field = bytes(self._header)
                self._header.clear()
                self._parse(field)

    def _next(self, field: str, size: int) -> None:
        self._field, self._want = field, size
        if size == 0:
            self._parse(b"")

    def _parse(self, field: bytes) -> None:
        value = int.from_bytes(field, "little")
        if self._field == "magic":
            if field == ZSTD_MAGIC:
                self._next("descriptor", 1)
            elif value & 0xFFFFFFF0 == 0x184D2A50:  # a skippable frame
                self._next("skippable size", 4)
            else:
                raise ChunkCheckError("zstd body does not decode: data after the last frame")
        elif self._field == "skippable size":
            self._skip = value
            self._next("magic", 4)
        elif self._field == "descriptor":
            single_segment = bool(value & 0x20)
            self._checksum = bool(value & 0x04)
            size = (0 if single_segment else 1) + (0, 1, 2, 4)[value & 0x03]
            size += (1 if single_segment else 0, 2, 4, 8)[value >> 6]
            self._next("header", size)
        elif self._field == "header":
            self._next("block", 3)
        elif self._field == "block":
            kind = (value >> 1) & 0x03
            if kind == 3:
                raise ChunkCheckError("zstd body does not decode: reserved block type")
            self._skip = 1 if kind == 1 else value >> 3  # RLE: one byte, repeated
            if value & 0x01:  # the frame's last block
                self._next("checksum", 4 if self._checksum else 0)
            else:
                self._next("block", 3)
        else:  # the checksum (or its absence) ends the frame
            self.frames += 1
            self._next("magic", 4)


class _Zstd:
    """A zstd stream (one frame or several), written through zstandard's streaming decoder,
    which hands its output on in pieces of at most PIECE_SIZE."""

    def __init__(self, sink: Sink) -> None:
        import zstandard

        self._sink = sink
        self._frames = _ZstdFrames()
        self._error: type[Exception] = zstandard.ZstdError
        decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW)
        # The writer only calls ``write`` on its target: this object, which counts each piece.
        self._writer: Any = decompressor.stream_writer(
            cast("IO[bytes]", self), write_size=PIECE_SIZE, write_return_read=True, closefd=False
        )
        self._fed = False

    def write(self, data: bytes) -> int:
        """The decoder's output, one piece at a time."""
        self._sink(bytes(data))
        return len(data)

    def feed(self, data: bytes) -> None:
        self._fed = True
        self._frames.feed(data)
        try:
            self._writer.write(data)
        except self._error as exc:
            raise ChunkCheckError(f"zstd body does not decode: {exc}") from None

    def close(self) -> None:
        if self._fed and not self._frames.complete:
            raise ChunkCheckError("zstd body is truncated")


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
    """Feed the body in pieces with ``update``; ``finish`` returns a ``CheckResult``.

    ``encoding`` is the HTTP Content-Encoding (``gzip`` or empty). With ``payload_compressed``
    (the sender's ``mex-Content-Compressed: Y``) a body that starts with zstd's magic number is
    decoded as zstd too, since zstd can only travel that way. ``decoded_limit``: the most bytes
    the body may decode to (:class:`DecodedTooLarge` beyond it).
    """

    def __init__(
        self, encoding: str, *, payload_compressed: bool = False, decoded_limit: int | None = None
    ) -> None:
        import xxhash

        self._hash: Any = xxhash.xxh3_128()
        self._encoding = encoding
        self._limit = decoded_limit
        self._sniff = payload_compressed and encoding == ""
        self._decoder: _Decoder | None = _Gzip(self._take) if encoding == "gzip" else None
        if self._decoder is None and not self._sniff:
            self._decoder = _Identity(self._take)
        self._head = b""
        self.size = 0
        self.stored_size = 0

    @property
    def decodes(self) -> bool:
        """Whether the body is (or may be) compressed: then an update may expand it a lot."""
        return not isinstance(self._decoder, _Identity)

    def _take(self, piece: bytes) -> None:
        self.size += len(piece)
        if self._limit is not None and self.size > self._limit:
            raise DecodedTooLarge(self._limit)
        self._hash.update(piece)

    def update(self, data: bytes) -> None:
        self.stored_size += len(data)
        if self._decoder is None:
            self._head += data
            if len(self._head) < len(ZSTD_MAGIC):
                return
            self._decoder = (
                _Zstd(self._take) if self._head.startswith(ZSTD_MAGIC) else _Identity(self._take)
            )
            data, self._head = self._head, b""
        self._decoder.feed(data)

    def finish(self) -> CheckResult:
        if self._decoder is None:
            self._decoder = _Identity(self._take)
            self._decoder.feed(self._head)
        self._decoder.close()
        http_size = self.size if self._encoding == "gzip" else self.stored_size
        return CheckResult(self.stored_size, http_size, self.size, self._hash.hexdigest())
