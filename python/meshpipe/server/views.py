"""What a response says about a message: download and HEAD headers, tracking bodies (v1 and v2),
rich inbox/outbox items and the admin view, and the time formats they use. Views read messages
and never change them."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from meshpipe.server.config import Directory
from meshpipe.server.models import ACCEPTED, ACKNOWLEDGED, DATA, ERROR, REPORT, Message


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
