"""The mailroom's per-mailbox index against the plain answer: every message filtered and
sorted, for random sets of messages, added in any order, some removed, outboxes forgotten."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from hypothesis import given, settings
from hypothesis import strategies as st

from meshpipe.server.mailbox_index import Box, MailboxIndex
from meshpipe.server.models import DATA, Message

MAILBOXES = ("A", "B", "C")
BOXES: tuple[Box | Literal["all"], ...] = ("all", "inbox", "outbox")
START = datetime(2026, 1, 1, tzinfo=UTC)


def _message(number: int, sender: str, recipient: str, second: int) -> Message:
    created = START + timedelta(seconds=second)
    return Message(
        message_id=f"{number:032X}",
        sender=sender,
        recipient=recipient,
        workflow_id="W",
        message_type=DATA,
        total_chunks=1,
        created=created,
        inbox_expiry=created,
        events=[],
    )


messages_strategy = st.lists(
    st.tuples(st.sampled_from((*MAILBOXES, "")), st.sampled_from(MAILBOXES), st.integers(0, 5)),
    max_size=40,
)


def _expected(
    added: list[Message], mailbox: str, box: str, forgotten: set[str]
) -> list[tuple[str, str]]:
    """Newest first by (created, order added); a message the mailbox sent itself: inbox row
    first."""
    rows: list[tuple[datetime, int, int, str, str]] = []
    for order, message in enumerate(added):
        if box in ("all", "inbox") and message.recipient == mailbox:
            rows.append((message.created, order, 1, message.message_id, "inbox"))
        sent = message.sender == mailbox and message.message_id not in forgotten
        if box in ("all", "outbox") and sent:
            rows.append((message.created, order, 0, message.message_id, "outbox"))
    rows.sort(reverse=True)
    return [(row[3], row[4]) for row in rows]


@settings(max_examples=200, deadline=None)
@given(
    specs=messages_strategy,
    removed=st.sets(st.integers(0, 39), max_size=10),
    forget=st.sampled_from((*MAILBOXES, "")),
    start=st.integers(0, 50),
    size=st.integers(1, 12),
)
def test_pages_match_a_full_sort(
    specs: list[tuple[str, str, int]], removed: set[int], forget: str, start: int, size: int
) -> None:
    index = MailboxIndex()
    added = [_message(n, s, r, second) for n, (s, r, second) in enumerate(specs)]
    for message in added:
        index.add(message)
    gone = [m for n, m in enumerate(added) if n in removed]
    index.remove(gone)
    kept = [m for n, m in enumerate(added) if n not in removed]
    forgotten: set[str] = set()
    if forget:
        index.forget_outbox(forget)
        forgotten = {m.message_id for m in kept if m.sender == forget}
    for mailbox in MAILBOXES:
        for box in BOXES:
            expected = _expected(kept, mailbox, box, forgotten)
            shown = [(m.message_id, b) for m, b in index.newest_first(mailbox, box)]
            assert shown == expected
            assert index.count(mailbox, box) == len(expected)
            page = index.page(mailbox, box, start, size)
            assert [(m.message_id, b) for m, b in page] == expected[start : start + size]
        assert index.received(mailbox) == [
            m for m in sorted(kept, key=lambda m: m.created) if m.recipient == mailbox
        ]


def test_a_message_registered_late_takes_its_place_by_creation_time() -> None:
    """Two chunk-1 uploads overlapping: the later-created one registered first."""
    index = MailboxIndex()
    later, earlier = _message(1, "A", "B", 5), _message(2, "A", "B", 1)
    index.add(later)
    index.add(earlier)
    index.add(later)  # registering again changes nothing
    assert index.received("B") == [earlier, later]
    assert [m for m, _ in index.newest_first("A", "outbox")] == [later, earlier]
