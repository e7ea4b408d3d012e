"""mesh-sandbox's admin API (test hooks, no auth), at the sandbox's paths, plus meshpipe's own:
synthetic messages, the fault plan and log, and the clock."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

from aiohttp import web

from meshpipe.server.config import MiB
from meshpipe.server.faults import FaultPlan, FaultPlanError
from meshpipe.server.models import ERROR, UNDELIVERABLE, Event, SyntheticSpec
from meshpipe.server.responses import (
    admin_message_body,
    description_error,
    json_response,
    missing,
    validation_error,
)
from meshpipe.server.state import Refusal, ServerState
from meshpipe.server.synthetic import synthetic_checksum

NDR_DAYS_TEXT = "Message not collected by recipient after {days} days"


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise Refusal(_invalid("", "JSON decode error")) from None
    if not isinstance(data, dict):
        raise Refusal(_invalid("", "Input should be a valid dictionary"))
    return data


def _required(data: dict[str, Any], *names: str) -> None:
    absent = [missing("body", name, data) for name in names if data.get(name) is None]
    if absent:
        raise Refusal(validation_error(*absent, body=data))


def _invalid(name: str, text: str) -> web.Response:
    return validation_error({"type": "value_error", "loc": ["body", name], "msg": text})


class AdminRoutes:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    def register(self, app: web.Application) -> None:
        r = app.router
        for prefix, tag in (("", ""), ("/messageexchange", "-mx")):
            r.add_delete(f"{prefix}/admin/reset", self.reset, name=f"admin:reset{tag}")
            r.add_delete(
                f"{prefix}/admin/reset/{{mailbox}}", self.reset_mailbox, name=f"admin:reset_mb{tag}"
            )
            r.add_post(
                f"{prefix}/admin/message/{{message_id}}/event",
                self.add_event,
                name=f"admin:event{tag}",
            )
            r.add_get(
                f"{prefix}/admin/mailbox/{{mailbox}}", self.get_mailbox, name=f"admin:mailbox{tag}"
            )
            r.add_get(
                f"{prefix}/admin/message/{{message_id}}",
                self.get_message,
                name=f"admin:message{tag}",
            )
        r.add_get(
            "/messageexchange/mailbox/{mailbox}", self.get_mailbox, name="admin:mailbox_public"
        )
        r.add_post("/messageexchange/admin/report", self.create_report, name="admin:report")
        r.add_post(
            "/messageexchange/admin/synthetic", self.create_synthetic, name="admin:synthetic"
        )
        r.add_get("/messageexchange/admin/faults", self.get_faults, name="admin:faults")
        r.add_put("/messageexchange/admin/faults", self.put_faults, name="admin:faults_put")
        r.add_post("/messageexchange/admin/clock", self.advance_clock, name="admin:clock")

    async def reset(self, request: web.Request) -> web.StreamResponse:
        self.state.mailroom.reset()
        return json_response({"message": "all mailboxes reset"})

    async def reset_mailbox(self, request: web.Request) -> web.StreamResponse:
        mailbox_id = request.match_info["mailbox"].upper()
        if self.state.directory.get(mailbox_id) is None:
            raise Refusal(description_error(404, "mailbox does not exist"))
        self.state.mailroom.reset_mailbox(mailbox_id)
        return json_response({"message": f"mailbox {mailbox_id} reset"})

    async def create_report(self, request: web.Request) -> web.StreamResponse:
        data = await _json_body(request)
        _required(data, "mailbox_id", "code", "description", "workflow_id")
        recipient = self.state.directory.get(str(data["mailbox_id"]))
        if recipient is None:
            raise Refusal(description_error(404, "mailbox does not exist"))
        status = str(data.get("status") or UNDELIVERABLE)
        if status not in (UNDELIVERABLE, ERROR):
            raise Refusal(_invalid("status", "status must be undeliverable or error"))
        subject = data.get("subject")
        if status == UNDELIVERABLE:
            days = self.state.config.inbox_expiry_days
            report = self.state.mailroom.create_report(
                recipient=recipient,
                workflow_id=str(data["workflow_id"]),
                code="14",
                event="SEND",
                description=NDR_DAYS_TEXT.format(days=days),
                subject=f"NDR: {subject}" if subject else "NDR",
                local_id=str(data.get("local_id") or ""),
                linked_message_id=data.get("linked_message_id"),
            )
        else:
            report = self.state.mailroom.create_report(
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
        message = self.state.mailroom.get(request.match_info["message_id"])
        if message is None:
            raise Refusal(description_error(404, "Not Found"))
        event = Event(
            status=str(data["status"]),
            timestamp=self.state.clock.now(),
            code=data.get("code"),
            event=data.get("event"),
            description=data.get("description"),
            linked_message_id=data.get("linked_message_id"),
        )
        self.state.mailroom.add_event(message, event)
        return web.Response(status=200)

    async def get_mailbox(self, request: web.Request) -> web.StreamResponse:
        mailbox = self.state.directory.get(request.match_info["mailbox"])
        if mailbox is None:
            raise Refusal(description_error(404, "Not Found"))
        body = {k: v for k, v in mailbox.public().items() if v is not None}
        return json_response(body)

    async def get_message(self, request: web.Request) -> web.StreamResponse:
        message = self.state.mailroom.get(request.match_info["message_id"])
        if message is None:
            raise Refusal(description_error(404, "Not Found"))
        return json_response(admin_message_body(message, self.state.directory))

    # -- meshpipe's own hooks ---------------------------------------------------------------------

    async def create_synthetic(self, request: web.Request) -> web.StreamResponse:
        """``{"mailbox_id": recipient, "size": bytes, "chunk_size"?: bytes (20 MiB), "seed"?,
        "sender"?: mailbox, "workflow_id"?, "subject"?, "local_id"?, "file_name"?,
        "checksum"?: bool (true: carry meshpipe's whole-file checksum header)}``"""
        data = await _json_body(request)
        _required(data, "mailbox_id", "size")
        recipient = self.state.directory.get(str(data["mailbox_id"]))
        if recipient is None:
            raise Refusal(description_error(404, "mailbox does not exist"))
        try:
            spec = SyntheticSpec(
                size=int(data["size"]),
                chunk_size=int(data.get("chunk_size") or 20 * MiB),
                seed=int(data.get("seed") or 0),
            )
        except (TypeError, ValueError):
            raise Refusal(_invalid("size", "size, chunk_size and seed are integers")) from None
        if spec.size < 0 or spec.chunk_size <= 0:
            raise Refusal(_invalid("size", "size must be ≥ 0 and chunk_size > 0"))
        checksum = ""
        if data.get("checksum", True):
            checksum = await asyncio.to_thread(
                synthetic_checksum, spec.seed, spec.size, spec.chunk_size
            )
        message = self.state.mailroom.create_synthetic(
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
        injector = self.state.faults
        return json_response({"plan": injector.plan.to_json(), "log": injector.log})

    async def put_faults(self, request: web.Request) -> web.StreamResponse:
        data = await _json_body(request)
        try:
            plan = FaultPlan.from_json(data)
        except (FaultPlanError, TypeError) as exc:
            raise Refusal(_invalid("faults", str(exc))) from None
        self.state.faults.set_plan(plan)
        return json_response({"plan": plan.to_json()})

    async def advance_clock(self, request: web.Request) -> web.StreamResponse:
        """``{"seconds": n}``: move the server clock forward, then run expiry."""
        data = await _json_body(request)
        try:
            seconds = float(data.get("seconds", 0))
        except (TypeError, ValueError):
            raise Refusal(_invalid("seconds", "Input should be a number")) from None
        self.state.clock.advance(timedelta(seconds=seconds))
        reports = self.state.mailroom.expire()
        return json_response(
            {
                "now": self.state.clock.now().isoformat(),
                "reports": [r.message_id for r in reports],
            }
        )
