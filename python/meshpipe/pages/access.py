"""Who may open the pages: anyone on a loopback address, anyone else only with the token.

A site bound to an address that is not loopback must be given a token (:func:`load_token`:
``--token-file``, else ``$MESHPIPE_WEB_TOKEN``); :func:`require_token` refuses to start without
one. With a token, every page but the open ones (``/healthz``...) needs it:

- ``Authorization: Bearer TOKEN`` (scripts), or
- ``?token=TOKEN`` once (a browser): the answer is a redirect to the same address without
  the token, setting an HttpOnly, SameSite=Strict cookie that carries a digest of it.

Comparisons are constant-time (:func:`hmac.compare_digest`). The token is never in a page, a
log line, an error message or a redirect; the cookie holds an HMAC of it, not the token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from meshpipe.errors import ConfigError

ENV_TOKEN: Final = "MESHPIPE_WEB_TOKEN"
COOKIE: Final = "meshpipe_web"
MIN_TOKEN_LENGTH: Final = 16

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def load_token(token_file: str | os.PathLike[str] | None) -> str | None:
    """The token from ``token_file`` (its first line), else ``$MESHPIPE_WEB_TOKEN``, else
    None. ConfigError for an unreadable file or a token shorter than 16 characters."""
    if token_file is not None:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(
                f"web token: cannot read --token-file {os.fspath(token_file)!r} "
                f"({getattr(error, 'strerror', None) or error}); give a readable UTF-8 file "
                "whose first line is the token"
            ) from None
        lines = text.splitlines()
        token = lines[0].strip() if lines else ""
        source = f"--token-file {os.fspath(token_file)!r}"
    else:
        token = os.environ.get(ENV_TOKEN, "").strip()
        source = f"${ENV_TOKEN}"
        if not token:
            return None
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"web token: the token in {source} is shorter than {MIN_TOKEN_LENGTH} characters; "
            "make a long random one: python -c 'import secrets; print(secrets.token_urlsafe())'"
        )
    return token


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for anything
    else, including ``""`` and ``0.0.0.0`` (every interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def require_token(host: str, token: str | None) -> None:
    """Refuse (ConfigError) to serve pages on ``host`` when it is not loopback and there is no
    token."""
    if token is None and not is_loopback_host(host):
        raise ConfigError(
            f"web pages: listen host {host!r} is not a loopback address and no token is set: "
            "anyone who can reach the port would read every transfer. Give --token-file FILE "
            f"(or set ${ENV_TOKEN}), or listen on 127.0.0.1"
        )


def _cookie_value(token: str) -> str:
    return hmac.new(token.encode(), b"meshpipe web session", hashlib.sha256).hexdigest()


_BEARER: Final = "bearer "


def bearer_matches(header: str | None, token: str) -> bool:
    """Whether an Authorization header is ``Bearer <token>`` (the scheme in any case, as
    HTTP has it; the comparison takes the same time wherever the first difference is)."""
    value = (header or "").strip()
    given = value[len(_BEARER) :].strip() if value.lower().startswith(_BEARER) else ""
    return hmac.compare_digest(given.encode(), token.encode())


def token_middleware(token: str, open_paths: Collection[str] = ()) -> Middleware:
    """A middleware that answers 401 to a request without ``token`` (see the module's text),
    except for ``open_paths``."""
    cookie = _cookie_value(token)
    expected = token.encode()

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_paths:
            return await handler(request)
        if bearer_matches(request.headers.get("Authorization"), token):
            return await handler(request)
        if hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), cookie.encode()):
            return await handler(request)
        if "token" in request.query and hmac.compare_digest(
            request.query["token"].encode(), expected
        ):
            query = request.url.query.copy()
            query.popall("token")
            # never "//host...": a path-relative address on this site only
            target = "/" + str(request.rel_url.with_query(query)).lstrip("/")
            found = web.HTTPSeeOther(location=target)
            found.set_cookie(
                COOKIE, cookie, httponly=True, samesite="Strict", path="/", secure=request.secure
            )
            raise found
        raise web.HTTPUnauthorized(
            text="401: this page needs the web token: open it once with ?token=TOKEN, or send "
            "Authorization: Bearer TOKEN\n",
            headers={"WWW-Authenticate": 'Bearer realm="meshpipe"'},
        )

    return check_token


__all__ = [
    "COOKIE",
    "ENV_TOKEN",
    "bearer_matches",
    "is_loopback_host",
    "load_token",
    "require_token",
    "token_middleware",
]
