"""mesh-sandbox's admin API (test hooks), at the sandbox's paths, plus meshpipe's own:
synthetic messages, the fault plan and log, and the clock. With an admin token every one of
them needs ``Authorization: Bearer <token>`` (compared in constant time, never logged)."""

from __future__ import annotations

import asyncio
import functools
import json
from datetime import timedelta
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from meshpipe.pages.access import bearer_matches
from meshpipe.server.faults import FaultInjector, FaultPlan, FaultPlanError
from meshpipe.server.mailroom import Mailroom
from meshpipe.server.models import ERROR, UNDELIVERABLE, Event, SyntheticSpec
from meshpipe.server.negotiation import json_response
from meshpipe.server.refusals import Refusal, invalid, missing, value_error
from meshpipe.server.streaming import synthetic_checksum
from meshpipe.server.views import admin_message_body
from meshpipe.units import MiB


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _invalid("", "JSON decode error") from None
    if not isinstance(data, dict):
        raise _invalid("", "Input should be a valid dictionary")
    return data


def _required(data: dict[str, Any], *names: str) -> None:
    absent = [missing("body", name, data) for name in names if data.get(name) is None]
    if absent:
        raise invalid(*absent, body=data)


def _invalid(name: str, text: str) -> Refusal:
    return invalid(value_error("body", name, text))


class AdminRoutes:
    def __init__(
        self, mailroom: Mailroom, faults: FaultInjector, *, token: str | None = None
    ) -> None:
        self.mailroom = mailroom
        self.faults = faults
        self._token = token

    def __repr__(self) -> str:
        return f"AdminRoutes(token={'set' if self._token else 'none'})"

    def _guarded(self, handler: Handler) -> Handler:
        token = self._token
        if token is None:
            return handler

        @functools.wraps(handler)
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not bearer_matches(request.headers.get("Authorization"), token):
                raise Refusal(403, "admin_token")
            return await handler(request)

        return guarded

    def register(self, app: web.Application) -> None:
        r = app.router
        # The sandbox serves these with and without the /messageexchange prefix.
        both: tuple[tuple[str, str, Handler, str], ...] = (
            ("DELETE", "/admin/reset", self.reset, "reset"),
            ("DELETE", "/admin/reset/{mailbox}", self.reset_mailbox, "reset_mb"),
            ("POST", "/admin/message/{message_id}/event", self.add_event, "event"),
            ("GET", "/admin/mailbox/{mailbox}", self.get_mailbox, "mailbox"),
            ("GET", "/admin/message/{message_id}", self.get_message, "message"),
        )
        routes: list[tuple[str, str, Handler, str]] = []
        for prefix, tag in (("", ""), ("/messageexchange", "-mx")):
            for method, path, handler, name in both:
                routes.append((method, f"{prefix}{path}", handler, f"admin:{name}{tag}"))
        routes += [
            ("GET", "/messageexchange/mailbox/{mailbox}", self.get_mailbox, "admin:mailbox_public"),
            ("POST", "/messageexchange/admin/report", self.create_report, "admin:report"),
            ("POST", "/messageexchange/admin/synthetic", self.create_synthetic, "admin:synthetic"),
            ("GET", "/messageexchange/admin/faults", self.get_faults, "admin:faults"),
            ("PUT", "/messageexchange/admin/faults", self.put_faults, "admin:faults_put"),
            ("POST", "/messageexchange/admin/clock", self.advance_clock, "admin:clock"),
        ]
        for method, path, handler, name in routes:
            guarded = self._guarded(handler)
            if method == "GET":
                r.add_get(path, guarded, name=name)
            else:
                r.add_route(method, path, guarded, name=name)

    async def reset(self, request: web.Request) -> web.StreamResponse:
        self.mailroom.reset()
        return json_response({"message": "all mailboxes reset"})

    async def reset_mailbox(self, request: web.Request) -> web.StreamResponse:
        mailbox_id = request.match_info["mailbox"].upper()
        self.mailroom.reset_mailbox(mailbox_id)
        return json_response({"message": f"mailbox {mailbox_id} reset"})

    async def create_report(self, request: web.Request) -> web.StreamResponse:
        data = await _json_body(request)
        _required(data, "mailbox_id", "code", "description", "workflow_id")
        recipient = self.mailroom.mailbox(str(data["mailbox_id"]))
        status = str(data.get("status") or UNDELIVERABLE)
        if status not in (UNDELIVERABLE, ERROR):
            raise _invalid("status", "status must be undeliverable or error")
        subject = data.get("subject")
        if status == UNDELIVERABLE:
            report = self.mailroom.create_ndr(
                recipient=recipient,
                workflow_id=str(data["workflow_id"]),
                subject=subject,
                local_id=str(data.get("local_id") or ""),
                linked_message_id=data.get("linked_message_id"),
            )
        else:
            report = self.mailroom.create_report(
                recipient=recipient,
                workflow_id=str(data["workflow_id"]),
                code=str(data["code"]),
                event="TRANSFER",
                description=str(data["description"]),
                subject=str(subject or ""),
                local_id=str(data.get("local_id") or ""),
                file_name=str(data.get("file_name") or ""),
                linked_message_id=data.get("linked_message_id"),
            )
        return json_response({"message_id": report.message_id})

    async def add_event(self, request: web.Request) -> web.StreamResponse:
        data = await _json_body(request)
        _required(data, "status")
        message = self.mailroom.get(request.match_info["message_id"])
        if message is None:
            raise Refusal(404, "not_found")
        event = Event(
            status=str(data["status"]),
            timestamp=self.mailroom.clock.now(),
            code=data.get("code"),
            event=data.get("event"),
            description=data.get("description"),
            linked_message_id=data.get("linked_message_id"),
        )
        self.mailroom.add_event(message, event)
        return web.Response(status=200)

    async def get_mailbox(self, request: web.Request) -> web.StreamResponse:
        mailbox = self.mailroom.directory.get(request.match_info["mailbox"])
        if mailbox is None:
            raise Refusal(404, "not_found")
        body = {k: v for k, v in mailbox.public().items() if v is not None}
        return json_response(body)

    async def get_message(self, request: web.Request) -> web.StreamResponse:
        message = self.mailroom.get(request.match_info["message_id"])
        if message is None:
            raise Refusal(404, "not_found")
        return json_response(admin_message_body(message, self.mailroom.directory))

    # -- meshpipe's own hooks ---------------------------------------------------------------------

    async def create_synthetic(self, request: web.Request) -> web.StreamResponse:
        """``{"mailbox_id": recipient, "size": bytes, "chunk_size"?: bytes (20 MiB), "seed"?,
        "sender"?: mailbox, "workflow_id"?, "subject"?, "local_id"?, "file_name"?,
        "checksum"?: bool (true: carry meshpipe's whole-file checksum header)}``"""
        data = await _json_body(request)
        _required(data, "mailbox_id", "size")
        recipient = self.mailroom.mailbox(str(data["mailbox_id"]))
        try:
            spec = SyntheticSpec(
                size=int(data["size"]),
                chunk_size=int(data.get("chunk_size") or 20 * MiB),
                seed=int(data.get("seed") or 0),
            )
        except (TypeError, ValueError):
            raise _invalid("size", "size, chunk_size and seed are integers") from None
        if spec.size < 0 or spec.chunk_size <= 0:
            raise _invalid("size", "size must be ≥ 0 and chunk_size > 0")
        checksum = ""
        if data.get("checksum", True):
            checksum = await asyncio.to_thread(
                synthetic_checksum, spec.seed, spec.size, spec.chunk_size
            )
        message = self.mailroom.create_synthetic(
            checksum=checksum,
            sender=str(data.get("sender") or "").upper(),
            recipient=recipient.mailbox_id,
            workflow_id=str(data.get("workflow_id") or "SYNTHETIC"),
            spec=spec,
            subject=str(data.get("subject") or ""),
            local_id=str(data.get("local_id") or ""),
            file_name=str(data.get("file_name") or ""),
        )
        return json_response(
            {"message_id": message.message_id, "total_chunks": message.total_chunks}
        )

    async def get_faults(self, request: web.Request) -> web.StreamResponse:
        injector = self.faults
        return json_response({"plan": injector.plan.to_json(), "log": injector.log})

    async def put_faults(self, request: web.Request) -> web.StreamResponse:
        data = await _json_body(request)
        try:
            plan = FaultPlan.from_json(data)
        except (FaultPlanError, TypeError) as exc:
            raise _invalid("faults", str(exc)) from None
        self.faults.set_plan(plan)
        return json_response({"plan": plan.to_json()})

    async def advance_clock(self, request: web.Request) -> web.StreamResponse:
        """``{"seconds": n}``: move the server clock forward, then run expiry."""
        data = await _json_body(request)
        try:
            seconds = float(data.get("seconds", 0))
        except (TypeError, ValueError):
            raise _invalid("seconds", "Input should be a number") from None
        self.mailroom.clock.advance(timedelta(seconds=seconds))
        reports = self.mailroom.expire()
        return json_response(
            {
                "now": self.mailroom.clock.now().isoformat(),
                "reports": [r.message_id for r in reports],
            }
        )
