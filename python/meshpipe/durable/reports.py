"""Reports tied to the sends they are about: an error report (a GP-routing failure such as
``EPL-152`` "Invalid NHS Number") or a non-delivery report (code 14) that MESH puts in the
sender's inbox is matched to the send in the ledger and recorded there as a ``report`` event,
before it is acknowledged, so that ``meshpipe history`` shows what became of the message.

The send is found by the report's ``mex-LinkedMsgID`` (the failed message's id, a send of
this mailbox), else by its ``mex-LocalID`` (the latest send of that local id). A report seen
again (acknowledged by nobody after a crash) is not recorded twice. A report the ledger has
no send for is returned unrecorded (``transfer_id`` None): it is still listed and filed,
never lost. Blocking: run these with ``asyncio.to_thread``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Final

from meshpipe.ledger import HistoryFilter, Ledger
from meshpipe.models import ReportMessage

log = logging.getLogger("meshpipe.durable")

#: The event's detail keys, from the report's fields.
_DETAIL: Final = {
    "report_message_id": "message_id",
    "code": "status_code",
    "event": "status_event",
    "description": "status_description",
    "success": "status_success",
    "reported_at": "status_timestamp",
    "linked_message_id": "linked_message_id",
    "local_id": "local_id",
}


def find_reported_send(ledger: Ledger, mailbox: str, report: ReportMessage) -> int | None:
    """The ledger id of the send from ``mailbox`` that ``report`` is about, or None."""
    if report.linked_message_id:
        found = ledger.history(
            HistoryFilter(message_id=report.linked_message_id, mailbox=mailbox, direction="send"),
            limit=1,
        )
        if found:
            return found[0].id
    if report.local_id:
        record = ledger.find_send(mailbox, report.local_id)
        if record is not None:
            return record.id
    return None


def report_detail(report: ReportMessage) -> dict[str, Any]:
    """The ``report`` event's detail: the report's id and status fields."""
    return {key: getattr(report, name) for key, name in _DETAIL.items()}


def record_report(ledger: Ledger, mailbox: str, report: ReportMessage) -> ReportMessage:
    """Record ``report`` on its send (once) and return it with ``transfer_id`` set; unchanged
    when the ledger has no such send."""
    transfer_id = find_reported_send(ledger, mailbox, report)
    if transfer_id is None:
        log.warning(
            "%s: %s: no send in the ledger matches it (linked message id, local id)",
            mailbox,
            report.describe(),
        )
        return report
    recorded = any(
        event.kind == "report" and event.detail.get("report_message_id") == report.message_id
        for event in ledger.events(transfer_id)
    )
    if not recorded:
        ledger.record_event(transfer_id, "report", **report_detail(report))
    return dataclasses.replace(report, transfer_id=transfer_id)


__all__ = ["find_reported_send", "record_report", "report_detail"]
