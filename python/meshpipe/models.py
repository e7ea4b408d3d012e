"""Typed results of MESH calls: message metadata, REPORT messages, tracking, lookup, checksums."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from meshpipe.errors import MeshProtocolError
from meshpipe.headers import checksum_is_valid, parse_chunk_range, parse_flag

#: The version token that opens meshpipe's mex-Content-Checksum value.
CHECKSUM_VERSION: Final = "meshpipe/1"
#: The version token of the form whose whole-file hash travels at the end of the last chunk.
TRAILER_CHECKSUM_VERSION: Final = "meshpipe/2"
#: What stands for the hash in that form.
TRAILER_MARK: Final = "trailer"
_HEX: Final = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True, slots=True)
class ContentChecksum:
    """The whole-file checksum meshpipe sends in ``mex-Content-Checksum``.

    Forms (fit the sandbox's rule: letters, digits, whitespace, ``:`` ``-`` ``/``; ≤ 100 chars)::

        meshpipe/1 xxh3-128:<32 hex> size:<bytes> chunk:<uncompressed chunk size> codec:<codec>
        meshpipe/2 xxh3-128:trailer size:<bytes> chunk:<uncompressed chunk size> codec:<codec>

    The second (``trailer``, gzip and zstd only) says the whole-file xxh3-128 travels as a
    manifest at the end of the last chunk (an empty gzip member carrying it in FEXTRA, or a zstd
    skippable frame: see the engine's Splitter), so the sender need not hash the file before
    chunk 1. A meshpipe older than this form reads it as another sender's free text: it
    receives the message (gzip decoded, zstd kept as sent) without a whole-file check.

    ``size`` and ``chunk`` are the uncompressed file and chunk sizes; ``codec`` is ``none``,
    ``gzip`` (Content-Encoding) or ``zstd`` (the payload is a zstd stream per chunk). Other
    senders' values such as ``sha256:<hex>`` or ``md5:<hex>`` parse too, with the fields they give.
    """

    xxh3_128: str | None = None
    sha256: str | None = None
    size: int | None = None
    chunk_size: int | None = None
    codec: str | None = None
    meshpipe: bool = False
    other: Mapping[str, str] = field(default_factory=dict)
    trailer: bool = False

    def header_value(self) -> str:
        if self.trailer:
            if self.codec not in ("gzip", "zstd") or self.size is None:
                raise ValueError("the trailer form needs codec gzip or zstd and the file's size")
            parts = [TRAILER_CHECKSUM_VERSION, f"xxh3-128:{TRAILER_MARK}"]
        else:
            parts = [CHECKSUM_VERSION]
        if self.xxh3_128 and not self.trailer:
            parts.append(f"xxh3-128:{self.xxh3_128}")
        if self.sha256 and not self.xxh3_128 and not self.trailer:
            parts.append(f"sha256:{self.sha256}")
        if self.size is not None:
            parts.append(f"size:{self.size}")
        if self.chunk_size is not None:
            parts.append(f"chunk:{self.chunk_size}")
        if self.codec:
            parts.append(f"codec:{self.codec}")
        value = " ".join(parts)
        if not checksum_is_valid(value):
            raise ValueError(f"checksum header {value!r} breaks MESH's rules")
        return value

    @classmethod
    def parse(cls, value: str | None) -> ContentChecksum | None:
        """Parse a mex-Content-Checksum value; None when absent or not understood."""
        if not value or not value.strip():
            return None
        tokens = value.split()
        trailer = tokens[0] == TRAILER_CHECKSUM_VERSION and f"xxh3-128:{TRAILER_MARK}" in tokens
        is_meshpipe = tokens[0] == CHECKSUM_VERSION or trailer
        if trailer:
            tokens = [token for token in tokens[1:] if token != f"xxh3-128:{TRAILER_MARK}"]
        elif is_meshpipe:
            tokens = tokens[1:]
        found: dict[str, str] = {}
        for token in tokens:
            key, sep, val = token.partition(":")
            if not sep or not val:
                if len(tokens) == 1 and _HEX.match(token.lower()) and len(token) == 64:
                    found["sha256"] = token.lower()
                continue
            found[key.lower()] = val
        if not found:
            return None

        def digest(key: str, length: int) -> str | None:
            text = found.pop(key, None)
            if text is None:
                return None
            text = text.lower()
            return text if len(text) == length and _HEX.match(text) else None

        def number(key: str) -> int | None:
            text = found.pop(key, None)
            return int(text) if text is not None and text.isdigit() else None

        xxh3 = digest("xxh3-128", 32)
        sha = digest("sha256", 64)
        size = number("size")
        chunk = number("chunk")
        codec = found.pop("codec", None)
        if codec not in (None, "none", "gzip", "zstd"):
            codec = None
        return cls(
            xxh3_128=xxh3,
            sha256=sha,
            size=size,
            chunk_size=chunk,
            codec=codec,
            meshpipe=is_meshpipe,
            other=dict(found),
            trailer=trailer and codec in ("gzip", "zstd") and size is not None,
        )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    return value if value not in (None, "") else None


def _chunk_range(value: str | None, message_type: str) -> tuple[int, int]:
    parsed = parse_chunk_range(value)
    if parsed is not None:
        return parsed
    if message_type == "REPORT":
        return 1, 0  # a report carries no data: MESH labels it "1:0"
    raise MeshProtocolError(f"mex-Chunk-Range {value!r} is not n:N with 1 <= n <= N")


@dataclass(frozen=True, slots=True)
class MessageMetadata:
    """What the headers of a download (or HEAD) say about a DATA message."""

    message_id: str
    message_type: str
    sender: str | None
    recipient: str | None
    workflow_id: str | None
    local_id: str | None
    subject: str | None
    filename: str | None
    partner_id: str | None
    chunk_number: int
    chunk_count: int
    content_encoding: str | None
    content_type: str | None
    content_length: int | None
    checksum: ContentChecksum | None
    checksum_header: str | None
    compressed: bool | None
    encrypted: bool | None
    status_code: str | None
    status_event: str | None
    status_description: str | None
    status_success: str | None
    status_timestamp: str | None
    linked_message_id: str | None
    headers: Mapping[str, str] = field(repr=False)

    @property
    def is_report(self) -> bool:
        return (self.message_type or "").upper() == "REPORT"

    @classmethod
    def from_headers(cls, message_id: str, headers: Mapping[str, str]) -> MessageMetadata:
        plain = {key.lower(): value for key, value in headers.items()}
        message_type = (_header(plain, "mex-messagetype") or "DATA").upper()
        chunk_number, chunk_count = _chunk_range(_header(plain, "mex-chunk-range"), message_type)
        total = _header(plain, "mex-total-chunks")
        if total and total.isdigit():
            chunk_count = max(chunk_count, int(total))
        length = _header(plain, "content-length")
        checksum_header = _header(plain, "mex-content-checksum")
        return cls(
            message_id=_header(plain, "mex-messageid") or message_id,
            message_type=message_type,
            sender=_header(plain, "mex-from"),
            recipient=_header(plain, "mex-to"),
            workflow_id=_header(plain, "mex-workflowid"),
            local_id=_header(plain, "mex-localid"),
            subject=_header(plain, "mex-subject"),
            filename=_header(plain, "mex-filename"),
            partner_id=_header(plain, "mex-partnerid"),
            chunk_number=chunk_number,
            chunk_count=chunk_count,
            content_encoding=_header(plain, "content-encoding"),
            content_type=_header(plain, "mex-content-type") or _header(plain, "content-type"),
            content_length=int(length) if length and length.isdigit() else None,
            checksum=ContentChecksum.parse(checksum_header),
            checksum_header=checksum_header,
            compressed=parse_flag(_header(plain, "mex-content-compressed")),
            encrypted=parse_flag(_header(plain, "mex-content-encrypted")),
            status_code=_header(plain, "mex-statuscode"),
            status_event=_header(plain, "mex-statusevent"),
            status_description=_header(plain, "mex-statusdescription"),
            status_success=_header(plain, "mex-statussuccess"),
            status_timestamp=_header(plain, "mex-statustimestamp"),
            linked_message_id=_header(plain, "mex-linkedmsgid"),
            headers=plain,
        )


@dataclass(frozen=True, slots=True)
class ReportMessage:
    """A REPORT message: MESH telling the sender that a message failed (e.g. code 14, not
    collected within 5 days; ``EPL-15x``, a GP-routing failure). It has no data; acknowledge
    it once handled. ``transfer_id`` is the ledger's send it was recorded on, once it was."""

    message_id: str
    status_code: str | None
    status_event: str | None
    status_description: str | None
    status_success: str | None
    status_timestamp: str | None
    linked_message_id: str | None
    workflow_id: str | None
    local_id: str | None
    subject: str | None
    transfer_id: int | None = None

    @property
    def is_non_delivery(self) -> bool:
        return self.status_code == "14"

    def describe(self) -> str:
        linked = f" about message {self.linked_message_id}" if self.linked_message_id else ""
        if self.local_id:
            linked += f" (local id {self.local_id})"
        recorded = (
            f"; recorded on ledger transfer {self.transfer_id}"
            if self.transfer_id is not None
            else ""
        )
        return (
            f"REPORT {self.message_id}{linked}: code {self.status_code or '?'} "
            f"({self.status_event or '?'}) {self.status_description or ''}".rstrip()
            + recorded
        )

    @classmethod
    def from_metadata(cls, metadata: MessageMetadata) -> ReportMessage:
        return cls(
            message_id=metadata.message_id,
            status_code=metadata.status_code,
            status_event=metadata.status_event,
            status_description=metadata.status_description,
            status_success=metadata.status_success,
            status_timestamp=metadata.status_timestamp,
            linked_message_id=metadata.linked_message_id,
            workflow_id=metadata.workflow_id,
            local_id=metadata.local_id,
            subject=metadata.subject,
        )


def _text(data: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = data.get(key)
        if value not in (None, ""):
            return str(value)
    return None


@dataclass(frozen=True, slots=True)
class TrackingInfo:
    """Status of a sent message (v2 tracking, or v1 by local id mapped to the same names)."""

    message_id: str
    local_id: str | None
    workflow_id: str | None
    filename: str | None
    recipient: str | None
    status: str | None
    status_success: bool | None
    status_code: str | None
    status_event: str | None
    status_description: str | None
    status_timestamp: str | None
    upload_timestamp: str | None
    expiry_time: str | None
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrackingInfo:
        message_id = _text(data, "message_id", "messageId", "dtsId")
        if message_id is None:
            raise MeshProtocolError("tracking response carries no message id")
        success = data.get("status_success", data.get("statusSuccess"))
        if isinstance(success, str):
            success = success.upper() == "SUCCESS"
        return cls(
            message_id=message_id,
            local_id=_text(data, "local_id", "localId"),
            workflow_id=_text(data, "workflow_id", "workflowId"),
            filename=_text(data, "filename", "fileName"),
            recipient=_text(data, "recipient"),
            status=_text(data, "status"),
            status_success=success if isinstance(success, bool) else None,
            status_code=_text(data, "status_code", "statusCode"),
            status_event=_text(data, "status_event", "statusEvent"),
            status_description=_text(data, "status_description", "statusDescription"),
            status_timestamp=_text(data, "status_timestamp", "statusTimestamp"),
            upload_timestamp=_text(data, "upload_timestamp", "uploadTimestamp"),
            expiry_time=_text(data, "expiry_time", "expiryTime"),
            raw=dict(data),
        )


@dataclass(frozen=True, slots=True)
class RichMessage:
    """One entry of the rich inbox or outbox listing."""

    message_id: str
    local_id: str | None
    message_type: str | None
    sender: str | None
    recipient: str | None
    workflow_id: str | None
    status: str | None
    total_chunks: int | None
    sent_date: str | None
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RichMessage:
        message_id = _text(data, "message_id", "messageId")
        if message_id is None:
            raise MeshProtocolError("rich listing entry carries no message id")
        chunks = data.get("total_chunks")
        return cls(
            message_id=message_id,
            local_id=_text(data, "local_id"),
            message_type=_text(data, "message_type"),
            sender=_text(data, "sender"),
            recipient=_text(data, "recipient"),
            workflow_id=_text(data, "workflow_id"),
            status=_text(data, "status"),
            total_chunks=int(chunks)
            if isinstance(chunks, int | str) and str(chunks).isdigit()
            else None,
            sent_date=_text(data, "sent_date"),
            raw=dict(data),
        )


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A mailbox found by endpoint lookup or workflow search."""

    mailbox_id: str
    mailbox_name: str | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Endpoint:
        mailbox = _text(data, "mailbox_id", "address")
        if mailbox is None:
            raise MeshProtocolError("endpoint lookup result carries no mailbox id")
        return cls(mailbox_id=mailbox, mailbox_name=_text(data, "mailbox_name", "description"))
