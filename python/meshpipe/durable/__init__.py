"""Durable transfers: the transfer pipeline (:mod:`meshpipe.transfer`) recorded in the ledger
(:mod:`meshpipe.ledger`), so that a send or receive killed part-way resumes where it was, a
send is not made twice, and a message is delivered once.

:mod:`meshpipe.durable.writer` runs the ledger's blocking writes on one thread of their own,
in order, so that recording a chunk overlaps the next chunk on the wire; the journals wait
for a write only where the next step depends on it. :mod:`meshpipe.durable.send` makes a send
idempotent and resumable (:class:`DurableSend`), recording it with
:mod:`meshpipe.durable.send_journal`.
"""

from meshpipe.durable.send import DurableSend, DurableSendResult, SendOutcome, send_durably
from meshpipe.durable.send_journal import LedgerSendJournal
from meshpipe.durable.writer import LedgerWriter

__all__ = [
    "DurableSend",
    "DurableSendResult",
    "LedgerSendJournal",
    "LedgerWriter",
    "SendOutcome",
    "send_durably",
]
