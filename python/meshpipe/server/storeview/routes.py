"""The store view's handlers: each reads the query, asks :class:`~.model.StoreView` and
renders a template (or the evidence bundle); GET (and HEAD) only."""

from __future__ import annotations

import json
from typing import Final
from urllib.parse import urlencode

from aiohttp import web

from meshpipe.pages import render
from meshpipe.server.models import STATUSES
from meshpipe.server.storeview.model import (
    BOXES,
    MAX_CHUNK_ROWS,
    BadQuery,
    BoxQuery,
    NotFound,
    StoreView,
    parse_box_query,
)

STORE: Final = web.AppKey("store_view", StoreView)
#: Where the view is mounted on the server (its pages' links start with it).
PREFIX: Final = "/view"


def error_page(request: web.Request, status: int, title: str, message: str) -> web.Response:
    """A page saying what is wrong (and, for a bad query, what to give instead)."""
    return render(
        "storeview/error.html", request, {"title": title, "message": message}, status=status
    )


def _page_link(mailbox_id: str, query: BoxQuery, page: int) -> str:
    params = {"box": query.box, "status": query.status or "", "page": str(page)}
    kept = {key: value for key, value in params.items() if value and value != "all"}
    return f"{PREFIX}/mailboxes/{mailbox_id}?{urlencode(kept)}"


async def mailboxes(request: web.Request) -> web.Response:
    """``/view/``: every mailbox with its inbox and outbox counts."""
    view = request.app[STORE]
    return render(
        "storeview/mailboxes.html",
        request,
        {"rows": view.mailboxes(), "now": view.now(), "store": view.mailroom.store.mode},
    )


async def mailbox(request: web.Request) -> web.Response:
    """``/view/mailboxes/{id}``: a page of its messages."""
    view = request.app[STORE]
    try:
        query = parse_box_query(request.query)
        found = view.mailbox(request.match_info["id"])
        page = view.messages(found.mailbox_id, query)
    except BadQuery as error:
        return error_page(request, 400, "Not a query the view understands", str(error))
    except NotFound as error:
        return error_page(request, 404, "No such mailbox", str(error))
    mailbox_id = found.mailbox_id
    newer = _page_link(mailbox_id, query, query.page - 1) if query.page > 1 else None
    older = _page_link(mailbox_id, query, query.page + 1) if query.page < page.pages else None
    return render(
        "storeview/mailbox.html",
        request,
        {
            "mailbox": found,
            "page": page,
            "boxes": BOXES,
            "statuses": STATUSES,
            "newer": newer,
            "older": older,
            "now": view.now(),
        },
    )


async def message(request: web.Request) -> web.Response:
    """``/view/messages/{id}``: one message as stored."""
    view = request.app[STORE]
    try:
        found = view.message(request.match_info["id"])
    except NotFound as error:
        return error_page(request, 404, "No such message", str(error))
    return render(
        "storeview/message.html",
        request,
        {
            "message": found,
            "sender": view.party(found.sender),
            "recipient": view.party(found.recipient),
            "chunks": view.chunks(found, MAX_CHUNK_ROWS),
            "stored_size": sum(c.stored_size for c in found.chunks.values()),
            "headers": view.download_headers(found),
            "tracking": view.tracking(found),
            "now": view.now(),
        },
    )


async def evidence(request: web.Request) -> web.Response:
    """``/view/messages/{id}/evidence.json``: the evidence bundle, as a download."""
    view = request.app[STORE]
    try:
        found = view.message(request.match_info["id"])
    except NotFound as error:
        return error_page(request, 404, "No such message", str(error))
    name = f"meshpipe-serve-{found.message_id}-evidence.json"
    return web.Response(
        text=json.dumps(view.evidence(found), indent=2, sort_keys=True) + "\n",
        content_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def routes() -> list[web.RouteDef]:
    """The view's routes, relative to its prefix (GET, which answers HEAD too)."""
    return [
        web.get("/", mailboxes),
        web.get("/mailboxes/{id}", mailbox),
        web.get("/messages/{id}", message),
        web.get("/messages/{id}/evidence.json", evidence),
    ]
