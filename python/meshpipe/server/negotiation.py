"""Content negotiation: which MESH API version a request asks for (its ``Accept`` header), and
JSON responses with that version's media type."""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

V1_MEDIA_TYPE = "application/json"
V2_MEDIA_TYPE = "application/vnd.mesh.v2+json"
_ACCEPT_VERSION = re.compile(r"^application/vnd\.mesh\.v(\d+)\+json$")


class AcceptHeaderError(ValueError):
    pass


def api_version(accept: str | None) -> int:
    """1 or ≥2, as mesh-sandbox reads Accept: parts split on ';', the first naming vnd.mesh
    decides; a malformed one (e.g. a comma-separated list) is an error (400)."""
    if not accept:
        return 1
    for part in accept.split(";"):
        part = part.strip()
        if not part or "vnd.mesh" not in part:
            continue
        match = _ACCEPT_VERSION.match(part)
        if not match:
            raise AcceptHeaderError("Accept header api format incorrect")
        return int(match.group(1))
    return 1


def api_version_or_1(request: web.Request) -> int:
    """The version a request asks for, or 1 when its Accept header is malformed (the version an
    answer about that malformed header is given in)."""
    try:
        return api_version(request.headers.get("Accept"))
    except AcceptHeaderError:
        return 1


def dumps(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"))


def json_response(
    body: Any,
    *,
    status: int = 200,
    version: int = 1,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """JSON with the MESH media type for ``version`` (no charset parameter, like the sandbox)."""
    media = V2_MEDIA_TYPE if version >= 2 else V1_MEDIA_TYPE
    all_headers = {**(headers or {}), "Content-Type": media}
    return web.Response(status=status, body=dumps(body).encode(), headers=all_headers)


def empty_response(status: int = 200) -> web.Response:
    return web.Response(status=status)
