"""The aiohttp application: routes, the fault-injection and error-mapping middleware."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from meshpipe.server.admin import AdminRoutes
from meshpipe.server.responses import internal_error, json_response
from meshpipe.server.routes import MeshRoutes
from meshpipe.server.state import FIRINGS, STATE_KEY, Refusal, ServerState

log = logging.getLogger("meshpipe.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BODY_ROUTES = ("send", "send_chunk", "download")


def _fault_route(request: web.Request) -> tuple[str, int | None]:
    name = request.match_info.route.name or ""
    route = name.split(":", 1)[0]
    chunk: int | None = None
    if route == "send":
        chunk = 1
    elif route in ("send_chunk", "download"):
        try:
            chunk = int(request.match_info.get("number", "1"))
        except ValueError:
            chunk = None
    return route, chunk


def make_middleware(state: ServerState) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route, chunk = _fault_route(request)
        if route and state.faults.plan.faults:
            mailbox = request.match_info.get("mailbox", "").upper() or None
            fired = state.faults.match(route, chunk=chunk, mailbox=mailbox)
            request[FIRINGS] = fired
            for firing in fired:
                fault = firing.fault
                if fault.kind == "stall" and not fault.after_bytes:
                    state.faults.record(
                        firing, route, chunk=chunk, seconds=fault.seconds, path=request.path
                    )
                    await asyncio.sleep(fault.seconds)
            for firing in fired:
                fault = firing.fault
                if fault.kind == "status":
                    headers = (
                        {"Retry-After": str(fault.retry_after)}
                        if fault.retry_after is not None
                        else None
                    )
                    state.faults.record(
                        firing, route, chunk=chunk, status=fault.status, path=request.path
                    )
                    return internal_error(fault.status, headers=headers)
                if fault.kind == "reset" and (route not in BODY_ROUTES or not fault.after_bytes):
                    state.faults.record(
                        firing, route, chunk=chunk, after_bytes=0, path=request.path
                    )
                    if request.transport is not None:
                        request.transport.abort()
                    return web.Response(status=499)
        try:
            return await handler(request)
        except Refusal as refusal:
            return refusal.response
        except web.HTTPException as exc:
            if exc.status >= 400:
                # Like the sandbox (Starlette) for paths and methods it has no route for.
                return json_response({"detail": exc.reason}, status=exc.status)
            raise
        except ConnectionResetError:
            # The client went away mid-request (its upload was discarded); nothing to answer.
            log.info("client disconnected during %s %s", request.method, request.path)
            return web.Response(status=499)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return internal_error(500)

    return middleware


def build_app(state: ServerState) -> web.Application:
    app = web.Application(middlewares=[make_middleware(state)], client_max_size=16 * 1024 * 1024)
    app[STATE_KEY] = state
    mesh = MeshRoutes(state)
    mesh.register(app)
    AdminRoutes(state).register(app)
    mesh.register_mailbox_routes(app)
    return app
