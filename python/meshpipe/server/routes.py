"""The client-facing MESH endpoints (everything under /messageexchange but the admin API)."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from aiohttp.typedefs import Handler

from meshpipe.headers import SEND_HEADER_LIMITS, SendHeaders, parse_chunk_range
from meshpipe.server.authorize import Authenticator
from meshpipe.server.config import Mailbox, ServerConfig
from meshpipe.server.faults import FaultInjector, FaultyStream, cut_connection, firings
from meshpipe.server.mailroom import ChunkUpload, Mailroom
from meshpipe.server.models import UPLOADING, Message
from meshpipe.server.negotiation import (
    AcceptHeaderError,
    api_version,
    empty_response,
    json_response,
)
from meshpipe.server.refusals import (
    Refusal,
    invalid,
    missing,
    out_of_range,
    too_long,
    too_short,
    value_error,
)
from meshpipe.server.streaming import chunk_source, request_body, send_stored_chunk, stream_body
from meshpipe.server.views import message_headers, rich_item, tracking_body

DEFAULT_INBOX_PAGE = 500

#: The raw send headers whose length is validated before anything else (as the sandbox's
#: request validation does), with mex-To and mex-WorkflowID required to be present.
REQUIRED_SEND_HEADERS = ("mex-To", "mex-WorkflowID")


def encode_cursor(message_id: str) -> str:
    raw = json.dumps({"message_id": message_id}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str) -> str | None:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (binascii.Error, ValueError, RecursionError):
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


def chunk_range_for(value: str, url_number: int) -> tuple[int, int] | None:
    """``mex-Chunk-Range`` of a request to chunk ``url_number``, as mesh-sandbox reads it:
    (n, N), where an absent value means 1:1 and only for chunk 1, and n must be the URL's; None
    when it is malformed or does not match."""
    if not value:
        return (1, 1) if url_number == 1 else None
    parsed = parse_chunk_range(value) if ":" in value else None
    return parsed if parsed is not None and parsed[0] == url_number else None


def validate_send_headers(headers: Mapping[str, str]) -> None:
    """400 listing every send header that is too long, and mex-To / mex-WorkflowID when absent
    (MESH's other rules for them are the mailroom's)."""
    problems: list[dict[str, Any]] = []
    for name, longest in SEND_HEADER_LIMITS.items():
        value = headers.get(name)
        if value is None and name in REQUIRED_SEND_HEADERS:
            problems.append(missing("header", name.lower()))
        elif value is not None and len(value) > longest:
            problems.append(too_long("header", name.lower(), value, longest))
    if problems:
        raise invalid(*problems)


class MeshRoutes:
    """The handlers: each parses its request, asks the authenticator and the mailroom (which
    refuse what MESH refuses), and renders the answer."""

    def __init__(
        self,
        config: ServerConfig,
        mailroom: Mailroom,
        authenticator: Authenticator,
        faults: FaultInjector,
    ) -> None:
        self.config = config
        self.mailroom = mailroom
        self.directory = mailroom.directory
        self.authenticator = authenticator
        self.faults = faults

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
        mb = "/messageexchange/{mailbox}"
        message = f"{mb}/inbox/{{message_id}}"
        routes: tuple[tuple[str, str, Handler, str], ...] = (
            ("POST", mb, self.handshake, "handshake"),
            ("GET", mb, self.handshake, "handshake:get"),
            ("POST", f"{mb}/update", self.update, "handshake:update"),
            ("GET", f"{mb}/count", self.count, "count"),
            ("POST", f"{mb}/outbox", self.send, "send"),
            ("GET", f"{mb}/outbox/rich", self.rich_outbox, "rich:outbox"),
            ("GET", f"{mb}/outbox/tracking", self.tracking, "tracking"),
            ("GET", f"{mb}/outbox/tracking/{{local_id}}", self.tracking_local, "tracking:local"),
            ("POST", f"{mb}/outbox/{{message_id}}/{{number:\\d+}}", self.send_chunk, "send_chunk"),
            ("GET", f"{mb}/inbox", self.inbox, "inbox"),
            ("GET", f"{mb}/inbox/rich", self.rich_inbox, "rich:inbox"),
            ("HEAD", message, self.head, "head"),
            ("GET", message, self.download, "download"),
            ("GET", f"{message}/{{number:-?\\d+}}", self.download, "download:chunk"),
            ("PUT", f"{message}/status/acknowledged", self.acknowledge, "ack"),
        )
        for method, path, handler, name in routes:
            app.router.add_route(method, path, handler, name=name)

    # -- helpers ------------------------------------------------------------------------------

    def authorise(self, request: web.Request) -> Mailbox:
        return self.authenticator.check(
            request.match_info["mailbox"], request.headers.get("Authorization")
        )

    @staticmethod
    def version(request: web.Request) -> int:
        try:
            return api_version(request.headers.get("Accept"))
        except AcceptHeaderError:
            raise Refusal(400, "accept_header") from None

    def now(self) -> datetime:
        return self.mailroom.clock.now()

    def _upload(self, request: web.Request, chunk_range: tuple[int, int] | None) -> ChunkUpload:
        """The chunk upload in ``request``; its body reaches the mailroom through the body
        faults planned for it."""

        def read(message: Message, number: int) -> AsyncIterator[bytes]:
            faults = FaultyStream(
                self.faults, request, "upload", message_id=message.message_id, chunk=number
            )
            return request_body(request, faults)

        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        return ChunkUpload(chunk_range, encoding, request.content_length, read)

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
            raise invalid(*absent)
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

    async def send(self, request: web.Request) -> web.StreamResponse:
        sender = self.authorise(request)
        validate_send_headers(request.headers)
        headers = SendHeaders.from_request(request.headers)
        if headers.content_type is None:
            sent_type = request.headers.get("Content-Type", "").strip().lower()
            headers = headers.replace(content_type=sent_type or None)
        version = self.version(request)
        range_header = request.headers.get("mex-Chunk-Range", "").strip()
        upload = self._upload(request, chunk_range_for(range_header, 1))
        message = await self.mailroom.send(sender, headers, upload)
        if version < 2:
            return json_response({"messageID": message.message_id}, status=202)
        return json_response({"message_id": message.message_id}, status=202)

    async def send_chunk(self, request: web.Request) -> web.StreamResponse:
        sender = self.authorise(request)
        message_id = request.match_info["message_id"].upper()
        number = int(request.match_info["number"])
        version = self.version(request)
        range_header = request.headers.get("mex-Chunk-Range", "").strip()
        if len(range_header) > SEND_HEADER_LIMITS["mex-Chunk-Range"]:
            raise invalid(too_long("header", "mex-chunk-range", range_header, 20))
        chunk_range = chunk_range_for(range_header, number) if range_header else None
        upload = self._upload(request, chunk_range)
        message = await self.mailroom.send_chunk(sender, message_id, number, upload)
        if version < 2:
            return json_response({"messageID": message.message_id, "blockID": number}, status=202)
        return json_response(None, status=202)

    def _int_query(self, request: web.Request, name: str, default: int, low: int, high: int) -> int:
        raw = request.query.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise invalid(out_of_range("query", name, raw, low, high))
        return value

    def _continue_from(self, request: web.Request) -> str | None:
        value = request.query.get("continue_from")
        if value is None:
            return None
        if len(value) < 24:
            raise invalid(too_short("query", "continue_from", value, 24))
        if len(value) > 1000:
            raise invalid(too_long("query", "continue_from", value, 1000))
        return value

    async def inbox(self, request: web.Request) -> web.StreamResponse:
        mailbox = self.authorise(request)
        max_results = self._int_query(request, "max_results", DEFAULT_INBOX_PAGE, 10, 5000)
        continue_from = self._continue_from(request)
        workflow_filter = request.query.get("workflow_filter")
        if workflow_filter is not None and len(workflow_filter) < 2:
            raise invalid(too_short("query", "workflow_filter", workflow_filter, 2))
        if workflow_filter is not None and len(workflow_filter) > 255:
            raise invalid(too_long("query", "workflow_filter", workflow_filter, 255))
        version = self.version(request)
        last_id: str | None = None
        if continue_from:
            last_id = continue_from.upper() if version < 2 else _cursor(continue_from)
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
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return moment.astimezone(UTC)
        except (ValueError, OverflowError):
            raise invalid(
                value_error(
                    "query",
                    "start_time",
                    f"start_time must be an ISO 8601 date and time, e.g. "
                    f"2024-01-31T09:30:00Z; {raw!r} is not one",
                )
            ) from None

    def _rich(
        self, request: web.Request, mailbox: Mailbox, messages: list[Message], kind: str, limit: int
    ) -> web.StreamResponse:
        start = self._start_time(request)
        cursor = self._continue_from(request)
        last_id = _cursor(cursor) if cursor else None
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
            raise invalid(missing("query", "messageID"))
        version = self.version(request)
        message = self.mailroom.sent(mailbox, message_id)
        return json_response(tracking_body(message, self.directory, version), version=version)

    async def tracking_local(self, request: web.Request) -> web.StreamResponse:
        mailbox = self.authorise(request)
        message = self.mailroom.sent_with_local_id(mailbox, request.match_info["local_id"])
        return json_response(tracking_body(message, self.directory, 1))

    # -- download -------------------------------------------------------------------------------

    async def head(self, request: web.Request) -> web.StreamResponse:
        mailbox = self.authorise(request)
        message = self.mailroom.describe(mailbox, request.match_info["message_id"])
        return web.Response(headers=message_headers(message, 1, self.now()))

    async def download(self, request: web.Request) -> web.StreamResponse:
        mailbox = self.authorise(request)
        version = self.version(request)
        number = int(request.match_info.get("number", "1"))
        message, record = self.mailroom.download(mailbox, request.match_info["message_id"], number)
        headers = message_headers(message, number, self.now())
        if record is None:  # a report: headers only
            return web.Response(headers=headers, body=b"")
        status = 200 if number >= message.total_chunks else 206
        wants_gzip = "gzip" in request.headers.get("Accept-Encoding", "")
        source = chunk_source(self.mailroom.store, message, number, record, wants_gzip)
        if source is None:
            raise Refusal(404, "does_not_exist")
        pieces, length, encoding, stored_path = source
        headers.pop("Content-Encoding", None)
        if encoding:
            headers["Content-Encoding"] = encoding
            if self.mailroom.rules.compressed_flag_on_gzip:
                headers["mex-Content-Compressed"] = "Y"
        headers["Content-Type"] = _download_content_type(message, version)
        faults = FaultyStream(
            self.faults,
            request,
            "download",
            message_id=message.message_id,
            chunk=number,
            length=length,
        )
        if stored_path is not None and length is not None and not faults.active:
            return await send_stored_chunk(request, status, headers, stored_path, length)
        return await stream_body(request, status, headers, pieces, length, faults)

    async def acknowledge(self, request: web.Request) -> web.StreamResponse:
        mailbox = self.authorise(request)
        version = self.version(request)
        message = self.mailroom.received(mailbox, request.match_info["message_id"])
        lost = firings(request, "lost_ack")
        if lost:
            applied = lost[0].fault.applied
            if applied:
                self.mailroom.acknowledge(message)
            self.faults.record(lost[0], "ack", message_id=message.message_id, applied=applied)
            return cut_connection(request)
        self.mailroom.acknowledge(message)
        if version < 2:
            return json_response({"messageId": message.message_id})
        return empty_response()


def _cursor(continue_from: str) -> str:
    """The message id in a v2 ``continue_from`` cursor; 400 when it is not one this server
    gave out."""
    last_id = decode_cursor(continue_from)
    if last_id is None:
        raise invalid(
            value_error(
                "query",
                "continue_from",
                "continue_from must be the cursor from the previous page's links.next "
                "(copy that link as it is)",
            )
        )
    return last_id


def _download_content_type(message: Message, version: int) -> str:
    """The sender's content type for a single-chunk v2 download, else octet-stream."""
    if version < 2 or message.total_chunks >= 2 or not message.content_type:
        return "application/octet-stream"
    content_type = message.content_type
    if content_type.startswith("text/") and "charset" not in content_type:
        content_type += "; charset=utf-8"
    return content_type
