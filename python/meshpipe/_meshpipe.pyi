"""Type stub for meshpipe's native engine (rust/src/py/).

Import from ``meshpipe``, not from here.
"""

import os
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Final, Literal, Self, TypeAlias, final

from typing_extensions import Buffer

_Codec = Literal["none", "gzip", "zstd"]

KiB: Final[int]
MiB: Final[int]
GiB: Final[int]
DEFAULT_CHUNK_SIZE: Final[int]
MIN_CHUNK_SIZE: Final[int]
MAX_REQUEST_SIZE: Final[int]
MAX_FILE_SIZE: Final[int]
__version__: Final[str]
__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MAX_FILE_SIZE",
    "MAX_REQUEST_SIZE",
    "MIN_CHUNK_SIZE",
    "Assembler",
    "AssemblyReport",
    "BodyChecker",
    "BodyReport",
    "Chunk",
    "ChunkPlan",
    "ChunkReport",
    "ChunkWriter",
    "FileDigest",
    "GiB",
    "KiB",
    "MiB",
    "Splitter",
    "__version__",
    "sha256_file",
    "xxh3_128_file",
]

# --- plan ---------------------------------------------------------------------------------

@final
class ChunkPlan:
    """Chunk boundaries for a file at a fixed *uncompressed* chunk size, validated on creation."""

    def __new__(
        cls,
        file_size: int,
        chunk_size: int = ...,
        *,
        codec: _Codec = "none",
        max_file_size: int = ...,
        min_chunk_size: int = ...,
        max_request_size: int = ...,
    ) -> Self: ...
    @property
    def file_size(self) -> int: ...
    @property
    def chunk_size(self) -> int: ...
    @property
    def chunk_count(self) -> int: ...
    def chunk_offset(self, number: int) -> int:
        """Byte offset of chunk ``number`` (1-based) in the file."""
    def chunk_length(self, number: int) -> int:
        """Uncompressed length of chunk ``number`` (1-based)."""

# --- split --------------------------------------------------------------------------------

@final
class Chunk:
    """One chunk's payload, as a read-only buffer: ``memoryview(chunk)`` never copies.

    The payload is compressed for the gzip and zstd codecs, raw for none. The buffer goes back
    to the splitter's pool when the chunk is released or garbage-collected.
    """

    @property
    def number(self) -> int:
        """1-based chunk number, as MESH counts."""
    @property
    def count(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def length(self) -> int:
        """Uncompressed length."""
    @property
    def payload_size(self) -> int:
        """Length of the payload as sent (compressed size for gzip and zstd)."""
    @property
    def xxh3_128(self) -> str:
        """xxh3-128 of the uncompressed bytes, 32 lowercase hex digits."""
    def __len__(self) -> int: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...
    def release(self) -> None:
        """Give the buffer back now. Raises BufferError while a memoryview of it is alive."""

@final
class FileDigest:
    @property
    def size(self) -> int: ...
    @property
    def xxh3_128(self) -> str: ...
    @property
    def sha256(self) -> str | None: ...

@final
class Splitter:
    """Reads a file in Rust and yields its chunks in order; compression on worker threads.

    ``source`` is a path or an open file descriptor (read with pread; the descriptor is
    duplicated, the caller keeps ownership). Memory is bounded by ``window`` chunk buffers:
    while the caller holds ``window`` chunks, ``next()`` waits (GIL released) until one is
    released or garbage-collected, so a single thread must not hold more than ``window - 1``.

    ``chunks`` (chunk numbers from 1: a range, a list, a set) selects a subset: only those
    chunks are read, compressed and checksummed, yielded in ascending order with exactly the
    bytes and xxh3-128 a full split gives them (``Chunk.count`` is still the whole file's).
    Unless it selects every chunk, such a split has no whole-file digest: ``digest()`` raises
    StateError, and ``sha256=True`` is refused.

    ``trailer=True`` (gzip and zstd only) ends the last chunk's payload with the whole-file
    manifest (``meshpipe-manifest/1 xxh3-128:<hex> size:<bytes>``, as an empty gzip member
    whose FEXTRA subfield 'MP' holds it, or a zstd skippable frame): every plain decoder
    decodes it to nothing. A full split takes it from its own digest, after every chunk was
    read and the file's size found unchanged; a subset split is given the file's hash in
    ``trailer_xxh3_128`` (the size is the file's).
    """

    def __new__(
        cls,
        source: str | os.PathLike[str] | int,
        *,
        codec: _Codec = "none",
        level: int | None = None,
        chunk_size: int = ...,
        threads: int | None = None,
        window: int | None = None,
        sha256: bool = False,
        max_file_size: int = ...,
        min_chunk_size: int = ...,
        chunks: Iterable[int] | None = None,
        trailer: bool = False,
        trailer_xxh3_128: str | None = None,
    ) -> Self:
        """``min_chunk_size`` is MESH's 5 MiB rule; lower it only for test servers."""
    @property
    def plan(self) -> ChunkPlan: ...
    @property
    def codec(self) -> _Codec: ...
    def __iter__(self) -> Iterator[Chunk]: ...
    def __next__(self) -> Chunk: ...
    def digest(self) -> FileDigest:
        """The whole-file checksums; only after the last chunk was yielded, and only from a
        split of every chunk."""
    def close(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

# --- check ----------------------------------------------------------------------------------

_BodyEncoding: TypeAlias = Literal["identity", "gzip", "sniff-zstd"]

@final
class BodyReport:
    @property
    def stored_size(self) -> int:
        """Bytes received."""
    @property
    def decoded_size(self) -> int:
        """Bytes after decoding (``stored_size`` for a body that was not decoded)."""
    @property
    def xxh3_128(self) -> str:
        """xxh3-128 of the decoded bytes."""
    @property
    def decoded(self) -> bool:
        """Whether the body was decoded (gzip, or a payload that began with zstd's magic)."""

@final
class BodyChecker:
    """Checks a body as it streams in, keeping nothing: undoes its encoding (``gzip``: an HTTP
    Content-Encoding; ``sniff-zstd``: a flagged payload, decoded as zstd when it starts with
    zstd's magic number), counts and hashes the decoded bytes. ``update`` releases the GIL for
    pieces of 16 KiB or more. Decoding past ``limit`` bytes raises ChunkLengthError at once (a
    bomb is never expanded); a zstd frame whose window exceeds ``2**window_log_max`` bytes
    (default 8 MiB) is refused; corrupt or truncated data raises CodecError."""

    def __new__(
        cls, encoding: _BodyEncoding = "identity", *, limit: int = ..., window_log_max: int = 23
    ) -> Self: ...
    @property
    def stored_size(self) -> int: ...
    def update(self, data: Buffer) -> None: ...
    def finish(self) -> BodyReport:
        """The body is complete: checks its end and reports (once)."""

# --- assemble -----------------------------------------------------------------------------

@final
class ChunkReport:
    @property
    def number(self) -> int: ...
    @property
    def length(self) -> int: ...
    @property
    def xxh3_128(self) -> str: ...
    @property
    def verified_by(self) -> str:
        """One of xxh3-128, gzip-crc32, zstd-checksum or none."""
    @property
    def manifest(self) -> tuple[str, int] | None:
        """The whole-file manifest the chunk ended with, as (xxh3-128 hex, size in bytes):
        only a last chunk carries one (one in any other chunk fails it)."""

@final
class AssemblyReport:
    @property
    def path(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def chunk_count(self) -> int: ...
    @property
    def xxh3_128(self) -> str: ...
    @property
    def sha256(self) -> str | None: ...
    @property
    def verified(self) -> list[str]:
        """What was verified, e.g. ["file xxh3-128", "chunks xxh3-128"] or ["chunks gzip-crc32"]."""

@final
class ChunkWriter:
    """Receives one chunk's bytes as they arrive (compressed per the assembler's codec)."""

    @property
    def number(self) -> int: ...
    @property
    def written(self) -> int:
        """Uncompressed bytes written so far."""
    def write(self, data: Buffer) -> None:
        """On an error (corrupt data, a full disk: OSError with errno ENOSPC naming the file)
        the attempt is aborted and the chunk may be opened again."""
    def finish(self, *, sync: bool = False) -> ChunkReport:
        """Verify the chunk. ``sync=True`` also makes it durable (fdatasync of the partial
        file) before it counts as done: record a chunk in a ledger only after that."""
    def abort(self) -> None:
        """Forget this attempt; the chunk may be opened again."""

@final
class Assembler:
    """Writes chunks, in any order, into a temporary file beside ``destination``; ``finish``
    verifies, fsyncs and renames it into place. Nothing is ever left at ``destination`` unless
    every check passed.

    ``chunk_size=None`` means unknown: chunk k can be opened only once chunks 1..k-1 are done,
    unless ``assume_fixed_chunk_size()`` was called after chunk 1.

    Resuming: ``partial_path`` names a stable partial file (on the destination's filesystem)
    instead of a fresh temporary one; it is opened without truncation (created if absent,
    extended to ``file_size`` when known) and locked against a second assembler until this one ends.
    ``keep_partial=True`` leaves it in place on abort, on a failed ``finish`` and on garbage
    collection, for a later run. That run passes ``completed`` (chunk number -> xxh3-128 hex,
    as recorded; needs ``chunk_size``): each is re-read and re-checked, ``accepted`` lists the
    ones kept and ``rejected`` the torn or changed ones, which are ``missing`` again. The
    whole-file checksum still covers the finished file, in order.

    ``trailer=True``: the headers announced a whole-file manifest at the end of the last chunk
    (see Splitter); ``finish`` raises ChecksumMismatchError, leaving nothing at
    ``destination``, when it is missing or does not match the assembled file. A manifest that
    arrives unannounced is checked too. With ``completed``, a completed last chunk is
    ``rejected`` (fetched again) when a manifest is expected.
    """

    def __new__(
        cls,
        destination: str | os.PathLike[str],
        *,
        chunk_count: int,
        codec: _Codec = "none",
        chunk_size: int | None = None,
        file_size: int | None = None,
        xxh3_128: str | None = None,
        sha256: str | None = None,
        compute_sha256: bool = False,
        max_chunk_size: int = ...,
        overwrite: bool = False,
        partial_path: str | os.PathLike[str] | None = None,
        completed: Mapping[int, str] | None = None,
        keep_partial: bool = False,
        trailer: bool = False,
    ) -> Self: ...
    @property
    def destination(self) -> str: ...
    @property
    def temporary_path(self) -> str:
        """Where the file is being assembled (``partial_path`` when given)."""
    @property
    def chunk_count(self) -> int: ...
    @property
    def missing(self) -> list[int]: ...
    @property
    def accepted(self) -> list[int]:
        """Completed chunks that were re-read and matched their checksum."""
    @property
    def rejected(self) -> list[int]:
        """Completed chunks that were torn or changed: fetch them again."""
    def sync(self) -> None:
        """Make every chunk finished so far durable (one fdatasync of the partial file)."""
    def open_chunk(self, number: int, *, xxh3_128: str | None = None) -> ChunkWriter: ...
    def assume_fixed_chunk_size(self) -> int:
        """After chunk 1 of a multi-chunk message: take its length as every chunk's but the last."""
    def finish(self) -> AssemblyReport: ...
    def abort(self) -> None:
        """End the assembly; deletes the partial file unless ``keep_partial``. Idempotent."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

def xxh3_128_file(path: str | os.PathLike[str]) -> str: ...
def sha256_file(path: str | os.PathLike[str]) -> str: ...
