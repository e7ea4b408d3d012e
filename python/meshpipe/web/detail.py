"""One transfer as the pages show it, from its ledger record, chunks and events: the chunk
table (sizes, checksums, durations), the timeline, the retries and their causes, the points
of the throughput chart, the live progress, and the JSON evidence bundle.

Pure functions of the records: no I/O. Headers whose names say they carry a credential
(``authorization``, ``password``, ``token``, ``secret``, ``key`` as in ``shared-key``) are
withheld wherever headers are shown, although the ledger stores none: a send records its
``mex-`` request headers only.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from meshpipe.ledger import ChunkRecord, Event, TransferRecord
from meshpipe.logs import redact
from meshpipe.pages.format import duration_text, rate_text, size_text
from meshpipe.web.store import RUNNING_STATES, throughput

EVIDENCE_FORMAT: Final = "meshpipe-evidence/1"
WITHHELD: Final = "(withheld)"
MAX_CHART_POINTS: Final = 120
#: Events about things going wrong or being tried again.
TROUBLE_KINDS: Final = frozenset(
    {"retry", "error", "failed", "resumed", "restarted", "taken_over", "chunks_discarded"}
)
_SECRET_NAME: Final = re.compile(
    r"authori[sz]ation|password|passwd|secret|token|(^|[-_])key$", re.I
)
_LABELS: Final = {
    "created": "created",
    "chunk_sent": "chunk sent",
    "chunk_accepted": "chunk accepted",
    "chunk_written": "chunk downloaded and verified",
    "chunks_discarded": "chunks discarded",
    "message_id": "message id given by MESH",
    "source_checksum": "source checksum",
    "completed": "completed",
    "verified": "whole file verified",
    "delivered": "delivered",
    "hook": "hook run",
    "acknowledged": "acknowledged",
    "failed": "failed",
    "resumed": "resumed",
    "restarted": "restarted",
    "claimed": "claimed",
    "taken_over": "taken over",
    "released": "released",
    "retry": "retry",
    "error": "error",
    "note": "note",
}


def safe_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` with any credential-like value withheld (and hidden secrets redacted)."""
    return {
        name: WITHHELD if _SECRET_NAME.search(name) else redact(str(value))
        for name, value in headers.items()
    }


@dataclass(frozen=True, slots=True)
class ChunkRow:
    """One row of the chunk table. ``size`` is the uncompressed size, ``wire_size`` the bytes
    on the wire (sends); ``duration`` as :func:`chunk_rows` says."""

    number: int
    state: str
    xxh3_128: str
    size: int | None
    wire_size: int | None
    sent_at: dt.datetime | None
    done_at: dt.datetime | None
    duration: float | None


def _uncompressed_size(record: TransferRecord, chunk: ChunkRecord) -> int | None:
    if record.direction == "receive":
        return chunk.length
    size, chunk_size = record.source.size, record.chunk_size
    if chunk.number < record.chunk_count:
        return chunk_size
    return size - chunk_size * (record.chunk_count - 1)


def chunk_rows(record: TransferRecord, chunks: Sequence[ChunkRecord]) -> list[ChunkRow]:
    """The chunk table, by number. A chunk's duration runs from the finish of the chunk that
    finished before it (the first: from when it was sent, or from the start): the ledger
    records chunks 2..N-1 of a send as sent and accepted together, once MESH accepted them,
    so their own sent time is not when they left."""
    finished = sorted((c.done_at, c.number, c.sent_at) for c in chunks if c.done_at is not None)
    duration_of: dict[int, float] = {}
    previous: dt.datetime | None = None
    for done_at, number, sent_at in finished:
        began = previous if previous is not None else (sent_at or record.created_at)
        duration_of[number] = max(0.0, (done_at - began).total_seconds())
        previous = done_at
    return [
        ChunkRow(
            chunk.number,
            chunk.state,
            chunk.xxh3_128,
            _uncompressed_size(record, chunk),
            chunk.payload_size,
            chunk.sent_at,
            chunk.done_at,
            duration_of.get(chunk.number),
        )
        for chunk in chunks
    ]


def throughput_points(
    record: TransferRecord, rows: Sequence[ChunkRow], *, most: int = MAX_CHART_POINTS
) -> list[tuple[float, float]]:
    """(seconds since the first chunk began, bytes per second) at each chunk completion,
    grouped into at most ``most`` points: the uncompressed bytes finished in each step over
    the time it took."""
    done = sorted(
        ((row.done_at, row.size or 0) for row in rows if row.done_at is not None),
        key=lambda item: item[0],
    )
    if not done:
        return []
    starts = [row.sent_at for row in rows if row.sent_at is not None]
    start = min(starts) if starts else record.created_at
    start = min(start, done[0][0])
    group = -(-len(done) // most)
    points: list[tuple[float, float]] = []
    previous = 0.0
    for index in range(0, len(done), group):
        step = done[index : index + group]
        at = (step[-1][0] - start).total_seconds()
        span = at - previous
        size = sum(size for _, size in step)
        if span <= 0:
            span = 1e-3
        points.append((round(at, 3), size / span))
        previous = at
    return points


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One line of the timeline: an event, with its chunk's size, checksum and duration."""

    at: dt.datetime
    kind: str
    label: str
    chunk: int | None
    size: int | None
    checksum: str | None
    duration: float | None
    detail: str
    trouble: bool


def _detail_text(detail: Mapping[str, Any], skip: set[str]) -> str:
    parts = []
    for key, value in detail.items():
        if key in skip or value is None or value == "" or value is False:
            continue
        shown = "yes" if value is True else redact(str(value))
        parts.append(f"{key.replace('_', ' ')}: {shown}")
    return "; ".join(parts)


def timeline(events: Sequence[Event], rows: Sequence[ChunkRow]) -> list[TimelineEntry]:
    """The events in order, chunk events carrying the chunk's size, checksum and duration."""
    by_number = {row.number: row for row in rows}
    entries = []
    for event in events:
        detail = dict(event.detail)
        number = detail.get("number", detail.get("chunk"))
        row = by_number.get(number) if isinstance(number, int) else None
        size = checksum = duration = None
        if event.kind in ("chunk_sent", "chunk_accepted", "chunk_written") and row is not None:
            size = detail.get("length") or row.size
            checksum = detail.get("xxh3_128") or row.xxh3_128
            duration = row.duration if event.kind != "chunk_sent" else None
        skip = {"number", "chunk", "xxh3_128", "length"} if row is not None else set()
        if isinstance(number, int) and row is None:
            skip = {"number", "chunk"}
        entries.append(
            TimelineEntry(
                at=event.at,
                kind=event.kind,
                label=_LABELS.get(event.kind, event.kind.replace("_", " ")),
                chunk=number if isinstance(number, int) else None,
                size=size if isinstance(size, int) else None,
                checksum=checksum if isinstance(checksum, str) else None,
                duration=duration,
                detail=_detail_text(detail, skip),
                trouble=event.kind in TROUBLE_KINDS,
            )
        )
    return entries


def progress(record: TransferRecord) -> dict[str, Any]:
    """The live-refresh answer for one transfer (see :mod:`meshpipe.pages`)."""
    total = record.chunk_count or 0
    percent = 100.0 * record.chunks_done / total if total else 0.0
    if record.state in ("completed", "verified", "delivered", "acknowledged"):
        percent = 100.0
    size = record.source.size if record.direction == "send" else record.size
    done_bytes = None
    if size is not None and total:
        done_bytes = min(size, round(size * record.chunks_done / total))
    return {
        "fields": {
            "state": record.state,
            "chunks": f"{record.chunks_done} of {total}" if total else str(record.chunks_done),
            "percent": round(percent, 1),
            "percent_text": f"{percent:.0f}%",
            "bytes": size_text(done_bytes),
            "throughput": rate_text(throughput(record)),
            "updated": record.updated_at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ"),
            "error": record.error or "",
        },
        "running": record.state in RUNNING_STATES,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, str):
        return redact(value)
    return value


def evidence(
    record: TransferRecord,
    chunks: Sequence[ChunkRecord],
    events: Sequence[Event],
    *,
    ledger: str,
    generated_at: dt.datetime,
    tracking: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The evidence bundle of one transfer: the record (every stored header), every chunk
    with its xxh3-128, every event, MESH tracking if fetched. No credential is in it."""
    transfer = asdict(record)
    transfer["headers"] = safe_headers(record.headers)
    transfer.pop("claim", None)
    transfer["claim"] = (
        {"owner": record.claim.owner, "expires_at": record.claim.expires_at}
        if record.claim
        else None
    )
    bundle = {
        "format": EVIDENCE_FORMAT,
        "generated_at": generated_at,
        "ledger": ledger,
        "transfer": transfer,
        "throughput_bytes_per_second": throughput(record),
        "chunks": [asdict(chunk) for chunk in chunks],
        "events": [
            {"id": event.id, "at": event.at, "kind": event.kind, "detail": dict(event.detail)}
            for event in events
        ],
        "tracking": dict(tracking) if tracking is not None else None,
    }
    result: dict[str, Any] = _jsonable(bundle)
    return result


def duration_of(record: TransferRecord) -> str:
    """From creation to finish (or to the last change, while running)."""
    end = record.finished_at or record.updated_at
    return duration_text((end - record.created_at).total_seconds())


__all__ = [
    "EVIDENCE_FORMAT",
    "TROUBLE_KINDS",
    "WITHHELD",
    "ChunkRow",
    "TimelineEntry",
    "chunk_rows",
    "duration_of",
    "evidence",
    "progress",
    "safe_headers",
    "throughput_points",
    "timeline",
]
