"""Run a LocalMeshServer on its own event loop in a background thread, for synchronous code
(pytest suites written for mesh-sandbox, NHS's mesh-client, scripts).

    with run_in_thread(rules="sandbox", shared_key="TestKey") as server:
        client = MeshClient(server.url, ...)
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from meshpipe.server.local_server import LocalMeshServer

T = TypeVar("T")


class ServerThread:
    def __init__(self, server: LocalMeshServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="meshpipe-serve", daemon=True
        )

    def start(self) -> LocalMeshServer:
        self._thread.start()
        self.call(self.server.start())
        return self.server

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def run(self, function: Callable[[], T], timeout: float = 60.0) -> T:
        """Run a plain function on the server's loop thread (for state changes)."""

        async def wrapper() -> T:
            return function()

        return self.call(wrapper(), timeout)

    def stop(self) -> None:
        try:
            self.call(self.server.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
            self._loop.close()


@contextlib.contextmanager
def run_in_thread(
    server: LocalMeshServer | None = None, **settings: Any
) -> Iterator[LocalMeshServer]:
    thread = ServerThread(server or LocalMeshServer(**settings))
    running = thread.start()
    try:
        yield running
    finally:
        thread.stop()
