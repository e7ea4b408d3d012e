"""The turn-taking of an in-order upload: chunk bodies reach the server one after another, in
chunk order, while the next body is already on its way when the previous one is answered.

"In order" on the wire, for the chunks an upload sends after chunk 1 (chunk 1 always goes
alone, first; the last chunk always goes after every other chunk was accepted):

1. **Bodies do not overlap.** A request for chunk k+1 starts (its headers are written) only once
   every byte of chunk k's body has reached the far end of its connection: on Linux, once the
   kernel's queue of unacknowledged bytes for that socket is empty, so the peer's TCP has
   acknowledged all of them (``client.until_delivered``). No byte of chunk k+1's body reaches
   the server before the last byte of chunk k's.
2. **Acceptance in order.** The last piece (≤ 1 MiB) of chunk k+1's body is written only once
   chunk k's 202 has been received, so the server never holds a whole chunk k+1 before it has
   accepted chunk k: the chunks it has accepted are always 1..k, never a set with a hole.
3. **At most two requests outstanding**: chunk k awaiting its answer and chunk k+1 sending its
   body (chunk k+2 cannot start before chunk k+1's body is complete, which needs chunk k's
   202). The link is busy with chunk k+1 while the server answers chunk k, and the engine
   reads and compresses ahead on its own threads, so neither waits for the other.
4. **A retry keeps the order.** When chunk k fails (after the usual retry rules), chunk k+1
   stops at its next piece, waits until the bytes it has written have reached the server, and
   abandons its request (the connection is closed with the body incomplete, which a server
   discards); chunk k is sent again, and chunk k+1 follows it afresh. The bytes that reach the
   server are then k, part of k+1, k again, k+1: bodies still never overlap, no chunk is
   accepted before the one ahead of it, and the stepping aside is not counted as a failure of
   chunk k+1. Nothing already accepted is sent again.

The price of rule 2: a chunk's body cannot complete before the answer to the one ahead, so
when the server takes longer to answer a chunk than the link takes to carry one (a 20 MiB
chunk is 0.17 s at 1 Gbit/s), the link waits for the difference. Measured on loopback with
every answer held back after the body, 1 GiB in 20 MiB chunks: 50 ms, in order 248 MB/s against
concurrent 321 and sequential 200; 200 ms, in order 90 MB/s, concurrent 242, sequential 82.
Rule 2 is what keeps a retry from ever leaving a later chunk accepted before an earlier one.

The stricter ``sequential`` order (the next request only after the previous one was answered)
idles the link for every answer; ``concurrent`` sends chunks 2..N-1 side by side. The servers
that ask for order are NHS's (their API specification says chunks must be uploaded in the
correct order); what a server does after the bytes reach its end of the connection (a load
balancer, say) is the server's affair.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from meshpipe.client import until_delivered


class Overtaken(Exception):
    """A chunk's request abandoned because the chunk before it is being sent again."""


class Turn:
    """One chunk's place in an in-order upload: whether its current try's body has reached the
    server (``delivered``), whether it was accepted, and how many tries it has begun. The chunk
    after it waits on these (the ``BodyPacing`` of its body is :meth:`pacing_after`)."""

    def __init__(self, sequence: InOrder, number: int, previous: Turn | None) -> None:
        self._sequence = sequence
        self.number = number
        self.previous = previous
        self.following: Turn | None = None
        self.tries = 0
        self.sending = False
        self.is_delivered = False
        self.is_accepted = False

    async def begin(self) -> int:
        """Wait for this chunk's turn to start a request: the chunk before it has been
        delivered (or accepted), and the chunk after it has no request in progress (it steps
        aside when this chunk is sent again). Returns the try of the chunk before that this
        request follows."""
        previous, following = self.previous, self.following

        def ready() -> bool:
            ahead = previous is None or previous.is_delivered or previous.is_accepted
            return ahead and not (following is not None and following.sending)

        await self._sequence.wait_for(ready)
        self.tries += 1
        self.sending = True
        self.is_delivered = False
        return previous.tries if previous is not None else 0

    def pacing_after(self, ahead_try: int) -> Pacing:
        """The pacing of this try's body, which follows try ``ahead_try`` of the chunk
        before."""
        return Pacing(self, ahead_try)

    def ended(self, accepted: bool) -> None:
        """This try is over: answered with success, or not."""
        self.sending = False
        self.is_accepted = accepted
        if not accepted:
            self.is_delivered = False
        self._sequence.changed()

    def mark_delivered(self) -> None:
        self.is_delivered = True
        self._sequence.changed()

    def ahead_was_resent(self, ahead_try: int) -> bool:
        """Whether the chunk before has failed (so it will be sent again) or begun another try
        since ``ahead_try``, the try this chunk's request follows."""
        previous = self.previous
        if previous is None or previous.is_accepted:
            return False
        return previous.tries != ahead_try or not previous.sending


class Pacing:
    """The ``client.BodyPacing`` of one try of one chunk's body."""

    def __init__(self, turn: Turn, ahead_try: int) -> None:
        self._turn = turn
        self._ahead_try = ahead_try
        self.stepped_aside = False

    async def before_piece(self, last: bool, transport: asyncio.BaseTransport | None) -> None:
        turn = self._turn
        if last and turn.previous is not None:
            previous = turn.previous
            await turn._sequence.wait_for(
                lambda: previous.is_accepted or turn.ahead_was_resent(self._ahead_try)
            )
        if turn.ahead_was_resent(self._ahead_try):
            await until_delivered(transport)
            self.stepped_aside = True
            raise Overtaken(f"chunk {turn.number} steps aside: the chunk before is sent again")

    def delivered(self) -> None:
        self._turn.mark_delivered()


class InOrder:
    """The turns of one in-order upload, one per chunk in the order the chunks are sent (a
    resume sends a subset: each chunk follows the one sent before it)."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self._last: Turn | None = None

    def turn(self, number: int) -> Turn:
        """The turn of the next chunk to be sent, ``number``."""
        turn = Turn(self, number, self._last)
        if self._last is not None:
            self._last.following = turn
        self._last = turn
        return turn

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds; it is asked again after every change of a turn."""
        while not predicate():
            await self._changed.wait()

    def changed(self) -> None:
        """A turn changed: wake every waiter to ask its predicate again."""
        self._changed.set()
        self._changed = asyncio.Event()
