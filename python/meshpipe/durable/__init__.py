"""Durable transfers: the transfer pipeline (:mod:`meshpipe.transfer`) recorded in the ledger
(:mod:`meshpipe.ledger`), so that a send or receive killed part-way resumes where it was, a
send is not made twice, and a message is delivered once.

:mod:`meshpipe.durable.writer` runs the ledger's blocking writes on one thread of their own,
in order, so that recording a chunk overlaps the next chunk on the wire; the journals wait
for a write only where the next step depends on it.

Sending: :mod:`meshpipe.durable.send` makes a send idempotent and resumable
(:class:`DurableSend`), recording it with :mod:`meshpipe.durable.send_journal`.
Receiving: :mod:`meshpipe.durable.receive` (:class:`DurableReceiver`: resume, exactly-once
delivery, the claim), :mod:`meshpipe.durable.receive_journal` (the download's stages in the
ledger), :mod:`meshpipe.durable.hook` (the application hook run before acknowledgement), and
:mod:`meshpipe.durable.history` (``meshpipe history``: the ledger as text or JSON).
Reports: :mod:`meshpipe.durable.reports` records an error or non-delivery report on the send
it is about (a ``report`` event) before it is acknowledged.
"""

from meshpipe.durable.hook import CallableHook, CommandHook, Delivery, Hook, HookError
from meshpipe.durable.receive import DurableReceiver, DurableReceiveResult, partial_path_for
from meshpipe.durable.receive_journal import LedgerReceiveJournal
from meshpipe.durable.send import DurableSend, DurableSendResult, SendOutcome, send_durably
from meshpipe.durable.send_journal import LedgerSendJournal
from meshpipe.durable.writer import LedgerWriter

__all__ = [
    "CallableHook",
    "CommandHook",
    "Delivery",
    "DurableReceiveResult",
    "DurableReceiver",
    "DurableSend",
    "DurableSendResult",
    "Hook",
    "HookError",
    "LedgerReceiveJournal",
    "LedgerSendJournal",
    "LedgerWriter",
    "SendOutcome",
    "partial_path_for",
    "send_durably",
]
