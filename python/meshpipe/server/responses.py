"""Response bodies in MESH's v1 and v2 shapes, MESH error bodies, and download headers."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from aiohttp import web

from meshpipe.server.config import Directory
from meshpipe.server.models import ACCEPTED, ACKNOWLEDGED, DATA, ERROR, REPORT, Message

V1_MEDIA_TYPE = "application/json"
V2_MEDIA_TYPE = "application/vnd.mesh.v2+json"
_ACCEPT_VERSION = re.compile(r"^application/vnd\.mesh\.v(\d+)\+json$")


class AcceptHeaderError(ValueError):
    pass


def api_version(accept: str | None) -> int:
    """1 or ≥2, as mesh-sandbox reads Accept: parts split on ';', the first naming vnd.mesh
    decides; a malformed one (e.g. a comma-separated list) is an error (400)."""
    if not accept:
        return 1
    for part in accept.split(";"):
        part = part.strip()
        if not part or "vnd.mesh" not in part:
            continue
        match = _ACCEPT_VERSION.match(part)
        if not match:
            raise AcceptHeaderError("Accept header api format incorrect")
        return int(match.group(1))
    return 1


# MESH error details: key -> (event, code, description). Codes from the MESH API specification
# (the DTS codes) and the sandbox's additions.
ERRORS: dict[str, tuple[str, str, str]] = {
    "malformed": ("TRANSFER", "06", "Malformed control file"),
    "invalid_from": ("SEND", "07", "Invalid From Address in the control file"),
    "missing_to": ("SEND", "08", "TO_DTS missing"),
    "unregistered_recipient": ("SEND", "12", "Unregistered to address"),
    "undelivered": ("SEND", "14", "Message not collected by recipient after {days} days"),
    "not_registered_for_workflow": ("SEND", "17", "Workflow ID not registered for mailbox"),
    "missing_data_file": ("COLLECT", "02", "Data file is missing or inaccessible."),
    "no_mailbox": ("SEND", "EPL-151", "No mailbox matched"),
    "message_gone": (
        "SEND",
        "Message already accepted",
        "Message no longer available for download",
    ),
    "does_not_exist": ("RECEIVE", "20", "Message does not exist"),
    "invalid_chunks": (
        "SEND",
        "InvalidHeaderChunks",
        "Invalid chunk values sent in mex-Chunk-Range header",
    ),
    "unsupported_encoding": ("SEND", "UnsupportedContentEncoding", "Unsupported content encoding"),
    "encoding_changed": (
        "SEND",
        "cannot change content encoding",
        "cannot change content encoding",
    ),
    "invalid_checksum": ("SEND", "Invalid checksum", "Invalid checksum"),
    "invalid_file_format": (
        "SEND",
        "Invalid file format",
        "File Level Error (file not formed correctly)",
    ),
    "chunk_too_small": (
        "SEND",
        "ChunkTooSmall",
        "Every chunk but the last must be at least {minimum} bytes once decompressed; "
        "chunk {number} was {size}",
    ),
    "request_too_large": (
        "SEND",
        "RequestTooLarge",
        "A request body must be below {maximum} bytes; send smaller chunks",
    ),
    "message_too_large": (
        "SEND",
        "MessageTooLarge",
        "The message exceeds the {maximum} byte limit",
    ),
}

INTERNAL_ERROR_TEXT = "An internal error occurred.\n\nPlease contact support."
AUTH_ERRORS = {
    "read": "Error reading from Authorization header",
    "invalid": "Invalid Authentication Token",
    "mismatch": "Mailbox id does not match token",
    "no_mailbox": "No mailbox matched",
    "replayed": "Error Duplicated Authentication Token",
}


def dumps(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"))


def json_response(
    body: Any,
    *,
    status: int = 200,
    version: int = 1,
    headers: dict[str, str] | None = None,
    content_type: str | None = None,
) -> web.Response:
    """JSON with the MESH media type for ``version`` (no charset parameter, like the sandbox)."""
    media = content_type or (V2_MEDIA_TYPE if version >= 2 else V1_MEDIA_TYPE)
    all_headers = {**(headers or {}), "Content-Type": media}
    return web.Response(status=status, body=dumps(body).encode(), headers=all_headers)


def empty_response(status: int = 200) -> web.Response:
    return web.Response(status=status)


def mesh_error(
    status: int,
    key: str,
    version: int,
    *,
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
    **format_args: Any,
) -> web.Response:
    """A MESH error body: v1 ``{messageID?, errorEvent, errorCode, errorDescription}``, v2
    ``{message_id?, detail: [{event, code, msg}]}``."""
    event, code, description = ERRORS[key]
    description = description.format(**format_args) if format_args else description
    return error_body(status, event, code, description, version, message_id, headers)


def error_body(
    status: int,
    event: str,
    code: str,
    description: str,
    version: int,
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any]
    if version < 2:
        body = {"errorEvent": event, "errorCode": code, "errorDescription": description}
        if message_id:
            body = {"messageID": message_id, **body}
        return json_response(body, status=status, version=1, headers=headers)
    body = {"detail": [{"event": event, "code": code, "msg": description}]}
    if message_id:
        body = {"message_id": message_id, **body}
    return json_response(body, status=status, version=2, headers=headers)


def description_error(
    status: int, description: str, version: int = 1, headers: dict[str, str] | None = None
) -> web.Response:
    """An error with a description only (empty event and code), as the sandbox words its
    authentication, 403, 404 and other plain-text errors."""
    return error_body(status, "", "", description, version, None, headers)


def internal_error(status: int, headers: dict[str, str] | None = None) -> web.Response:
    """The generic body mesh-sandbox gives for 406, 423 and 500."""
    return json_response({"message": INTERNAL_ERROR_TEXT}, status=status, headers=headers)


def validation_error(*items: dict[str, Any], body: Any = None) -> web.Response:
    """400 ``{"detail": [{type, loc, msg, ...}]}`` like the sandbox's request validation."""
    content: dict[str, Any] = {"detail": list(items)}
    if body is not None:
        content["body"] = body
    return json_response(content, status=400)


def missing(location: str, name: str, given: Any = None) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "missing", "loc": [location, name], "msg": "Field required"}
    if given is not None:
        item["input"] = given
    return item


def too_long(location: str, name: str, value: str, longest: int) -> dict[str, Any]:
    return {
        "type": "string_too_long",
        "loc": [location, name],
        "msg": f"String should have at most {longest} characters",
        "input": value,
        "ctx": {"max_length": longest},
    }


def too_short(location: str, name: str, value: str, shortest: int) -> dict[str, Any]:
    return {
        "type": "string_too_short",
        "loc": [location, name],
        "msg": f"String should have at least {shortest} characters",
        "input": value,
        "ctx": {"min_length": shortest},
    }


def out_of_range(location: str, name: str, value: str, low: int, high: int) -> dict[str, Any]:
    try:
        number = int(value)
    except ValueError:
        return {
            "type": "int_parsing",
            "loc": [location, name],
            "msg": "Input should be a valid integer, unable to parse string as an integer",
            "input": value,
        }
    if number < low:
        return {
            "type": "greater_than_equal",
            "loc": [location, name],
            "msg": f"Input should be greater than or equal to {low}",
            "input": value,
            "ctx": {"ge": low},
        }
    return {
        "type": "less_than_equal",
        "loc": [location, name],
        "msg": f"Input should be less than or equal to {high}",
        "input": value,
        "ctx": {"le": high},
    }


# ---------------------------------------------------------------------------------------------
# time formats


def compact_time(moment: datetime | None) -> str:
    """yyyyMMddHHmmss, as in mex-StatusTimestamp and v1 tracking."""
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S") if moment else ""


def iso_time(moment: datetime | None) -> str | None:
    """Naive-UTC ISO 8601 like the sandbox's JSON (it serialises utcnow())."""
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat()


def http_time(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


# ---------------------------------------------------------------------------------------------
# message views


def _drop_empty(headers: dict[str, str | None]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if v}


def status_headers(message: Message, now: datetime) -> dict[str, str | None]:
    stamp = compact_time(message.status_time(ACCEPTED, ERROR) or now)
    error = message.error_event
    if message.message_type == DATA and error is None:
        return {
            "mex-StatusCode": "00",
            "mex-StatusEvent": "TRANSFER",
            "mex-StatusDescription": "Transferred to recipient mailbox",
            "mex-StatusSuccess": "SUCCESS",
            "mex-StatusTimestamp": stamp,
        }
    if error is None:
        return {"mex-StatusSuccess": "ERROR", "mex-StatusTimestamp": stamp}
    return {
        "mex-LinkedMsgID": error.linked_message_id,
        "mex-StatusCode": error.code,
        "mex-StatusEvent": error.event,
        "mex-StatusDescription": error.description,
        "mex-StatusSuccess": "ERROR",
        "mex-StatusTimestamp": stamp,
    }


def message_headers(message: Message, chunk_number: int, now: datetime) -> dict[str, str]:
    """The headers a download (or HEAD) of chunk ``chunk_number`` carries; empty ones left out."""
    headers: dict[str, str | None] = {
        "mex-From": message.sender,
        "mex-To": message.recipient,
        "mex-WorkflowID": message.workflow_id,
        "mex-Chunk-Range": f"{chunk_number}:{message.total_chunks}",
        "mex-Total-Chunks": str(message.total_chunks),
        "mex-AddressType": "ALL",
        "mex-LocalID": message.local_id,
        "mex-PartnerID": message.partner_id,
        "mex-FileName": message.file_name or f"{message.message_id}.dat",
        "mex-Subject": message.subject,
        "mex-Version": "1.0",
        "mex-MessageType": message.message_type,
        "mex-MessageID": message.message_id,
        "Content-Encoding": message.content_encoding if message.message_type != REPORT else None,
        **status_headers(message, now),
        "mex-Content-Compressed": "Y" if message.compressed else None,
        "mex-Content-Encrypted": "Y" if message.encrypted else None,
        # A discarded message downloads as synthetic bytes: the sender's checksum would not hold.
        "mex-Content-Checksum": "" if message.discarded else message.checksum,
        "mex-Content-Type": message.content_type,
        "Last-Modified": http_time(message.last_event.timestamp),
    }
    return _drop_empty(headers)


def _party(directory: Directory, mailbox_id: str) -> dict[str, str | None]:
    mailbox = directory.get(mailbox_id) if mailbox_id else None
    if mailbox is None:
        if not mailbox_id:
            return {"name": "Central System Mailbox", "ods": "X26", "org": "X26", "org_name": ""}
        return {"name": None, "ods": None, "org": None, "org_name": None}
    return {
        "name": mailbox.mailbox_name,
        "ods": mailbox.ods_code,
        "org": mailbox.org_code,
        "org_name": mailbox.org_name,
    }


def _failure(message: Message) -> dict[str, Any]:
    error = message.error_event
    out: dict[str, Any] = {
        "failure_date": None,
        "failure_description": None,
        "status_code": None,
        "status_description": None,
        "status_event": None,
        "status_timestamp": None,
    }
    if error is None:
        return out
    if message.message_type == DATA:
        out["failure_date"] = error.timestamp
        out["failure_description"] = error.description
    else:
        out["status_code"] = error.code
        out["status_description"] = error.description
        out["status_event"] = error.event
        out["status_timestamp"] = error.timestamp
    return out


def _without_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def tracking_body(message: Message, directory: Directory, version: int) -> dict[str, Any]:
    recipient = _party(directory, message.recipient)
    sender = _party(directory, message.sender)
    failure = _failure(message)
    successful = message.message_type == DATA and message.error_event is None
    error = message.error_event
    if version < 2:
        return _without_none(
            {
                "addressType": "ALL",
                "checksum": message.checksum,
                "chunkCount": message.total_chunks,
                "compressFlag": "Y" if message.compressed else "",
                "contentEncoding": message.content_encoding,
                "downloadTimestamp": compact_time(message.status_time(ACKNOWLEDGED)),
                "dtsId": message.message_id,
                "encryptedFlag": "Y" if message.encrypted else "",
                "expiryTime": compact_time(message.inbox_expiry),
                "failureDate": compact_time(failure["failure_date"]) or None,
                "failureDiagnostic": failure["failure_description"],
                "fileName": message.file_name or f"{message.message_id}.dat",
                "fileSize": message.file_size,
                "isCompressed": "Y" if message.compressed else "",
                "linkedMsgId": error.linked_message_id if error else None,
                "localId": message.local_id,
                "meshRecipientOdsCode": recipient["ods"],
                "messageId": message.message_id,
                "messageType": message.message_type.title(),
                "partnerId": message.partner_id,
                "recipient": message.recipient,
                "recipientName": recipient["name"],
                "recipientOrgCode": recipient["org"],
                "recipientOrgName": recipient["org_name"],
                "recipientSmtp": "",
                "sender": message.sender,
                "senderName": sender["name"],
                "senderOdsCode": sender["ods"],
                "senderOrgCode": sender["org"],
                "senderOrgName": sender["org_name"],
                "senderSmtp": "",
                "status": message.status.title(),
                "statusCode": failure["status_code"],
                "statusDescription": failure["status_description"],
                "statusEvent": failure["status_event"],
                "statusSuccess": "SUCCESS" if successful else "ERROR",
                "statusTimestamp": compact_time(failure["status_timestamp"]) or None,
                "subject": message.subject,
                "uploadTimestamp": compact_time(message.created),
                "version": "1.0",
                "workflowId": message.workflow_id,
            }
        )
    return _without_none(
        {
            "message_id": message.message_id,
            "local_id": message.local_id,
            "workflow_id": message.workflow_id,
            "filename": message.file_name,
            "expiry_time": iso_time(message.inbox_expiry),
            "upload_timestamp": iso_time(message.created),
            "recipient": message.recipient,
            "recipient_name": recipient["name"],
            "recipient_ods_code": recipient["ods"],
            "recipient_org_code": recipient["org"],
            "recipient_org_name": recipient["org_name"],
            "status_success": successful,
            "status": message.status,
            "status_event": failure["status_event"],
            "status_timestamp": iso_time(failure["status_timestamp"]),
            "status_description": failure["status_description"],
            "status_code": failure["status_code"],
        }
    )


def rich_item(message: Message, directory: Directory, *, outbox: bool) -> dict[str, Any]:
    recipient = _party(directory, message.recipient)
    sender = _party(directory, message.sender)
    error = message.error_event
    sent: datetime | None
    if outbox:
        sent = message.created
        status_code: str | None = message.last_event.code or ""
    else:
        sent = message.status_time(ACCEPTED)
        status_code = error.code if error else None
    item = {
        "message_id": message.message_id,
        "expiry_timestamp": iso_time(message.inbox_expiry),
        "local_id": message.local_id,
        "message_type": message.message_type,
        "recipient": message.recipient,
        "recipient_name": recipient["name"] or ("" if outbox else None),
        "sender": message.sender,
        "sender_name": sender["name"],
        "sent_date": iso_time(sent),
        "status": message.status,
        "status_code": status_code,
        "workflow_id": message.workflow_id,
        "total_chunks": message.total_chunks,
    }
    return _without_none(item)


def admin_message_body(message: Message, directory: Directory) -> dict[str, Any]:
    recipient = _party(directory, message.recipient)
    sender = _party(directory, message.sender)
    failure = _failure(message)
    error = message.error_event
    body: dict[str, Any] = {
        "checksum": message.checksum,
        "chunk_count": message.total_chunks,
        "content_encoding": message.content_encoding,
        "download_timestamp": iso_time(message.status_time(ACKNOWLEDGED)),
        "expiry_time": iso_time(message.inbox_expiry),
        "failure_date": iso_time(failure["failure_date"]),
        "failure_diagnostic": failure["failure_description"],
        "filename": message.file_name or f"{message.message_id}.dat",
        "file_size": message.file_size,
        "is_compressed": message.compressed,
        "is_encrypted": message.encrypted,
        "linked_msg_id": error.linked_message_id if error else None,
        "local_id": message.local_id,
        "message_id": message.message_id,
        "message_type": message.message_type.title(),
        "recipient": message.recipient,
        "recipient_name": recipient["name"],
        "recipient_ods_code": recipient["ods"],
        "recipient_org_code": recipient["org"],
        "recipient_org_name": recipient["org_name"],
        "sender": message.sender,
        "sender_name": sender["name"],
        "sender_ods_code": sender["ods"],
        "sender_org_code": sender["org"],
        "sender_org_name": sender["org_name"],
        "status": message.status.title(),
        "status_code": failure["status_code"],
        "status_description": failure["status_description"],
        "status_event": failure["status_event"],
        "status_success": "SUCCESS" if message.message_type == DATA and error is None else "ERROR",
        "status_timestamp": iso_time(failure["status_timestamp"]),
        "subject": message.subject,
        "upload_timestamp": iso_time(message.created),
        "workflow_id": message.workflow_id,
        # meshpipe extras: what the server checked for each chunk
        "chunks": [
            {
                "number": c.number,
                "stored_size": c.stored_size,
                "size": c.size,
                "xxh3_128": c.xxh3_128,
            }
            for c in sorted(message.chunks.values(), key=lambda c: c.number)
        ],
        "discarded": message.discarded,
    }
    return _without_none(body)
