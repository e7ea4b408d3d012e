"""What a transfer returns: the results of a send and of a receive, and the shared pieces of
both pipelines (progress counted as object state, the first failure of a task group)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from meshpipe._meshpipe import Chunk
from meshpipe.errors import ChunkTransferError
from meshpipe.models import MessageMetadata

#: Chunks in flight at once. Measured on loopback against mesh-sandbox (benches/).
DEFAULT_CONCURRENCY: Final = 4

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)`` in uncompressed bytes, called once per finished chunk."""


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


class Progress:
    """Bytes done so far, reported to an optional ``progress(done, total)`` callback.
    ``total`` None reports ``max(done, declared)`` (a receive that knows no size up front)."""

    def __init__(
        self, callback: ProgressCallback | None, total: int | None, *, declared: int = 0
    ) -> None:
        self._callback = callback
        self._total = total
        self._declared = declared
        self.done = 0

    def add(self, length: int) -> None:
        self.done += length
        if self._callback is not None:
            total = self._total if self._total is not None else max(self.done, self._declared)
            self._callback(self.done, total)

    def restart(self) -> None:
        self.done = 0


def release(chunk: Chunk | None) -> None:
    """Give an engine chunk's buffer back (a no-op while a view of it is still held)."""
    if chunk is None:
        return
    with contextlib.suppress(BufferError):
        chunk.release()


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [] if isinstance(error, asyncio.CancelledError) else [error]


def first_failure(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that made a TaskGroup fail, preferring a named chunk failure."""
    leaves = _leaves(group)
    for error in leaves:
        if isinstance(error, ChunkTransferError):
            return error
    return leaves[0] if leaves else group
