"""``meshpipe history``: the ledger's transfers as a table or JSON, and one transfer's
lifecycle event by event.

A transfer is named by its message id, its local id, or its ledger id (the ``ID`` column);
a name that matches several transfers (a local id sent again with ``--again``, a message
sent to one's own mailbox) shows each of them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, date, datetime
from typing import Any, TextIO

from meshpipe.errors import MeshpipeError, MessageHeaderError
from meshpipe.ledger import Event, HistoryFilter, Ledger, TransferState, TransferSummary

STATES: tuple[str, ...] = (
    "preparing",
    "uploading",
    "completed",
    "downloading",
    "verified",
    "delivered",
    "acknowledged",
    "failed",
)


def parse_when(text: str) -> datetime:
    """``2026-12-03`` (midnight UTC) or an ISO date-time (UTC unless it names a zone)."""
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise MessageHeaderError(
            f"{text!r} is not a date: give YYYY-MM-DD or an ISO date-time such as "
            "2026-12-03T14:00:00"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def history_filter(
    *,
    local_id: str | None = None,
    message_id: str | None = None,
    mailbox: str | None = None,
    workflow_id: str | None = None,
    state: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> HistoryFilter:
    """The filter of the command's flags (dates as :func:`parse_when` reads them)."""
    if state is not None and state not in STATES:
        raise MessageHeaderError(f"--state must be one of {', '.join(STATES)}, not {state!r}")
    chosen: TransferState | None = state  # type: ignore[assignment]
    return HistoryFilter(
        local_id=local_id,
        message_id=message_id,
        mailbox=mailbox.upper() if mailbox else None,
        workflow_id=workflow_id,
        state=chosen,
        since=parse_when(since) if since else None,
        until=parse_when(until) if until else None,
    )


def find_transfers(ledger: Ledger, name: str) -> list[TransferSummary]:
    """The transfers ``name`` names: by message id, else local id, else ledger id."""
    for filters in (HistoryFilter(message_id=name), HistoryFilter(local_id=name)):
        found = ledger.history(filters, limit=100)
        if found:
            return found
    if name.isdigit():
        return [
            row for row in ledger.history(limit=1, before_id=int(name) + 1) if row.id == int(name)
        ]
    return []


def jsonable(value: Any) -> Any:
    """Records as JSON values: dates in ISO 8601."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value


def summary_json(row: TransferSummary) -> dict[str, Any]:
    return {str(k): jsonable(v) for k, v in asdict(row).items()}


def event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": event.at.isoformat(),
        "kind": event.kind,
        "detail": jsonable(event.detail),
    }


def _when(moment: datetime | None) -> str:
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S}" if moment is not None else "-"


def _progress(row: TransferSummary) -> str:
    return f"{row.chunks_done}/{row.chunk_count if row.chunk_count is not None else '?'}"


def write_list(rows: list[TransferSummary], out: TextIO) -> None:
    """One line per transfer, newest first, with a header."""
    columns = (
        "ID",
        "DIRECTION",
        "STATE",
        "CHUNKS",
        "CREATED (UTC)",
        "MESSAGE ID",
        "LOCAL ID",
        "PATH",
    )
    lines = [columns] + [
        (
            str(row.id),
            row.direction,
            row.state,
            _progress(row),
            _when(row.created_at),
            row.message_id or "-",
            row.local_id or "-",
            row.path or "-",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns) - 1)]
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=False)]
        out.write("  ".join([*cells, line[-1]]).rstrip() + "\n")


def _detail_text(detail: Mapping[str, Any]) -> str:
    return " ".join(
        f"{key}={json.dumps(value) if not isinstance(value, str) else value}"
        for key, value in detail.items()
        if value is not None
    )


def write_lifecycle(row: TransferSummary, events: list[Event], out: TextIO) -> None:
    """One transfer: what it is, then every event in the order it was recorded."""
    out.write(f"transfer {row.id}: {row.direction} {row.state}, chunks {_progress(row)}\n")
    facts = {
        "mailbox": row.mailbox,
        "counterparty": row.counterparty,
        "message id": row.message_id,
        "local id": row.local_id,
        "workflow id": row.workflow_id,
        "subject": row.subject,
        "path": row.path,
        "size": str(row.size) if row.size is not None else None,
        "error": row.error,
    }
    out.writelines(f"  {name}: {value}\n" for name, value in facts.items() if value)
    for event in events:
        out.write(
            f"{_when(event.at)}  {event.kind:<16} {_detail_text(event.detail)}".rstrip() + "\n"
        )


def show_history(
    ledger: Ledger,
    out: TextIO,
    *,
    name: str | None,
    filters: HistoryFilter,
    limit: int,
    as_json: bool,
) -> int:
    """The ``history`` command's output; returns its exit status (1: ``name`` unknown)."""
    if name is None:
        rows = ledger.history(filters, limit=limit)
        if as_json:
            json.dump([summary_json(row) for row in rows], out, indent=2)
            out.write("\n")
        else:
            write_list(rows, out)
        return 0
    found = find_transfers(ledger, name)
    if not found:
        raise MeshpipeError(
            f"no transfer in ledger {ledger.location} has message id, local id or id {name!r}: "
            "list them with meshpipe history"
        )
    shown = [(row, ledger.events(row.id)) for row in found]
    if as_json:
        body = [
            {"transfer": summary_json(row), "events": [event_json(e) for e in events]}
            for row, events in shown
        ]
        json.dump(body, out, indent=2)
        out.write("\n")
        return 0
    for index, (row, events) in enumerate(shown):
        if index:
            out.write("\n")
        write_lifecycle(row, events, out)
    return 0


__all__ = [
    "STATES",
    "find_transfers",
    "history_filter",
    "parse_when",
    "show_history",
    "write_lifecycle",
    "write_list",
]
