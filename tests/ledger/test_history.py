"""history(), count() and events(), on SQLite and PostgreSQL: filters, paging, order."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

from meshpipe.ledger import HistoryFilter, Ledger
from tests.ledger.helpers import (
    MAILBOX,
    RECIPIENT,
    begin_receive,
    begin_send,
    checksum,
    receive_all,
    send_all,
)


class Clock:
    """A ledger clock that moves one minute per reading."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


def test_history_filters_and_progress(ledger_location: str, source: Path, tmp_path: Path) -> None:
    clock = Clock()
    with Ledger.open(ledger_location, clock=clock) as ledger:
        sent = send_all(ledger, begin_send(ledger, source, local_id="a"))
        middle = clock.now
        partial = begin_send(ledger, source, local_id="b", workflow_id="WF_B")
        ledger.chunk_sent(partial, 1, checksum(1), 10)
        ledger.set_message_id(partial, "MSG-B")
        received = receive_all(ledger, begin_receive(ledger, tmp_path, message_id="MSG-IN"))

        def ids(**filters: object) -> list[int]:
            return [row.id for row in ledger.history(HistoryFilter(**filters))]  # type: ignore[arg-type]

        assert ids() == [received.id, partial.id, sent.id]  # newest first
        assert ids(direction="send") == [partial.id, sent.id]
        assert ids(direction="receive") == [received.id]
        assert ids(local_id="b") == [partial.id]
        assert ids(local_id="extract-1") == [received.id]  # the sender's local id
        assert ids(message_id="MSG-1") == [sent.id]
        assert ids(mailbox=MAILBOX) == [partial.id, sent.id]
        assert ids(mailbox=RECIPIENT) == [received.id]
        assert ids(workflow_id="WF_B") == [partial.id]
        assert ids(state="uploading") == [partial.id]
        assert ids(state="acknowledged") == [received.id]
        assert ids(state="failed") == []
        assert ids(direction="send", workflow_id="WF_A") == [sent.id]
        assert ids(since=middle) == [received.id, partial.id]
        assert ids(until=middle) == [sent.id]
        assert ids(since=middle, until=middle + timedelta(minutes=2)) == [partial.id]
        assert ledger.count() == 3
        assert ledger.count(HistoryFilter(direction="send")) == 2
        rows = {row.id: row for row in ledger.history()}
        assert (rows[partial.id].chunks_done, rows[partial.id].chunk_count) == (1, 3)
        assert (rows[sent.id].chunks_done, rows[sent.id].state) == (3, "completed")
        assert rows[received.id].counterparty == MAILBOX
        assert rows[sent.id].counterparty == RECIPIENT
        assert rows[partial.id].message_id == "MSG-B"


def test_history_pages_by_offset_and_by_key(ledger: Ledger, source: Path) -> None:
    made = [begin_send(ledger, source, local_id=f"id-{n}").id for n in range(23)]
    newest_first = made[::-1]
    by_offset = [
        [row.id for row in ledger.history(limit=10, offset=offset)] for offset in (0, 10, 20)
    ]
    assert by_offset == [newest_first[:10], newest_first[10:20], newest_first[20:]]
    pages: list[list[int]] = []
    before = None
    while True:
        page = [row.id for row in ledger.history(limit=10, before_id=before)]
        if not page:
            break
        pages.append(page)
        before = page[-1]
    assert pages == by_offset
    assert ledger.history(limit=0) == []


def test_events_are_in_order_and_page(ledger: Ledger, source: Path) -> None:
    record = send_all(ledger, begin_send(ledger, source))
    ledger.record_event(record, "note", text="checked by hand")
    kinds = [event.kind for event in ledger.events(record)]
    assert kinds == [
        "created",
        "chunk_sent",
        "message_id",
        "chunk_accepted",
        "chunk_sent",
        "chunk_accepted",
        "chunk_sent",
        "chunk_accepted",
        "completed",
        "note",
    ]
    every = ledger.events(record)
    assert [e.id for e in every] == sorted(e.id for e in every)
    assert all(a.at <= b.at for a, b in itertools.pairwise(every))
    first = ledger.events(record, limit=4)
    rest = ledger.events(record, after_id=first[-1].id)
    assert first + rest == every
    assert every[0].detail["chunk_count"] == 3
    assert every[-1].detail == {"text": "checked by hand"}
    other = begin_send(ledger, source, local_id="other")
    assert [e.kind for e in ledger.events(other)] == ["created"]
