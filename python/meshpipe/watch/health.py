"""What ``/readyz`` answers from: each mailbox's health as the service last saw it.

The service writes it (handshakes, polls, the circuit breaker, the certificate check); the
operations endpoint only reads it. A mailbox is not ready while its last handshake failed (or
none has succeeded yet), while its client certificate has expired, or while the circuit to
MESH is open; the service is ready when every mailbox is.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(slots=True)
class MailboxHealth:
    """One mailbox: times are Unix seconds, None until first known."""

    mailbox: str
    handshake_ok: bool | None = None
    last_handshake: float | None = None
    handshake_error: str | None = None
    certificate_expires: float | None = None
    circuit_open: bool = False
    last_poll: float | None = None

    def problems(self, now: float) -> list[str]:
        """Why this mailbox is not ready (empty: ready)."""
        problems: list[str] = []
        if self.handshake_ok is None:
            problems.append(f"{self.mailbox}: no handshake yet")
        elif not self.handshake_ok:
            detail = f": {self.handshake_error}" if self.handshake_error else ""
            problems.append(f"{self.mailbox}: the last handshake failed{detail}")
        if self.certificate_expires is not None and self.certificate_expires <= now:
            problems.append(f"{self.mailbox}: the client certificate has expired")
        if self.circuit_open:
            problems.append(f"{self.mailbox}: MESH is failing (circuit open, retrying)")
        return problems


class Health:
    """The health of every mailbox the service watches."""

    def __init__(self, mailboxes: Iterable[str]) -> None:
        self._mailboxes = {name: MailboxHealth(name) for name in mailboxes}

    def __getitem__(self, mailbox: str) -> MailboxHealth:
        return self._mailboxes[mailbox]

    def __iter__(self) -> Iterator[MailboxHealth]:
        return iter(self._mailboxes.values())

    def problems(self, now: float | None = None) -> list[str]:
        """Why the service is not ready (empty: ready)."""
        at = time.time() if now is None else now
        return [item for health in self._mailboxes.values() for item in health.problems(at)]
