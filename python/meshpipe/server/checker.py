"""Checks a chunk as it streams in: decodes gzip or zstd in bounded pieces, counts the decoded
bytes and records their xxh3-128. Nothing is kept but the running digest.

``xxhash`` and ``zstandard`` are imported when first needed, so the server starts without them
until a chunk has to be checked. gzip is inflated with ISA-L (the ``isal`` package) when it is
installed, about 1.4× stdlib zlib here, else with zlib.
"""

from __future__ import annotations

import importlib
import zlib
from dataclasses import dataclass
from typing import Any, Protocol

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


class ChunkCheckError(ValueError):
    """The chunk's bytes do not decode with the encoding it was sent with."""


class _Decoder(Protocol):
    def feed(self, data: bytes) -> list[bytes]: ...
    def close(self) -> list[bytes]: ...


class _Identity:
    def feed(self, data: bytes) -> list[bytes]:
        return [data]

    def close(self) -> list[bytes]:
        return []


class _Gzip:
    """Standalone gzip members (one or several, concatenated), decoded ≤ PIECE_SIZE at a time."""

    def __init__(self) -> None:
        self._inflater = new_inflater()
        self._started = False

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        pending = data
        while pending:
            self._started = True
            try:
                piece = self._inflater.decompress(pending, PIECE_SIZE)
            except _INFLATE_ERRORS as exc:
                raise ChunkCheckError(f"gzip body does not decode: {exc}") from None
            if piece:
                out.append(piece)
            if self._inflater.eof:
                pending = self._inflater.unused_data
                self._inflater = new_inflater()
                self._started = bool(pending)
            else:
                pending = self._inflater.unconsumed_tail
        return out

    def close(self) -> list[bytes]:
        out: list[bytes] = []
        if self._started:
            try:
                piece = self._inflater.flush()
            except _INFLATE_ERRORS as exc:
                raise ChunkCheckError(f"gzip body does not decode: {exc}") from None
            if piece:
                out.append(piece)
            if not self._inflater.eof:
                raise ChunkCheckError("gzip body is truncated")
        return out


class _Zstd:
    def __init__(self) -> None:
        import zstandard

        self._decompressor: Any = zstandard.ZstdDecompressor().decompressobj()
        self._error: type[Exception] = zstandard.ZstdError
        self._fed = False

    def feed(self, data: bytes) -> list[bytes]:
        self._fed = True
        try:
            piece: bytes = self._decompressor.decompress(data)
        except self._error as exc:
            raise ChunkCheckError(f"zstd body does not decode: {exc}") from None
        return [piece] if piece else []

    def close(self) -> list[bytes]:
        if self._fed and not self._decompressor.eof:
            raise ChunkCheckError("zstd body is truncated")
        return []


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
    decoded as zstd too, since zstd can only travel that way.
    """

    def __init__(self, encoding: str, *, payload_compressed: bool = False) -> None:
        import xxhash

        self._hash: Any = xxhash.xxh3_128()
        self._encoding = encoding
        self._sniff = payload_compressed and encoding == ""
        self._decoder: _Decoder | None = _Gzip() if encoding == "gzip" else None
        if self._decoder is None and not self._sniff:
            self._decoder = _Identity()
        self._head = b""
        self.size = 0
        self.stored_size = 0

    def _take(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.size += len(piece)
            self._hash.update(piece)

    def update(self, data: bytes) -> None:
        self.stored_size += len(data)
        if self._decoder is None:
            self._head += data
            if len(self._head) < len(ZSTD_MAGIC):
                return
            self._decoder = _Zstd() if self._head.startswith(ZSTD_MAGIC) else _Identity()
            data, self._head = self._head, b""
        self._take(self._decoder.feed(data))

    def finish(self) -> CheckResult:
        if self._decoder is None:
            self._decoder = _Identity()
            self._take(self._decoder.feed(self._head))
        self._take(self._decoder.close())
        http_size = self.size if self._encoding == "gzip" else self.stored_size
        return CheckResult(self.stored_size, http_size, self.size, self._hash.hexdigest())
