"""Ledger.batch: the changes one thread makes in the block commit together, or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshpipe.ledger import Ledger, LedgerError
from tests.ledger.helpers import MAILBOX, begin_send, checksum


def test_a_batch_commits_every_change_in_it(ledger: Ledger, source: Path) -> None:
    with ledger.batch():
        record = begin_send(ledger, source)
        ledger.chunk_sent(record, 1, checksum(1), 100)
        ledger.set_message_id(record, "MESSAGE-1")
        ledger.chunk_sent(record, 2, checksum(2), 100)
        ledger.chunk_accepted(record, 2)
    found = ledger.find_send(MAILBOX, "extract-1")
    assert found is not None and found.message_id == "MESSAGE-1"
    assert ledger.accepted_chunks(found) == {1: checksum(1), 2: checksum(2)}


def test_an_error_leaving_a_batch_rolls_all_of_it_back(ledger: Ledger, source: Path) -> None:
    record = begin_send(ledger, source)
    ledger.chunk_sent(record, 1, checksum(1), 100)
    with pytest.raises(LedgerError) as refused, ledger.batch():
        ledger.set_message_id(record, "MESSAGE-1")
        ledger.chunk_sent(record, 2, checksum(2), 100)
        ledger.chunk_accepted(record, 7)  # not in the plan: refused
    assert refused.value.code == "chunk-number"
    found = ledger.find_send(MAILBOX, "extract-1")
    assert found is not None and found.message_id is None and found.state == "preparing"
    assert ledger.accepted_chunks(found) == {}
    assert {chunk.number for chunk in ledger.chunks(found)} == {1}
