"""When and how a MESH request is tried again: every retry of meshpipe runs through
:func:`call_with_retry` (exponential backoff with full jitter, :class:`RetryPolicy`).

Retried: connection errors and timeouts, the transient statuses 425, 429, 502, 503, 504 and
other 5xx (the errors' own ``retryable``), and only for idempotent requests (GET, HEAD, PUT
acknowledge, handshake, chunk n ≥ 2, which overwrites). Never retried: any other 4xx, and
chunk 1 of a message (``POST /outbox``) after an ambiguous failure unless MESH is first asked
whether the message already exists (:func:`post_first_chunk_safely`): re-posting chunk 1
creates a second message. :class:`RetryingClient` offers the endpoints that are safe to repeat,
each retried; :class:`meshpipe.client.MeshClient` itself never retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from meshpipe.client import MeshClient
from meshpipe.config import RetryPolicy
from meshpipe.errors import MeshConnectionError, MeshDuplicateRiskError, MeshHTTPError
from meshpipe.models import Endpoint, MessageMetadata, ReportMessage, RichMessage, TrackingInfo

log = logging.getLogger("meshpipe.retry")

T = TypeVar("T")

_REQUEST_ERRORS = (MeshConnectionError, MeshHTTPError)


def is_retryable(error: BaseException, *, idempotent: bool) -> bool:
    """Whether a failed request may be sent again: only an idempotent one, and only after an
    error that says so (MeshConnectionError, MeshHTTPError.retryable)."""
    return idempotent and isinstance(error, _REQUEST_ERRORS) and error.retryable


async def call_with_retry(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    idempotent: bool,
    what: str,
    also: tuple[type[Exception], ...] = (),
) -> T:
    """Run ``operation`` until it succeeds, a non-retryable error occurs or tries run out.

    ``also``: further error types tried again (e.g. a chunk that failed verification).
    ``CancelledError`` is never caught; the last error propagates unchanged.
    """
    caught: tuple[type[Exception], ...] = (*_REQUEST_ERRORS, *also)
    attempt = 1
    while True:
        try:
            return await operation()
        except caught as error:
            retryable = isinstance(error, also) or is_retryable(error, idempotent=idempotent)
            if attempt >= policy.attempts or not retryable:
                raise
            attempt += 1
            wait = policy.delay_after(attempt, error)
            if wait is None:
                raise
            log.warning("%s failed (%s); try %d in %.2fs", what, error, attempt, wait)
            await asyncio.sleep(wait)


class _FirstChunkPost:
    """One try of chunk 1: after an ambiguous failure of the previous try, MESH is asked first
    whether the message exists (and then it is not posted again)."""

    def __init__(
        self,
        post: Callable[[], Awaitable[str]],
        find_existing: Callable[[], Awaitable[str | None]],
        local_id: str,
    ) -> None:
        self._post = post
        self._find_existing = find_existing
        self._local_id = local_id
        self._ambiguous: BaseException | None = None

    async def __call__(self) -> str:
        failure, self._ambiguous = self._ambiguous, None
        if failure is not None:
            existing = await self._look_up(failure)
            if existing is not None:
                return existing
            log.warning("chunk 1 failed (%s) and MESH has no such message: re-sending", failure)
        try:
            return await self._post()
        except _REQUEST_ERRORS as error:
            # 425 and 429 are MESH refusing the request: nothing was stored.
            refused = isinstance(error, MeshHTTPError) and error.status in (425, 429)
            if error.retryable and not refused:
                self._ambiguous = error
            raise

    async def _look_up(self, failure: BaseException) -> str | None:
        try:
            existing = await self._find_existing()
        except _REQUEST_ERRORS as lookup_error:
            raise MeshDuplicateRiskError(
                f"sending chunk 1 failed ({failure}) and MESH could not be asked whether the "
                f"message with local id {self._local_id!r} was created ({lookup_error}); nothing "
                "was re-sent. Check with `meshpipe track` before sending again.",
                local_id=self._local_id,
            ) from failure
        if existing is not None:
            log.warning(
                "chunk 1 failed ambiguously (%s) but MESH holds message %s with local id %r: "
                "continuing with it",
                failure,
                existing,
                self._local_id,
            )
        return existing


async def post_first_chunk_safely(
    post: Callable[[], Awaitable[str]],
    find_existing: Callable[[], Awaitable[str | None]],
    policy: RetryPolicy,
    *,
    local_id: str,
) -> str:
    """Send chunk 1 (which creates the message) without ever creating a duplicate.

    After an ambiguous failure (the connection broke or timed out, a gateway or server status),
    ``find_existing`` asks MESH (rich outbox, then tracking by local id) for a message with
    ``local_id``: if there is one, its id is returned and nothing is re-posted; if MESH says
    there is none, chunk 1 is posted again; if MESH cannot tell, MeshDuplicateRiskError is
    raised. A 429 or 425 is never ambiguous (MESH refused it) and is simply retried.
    """
    first = _FirstChunkPost(post, find_existing, local_id)
    return await call_with_retry(first, policy, idempotent=True, what="chunk 1")


class RetryingClient:
    """The endpoints of one :class:`MeshClient` that are safe to repeat, each retried under
    the client's retry policy (``client.settings.retry``). Sending is not here: chunk 1 goes
    through :func:`post_first_chunk_safely`, chunks 2..N through the transfer layer."""

    def __init__(self, client: MeshClient, policy: RetryPolicy | None = None) -> None:
        self.client = client
        self.policy = policy or client.settings.retry

    def __repr__(self) -> str:
        return f"Retrying{self.client!r}"

    async def _retried(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        return await call_with_retry(operation, self.policy, idempotent=True, what=what)

    async def ping(self) -> dict[str, Any]:
        return await self._retried("ping", self.client.ping)

    async def handshake(self) -> None:
        await self._retried("handshake", self.client.handshake)

    async def list_inbox(self, *, workflow_filter: str | None = None) -> list[str]:
        return await self._retried(
            "inbox listing", lambda: self.client.list_inbox(workflow_filter=workflow_filter)
        )

    async def inbox_count(self) -> int:
        return await self._retried("inbox count", self.client.inbox_count)

    async def head(self, message_id: str) -> MessageMetadata:
        return await self._retried(
            f"HEAD message {message_id}", lambda: self.client.head(message_id)
        )

    async def message_info(self, message_id: str) -> MessageMetadata | ReportMessage:
        return await self._retried(
            f"HEAD message {message_id}", lambda: self.client.message_info(message_id)
        )

    async def acknowledge(self, message_id: str) -> None:
        await self._retried(
            f"acknowledge {message_id}", lambda: self.client.acknowledge(message_id)
        )

    async def track(self, message_id: str) -> TrackingInfo:
        return await self._retried(f"track {message_id}", lambda: self.client.track(message_id))

    async def track_local_id(self, local_id: str) -> TrackingInfo:
        return await self._retried(
            f"track local id {local_id}", lambda: self.client.track_local_id(local_id)
        )

    async def lookup(self, ods_code: str, workflow_id: str) -> list[Endpoint]:
        return await self._retried(
            "endpoint lookup", lambda: self.client.lookup(ods_code, workflow_id)
        )

    async def workflow_search(self, workflow_id: str) -> list[Endpoint]:
        return await self._retried(
            "workflow search", lambda: self.client.workflow_search(workflow_id)
        )

    async def outbox_rich(
        self, *, start_time: datetime | None = None, max_pages: int | None = None
    ) -> list[RichMessage]:
        return await self._retried(
            "outbox listing",
            lambda: self.client.outbox_rich(start_time=start_time, max_pages=max_pages),
        )


__all__ = [
    "RetryPolicy",
    "RetryingClient",
    "call_with_retry",
    "is_retryable",
    "post_first_chunk_safely",
]
