"""The tracking web view: every transfer in the ledger, its lifecycle at a glance.

Served by ``meshpipe web`` (:mod:`meshpipe.web.cli`) and by ``meshpipe watch`` on its
operations port, on the base of :mod:`meshpipe.pages` (autoescaped templates, a strict
Content-Security-Policy, a token for anything but loopback). Pages:

- ``/``: overview: the backlog (transfers still moving), the last transfer of each workflow,
  recent failures; with a running service (``signals``), each mailbox's last successful poll
  and handshake, inbox and outbox backlog, certificate expiry and reports received;
- ``/transfers``: the list: filters (state, workflow, mailbox, direction, local id or message
  id, creation dates), sortable columns, keyset pages (100,000 rows cost what 100 do), live
  refresh of running rows (``/transfers.json?ids=``);
- ``/transfers/{id}``: one transfer: facts and headers, live progress
  (``/transfers/{id}.json``), throughput chart (SVG), chunk table (sizes, xxh3-128,
  durations), timeline of events, retries and their causes, MESH tracking for a sent message
  (fetched on the server through ``tracker``; "not configured" without one);
- ``/transfers/{id}/evidence.json``: the evidence bundle (every header, checksum and event)
  for incident tickets, as a download.

This package reads the ledger only, and does not import :mod:`meshpipe.watch`: the watch
passes its signals in (:class:`MailboxSignals`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Final

from aiohttp import web

from meshpipe.pages import setup_pages
from meshpipe.web.store import LedgerView
from meshpipe.web.views import (
    CONTEXT,
    NAV,
    MailboxSignals,
    SignalSource,
    Tracker,
    WebContext,
    routes,
)

SITE_NAME: Final = "meshpipe transfers"


def add_web_pages(
    app: web.Application,
    view: LedgerView,
    *,
    tracker: Tracker | None = None,
    signals: SignalSource | None = None,
    token: str | None = None,
    open_paths: Collection[str] = (),
) -> None:
    """Add the web view's pages to ``app`` (which must have no other :mod:`meshpipe.pages`
    set-up), reading ``view``; with ``token``, every path but ``open_paths`` needs it."""
    setup_pages(
        app, ["meshpipe.web"], site_name=SITE_NAME, nav=NAV, token=token, open_paths=open_paths
    )
    app[CONTEXT] = WebContext(view, tracker, signals)
    app.add_routes(routes())


def build_web_app(
    view: LedgerView,
    *,
    tracker: Tracker | None = None,
    signals: SignalSource | None = None,
    token: str | None = None,
) -> web.Application:
    """An application serving only the web view."""
    app = web.Application()
    add_web_pages(app, view, tracker=tracker, signals=signals, token=token)
    return app


__all__ = [
    "NAV",
    "SITE_NAME",
    "LedgerView",
    "MailboxSignals",
    "SignalSource",
    "Tracker",
    "add_web_pages",
    "build_web_app",
]
