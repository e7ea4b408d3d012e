"""Messages as the server keeps them, their status events, and a clock tests can move."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

UPLOADING = "uploading"
ACCEPTED = "accepted"
ACKNOWLEDGED = "acknowledged"
UNDELIVERABLE = "undeliverable"
ERROR = "error"
STATUSES = (UPLOADING, ACCEPTED, ACKNOWLEDGED, UNDELIVERABLE, ERROR)

DATA = "DATA"
REPORT = "REPORT"


class Clock:
    """UTC wall clock with an offset that tests move forward (``advance``) to reach expiry."""

    def __init__(self) -> None:
        self._offset = timedelta()
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            offset = self._offset
        return datetime.now(UTC) + offset

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self._offset += delta

    @property
    def offset(self) -> timedelta:
        return self._offset


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(slots=True)
class Event:
    status: str
    timestamp: datetime
    code: str | None = None
    event: str | None = None
    description: str | None = None
    linked_message_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["timestamp"] = self.timestamp.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        stamp = _dt(data.get("timestamp"))
        assert stamp is not None
        return cls(**{**data, "timestamp": stamp})


@dataclass(slots=True)
class ChunkRecord:
    """What was received for one chunk: bytes as stored, and (when checked) the decoded size and
    the xxh3-128 of the decoded bytes."""

    number: int
    stored_size: int
    size: int | None = None
    xxh3_128: str | None = None
    encoding: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChunkRecord:
        return cls(**data)


@dataclass(slots=True)
class SyntheticSpec:
    """A message whose bytes are generated on download: ``size`` decoded bytes from ``seed``, cut
    into chunks of ``chunk_size`` (the last shorter)."""

    size: int
    chunk_size: int
    seed: int = 0

    def chunk_sizes(self) -> list[int]:
        if self.size == 0:
            return [0]
        full, rest = divmod(self.size, self.chunk_size)
        return [self.chunk_size] * full + ([rest] if rest else [])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Message:
    message_id: str
    sender: str
    recipient: str
    workflow_id: str
    message_type: str
    total_chunks: int
    created: datetime
    inbox_expiry: datetime
    events: list[Event] = field(default_factory=list)
    subject: str = ""
    local_id: str = ""
    partner_id: str = ""
    file_name: str = ""
    content_type: str = ""
    content_encoding: str = ""
    checksum: str = ""
    encrypted: bool = False
    compressed: bool = False
    chunks: dict[int, ChunkRecord] = field(default_factory=dict)
    file_size: int = 0
    synthetic: SyntheticSpec | None = None
    discarded: bool = False
    #: GP routing failed (e.g. ``EPL-153``): once complete it is not delivered, and an error
    #: report goes to the sender
    routing_error: str = ""

    @property
    def status(self) -> str:
        return self.events[-1].status

    @property
    def last_event(self) -> Event:
        return self.events[-1]

    @property
    def error_event(self) -> Event | None:
        return next((e for e in reversed(self.events) if e.status == ERROR), None)

    def status_time(self, *statuses: str) -> datetime | None:
        return next((e.timestamp for e in reversed(self.events) if e.status in statuses), None)

    def add_event(self, event: Event) -> None:
        self.events.append(event)

    @property
    def decoded_size(self) -> int | None:
        """Total decoded bytes, when every chunk's decoded size is known."""
        sizes = [c.size for c in self.chunks.values()]
        if len(sizes) != self.total_chunks or any(s is None for s in sizes):
            return None
        return sum(s for s in sizes if s is not None)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            key: getattr(self, key)
            for key in (
                "message_id",
                "sender",
                "recipient",
                "workflow_id",
                "message_type",
                "total_chunks",
                "subject",
                "local_id",
                "partner_id",
                "file_name",
                "content_type",
                "content_encoding",
                "checksum",
                "encrypted",
                "compressed",
                "file_size",
                "discarded",
                "routing_error",
            )
        }
        data["created"] = self.created.isoformat()
        data["inbox_expiry"] = self.inbox_expiry.isoformat()
        data["events"] = [e.to_json() for e in self.events]
        data["chunks"] = [c.to_json() for c in self.chunks.values()]
        data["synthetic"] = self.synthetic.to_json() if self.synthetic else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Message:
        values = dict(data)
        created = _dt(values.pop("created"))
        expiry = _dt(values.pop("inbox_expiry"))
        assert created is not None and expiry is not None
        events = [Event.from_json(e) for e in values.pop("events")]
        chunks = {c["number"]: ChunkRecord.from_json(c) for c in values.pop("chunks")}
        synthetic = values.pop("synthetic", None)
        return cls(
            **values,
            created=created,
            inbox_expiry=expiry,
            events=events,
            chunks=chunks,
            synthetic=SyntheticSpec(**synthetic) if synthetic else None,
        )
