"""The client-facing MESH endpoints (everything under /messageexchange but the admin API)."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from meshpipe.headers import CONTROL_CHARACTERS, SEND_HEADER_LIMITS, checksum_is_valid
from meshpipe.server.authorize import AuthFailure
from meshpipe.server.bodies import chunk_source, receive_chunk, send_file, stream_body
from meshpipe.server.config import Mailbox
from meshpipe.server.models import ACCEPTED, ACKNOWLEDGED, DATA, UPLOADING, Message
from meshpipe.server.responses import (
    AUTH_ERRORS,
    AcceptHeaderError,
    api_version,
    description_error,
    empty_response,
    error_body,
    internal_error,
    json_response,
    mesh_error,
    message_headers,
    missing,
    out_of_range,
    rich_item,
    too_long,
    too_short,
    tracking_body,
    validation_error,
)
from meshpipe.server.state import Refusal, ServerState, firings

log = logging.getLogger("meshpipe.server")

DEFAULT_INBOX_PAGE = 500
_URL = re.compile(r"^https?://", re.IGNORECASE)

# The send headers by the names the handlers use (limits: meshpipe.headers).
SEND_HEADERS: dict[str, str] = {
    "to": "mex-To",
    "workflow_id": "mex-WorkflowID",
    "chunk_range": "mex-Chunk-Range",
    "subject": "mex-Subject",
    "local_id": "mex-LocalID",
    "partner_id": "mex-PartnerID",
    "file_name": "mex-FileName",
    "encrypted": "mex-Content-Encrypted",
    "compressed": "mex-Content-Compressed",
    "checksum": "mex-Content-Checksum",
    "content_type": "mex-Content-Type",
}


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("y", "yes", "t", "true", "on", "1")


def encode_cursor(message_id: str) -> str:
    raw = json.dumps({"message_id": message_id}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str) -> str | None:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (binascii.Error, ValueError):
        return None
    value = data.get("message_id") if isinstance(data, dict) else None
    return str(value) if value else None


def page_after(
    messages: list[Message], last_id: str | None, limit: int
) -> tuple[list[Message], str | None]:
    if last_id:
        ids = [m.message_id for m in messages]
        if last_id in ids:
            messages = messages[ids.index(last_id) + 1 :]
    if len(messages) > limit:
        page = messages[:limit]
        return page, page[-1].message_id if page else None
    return messages, None


def workflow_predicate(expression: str | None) -> Callable[[str], bool] | None:
    """The inbox's workflow_filter: X, !X, X*, !X*, *X*, !*X*."""
    text = (expression or "").strip()
    if not text:
        return None
    negate = text.startswith("!")
    if negate:
        text = text[1:]
    contains = text.startswith("*")
    if contains:
        text = text[1:-1]
    begins = text.endswith("*")
    if begins:
        text = text[:-1]
    test: Callable[[str], bool]
    if contains and not begins:
        test = lambda w: text in w  # noqa: E731
    elif begins:
        test = lambda w: w.startswith(text)  # noqa: E731
    else:
        test = lambda w: w == text  # noqa: E731
    return (lambda w: not test(w)) if negate else test


def parse_chunk_range(value: str, url_number: int) -> tuple[int, int] | None:
    """(n, N) from ``n:N``; None when missing (for n ≥ 2), malformed, out of range or ≠ URL."""
    if not value:
        return (1, 1) if url_number == 1 else None
    parts = value.split(":")
    if len(parts) != 2:
        return None
    try:
        number, total = (int(p.strip()) for p in parts)
    except ValueError:
        return None
    if not 0 < number <= total or number != url_number:
        return None
    return number, total


class MeshRoutes:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.config = state.config
        self.mailroom = state.mailroom
        self.directory = state.directory

    def register(self, app: web.Application) -> None:
        r = app.router
        base = "/messageexchange"
        paths = (
            "/_ping",
            "/health",
            "/_status",
            "/healthcheck",
            f"{base}/_ping",
            f"{base}/deepping",
        )
        for index, path in enumerate(paths):
            r.add_get(path, self.ping, name=f"ping:p{index}")
        r.add_get(
            f"{base}/endpointlookup/{{ods}}/{{workflow}}", self.endpoint_lookup, name="lookup"
        )
        r.add_get(f"{base}/workflowsearch/{{workflow}}", self.workflow_search, name="lookup:search")

    def register_mailbox_routes(self, app: web.Application) -> None:
        r = app.router
        mb = "/messageexchange/{mailbox}"
        r.add_post(mb, self.handshake, name="handshake")
        r.add_get(mb, self.handshake, name="handshake:get", allow_head=False)
        r.add_post(f"{mb}/update", self.update, name="handshake:update")
        r.add_get(f"{mb}/count", self.count, name="count", allow_head=False)
        r.add_post(f"{mb}/outbox", self.send, name="send")
        r.add_get(f"{mb}/outbox/rich", self.rich_outbox, name="rich:outbox", allow_head=False)
        r.add_get(f"{mb}/outbox/tracking", self.tracking, name="tracking", allow_head=False)
        r.add_get(
            f"{mb}/outbox/tracking/{{local_id}}",
            self.tracking_local,
            name="tracking:local",
            allow_head=False,
        )
        r.add_post(
            f"{mb}/outbox/{{message_id}}/{{number:\\d+}}", self.send_chunk, name="send_chunk"
        )
        r.add_get(f"{mb}/inbox", self.inbox, name="inbox", allow_head=False)
        r.add_get(f"{mb}/inbox/rich", self.rich_inbox, name="rich:inbox", allow_head=False)
        r.add_head(f"{mb}/inbox/{{message_id}}", self.head, name="head")
        r.add_get(f"{mb}/inbox/{{message_id}}", self.download, name="download", allow_head=False)
        r.add_get(
            f"{mb}/inbox/{{message_id}}/{{number:-?\\d+}}",
            self.download,
            name="download:chunk",
            allow_head=False,
        )
        r.add_put(f"{mb}/inbox/{{message_id}}/status/acknowledged", self.acknowledge, name="ack")

    # -- helpers ------------------------------------------------------------------------------

    def authorise(self, request: web.Request) -> Mailbox:
        result = self.state.authenticator.check(
            request.match_info["mailbox"], request.headers.get("Authorization")
        )
        if isinstance(result, AuthFailure):
            if result.reason == "no_mailbox":
                raise Refusal(mesh_error(403, "no_mailbox", self.version_or_1(request)))
            raise Refusal(
                description_error(403, AUTH_ERRORS[result.reason], self.version_or_1(request))
            )
        return result

    @staticmethod
    def version_or_1(request: web.Request) -> int:
        try:
            return api_version(request.headers.get("Accept"))
        except AcceptHeaderError:
            return 1

    @staticmethod
    def version(request: web.Request) -> int:
        try:
            return api_version(request.headers.get("Accept"))
        except AcceptHeaderError as exc:
            raise Refusal(description_error(400, str(exc), 1)) from None

    def now(self) -> datetime:
        return self.state.clock.now()

    # -- no-auth endpoints --------------------------------------------------------------------

    async def ping(self, request: web.Request) -> web.StreamResponse:
        body = {
            "env": self.config.env,
            "build_label": self.config.build_label,
            "status": "running",
            "outcome": "Yes",
        }
        return json_response(body)

    async def endpoint_lookup(self, request: web.Request) -> web.StreamResponse:
        version = self.version(request)
        found = self.directory.lookup(request.match_info["ods"], request.match_info["workflow"])
        if version < 2:
            results = [
                {"address": m.mailbox_id, "description": m.mailbox_name, "endpoint_type": "MESH"}
                for m in found
            ]
            return json_response({"query_id": uuid.uuid4().hex, "results": results})
        return json_response(
            {
                "results": [
                    {"mailbox_id": m.mailbox_id, "mailbox_name": m.mailbox_name} for m in found
                ]
            }
        )

    async def workflow_search(self, request: web.Request) -> web.StreamResponse:
        self.version(request)
        found = self.directory.receivers(request.match_info["workflow"])
        return json_response(
            {
                "results": [
                    {"mailbox_id": m.mailbox_id, "mailbox_name": m.mailbox_name} for m in found
                ]
            }
        )

    # -- handshake, count ---------------------------------------------------------------------

    async def handshake(self, request: web.Request) -> web.StreamResponse:
        mailbox = self.authorise(request)
        absent = [
            missing("header", name.lower())
            for name in ("mex-ClientVersion", "mex-OSName", "mex-OSVersion")
            if name not in request.headers
        ]
        if absent:
            raise Refusal(validation_error(*absent))
        if self.version(request) < 2:
            return json_response({"mailboxId": mailbox.mailbox_id})
        return empty_response()

    async def update(self, request: web.Request) -> web.StreamResponse:
        self.authorise(request)
        return empty_response()

    async def count(self, request: web.Request) -> web.StreamResponse:
        mailbox = self.authorise(request)
        version = self.version(request)
        count = self.mailroom.inbox_count(mailbox.mailbox_id)
        if version < 2:
            return json_response(
                {"count": count, "internalID": uuid.uuid4().hex, "allResultsIncluded": True}
            )
        return json_response({"count": count})

    # -- send -----------------------------------------------------------------------------------

    def _send_headers(self, request: web.Request) -> dict[str, str]:
        values: dict[str, str] = {}
        problems: list[dict[str, Any]] = []
        for key, name in SEND_HEADERS.items():
            longest = SEND_HEADER_LIMITS[name]
            value = request.headers.get(name)
            if value is None:
                if key in ("to", "workflow_id"):
                    problems.append(missing("header", name.lower()))
                value = ""
            if len(value) > longest:
                problems.append(too_long("header", name.lower(), value, longest))
            values[key] = value
        if problems:
            raise Refusal(validation_error(*problems))
        values["to"] = values["to"].strip().upper()
        values["workflow_id"] = values["workflow_id"].strip()
        values["chunk_range"] = values["chunk_range"].strip()
        bad = [
            k
            for k, v in values.items()
            if k not in ("encrypted", "compressed") and CONTROL_CHARACTERS.search(v)
        ]
        for key in ("to", "workflow_id", "checksum"):
            if values[key] and _URL.match(values[key]):
                bad.append(key)
        if bad:
            raise Refusal(
                error_body(
                    400, "TRANSFER", "06", "MalformedControlFile", self.version_or_1(request)
                )
            )
        checksum = values["checksum"].strip()
        if checksum and not checksum_is_valid(checksum):
            raise Refusal(mesh_error(400, "invalid_checksum", self.version_or_1(request)))
        return values

    async def send(self, request: web.Request) -> web.StreamResponse:
        sender = self.authorise(request)
        headers = self._send_headers(request)
        version = self.version(request)
        if not headers["to"]:
            raise Refusal(mesh_error(400, "missing_to", version))
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding and encoding != "gzip":
            raise Refusal(mesh_error(422, "unsupported_encoding", version))
        chunk_range = parse_chunk_range(headers["chunk_range"], 1)
        if chunk_range is None:
            raise Refusal(mesh_error(417, "invalid_chunks", version))
        _, total = chunk_range
        recipient = self.directory.get(headers["to"])
        if recipient is None:
            raise Refusal(mesh_error(417, "unregistered_recipient", version))
        if self.config.strict and not self.directory.may_send(
            sender.mailbox_id, recipient.mailbox_id, headers["workflow_id"]
        ):
            raise Refusal(mesh_error(417, "not_registered_for_workflow", version))
        self._check_request_size(request, version)
        content_type = (
            headers["content_type"] or request.headers.get("Content-Type", "").strip().lower()
        )
        message = self.mailroom.new_data_message(
            sender=sender.mailbox_id,
            recipient=recipient.mailbox_id,
            workflow_id=headers["workflow_id"],
            total_chunks=total,
            headers={**headers, "content_type": content_type},
            content_encoding=encoding,
            compressed=_truthy(headers["compressed"]),
            encrypted=_truthy(headers["encrypted"]),
        )
        record = await receive_chunk(self.state, request, message, 1, version)
        if record is None:
            return web.Response(status=499)
        if record.stored_size == 0:
            raise Refusal(mesh_error(417, "missing_data_file", version))
        self.mailroom.add_chunk(message, record)
        self.mailroom.register(message, accepted=total == 1)
        log.info(
            "created message %s from %s to %s workflow %s chunks %d",
            message.message_id,
            message.sender,
            message.recipient,
            message.workflow_id,
            total,
        )
        if version < 2:
            return json_response({"messageID": message.message_id}, status=202)
        return json_response({"message_id": message.message_id}, status=202)

    async def send_chunk(self, request: web.Request) -> web.StreamResponse:
        sender = self.authorise(request)
        message_id = request.match_info["message_id"].upper()
        number = int(request.match_info["number"])
        version = self.version(request)
        range_header = request.headers.get("mex-Chunk-Range", "").strip()
        if len(range_header) > 20:
            raise Refusal(validation_error(too_long("header", "mex-chunk-range", range_header, 20)))
        if not range_header or parse_chunk_range(range_header, number) is None:
            raise Refusal(mesh_error(417, "invalid_chunks", version, message_id=message_id))
        message = self.mailroom.get(message_id)
        if message is None:
            raise Refusal(description_error(404, "Not Found", version))
        if message.sender != sender.mailbox_id:
            raise Refusal(description_error(403, "Forbidden", version))
        if message.status != UPLOADING:
            raise Refusal(internal_error(423))
        if number > message.total_chunks or message.message_type != DATA:
            raise Refusal(internal_error(406))
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if encoding != message.content_encoding:
            raise Refusal(description_error(417, "cannot change content encoding", version))
        self._check_request_size(request, version)
        record = await receive_chunk(self.state, request, message, number, version)
        if record is None:
            return web.Response(status=499)
        if message.status != UPLOADING:  # finalised while this chunk streamed in
            raise Refusal(internal_error(423))
        self.mailroom.add_chunk(message, record)
        if number == message.total_chunks:
            missing = self.mailroom.missing_chunks(message)
            if missing:
                # Like the sandbox's file store: the last chunk arrived before the others; it is
                # kept, the message stays uploading, and the last chunk must be sent again.
                self.mailroom.save(message)
                log.warning("last chunk of %s arrived before chunks %s", message_id, missing)
                raise Refusal(internal_error(500))
            self.mailroom.accept(message)
            log.info("message %s complete (%d chunks)", message_id, message.total_chunks)
        else:
            self.mailroom.save(message)
        if version < 2:
            return json_response({"messageID": message.message_id, "blockID": number}, status=202)
        return json_response(None, status=202)

    def _check_request_size(self, request: web.Request, version: int) -> None:
        length = request.content_length
        if self.config.strict and length is not None and length >= self.config.max_request_size:
            raise Refusal(
                mesh_error(413, "request_too_large", version, maximum=self.config.max_request_size)
            )

    def _int_query(self, request: web.Request, name: str, default: int, low: int, high: int) -> int:
        raw = request.query.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise Refusal(validation_error(out_of_range("query", name, raw, low, high)))
        return value

    def _continue_from(self, request: web.Request) -> str | None:
        value = request.query.get("continue_from")
        if value is None:
            return None
        if len(value) < 24:
            raise Refusal(validation_error(too_short("query", "continue_from", value, 24)))
        if len(value) > 1000:
            raise Refusal(validation_error(too_long("query", "continue_from", value, 1000)))
        return value

    async def inbox(self, request: web.Request) -> web.StreamResponse:
        mailbox = self.authorise(request)
        max_results = self._int_query(request, "max_results", DEFAULT_INBOX_PAGE, 10, 5000)
        continue_from = self._continue_from(request)
        workflow_filter = request.query.get("workflow_filter")
        if workflow_filter is not None and len(workflow_filter) < 2:
            raise Refusal(
                validation_error(too_short("query", "workflow_filter", workflow_filter, 2))
            )
        if workflow_filter is not None and len(workflow_filter) > 255:
            raise Refusal(
                validation_error(too_long("query", "workflow_filter", workflow_filter, 255))
            )
        version = self.version(request)
        last_id: str | None = None
        if continue_from:
            last_id = continue_from.upper() if version < 2 else decode_cursor(continue_from)
            if last_id is None:
                raise Refusal(internal_error(500))
        messages = self.mailroom.inbox(mailbox.mailbox_id)
        predicate = workflow_predicate(workflow_filter)
        if predicate is not None:
            messages = [m for m in messages if predicate(m.workflow_id)]
        page, next_id = page_after(messages, last_id, max_results)
        ids = [m.message_id for m in page]
        if version < 2:
            return json_response({"messages": ids})
        query: dict[str, Any] = {}
        if max_results != DEFAULT_INBOX_PAGE:
            query["max_results"] = max_results
        if workflow_filter:
            query["workflow_filter"] = workflow_filter
        base = f"/messageexchange/{mailbox.mailbox_id}/inbox"
        links = {"self": f"{base}?{urlencode(query)}" if query else base}
        if next_id:
            links["next"] = (
                f"{base}?{urlencode({**query, 'continue_from': encode_cursor(next_id)})}"
            )
        body = {
            "messages": ids,
            "links": links,
            "approx_inbox_count": self.mailroom.inbox_count(mailbox.mailbox_id),
        }
        return json_response(body, version=2)

    def _start_time(self, request: web.Request) -> datetime:
        raw = request.query.get("start_time")
        if not raw:
            return self.now() - timedelta(days=30)
        try:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise Refusal(internal_error(500)) from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    def _rich(
        self, request: web.Request, mailbox: Mailbox, messages: list[Message], kind: str, limit: int
    ) -> web.StreamResponse:
        start = self._start_time(request)
        cursor = self._continue_from(request)
        last_id = decode_cursor(cursor) if cursor else None
        messages = [m for m in messages if m.created > start]
        page, next_id = page_after(messages, last_id, limit)
        base = f"/messageexchange/{mailbox.mailbox_id}/{kind}/rich"
        query = {
            "start_time": str(start.astimezone(UTC).replace(tzinfo=None)),
            "max_results": limit,
        }
        links = {"self": f"{base}?{urlencode(query)}"}
        if next_id:
            links["next"] = (
                f"{base}?{urlencode({**query, 'continue_from': encode_cursor(next_id)})}"
            )
        body = {
            "valid_at": self.now().replace(tzinfo=None).isoformat(),
            "messages": [rich_item(m, self.directory, outbox=kind == "outbox") for m in page],
            "links": links,
        }
        return json_response(body, version=2)

    async def rich_inbox(self, request: web.Request) -> web.StreamResponse:
        mailbox = self.authorise(request)
        limit = self._int_query(request, "max_results", 100, 1, 2000)
        messages = [
            m
            for m in self.mailroom.inbox(mailbox.mailbox_id, all_statuses=True)
            if m.status != UPLOADING
        ]
        messages.sort(key=lambda m: m.created, reverse=True)
        return self._rich(request, mailbox, messages, "inbox", limit)

    async def rich_outbox(self, request: web.Request) -> web.StreamResponse:
        mailbox = self.authorise(request)
        limit = min(self._int_query(request, "max_results", 100, 10, 5000), 100)
        return self._rich(
            request, mailbox, self.mailroom.outbox(mailbox.mailbox_id), "outbox", limit
        )

    # -- tracking -------------------------------------------------------------------------------

    async def tracking(self, request: web.Request) -> web.StreamResponse:
        mailbox = self.authorise(request)
        message_id = request.query.get("messageID", "")
        if not message_id:
            raise Refusal(validation_error(missing("query", "messageID")))
        version = self.version(request)
        message = self.mailroom.get(message_id)
        if message is None or message.sender != mailbox.mailbox_id:
            raise Refusal(description_error(404, "Not Found", version))
        return json_response(tracking_body(message, self.directory, version), version=version)

    async def tracking_local(self, request: web.Request) -> web.StreamResponse:
        mailbox = self.authorise(request)
        local_id = request.match_info["local_id"]
        found = [m for m in self.mailroom.outbox(mailbox.mailbox_id) if m.local_id == local_id]
        if not found:
            raise Refusal(description_error(404, "Not Found", self.version_or_1(request)))
        if len(found) > 1:
            raise Refusal(description_error(300, "Multiple Choices", self.version_or_1(request)))
        return json_response(tracking_body(found[0], self.directory, 1))

    # -- download -------------------------------------------------------------------------------

    async def head(self, request: web.Request) -> web.StreamResponse:
        mailbox = self.authorise(request)
        message = self.mailroom.get(request.match_info["message_id"])
        if message is None or mailbox.mailbox_id not in (message.recipient, message.sender):
            raise Refusal(mesh_error(404, "does_not_exist", self.version_or_1(request)))
        is_recipient = message.recipient == mailbox.mailbox_id
        if is_recipient and message.status not in (ACCEPTED, ACKNOWLEDGED):
            raise Refusal(mesh_error(410, "message_gone", self.version_or_1(request)))
        return web.Response(headers=message_headers(message, 1, self.now()))

    async def download(self, request: web.Request) -> web.StreamResponse:
        mailbox = self.authorise(request)
        version = self.version(request)
        number = int(request.match_info.get("number", "1"))
        message = self.mailroom.get(request.match_info["message_id"])
        if message is None:
            raise Refusal(mesh_error(404, "does_not_exist", version))
        if message.recipient != mailbox.mailbox_id:
            raise Refusal(description_error(403, "Forbidden", version))
        # The spec: an acknowledged message "cannot be downloaded again"; the sandbox serves it.
        downloadable = (ACCEPTED,) if self.config.strict else (ACCEPTED, ACKNOWLEDGED)
        if message.status not in downloadable:
            raise Refusal(mesh_error(410, "message_gone", version))
        headers = message_headers(message, number, self.now())
        if message.message_type != DATA:
            return web.Response(headers=headers, body=b"")
        if not 1 <= number <= message.total_chunks:
            raise Refusal(mesh_error(404, "does_not_exist", version))
        record = message.chunks.get(number)
        if record is None:
            raise Refusal(mesh_error(404, "does_not_exist", version))
        status = 200 if number >= message.total_chunks else 206
        wants_gzip = "gzip" in request.headers.get("Accept-Encoding", "")
        source = chunk_source(self.mailroom.store, message, number, record, wants_gzip)
        if source is None:
            raise Refusal(mesh_error(404, "does_not_exist", version))
        pieces, length, encoding, stored_path = source
        headers.pop("Content-Encoding", None)
        if encoding:
            headers["Content-Encoding"] = encoding
            if not self.config.strict:
                headers["mex-Content-Compressed"] = "Y"  # the sandbox says so whenever it gzips
        content_type = "application/octet-stream"
        if version >= 2 and message.total_chunks < 2 and message.content_type:
            content_type = message.content_type
            if content_type.startswith("text/") and "charset" not in content_type:
                content_type += "; charset=utf-8"
        headers["Content-Type"] = content_type
        faulty = any(firings(request, kind) for kind in ("flip", "reset", "stall"))
        if stored_path is not None and length is not None and not faulty:
            return await send_file(request, status, headers, stored_path, length)
        return await stream_body(
            self.state, request, status, headers, pieces, length, message, number
        )

    async def acknowledge(self, request: web.Request) -> web.StreamResponse:
        mailbox = self.authorise(request)
        version = self.version(request)
        message = self.mailroom.get(request.match_info["message_id"])
        if message is None:
            raise Refusal(mesh_error(404, "does_not_exist", version))
        if message.recipient != mailbox.mailbox_id:
            raise Refusal(description_error(403, "Forbidden", version))
        lost = firings(request, "lost_ack")
        if lost:
            applied = lost[0].fault.applied
            if applied:
                self.mailroom.acknowledge(message)
            self.state.faults.record(lost[0], "ack", message_id=message.message_id, applied=applied)
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=499)
        self.mailroom.acknowledge(message)
        if version < 2:
            return json_response({"messageId": message.message_id})
        return empty_response()
