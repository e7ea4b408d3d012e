"""The web pages' common base: templates, static files, security headers and access.

:func:`setup_pages` readies an :class:`aiohttp.web.Application` for server-rendered pages:

- a Jinja2 environment (through aiohttp-jinja2) with autoescaping always on and
  ``StrictUndefined``; templates are named ``PACKAGE/NAME.html``: ``pages/base.html`` (the
  shared frame: navigation, a ``title`` block, a ``content`` block, a footer) and the
  templates of each package given (``meshpipe.web`` → ``web/...``), read from the package's
  ``templates`` folder; the filters of :mod:`meshpipe.pages.format` (``size``, ``rate``,
  ``duration``, ``time``);
- ``/static/``: ``pages.css`` and ``pages.js`` (live refresh: an element with
  ``data-refresh="/path.json"`` is polled every ``data-refresh-every`` seconds, 2 by default,
  and the JSON's ``fields`` fill its ``data-field`` descendants; ``"done": true`` stops the
  polling, ``"reload": true`` reloads the page; a form with ``data-autosubmit`` is sent when a
  field changes). Sorting and filtering work without script: links and GET forms;
- on every response the headers of :data:`SECURITY_HEADERS`: a Content-Security-Policy that
  allows only this origin's script and style (no inline script or style anywhere), no
  framing, no referrer, no caching;
- with a token (see :mod:`meshpipe.pages.access`), the token check on every page but
  ``open_paths``.

Render with :func:`render` (``aiohttp_jinja2.render_template``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp_jinja2
import jinja2
from aiohttp import web

from meshpipe.pages.access import require_token, token_middleware
from meshpipe.pages.format import FILTERS

STATIC: Final = Path(__file__).resolve().parent / "static"
STATIC_PREFIX: Final = "/static"

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

SITE: Final = web.AppKey[dict[str, Any]]("pages_site")


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


async def _site_context(request: web.Request) -> dict[str, Any]:
    site = request.app[SITE]
    return {**site, "path": request.path}


def setup_pages(
    app: web.Application,
    packages: Sequence[str],
    *,
    site_name: str,
    nav: Sequence[tuple[str, str]],
    token: str | None = None,
    open_paths: Collection[str] = (),
) -> jinja2.Environment:
    """Ready ``app`` for the pages of ``packages`` (each with a ``templates`` folder), titled
    ``site_name``, with ``nav`` (label, path) links in every page's header; returns the Jinja
    environment. With ``token``, every path but ``open_paths`` needs it."""
    loaders: dict[str, jinja2.BaseLoader] = {"pages": jinja2.PackageLoader("meshpipe.pages")}
    for package in packages:
        loaders[package.rpartition(".")[2]] = jinja2.PackageLoader(package)
    environment = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PrefixLoader(loaders),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        context_processors=[_site_context],
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(FILTERS)
    app[aiohttp_jinja2.static_root_key] = STATIC_PREFIX
    site: dict[str, Any] = {"site_name": site_name, "nav": list(nav)}
    app[SITE] = site
    app.router.add_static(STATIC_PREFIX, STATIC, name="static", append_version=False)
    app.on_response_prepare.append(_security_headers)
    if token is not None:
        app.middlewares.append(token_middleware(token, frozenset(open_paths)))
    return environment


def render(
    template: str, request: web.Request, context: dict[str, Any], *, status: int = 200
) -> web.Response:
    """The page ``template`` rendered with ``context`` (plus the site's names and the path)."""
    return aiohttp_jinja2.render_template(template, request, context, status=status)


__all__ = [
    "CONTENT_SECURITY_POLICY",
    "SECURITY_HEADERS",
    "STATIC",
    "render",
    "require_token",
    "setup_pages",
]
