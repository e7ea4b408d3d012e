"""Each mailbox's messages in the order lists show them, kept as messages come and go, so that
a mailbox's inbox, its outbox and a page of its store view cost what they return, not a pass
over every message the server holds.

Per mailbox, two lists sorted by (creation time, registration number): what it received
(``recipient``) and what it sent (``sender``; a sender's reset forgets its outbox, as
mesh-sandbox does, and drops it here). A message is added at registration, normally at the
end (binary insertion keeps a message registered after a later-created one, two chunk-1
uploads overlapping, in its place); removals (expiry, resets) are rare and rebuild nothing but
the lists they touch.

A page of a mailbox's messages newest first, inbox and outbox together, is found without
walking the lists: :meth:`MailboxIndex.page` splits the merged order at the page's edges
by binary search over the two lists (the k-th element of two sorted lists), then merges only
the page.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from meshpipe.server.models import Message

Box = Literal["inbox", "outbox"]

#: A list entry: (created, registration number, the message). The number is unique, so the
#: message itself is never compared.
_Entry = tuple[datetime, int, Message]


@dataclass(slots=True)
class _Box:
    entries: list[_Entry] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)

    def add(self, entry: _Entry) -> None:
        if entry[2].message_id in self.ids:
            return
        self.ids.add(entry[2].message_id)
        if not self.entries or self.entries[-1][:2] < entry[:2]:
            self.entries.append(entry)
        else:
            bisect.insort(self.entries, entry, key=lambda e: e[:2])

    def remove(self, message_ids: set[str]) -> None:
        if self.ids & message_ids:
            self.entries = [e for e in self.entries if e[2].message_id not in message_ids]
            self.ids -= message_ids


class MailboxIndex:
    """Received and sent messages per mailbox (see the module doc)."""

    def __init__(self) -> None:
        self._received: dict[str, _Box] = {}
        self._sent: dict[str, _Box] = {}
        self._numbers = itertools.count()
        self._number_of: dict[str, int] = {}

    def clear(self) -> None:
        self._received.clear()
        self._sent.clear()
        self._number_of.clear()

    def add(self, message: Message) -> None:
        number = self._number_of.setdefault(message.message_id, next(self._numbers))
        entry = (message.created, number, message)
        if message.recipient:
            self._received.setdefault(message.recipient, _Box()).add(entry)
        if message.sender:
            self._sent.setdefault(message.sender, _Box()).add(entry)

    def remove(self, messages: Iterable[Message]) -> None:
        """Forget ``messages`` (deleted) everywhere."""
        gone = list(messages)
        ids = {m.message_id for m in gone}
        for mailbox in {m.recipient for m in gone}:
            if mailbox in self._received:
                self._received[mailbox].remove(ids)
        for mailbox in {m.sender for m in gone}:
            if mailbox in self._sent:
                self._sent[mailbox].remove(ids)
        for message_id in ids:
            self._number_of.pop(message_id, None)

    def forget_outbox(self, mailbox_id: str) -> None:
        """The mailbox's outbox emptied (its sent messages stay in their recipients')."""
        self._sent.pop(mailbox_id, None)

    def received(self, mailbox_id: str) -> list[Message]:
        """What the mailbox received, oldest first."""
        return [entry[2] for entry in self._entries(mailbox_id, "inbox")]

    def sent(self, mailbox_id: str) -> list[Message]:
        """What the mailbox sent (since its last reset), oldest first."""
        return [entry[2] for entry in self._entries(mailbox_id, "outbox")]

    def count(self, mailbox_id: str, box: Box | Literal["all"]) -> int:
        if box == "all":
            return self.count(mailbox_id, "inbox") + self.count(mailbox_id, "outbox")
        return len(self._entries(mailbox_id, box))

    def newest_first(
        self, mailbox_id: str, box: Box | Literal["all"]
    ) -> Iterator[tuple[Message, Box]]:
        """The box's messages newest first, ``all``: inbox and outbox merged (a message the
        mailbox sent itself comes twice, inbox first)."""
        if box == "all":
            return iter(self.page(mailbox_id, "all", 0, self.count(mailbox_id, "all")))
        return ((entry[2], box) for entry in reversed(self._entries(mailbox_id, box)))

    def page(
        self, mailbox_id: str, box: Box | Literal["all"], start: int, size: int
    ) -> list[tuple[Message, Box]]:
        """Positions ``start`` to ``start + size`` of :meth:`newest_first`."""
        if box != "all":
            entries = self._entries(mailbox_id, box)
            high = max(len(entries) - start, 0)
            return [(entry[2], box) for entry in reversed(entries[max(high - size, 0) : high])]
        received = self._entries(mailbox_id, "inbox")
        sent = self._entries(mailbox_id, "outbox")
        # Newest first from ``start`` is oldest first over [total - start - size, total - start).
        high = max(len(received) + len(sent) - start, 0)
        low = max(high - size, 0)
        r_low, r_high = _split(received, sent, low), _split(received, sent, high)
        rows: list[tuple[tuple[datetime, int, int], Message, Box]] = [
            ((e[0], e[1], 1), e[2], "inbox") for e in received[r_low:r_high]
        ]
        rows += [((e[0], e[1], 0), e[2], "outbox") for e in sent[low - r_low : high - r_high]]
        rows.sort(key=lambda row: row[0], reverse=True)
        return [(message, shown_in) for _, message, shown_in in rows]

    def _entries(self, mailbox_id: str, box: Box) -> list[_Entry]:
        found = (self._received if box == "inbox" else self._sent).get(mailbox_id)
        return found.entries if found else []


def _split(received: list[_Entry], sent: list[_Entry], k: int) -> int:
    """How many of the first ``k`` entries of the two lists merged oldest first come from
    ``received`` (an entry received sorts after the same message sent: it is shown first,
    newest first)."""

    def received_before(i: int, j: int) -> bool:
        # Whether received[i] sorts before sent[j] in the merged order.
        return (received[i][0], received[i][1], 1) < (sent[j][0], sent[j][1], 0)

    low, high = max(0, k - len(sent)), min(k, len(received))
    while low < high:  # the smallest i with received[i] not among the first k
        i = (low + high) // 2
        j = k - i - 1  # the last sent among the first k if received[:i] are
        if j >= 0 and received_before(i, j):
            low = i + 1
        else:
            high = i
    return low


__all__ = ["Box", "MailboxIndex"]
