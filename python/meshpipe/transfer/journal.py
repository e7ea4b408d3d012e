"""The stage boundaries of a transfer, as calls to a journal: where a durable record of
transfers (resume after a crash, exactly-once receive) hooks in.

Each call is awaited before the transfer goes on, so a journal that commits to disk has
committed before the step that depends on it (a chunk is reported accepted only after MESH
answered 202; a message assembled only after fsync and rename; acknowledged only after MESH
said so). The default journals do nothing. A cancelled transfer (Ctrl-C, a crash) gets no
``failed`` call: to a journal it looks like a process that died, to be resumed.

Send, in order: ``prepared``; ``chunk_sending(1)`` (``chunk_retrying(1)`` before each try
after the first); ``message_created``; ``chunk_accepted(1)``; then for chunks 2..N-1
(concurrently, each ``chunk_sending`` before its ``chunk_accepted``, with ``chunk_retrying``
before each try after the first) and last chunk
N: ``chunk_sending``, ``chunk_accepted``; then ``completed`` or ``failed``. A resumed send
(Upload.run_resumed) skips ``prepared``, chunk 1 and ``message_created``. Receive:
``started``; ``reopened`` (resuming only: which recorded chunks the partial file still
holds); ``chunk_verified`` per chunk (again if a chunk is fetched again); ``assembled``;
``acknowledged`` (when acknowledging); or ``failed``.
"""

from __future__ import annotations

from meshpipe._meshpipe import AssemblyReport, ChunkPlan
from meshpipe.models import MessageMetadata
from meshpipe.transfer.results import SendResult


class SendJournal:
    """Told each stage of one send. Subclass it and override what you record."""

    async def prepared(self, local_id: str, plan: ChunkPlan, xxh3_128: str) -> None:
        """The file was planned and hashed; nothing has been sent yet. ``xxh3_128`` is ``""``
        when the hash travels at the end of the last chunk: :meth:`source_hashed` tells it."""

    async def source_hashed(self, xxh3_128: str) -> None:
        """The whole-file xxh3-128 of a send that carries it at the end of the last chunk, known
        once every chunk was read; the last chunk has not been sent yet."""

    async def chunk_sending(self, number: int, xxh3_128: str, payload_size: int) -> None:
        """Chunk ``number`` (its uncompressed xxh3-128, its size as sent) is about to go."""

    async def message_created(self, message_id: str) -> None:
        """MESH accepted chunk 1 and named the message (before any other chunk is sent)."""

    async def chunk_retrying(self, number: int, attempt: int, error: BaseException) -> None:
        """Chunk ``number`` is about to be tried again (try ``attempt``) after ``error`` (for
        chunk 1 the try may find the message the failed one made, and post nothing)."""

    async def chunk_accepted(self, number: int) -> None:
        """MESH answered 202 to chunk ``number``."""

    async def completed(self, result: SendResult) -> None:
        """Every chunk was accepted: the message is on its way to the recipient."""

    async def failed(self, error: BaseException) -> None:
        """The send stopped with ``error`` (the message, if created, was not completed)."""


class ReceiveJournal:
    """Told each stage of one receive. Subclass it and override what you record."""

    async def started(self, metadata: MessageMetadata) -> None:
        """The message's headers were read; nothing has been written yet."""

    async def reopened(self, accepted: list[int], rejected: list[int]) -> None:
        """A partial file was reopened with chunks recorded before: ``accepted`` re-read and
        matched their checksums (not downloaded again); ``rejected`` were torn or changed and
        are downloaded again."""

    async def chunk_verified(self, number: int, xxh3_128: str, length: int) -> None:
        """Chunk ``number`` was written and verified (``length`` uncompressed bytes)."""

    async def assembled(self, report: AssemblyReport) -> None:
        """The whole file was verified, fsynced and renamed into place."""

    async def acknowledged(self) -> None:
        """MESH accepted the acknowledgement: the message left the inbox."""

    async def failed(self, error: BaseException) -> None:
        """The receive stopped with ``error``; the message was not acknowledged."""


__all__ = ["ReceiveJournal", "SendJournal"]
