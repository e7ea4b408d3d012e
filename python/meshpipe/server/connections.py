"""The server's connections: how many may be open, how long a client may take to send a
request, and TLS handshakes that are refused, each logged with the peer's address.

Every accepted connection gets a :class:`GuardedConnection`, the protocol between the socket
and aiohttp's request handler:

* at most ``max_connections`` are open at once; one more is answered 503 (plain HTTP) or closed
  (TLS) at once, and the first refusal after a quiet spell is logged;
* TLS is set up here (``loop.start_tls``) rather than by the listener, so a refused handshake
  is logged with the peer and the reason (asyncio itself reports it only in debug mode), and a
  handshake may take at most ``header_timeout_seconds``;
* a request head (request line and headers) must arrive within ``header_timeout_seconds`` of
  the connection opening or of the previous answer: an idle connection is then closed, a
  half-sent request head answered 408 and closed;
* a request body may pause for at most ``body_timeout_seconds``, and must average
  ``min_body_rate`` bytes a second: each byte received moves the deadline 1/rate seconds on, to
  at most ``body_timeout_seconds`` from now. Time the server itself holds the body back (its
  buffer full while it decodes or writes) is not counted: the first check that finds the
  server reading again gives the client a whole ``body_timeout_seconds``. Past the
  deadline: 408 and closed.

The phases come from :meth:`Connections.middleware`, which marks when a request's head has
been parsed (the handler starts) and when its answer is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Middleware

from meshpipe.server.config import ServerConfig

log = logging.getLogger("meshpipe.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Phase = Literal["handshake", "head", "body", "handling", "closed"]


def _answer(status: int, reason: str, text: str, *, retry_after: int | None = None) -> bytes:
    """A whole HTTP/1.1 response that closes the connection (written before or instead of
    aiohttp's own)."""
    body = json.dumps({"message": text}).encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after is not None:
        lines.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = f"[{peer[0]}]" if ":" in str(peer[0]) else str(peer[0])
        return f"{host}:{peer[1]}"
    return str(peer or "unknown peer")


def handshake_failure(exc: BaseException) -> str:
    """Why a TLS handshake failed, in a few words (OpenSSL's reason where it gives one)."""
    reason = getattr(exc, "reason", None)
    if isinstance(exc, ssl.SSLError) and reason:
        return f"{reason} ({exc.__class__.__name__})"
    return str(exc) or exc.__class__.__name__


class Connections:
    """The open connections of one server; call it for the protocol of a new connection."""

    def __init__(self, config: ServerConfig, ssl_context: ssl.SSLContext | None) -> None:
        self.config = config
        self.ssl_context = ssl_context
        self.open: set[GuardedConnection] = set()
        #: connections refused because ``max_connections`` were open
        self.refused = 0
        self._factory: Callable[[], asyncio.Protocol] | None = None
        self._by_handler: dict[object, GuardedConnection] = {}
        self._at_cap = False

    def __call__(self) -> asyncio.Protocol:
        return GuardedConnection(self)

    def serve(self, handler_factory: Callable[[], asyncio.Protocol]) -> None:
        """Hand established connections to ``handler_factory`` (aiohttp's ``runner.server``)."""
        self._factory = handler_factory

    def new_handler(self) -> asyncio.Protocol:
        assert self._factory is not None, "Connections.serve() first"
        return self._factory()

    def admit(self, connection: GuardedConnection) -> bool:
        if len(self.open) >= self.config.max_connections:
            self.refused += 1
            if not self._at_cap:
                self._at_cap = True
                log.warning(
                    "%d connections open (the cap, --max-connections): refusing new ones "
                    "with 503 until some close",
                    len(self.open),
                )
            return False
        self.open.add(connection)
        return True

    def attach(self, handler: object, connection: GuardedConnection) -> None:
        self._by_handler[handler] = connection

    def forget(self, connection: GuardedConnection) -> None:
        self.open.discard(connection)
        if connection.handler is not None:
            self._by_handler.pop(connection.handler, None)
        if self._at_cap and len(self.open) < self.config.max_connections:
            self._at_cap = False
            log.info("below the connection cap again (%d refused so far)", self.refused)

    def close(self) -> None:
        """Abort every connection still in its TLS handshake (aiohttp closes the others)."""
        for connection in list(self.open):
            connection.abort_handshake()

    def middleware(self) -> Middleware:
        """Tells each connection when its request's head has arrived and its answer is done."""

        @web.middleware
        async def phases(request: web.Request, handler: Handler) -> web.StreamResponse:
            connection = self._by_handler.get(request.protocol)
            if connection is None:
                return await handler(request)
            connection.request_started(request)
            try:
                return await handler(request)
            finally:
                connection.request_finished()

        return phases


class GuardedConnection(asyncio.Protocol):
    """One connection: the time limits of its current phase, in front of aiohttp's handler."""

    def __init__(self, owner: Connections) -> None:
        self._owner = owner
        self._config = owner.config
        self._loop = asyncio.get_running_loop()
        self.handler: asyncio.Protocol | None = None
        self.phase: Phase = "handshake"
        self.peer = "unknown peer"
        self._raw: asyncio.Transport | None = None
        self._transport: asyncio.Transport | None = None
        self._handshake: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0
        self._received = False  # bytes of a request head arrived in this phase
        self._held = False  # a check found the server holding the body back
        self._request: web.Request | None = None
        self._early: list[bytes] = []
        self._early_eof = False

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._raw = transport
        self.peer = _peer(transport)
        if not self._owner.admit(self):
            self.phase = "closed"
            if self._owner.ssl_context is None:
                transport.write(
                    _answer(
                        503,
                        "Service Unavailable",
                        "Too many connections are open; try again shortly",
                        retry_after=1,
                    )
                )
            transport.close()
            return
        if self._owner.ssl_context is None:
            self._begin(transport)
            return
        transport.pause_reading()
        self._handshake = asyncio.ensure_future(self._start_tls(transport))

    def data_received(self, data: bytes) -> None:
        if self.handler is None:
            self._early.append(data)  # decrypted before the handshake's waiter resumed
            return
        if self.phase == "head" and data:
            self._received = True
        elif self.phase == "body":
            self._extend_body_deadline(len(data))
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        if self.handler is None:
            self._early_eof = True
            return None
        return self.handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.phase = "closed"
        self._cancel_timer()
        self._owner.forget(self)
        if self.handler is not None:
            self.handler.connection_lost(exc)
        if self._handshake is not None and not self._handshake.done():
            self._handshake.cancel()

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    # -- TLS ---------------------------------------------------------------------------------

    async def _start_tls(self, raw: asyncio.Transport) -> None:
        context = self._owner.ssl_context
        assert context is not None
        try:
            transport = await self._loop.start_tls(
                raw,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self._config.header_timeout_seconds,
            )
        except asyncio.CancelledError:
            raw.abort()
            self._owner.forget(self)
            raise
        except (OSError, ssl.SSLError, ConnectionError, TimeoutError) as exc:
            if isinstance(exc, ssl.SSLError):
                log.warning("TLS handshake from %s refused: %s", self.peer, handshake_failure(exc))
            else:  # a timeout, or the peer went away
                log.info("TLS handshake from %s failed: %s", self.peer, handshake_failure(exc))
            raw.abort()
            self._owner.forget(self)
            return
        if transport is None or self.phase == "closed":
            self._owner.forget(self)
            return
        self._begin(transport)

    def abort_handshake(self) -> None:
        if self._handshake is not None and not self._handshake.done() and self._raw is not None:
            self._raw.abort()

    # -- phases --------------------------------------------------------------------------------

    def _begin(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.handler = self._owner.new_handler()
        self._owner.attach(self.handler, self)
        self.handler.connection_made(transport)
        self._await_head()
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)
        if self._early_eof:
            self.handler.eof_received()

    def _await_head(self) -> None:
        self.phase = "head"
        self._received = False
        self._request = None
        self._set_timer(self._loop.time() + self._config.header_timeout_seconds)

    def request_started(self, request: web.Request) -> None:
        self._cancel_timer()
        self._request = request
        if request.body_exists and not request.content.is_eof():
            self.phase = "body"
            self._held = False
            self._set_timer(self._loop.time() + self._config.body_timeout_seconds)
        else:
            self.phase = "handling"

    def request_finished(self) -> None:
        if self.phase != "closed":
            self._await_head()

    def _extend_body_deadline(self, size: int) -> None:
        now = self._loop.time()
        rate = self._config.min_body_rate
        longest = now + self._config.body_timeout_seconds
        self._deadline = min(self._deadline + size / rate, longest) if rate else longest

    def _set_timer(self, deadline: float) -> None:
        self._cancel_timer()
        self._deadline = deadline
        self._timer = self._loop.call_at(deadline, self._check)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        now = self._loop.time()
        if self.phase == "head":
            if self._received:
                self._close_slow(
                    "no whole request head",
                    f"{self._config.header_timeout_seconds:g} s allowed, --header-timeout",
                )
            else:
                self._close(None)  # idle: closed without a word
            return
        if self.phase != "body":
            return
        request = self._request
        if request is None or request.content.is_eof():
            self.phase = "handling"
            return
        transport = self._transport
        if transport is not None and not transport.is_reading():
            # The server holds the body back (its buffer is full): not the client's time.
            self._held = True
            self._set_timer(now + self._config.body_timeout_seconds)
            return
        if self._held:
            # The server let the body go again since the last check, perhaps only just: the
            # client's pause is counted from now, not from when the hold began.
            self._held = False
            self._set_timer(now + self._config.body_timeout_seconds)
            return
        if now < self._deadline:
            self._set_timer(self._deadline)
            return
        config = self._config
        self._close_slow(
            "request body too slow",
            f"pauses up to {config.body_timeout_seconds:g} s, --body-timeout; at least "
            f"{config.min_body_rate} bytes/s, --min-body-rate",
        )

    def _close_slow(self, what: str, allowed: str) -> None:
        log.info("closed the connection from %s: %s (%s)", self.peer, what, allowed)
        text = f"Request timeout: {what} within the time allowed; the connection is closed"
        self._close(_answer(408, "Request Timeout", text))

    def _close(self, answer: bytes | None) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if answer is not None:
            with contextlib.suppress(RuntimeError, OSError):
                transport.write(answer)
        transport.close()

    def __repr__(self) -> str:
        return f"GuardedConnection(peer={self.peer!r}, phase={self.phase!r})"
