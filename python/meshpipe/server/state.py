"""What every handler shares, and the small helpers they use to refuse a request."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from meshpipe.server.authorize import Authenticator
from meshpipe.server.config import Directory, ServerConfig
from meshpipe.server.faults import FaultInjector, Firing
from meshpipe.server.mailroom import Mailroom
from meshpipe.server.models import Clock

STATE_KEY = web.AppKey("meshpipe_state", object)
FIRINGS = web.RequestKey("meshpipe_faults", list[Firing])


class Refusal(Exception):
    """Raised by a handler with the response to send instead (an error answer)."""

    def __init__(self, response: web.StreamResponse) -> None:
        super().__init__(response.status)
        self.response = response


@dataclass
class ServerState:
    config: ServerConfig
    directory: Directory
    mailroom: Mailroom
    authenticator: Authenticator
    faults: FaultInjector
    clock: Clock


def firings(request: web.Request, kind: str) -> list[Firing]:
    fired = request.get(FIRINGS, [])
    return [f for f in fired if f.fault.kind == kind]
