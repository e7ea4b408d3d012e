"""A fault-injecting HTTP proxy in front of mesh-sandbox, for retry, ordering and concurrency
tests. Each request is matched against rules; a rule may answer with a status, drop the response
after forwarding (an ambiguous failure), corrupt a response body, or hold requests until a
number of them are in flight together (to prove concurrency without timing anything)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import aiohttp
from aiohttp import web

from meshpipe.units import MiB
from tests.peers import free_port


@dataclass
class Rule:
    method: str
    path: str  # a regular expression matched against the path
    action: str  # "status", "drop_after", "corrupt", "gather"
    times: int = 1
    status: int = 503
    gather: int = 0  # for "gather": hold until this many matching requests are in flight
    gather_timeout: float = 20.0
    hits: int = 0

    def matches(self, request: web.Request) -> bool:
        return (
            self.times > 0
            and request.method == self.method
            and re.fullmatch(self.path, request.path) is not None
        )


@dataclass
class Seen:
    method: str
    path: str
    status: int
    chunk_range: str | None


_CHUNK_POST = re.compile(r"/messageexchange/[^/]+/outbox/[^/]+/\d+")


@dataclass
class Event:
    kind: str  # "start" or "end"
    method: str
    path: str
    chunk_range: str | None
    authorization: str | None = None


@dataclass
class FaultProxy:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: dict[str, int] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    on_request: Callable[[web.Request], None] | None = None

    def __post_init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._gathers: dict[int, asyncio.Event] = {}
        self._waiting: dict[int, int] = {}
        self._changed = asyncio.Event()

    def _note(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds (checked after every request starts or ends)."""
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    def add(self, rule: Rule) -> Rule:
        self.rules.append(rule)
        return rule

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=200 * MiB)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for event in self._gathers.values():  # release held requests
            event.set()
        await self._runner.cleanup()
        await self._session.close()

    def _take(self, request: web.Request) -> Rule | None:
        for rule in self.rules:
            if rule.matches(request):
                rule.times -= 1
                rule.hits += 1
                return rule
        return None

    async def _gather(self, rule: Rule) -> None:
        key = id(rule)
        event = self._gathers.setdefault(key, asyncio.Event())
        self._waiting[key] = self._waiting.get(key, 0) + 1
        if self._waiting[key] >= rule.gather:
            event.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), rule.gather_timeout)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST" and _CHUNK_POST.fullmatch(request.path):
            kind = "chunk upload"
        else:
            kind = f"{request.method} {re.sub(r'/[0-9A-F]{32}', '/{id}', request.path)}"
        chunk_range = request.headers.get("mex-Chunk-Range")
        self._note(
            Event(
                "start",
                request.method,
                request.path,
                chunk_range,
                request.headers.get("Authorization"),
            )
        )
        self.in_flight[kind] = self.in_flight.get(kind, 0) + 1
        self.max_in_flight[kind] = max(self.max_in_flight.get(kind, 0), self.in_flight[kind])
        try:
            return await self._forward(request)
        finally:
            self.in_flight[kind] -= 1
            self._note(Event("end", request.method, request.path, chunk_range))

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        rule = self._take(request)
        body = await request.read()
        chunk_range = request.headers.get("mex-Chunk-Range")
        if rule is not None and rule.action == "status":
            self.seen.append(Seen(request.method, request.path, rule.status, chunk_range))
            return web.Response(status=rule.status, text="injected fault")
        if rule is not None and rule.action == "gather":
            await self._gather(rule)
        headers = {
            key: value
            for key, value in request.headers.items()
            if key.lower() not in ("host", "content-length", "transfer-encoding")
        }
        async with self._session.request(
            request.method,
            f"{self.upstream}{request.path_qs}",
            headers=headers,
            data=body if body else None,
        ) as upstream:
            payload = await upstream.read()
            status = upstream.status
            response_headers = {
                key: value
                for key, value in upstream.headers.items()
                if key.lower()
                not in ("content-length", "transfer-encoding", "connection", "date", "server")
            }
        self.seen.append(Seen(request.method, request.path, status, chunk_range))
        if rule is not None and rule.action == "drop_after":
            # The upstream did the work; the client sees the connection die.
            assert request.transport is not None
            request.transport.close()
            raise ConnectionResetError("dropped by FaultProxy")
        if rule is not None and rule.action == "corrupt" and payload:
            middle = len(payload) // 2
            payload = payload[:middle] + bytes([payload[middle] ^ 0xFF]) + payload[middle + 1 :]
        response = web.Response(status=status, body=payload, headers=response_headers)
        if request.method == "HEAD":
            response = web.Response(status=status, headers=response_headers)
        return response
