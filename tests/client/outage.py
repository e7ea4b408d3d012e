"""Servers that misbehave at the connection level, for the retry-budget and timeout tests.

:class:`OutageGate` is a TCP relay in front of a real server that can be taken down (nothing
listens on its port, so connections are refused, and the live ones are cut) and brought back on
the same port: a server restart as a client sees it. :class:`SilentServer` accepts connections
and never answers. :class:`RetryLog` counts meshpipe's retry log lines, so a test waits for
"the client has retried N times" instead of for a length of time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from tests.peers import free_port


class OutageGate:
    """A relay on its own port to ``upstream`` (``http://host:port``); up once entered."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname is not None and parts.port is not None
        self._upstream = (parts.hostname, parts.port)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()

    async def __aenter__(self) -> Self:
        await self.up()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.down()

    @property
    def is_up(self) -> bool:
        return self._server is not None

    async def up(self) -> None:
        """Listen again, on the same port."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._relay, "127.0.0.1", self.port, reuse_address=True
            )

    async def down(self) -> None:
        """Stop listening and cut every connection, as a server that stops does."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._transports.add(writer.transport)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self._transports.add(upstream_writer.transport)
        await asyncio.gather(
            _pipe(reader, upstream_writer), _pipe(upstream_reader, writer), return_exceptions=True
        )
        for side in (writer, upstream_writer):
            self._transports.discard(side.transport)
            side.transport.abort()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(256 * 1024):
            sink.write(data)
            await sink.drain()
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            sink.write_eof()


class SilentServer:
    """Accepts connections, reads what comes, and never answers (until closed)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._hold, "127.0.0.1", self.port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._release.set()
        if self._server is not None:
            self._server.close()

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        reading = asyncio.ensure_future(_drain(reader))
        await self._release.wait()
        reading.cancel()
        writer.transport.abort()


async def _drain(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


class RetryLog(logging.Handler):
    """Counts the "try N in S s" lines of meshpipe.retry; ``reached(n)`` waits for n of them.
    Installed on the logger while used as a context manager (in the event loop's thread)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.retries = 0
        self.gave_up: list[str] = []
        self._changed = asyncio.Event()
        self._logger = logging.getLogger("meshpipe.retry")

    def __enter__(self) -> Self:
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "giving up" in message:
            self.gave_up.append(message)
        elif "; try " in message:
            self.retries += 1
        self._changed.set()

    async def reached(self, count: int) -> None:
        while self.retries < count:
            self._changed.clear()
            await self._changed.wait()
