"""The local server's own store, read-only, under ``/view/`` on its port: a test rig's own
MOLES (the MESH Online Enquiry Service), built on :mod:`meshpipe.pages`.

- ``/view/``: every mailbox of the directory (id, name, ODS and organisation codes), its inbox
  and outbox counts, and how long the oldest message waiting in its inbox (accepted, not yet
  acknowledged) has waited;
- ``/view/mailboxes/{id}``: its inbox and outbox messages, newest first, 50 a page, filtered
  by box and status;
- ``/view/messages/{id}``: one message: every field as stored, the headers a download carries,
  its events, every chunk (stored size, decoded size, xxh3-128, where its bytes are), expiry and
  what tracking answers; ``/view/messages/{id}/evidence.json``: all of that as a download.

Looking changes nothing: GET and HEAD only, no event, acknowledgement or expiry, the clock
only read, and the fault plan does not count these requests. Mailbox passwords, the shared key
and the admin token are never shown. Access (:func:`~.model.view_access`): open on a loopback
bind; on any other the admin token (``Authorization: Bearer TOKEN``, or ``?token=TOKEN`` once
in a browser, which sets a cookie: the token rule of :mod:`meshpipe.pages.access`), and
refused (403, saying why) when the server has none.
"""

from __future__ import annotations

from typing import Final

import aiohttp_jinja2
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from meshpipe.pages import STATIC_PREFIX, setup_pages
from meshpipe.server.mailroom import Mailroom
from meshpipe.server.storeview.model import Access, StoreView, view_access
from meshpipe.server.storeview.routes import PREFIX, STORE, error_page, routes

SITE_NAME: Final = "meshpipe serve: store"
NAV: Final = (("Mailboxes", f"{PREFIX}/"),)


def _refused(access: Access) -> Middleware:
    """Every request refused with ``access.refusal`` (403)."""
    reason = access.refusal or ""

    @web.middleware
    async def refuse(request: web.Request, handler: Handler) -> web.StreamResponse:
        return web.Response(status=403, text=f"403: {reason}\n")

    return refuse


@web.middleware
async def _answered_here(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTP errors (401 for a missing token, 404, 405) answered as the view's own, not as
    MESH's JSON (the server's refusal middleware would)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.status == 401:
            return web.Response(status=401, text=exc.text, headers=exc.headers)
        return error_page(request, exc.status, exc.reason, f"{request.method} {request.path}")


async def _to_index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(f"{PREFIX}/")


def add_store_view(app: web.Application, mailroom: Mailroom) -> None:
    """Mount the view of ``mailroom``'s store at ``/view/`` on ``app`` (the server's)."""
    access = view_access(mailroom.config)
    view = web.Application(middlewares=[_answered_here])
    if access.refusal is not None:
        view.middlewares.append(_refused(access))
    setup_pages(
        view, ["meshpipe.server.storeview"], site_name=SITE_NAME, nav=NAV, token=access.token
    )
    # The pages' links to /static/ are under the view's prefix here.
    view[aiohttp_jinja2.static_root_key] = f"{PREFIX}{STATIC_PREFIX}"
    view[STORE] = StoreView(mailroom)
    view.add_routes(routes())
    app.router.add_get(PREFIX, _to_index)
    app.add_subapp(PREFIX, view)


__all__ = ["NAV", "PREFIX", "SITE_NAME", "StoreView", "add_store_view", "view_access"]
