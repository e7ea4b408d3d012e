"""Reads messages that mesh-sandbox's file store left in a data directory, so ``meshpipe serve``
can take over a sandbox's ``MAILBOXES_DATA_DIR`` as it is.

The sandbox keeps ``<dir>/<RECIPIENT>/in/<ID>.json`` (its serialised Message: parties, events
newest first with naive-UTC timestamps, metadata) next to the same ``<ID>/<n>`` chunk files
meshpipe uses. Its files are only read; meshpipe's own ``<ID>.msg`` takes precedence once the
message changes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshpipe.server.models import ChunkRecord, Event, Message


def _time(value: str | None) -> datetime:
    if not value:
        return datetime.now(UTC)
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def message_from_sandbox(data: dict[str, Any], folder: Path) -> Message:
    """A Message from the sandbox's JSON; ``folder`` holds its chunk files (``1``, ``2``...)."""
    metadata = data.get("metadata") or {}
    encoding = _text(metadata.get("content_encoding")).strip().lower()
    events = [
        Event(
            status=str(item["status"]),
            timestamp=_time(item.get("timestamp")),
            code=item.get("code"),
            event=item.get("event"),
            description=item.get("description"),
            linked_message_id=item.get("linked_message_id"),
        )
        for item in reversed(data.get("events") or [])
    ]
    created = _time(data.get("created_timestamp"))
    if not events:
        events = [Event("accepted", created)]
    message_id = str(data["message_id"]).upper()
    message = Message(
        message_id=message_id,
        sender=_text((data.get("sender") or {}).get("mailbox_id")).upper(),
        recipient=_text((data.get("recipient") or {}).get("mailbox_id")).upper(),
        workflow_id=_text(data.get("workflow_id")),
        message_type=_text(data.get("message_type")) or "DATA",
        total_chunks=int(data.get("total_chunks") or 0),
        created=created,
        inbox_expiry=_time(data.get("inbox_expiry_timestamp")),
        events=events,
        subject=_text(metadata.get("subject")),
        local_id=_text(metadata.get("local_id")),
        partner_id=_text(metadata.get("partner_id")),
        file_name=_text(metadata.get("file_name")),
        content_type=_text(metadata.get("content_type")),
        content_encoding=encoding,
        checksum=_text(metadata.get("checksum")),
        encrypted=bool(metadata.get("encrypted")),
        compressed=bool(metadata.get("compressed")),
        file_size=int(data.get("file_size") or 0),
    )
    for number in range(1, message.total_chunks + 1):
        path = folder / str(number)
        if path.is_file():
            stored = path.stat().st_size
            # The decoded size of a gzip chunk is unknown until read; downloads then stream.
            size = None if encoding == "gzip" else stored
            message.chunks[number] = ChunkRecord(number, stored, size, None, encoding)
    return message
