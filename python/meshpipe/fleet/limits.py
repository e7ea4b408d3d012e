"""Fleet-wide limits per mailbox, held in PostgreSQL so that every worker on every machine
counts against the same bound (MESH is a shared national service).

**Chunks in flight**: ``max_in_flight`` slots per mailbox, each a session-level advisory lock
``(class, slot)`` where ``class`` is derived from the mailbox id. A chunk request takes a
free slot (``pg_try_advisory_lock`` on slots 0..N-1, then a short wait and again) on a
connection of its own, holds it while the request runs and releases it when answered. A
worker killed mid-request loses its connection, and PostgreSQL frees its slot at once: no
lease to wait for. The other side of that: a database restart frees every slot while their
requests still run, so for the requests in flight then the bound can be exceeded once. Give
every worker of a mailbox the same limit; the bound is the largest.

**Requests per second**: the row of ``meshpipe_mailbox_pace`` (ledger migration 2) holds the
earliest start of the mailbox's next request. One statement reserves the next start,
``max(next_at, now()) + 1/rate``, on the database's clock, and the worker sleeps until the
start it reserved: requests start at most ``rate`` a second across the fleet, however many
workers ask.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

import psycopg

#: How long a request waits before it tries the slots again when all are taken.
SLOT_POLL_INTERVAL: Final = 0.05

_RESERVE: Final = """
INSERT INTO meshpipe_mailbox_pace AS pace (mailbox, next_at)
VALUES (%(mailbox)s, now() + %(gap)s)
ON CONFLICT (mailbox) DO UPDATE SET next_at = greatest(pace.next_at, now()) + %(gap)s
RETURNING extract(epoch FROM (pace.next_at - %(gap)s - now()))::float8
"""


@dataclass(frozen=True, slots=True)
class MailboxLimits:
    """The bounds for one mailbox across the fleet; None is unbounded."""

    max_in_flight: int | None = None
    requests_per_second: float | None = None

    def __post_init__(self) -> None:
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if self.requests_per_second is not None and self.requests_per_second <= 0:
            raise ValueError("requests_per_second must be positive")

    @property
    def bounded(self) -> bool:
        return self.max_in_flight is not None or self.requests_per_second is not None


def mailbox_lock_class(mailbox: str) -> int:
    """The advisory lock class of ``mailbox``'s slots: a signed 32-bit CRC of its id."""
    value = zlib.crc32(f"meshpipe-slots:{mailbox.upper()}".encode())
    return value - (1 << 32) if value >= (1 << 31) else value


class FleetLimiter:
    """Takes a mailbox's slot and its turn for each request (module doc), on connections to
    the PostgreSQL database at ``conninfo``."""

    def __init__(self, conninfo: str, mailbox: str, limits: MailboxLimits) -> None:
        self._conninfo = conninfo
        self._mailbox = mailbox.upper()
        self._limits = limits
        self._class = mailbox_lock_class(mailbox)

    @property
    def limits(self) -> MailboxLimits:
        return self._limits

    @contextlib.asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        """Hold a slot (if bounded) and start at the mailbox's pace (if bounded) for the
        block: one request to MESH."""
        if not self._limits.bounded:
            yield
            return
        async with await psycopg.AsyncConnection.connect(
            self._conninfo, autocommit=True
        ) as connection:
            slot = await self._take_slot(connection)
            try:
                await self._wait_turn(connection)
                yield
            finally:
                if slot is not None:
                    with contextlib.suppress(psycopg.Error):
                        await connection.execute(
                            "SELECT pg_advisory_unlock(%s, %s)", (self._class, slot)
                        )

    async def _take_slot(
        self, connection: psycopg.AsyncConnection[tuple[object, ...]]
    ) -> int | None:
        slots = self._limits.max_in_flight
        if slots is None:
            return None
        while True:
            for slot in range(slots):
                cursor = await connection.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)", (self._class, slot)
                )
                row = await cursor.fetchone()
                if row is not None and row[0]:
                    return slot
            await asyncio.sleep(SLOT_POLL_INTERVAL)

    async def _wait_turn(self, connection: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        rate = self._limits.requests_per_second
        if rate is None:
            return
        cursor = await connection.execute(
            _RESERVE, {"mailbox": self._mailbox, "gap": timedelta(seconds=1 / rate)}
        )
        row = await cursor.fetchone()
        wait = row[0] if row is not None else None
        assert wait is None or isinstance(wait, float)
        if wait is not None and wait > 0:
            await asyncio.sleep(wait)


__all__ = ["SLOT_POLL_INTERVAL", "FleetLimiter", "MailboxLimits", "mailbox_lock_class"]
