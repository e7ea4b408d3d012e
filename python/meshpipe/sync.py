"""A blocking facade for callers without an event loop: the MESH endpoints (those safe to
repeat retried, as :class:`meshpipe.retry.RetryingClient` does) and whole-file transfers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Self, TypeVar

from typing_extensions import Buffer

from meshpipe.client import ClientSettings, MeshClient
from meshpipe.config import MeshConfig
from meshpipe.headers import SendHeaders
from meshpipe.models import Endpoint, MessageMetadata, ReportMessage, TrackingInfo
from meshpipe.retry import RetryingClient
from meshpipe.transfer import (
    ReceiveResult,
    SendResult,
    download_message,
    receive_message,
    send_file,
)

T = TypeVar("T")


class SyncMeshClient:
    """A blocking MeshClient for one mailbox. It runs its own event loop (``asyncio.Runner``);
    do not use it inside a running loop. ``run(coroutine_function)`` runs any MeshClient-based
    coroutine, e.g. ``lambda client: meshpipe.transfer.send_file(client, ...)``."""

    def __init__(self, config: MeshConfig, settings: ClientSettings | None = None) -> None:
        self._runner = asyncio.Runner()
        self.client = MeshClient(config, settings)
        self._endpoints = RetryingClient(self.client)
        self._runner.run(self.client.open())

    def __repr__(self) -> str:
        return f"Sync{self.client!r}"

    def run(self, function: Callable[[MeshClient], Coroutine[Any, Any, T]]) -> T:
        return self._runner.run(function(self.client))

    def _retried(self, function: Callable[[RetryingClient], Coroutine[Any, Any, T]]) -> T:
        return self._runner.run(function(self._endpoints))

    def close(self) -> None:
        try:
            self._runner.run(self.client.close())
        finally:
            self._runner.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def ping(self) -> dict[str, Any]:
        return self._retried(lambda endpoints: endpoints.ping())

    def handshake(self) -> None:
        self._retried(lambda endpoints: endpoints.handshake())

    def send_message(self, headers: SendHeaders, body: Buffer, **options: Any) -> str:
        """One whole message (never retried: see meshpipe.retry.post_first_chunk_safely)."""
        return self.run(lambda client: client.send_message(headers, body, **options))

    def list_inbox(self, *, workflow_filter: str | None = None) -> list[str]:
        return self._retried(
            lambda endpoints: endpoints.list_inbox(workflow_filter=workflow_filter)
        )

    def inbox_count(self) -> int:
        return self._retried(lambda endpoints: endpoints.inbox_count())

    def message_info(self, message_id: str) -> MessageMetadata | ReportMessage:
        return self._retried(lambda endpoints: endpoints.message_info(message_id))

    def download(self, message_id: str) -> tuple[MessageMetadata, bytes]:
        """A whole (small) message in memory: transfer.download_message."""
        return self.run(lambda client: download_message(client, message_id))

    def acknowledge(self, message_id: str) -> None:
        self._retried(lambda endpoints: endpoints.acknowledge(message_id))

    def track(self, message_id: str) -> TrackingInfo:
        return self._retried(lambda endpoints: endpoints.track(message_id))

    def track_local_id(self, local_id: str) -> TrackingInfo:
        return self._retried(lambda endpoints: endpoints.track_local_id(local_id))

    def lookup(self, ods_code: str, workflow_id: str) -> list[Endpoint]:
        return self._retried(lambda endpoints: endpoints.lookup(ods_code, workflow_id))

    def send_file(
        self, source: str | os.PathLike[str], headers: SendHeaders, **options: Any
    ) -> SendResult:
        """transfer.send_file, blocking: the headers and its other options."""
        return self.run(lambda client: send_file(client, source, headers, **options))

    def receive_message(
        self, message_id: str, destination: str | os.PathLike[str], **options: Any
    ) -> ReceiveResult:
        """transfer.receive_message, blocking."""
        return self.run(lambda client: receive_message(client, message_id, destination, **options))
