"""The aiohttp application: the routes, and the middlewares every request passes through: the
connection's phase (for its time limits), the fault plan's request-level faults, then the one
place refusals become responses. The admin routes are there only when the config enables them;
the read-only store view (:mod:`meshpipe.server.storeview`) is mounted at ``/view/``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from meshpipe.server.admin import AdminRoutes
from meshpipe.server.authorize import Authenticator
from meshpipe.server.config import ServerConfig
from meshpipe.server.connections import Connections
from meshpipe.server.faults import FIRINGS, FaultInjector, cut_connection
from meshpipe.server.mailroom import Mailroom
from meshpipe.server.negotiation import api_version_or_1, json_response
from meshpipe.server.refusals import Refusal
from meshpipe.server.routes import MeshRoutes
from meshpipe.server.storeview import PREFIX as VIEW_PREFIX
from meshpipe.server.storeview import add_store_view

log = logging.getLogger("meshpipe.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BODY_ROUTES = ("send", "send_chunk", "download")


def _fault_route(request: web.Request) -> tuple[str, int | None]:
    if request.path == VIEW_PREFIX or request.path.startswith(f"{VIEW_PREFIX}/"):
        return "", None  # the store view: looking is never faulted, nor counted
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


def fault_middleware(faults: FaultInjector) -> Middleware:
    """Count the request against the fault plan; apply the faults that act before a handler
    (status answers, resets, stalls without a byte count) and leave the body faults to it."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route, chunk = _fault_route(request)
        if not route or not faults.plan.faults:
            return await handler(request)
        mailbox = request.match_info.get("mailbox", "").upper() or None
        fired = faults.match(route, chunk=chunk, mailbox=mailbox)
        request[FIRINGS] = fired
        for firing in fired:
            fault = firing.fault
            if fault.kind == "stall" and not fault.after_bytes:
                faults.record(firing, route, chunk=chunk, seconds=fault.seconds, path=request.path)
                await asyncio.sleep(fault.seconds)
        for firing in fired:
            fault = firing.fault
            if fault.kind == "status":
                faults.record(firing, route, chunk=chunk, status=fault.status, path=request.path)
                retry = None
                if fault.retry_after is not None:
                    retry = {"Retry-After": str(fault.retry_after)}
                return Refusal(fault.status, "internal", headers=retry).render(1)
            if fault.kind == "reset" and (route not in BODY_ROUTES or not fault.after_bytes):
                faults.record(firing, route, chunk=chunk, after_bytes=0, path=request.path)
                return cut_connection(request)
        return await handler(request)

    return middleware


@web.middleware
async def refusal_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refusals (from any layer) as MESH answers them, in the API version the request asked
    for (the admin API has no versions: v1); other errors as the sandbox gives them."""
    try:
        return await handler(request)
    except Refusal as refusal:
        log.info("refused %s %s: %s", request.method, request.path, refusal)
        admin = (request.match_info.route.name or "").startswith("admin:")
        return refusal.render(1 if admin else api_version_or_1(request))
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
        return Refusal(500, "internal").render(1)


def build_app(
    config: ServerConfig,
    mailroom: Mailroom,
    authenticator: Authenticator,
    faults: FaultInjector,
    connections: Connections | None = None,
) -> web.Application:
    """The application; with ``connections``, its first middleware tells each connection when
    a request's head has arrived and its answer is done (for their time limits)."""
    middlewares = [refusal_middleware, fault_middleware(faults)]
    if connections is not None:
        middlewares.insert(0, connections.middleware())
    app = web.Application(
        middlewares=middlewares,
        client_max_size=16 * 1024 * 1024,
    )
    mesh = MeshRoutes(config, mailroom, authenticator, faults)
    mesh.register(app)
    if config.admin_enabled:
        AdminRoutes(mailroom, faults, token=config.admin_token).register(app)
    mesh.register_mailbox_routes(app)
    add_store_view(app, mailroom)
    return app
