"""LocalMeshServer: the server as an async context manager that starts on a free port.

async with LocalMeshServer(store="dir", data_dir=path, rules="sandbox") as server:
    server.url              # http://127.0.0.1:<port>, for clients on this machine
    server.bound_addresses  # what it listens on, e.g. ["0.0.0.0:8700"]
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from datetime import timedelta
from types import TracebackType
from typing import Any, Final

from aiohttp import web

from meshpipe.server.app import build_app
from meshpipe.server.authorize import Authenticator, UsedTokens
from meshpipe.server.config import Directory, ServerConfig
from meshpipe.server.connections import Connections
from meshpipe.server.faults import Fault, FaultInjector, FaultPlan
from meshpipe.server.mailroom import Mailroom
from meshpipe.server.models import Clock, Message, SyntheticSpec
from meshpipe.server.store import make_store
from meshpipe.server.storeview import PREFIX as VIEW_PREFIX
from meshpipe.server.storeview import view_access
from meshpipe.server.streaming import synthetic_checksum

log = logging.getLogger("meshpipe.server")

#: Seconds the requests still running get when the server stops.
SHUTDOWN_GRACE: Final = 2.0


class LocalMeshServer:
    """A MESH server on this machine. Pass a ServerConfig, or its fields as keyword arguments
    (``store``, ``data_dir``, ``rules``, ``shared_key``, ``tls``, ...)."""

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        faults: FaultPlan | None = None,
        clock: Clock | None = None,
        **settings: Any,
    ) -> None:
        base = config or ServerConfig()
        self.config = dataclasses.replace(base, **settings) if settings else base
        self.clock = clock or Clock()
        self.faults = FaultInjector(faults)
        self.directory = Directory(self.config.mailboxes, self.config.workflows)
        self.store = make_store(self.config.store, self.config.data_dir)
        self.mailroom = Mailroom(self.config, self.directory, self.store, self.clock)
        # Only rules with single-use tokens keep a journal (the sandbox's data directory stays
        # as the sandbox would leave it).
        journal = (
            self.store.used_tokens_journal() if self.mailroom.rules.single_use_tokens else None
        )
        self.authenticator = Authenticator(
            self.mailroom.rules,
            self.directory,
            self.clock,
            shared_key=self.config.shared_key,
            mode=self.config.auth_mode,
            used=UsedTokens(self.clock, journal),
        )
        # Built now, so a certificate that does not load is a ConfigError before listening.
        self._ssl_context = self.config.tls.server_context() if self.config.tls else None
        self.connections = Connections(self.config, self._ssl_context)
        self._runner: web.AppRunner | None = None
        self._listener: asyncio.Server | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self.port: int = self.config.port

    def __repr__(self) -> str:
        config = self.config
        return f"LocalMeshServer(url={self.url!r}, store={config.store!r}, rules={config.rules!r})"

    @property
    def url(self) -> str:
        """A URL clients on this machine connect to (a wildcard bind's loopback address)."""
        scheme = "https" if self.config.tls else "http"
        host = self.config.host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    @property
    def bound_addresses(self) -> list[str]:
        """``host:port`` of every socket the server listens on (empty until started)."""
        addresses: list[str] = []
        for sock in self._listener.sockets if self._listener is not None else ():
            host, port = sock.getsockname()[:2]
            addresses.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return addresses

    async def start(self) -> None:
        connections = self.connections
        app = build_app(self.config, self.mailroom, self.authenticator, self.faults, connections)
        # On stop, requests still running get SHUTDOWN_GRACE seconds, not aiohttp's 60: a
        # client stalled mid-upload must not hold a test rig's exit (the stores are crash-safe).
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            auto_decompress=False,
            shutdown_timeout=SHUTDOWN_GRACE,
        )
        await self._runner.setup()
        assert self._runner.server is not None
        connections.serve(self._runner.server)
        loop = asyncio.get_running_loop()
        # TLS is set up per connection (Connections), so handshakes are bounded and logged.
        self._listener = await loop.create_server(
            connections, self.config.host or None, self.config.port, backlog=512
        )
        if self._listener.sockets:
            self.port = int(self._listener.sockets[0].getsockname()[1])
        self._expiry_task = asyncio.create_task(self._expire_periodically())
        log.info(
            "meshpipe MESH server listening on %s (store %s, rules %s); clients here use %s",
            ", ".join(self.bound_addresses),
            self.config.store,
            self.config.rules,
            self.url,
        )
        self._log_admin_exposure()
        access = view_access(self.config)
        if access.refusal is not None:
            log.info("%s", access.refusal)
        else:
            needs = " (with the admin token)" if access.token is not None else ""
            log.info("store view (read-only) at %s%s/%s", self.url, VIEW_PREFIX, needs)

    def _log_admin_exposure(self) -> None:
        config = self.config
        where = ", ".join(self.bound_addresses)
        if config.admin_enabled and not config.loopback_only:
            log.warning(
                "THE ADMIN API IS REACHABLE FROM THE NETWORK on %s: whoever has the admin token "
                "can delete messages, move the clock and plan faults. Keep the token secret, "
                "or bind to 127.0.0.1, or drop --admin-api",
                where,
            )
        elif not config.admin_enabled and not config.loopback_only:
            log.info(
                "admin API off (bound to %s, reachable from the network); --admin-api with "
                "an admin token turns it on",
                where,
            )

    async def close(self) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry_task
            self._expiry_task = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.connections.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.authenticator.used.close()
        self.store.close()

    async def __aenter__(self) -> LocalMeshServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def serve_forever(self) -> None:
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.close()

    async def _expire_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.expiry_interval_seconds)
            try:
                self.mailroom.expire()
            except Exception:
                log.exception("expiry pass failed")

    # -- hooks for tests and benchmarks ---------------------------------------------------------

    def advance_clock(self, delta: timedelta) -> list[str]:
        """Move the server's clock forward and run expiry; returns the NDR ids created."""
        self.clock.advance(delta)
        return self.expire_now()

    def expire_now(self) -> list[str]:
        return [report.message_id for report in self.mailroom.expire()]

    def add_fault(self, fault: Fault) -> None:
        self.faults.add(fault)

    @property
    def fault_log(self) -> list[dict[str, Any]]:
        return self.faults.log

    def add_synthetic_message(
        self,
        recipient: str,
        size: int,
        *,
        chunk_size: int = 20 * 1024 * 1024,
        seed: int = 0,
        sender: str = "",
        workflow_id: str = "SYNTHETIC",
        subject: str = "",
        local_id: str = "",
        checksum: bool = True,
    ) -> str:
        """An accepted message of ``size`` bytes generated on download; returns its id. With
        ``checksum`` it carries meshpipe's whole-file checksum header (one pass to compute)."""
        mailbox = self.directory.get(recipient)
        if mailbox is None:
            raise ValueError(f"no mailbox {recipient!r} on this server")
        message = self.mailroom.create_synthetic(
            sender=sender.upper(),
            recipient=mailbox.mailbox_id,
            workflow_id=workflow_id,
            spec=SyntheticSpec(size, chunk_size, seed),
            subject=subject,
            local_id=local_id,
            checksum=synthetic_checksum(seed, size, chunk_size) if checksum else "",
        )
        return message.message_id

    def message(self, message_id: str) -> Message | None:
        return self.mailroom.get(message_id)
