"""When and how a MESH request is tried again: every retry of meshpipe runs through
:func:`call_with_retry` (capped exponential backoff with full jitter, within a time budget:
:class:`RetryPolicy`; by default tries go on for 120 s after the first failure, so a 60 s
server restart is ridden out).

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
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol, TypeVar

from meshpipe.client import MeshClient
from meshpipe.config import RetryPolicy
from meshpipe.errors import MeshConnectionError, MeshDuplicateRiskError, MeshHTTPError
from meshpipe.models import Endpoint, MessageMetadata, ReportMessage, RichMessage, TrackingInfo

log = logging.getLogger("meshpipe.retry")

T = TypeVar("T")

_REQUEST_ERRORS = (MeshConnectionError, MeshHTTPError)


class RetryClock(Protocol):
    """Where :func:`call_with_retry` reads the time and waits (a test can pass a virtual one)."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


_CLOCK = MonotonicClock()


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
    also_attempts: int | None = None,
    also_when: Callable[[Exception], bool] | None = None,
    clock: RetryClock = _CLOCK,
) -> T:
    """Run ``operation`` until it succeeds, a non-retryable error occurs, or the policy's
    budget (seconds since the first failure) or attempts run out.

    ``also``: further error types tried again (e.g. a chunk that failed verification), at most
    ``also_attempts`` tries in all when given, and only those for which ``also_when`` holds
    when given (e.g. not a refused decompression bomb, which the same bytes would be again).
    ``CancelledError`` is never caught; the last error propagates unchanged.
    """
    caught: tuple[type[Exception], ...] = (*_REQUEST_ERRORS, *also)
    attempt = 1
    also_failures = 0
    deadline: float | None = None
    while True:
        try:
            return await operation()
        except caught as error:
            now = clock.now()
            if deadline is None:
                deadline = now + policy.budget
            if isinstance(error, also):
                also_failures += 1
                retryable = (also_attempts is None or also_failures < also_attempts) and (
                    also_when is None or also_when(error)
                )
            else:
                retryable = is_retryable(error, idempotent=idempotent)
            if not retryable:
                raise
            wait = _next_wait(policy, attempt + 1, error, deadline - now)
            if wait is None:
                log.warning(
                    "%s failed (%s): giving up after %d tries within the retry budget of %gs",
                    what,
                    error,
                    attempt,
                    policy.budget,
                )
                raise
            attempt += 1
            log.warning("%s failed (%s); try %d in %.2fs", what, error, attempt, wait)
            _observe(policy, error)
            await clock.sleep(wait)


def retry_cause(error: BaseException) -> str:
    """The cause a retry is counted under: ``timeout`` (a time limit ran out), ``connection``
    (the connection failed), ``http_<status>`` (e.g. ``http_503``), or for the further errors
    a caller retries (``also``) the error's name in snake case (e.g. ``checksum_mismatch``)."""
    if isinstance(error, MeshConnectionError):
        return "timeout" if error.timed_out else "connection"
    if isinstance(error, MeshHTTPError):
        return f"http_{error.status}"
    name = type(error).__name__.removesuffix("Error")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() or "error"


def _observe(policy: RetryPolicy, error: BaseException) -> None:
    """Tell the policy's observer about a retry; an observer that fails is logged, never
    allowed to stop the retry."""
    if policy.on_retry is None:
        return
    try:
        policy.on_retry(retry_cause(error))
    except Exception:
        log.exception("the retry observer failed (the retry goes ahead)")


def _next_wait(
    policy: RetryPolicy, attempt: int, error: BaseException, remaining: float
) -> float | None:
    """Seconds before try ``attempt``, or None when no try is left: the attempts are used up,
    the budget is spent, or the server's Retry-After reaches past either."""
    if policy.attempts is not None and attempt > policy.attempts:
        return None
    if remaining <= 0:
        return None
    wait = policy.delay_after(attempt, error)
    if wait is None:
        return None
    retry_after = getattr(error, "retry_after", None)
    if isinstance(retry_after, int | float) and retry_after > remaining:
        return None  # the server asked us to stay away longer than the budget allows
    # The last try lands at the end of the budget rather than never.
    return min(wait, remaining)


def _may_have_been_stored(error: BaseException) -> bool:
    """Whether a failed chunk 1 may still have created the message: not when the connection
    was never made (nothing reached MESH), nor after 425 or 429 (MESH refused it)."""
    if isinstance(error, MeshConnectionError):
        return error.request_sent
    if isinstance(error, MeshHTTPError):
        return error.retryable and error.status not in (425, 429)
    return False


class _FirstChunkPost:
    """One try of chunk 1: after an ambiguous failure, MESH is asked first whether the message
    exists (and then it is not posted again). A lookup that fails for a passing reason is
    retried like the post itself; ``unresolved`` is the ambiguous failure not yet cleared up."""

    def __init__(
        self,
        post: Callable[[], Awaitable[str]],
        find_existing: Callable[[], Awaitable[str | None]],
        local_id: str,
        before_retry: Callable[[int, BaseException], Awaitable[None]] | None,
    ) -> None:
        self._post = post
        self._find_existing = find_existing
        self._local_id = local_id
        self._before_retry = before_retry
        self._tries = 0
        self._last_error: BaseException | None = None
        self.unresolved: BaseException | None = None

    async def __call__(self) -> str:
        self._tries += 1
        if self._last_error is not None and self._before_retry is not None:
            await self._before_retry(self._tries, self._last_error)
        try:
            return await self._try()
        except Exception as error:
            self._last_error = error
            raise

    async def _try(self) -> str:
        failure = self.unresolved
        if failure is not None:
            try:
                existing = await self._find_existing()
            except _REQUEST_ERRORS as lookup_error:
                if not lookup_error.retryable:
                    raise self.duplicate_risk(lookup_error) from failure
                raise  # tried again within the budget; the failure stays unresolved
            self.unresolved = None
            if existing is not None:
                log.warning(
                    "chunk 1 failed ambiguously (%s) but MESH holds message %s with local id "
                    "%r: continuing with it",
                    failure,
                    existing,
                    self._local_id,
                )
                return existing
            log.warning("chunk 1 failed (%s) and MESH has no such message: re-sending", failure)
        try:
            return await self._post()
        except _REQUEST_ERRORS as error:
            if _may_have_been_stored(error):
                self.unresolved = error
            raise

    def duplicate_risk(self, last: BaseException) -> MeshDuplicateRiskError:
        return MeshDuplicateRiskError(
            f"sending chunk 1 failed ({self.unresolved}) and MESH could not be asked whether "
            f"the message with local id {self._local_id!r} was created (last: {last}); nothing "
            "was re-sent. Check with `meshpipe track --local-id` before sending again.",
            local_id=self._local_id,
        )


async def post_first_chunk_safely(
    post: Callable[[], Awaitable[str]],
    find_existing: Callable[[], Awaitable[str | None]],
    policy: RetryPolicy,
    *,
    local_id: str,
    before_retry: Callable[[int, BaseException], Awaitable[None]] | None = None,
    clock: RetryClock = _CLOCK,
) -> str:
    """Send chunk 1 (which creates the message) without ever creating a duplicate.

    After an ambiguous failure (the connection broke or timed out after it was made, a gateway
    or server status), ``find_existing`` asks MESH (rich outbox, then tracking by local id) for
    a message with ``local_id``: if there is one, its id is returned and nothing is re-posted;
    if MESH says there is none, chunk 1 is posted again; a lookup that fails for a passing
    reason (MESH still down) is tried again within the policy's budget. If MESH cannot tell
    before the budget runs out, MeshDuplicateRiskError is raised. A refused connection, 429 or
    425 is never ambiguous (nothing was stored) and is simply retried. ``before_retry`` is
    awaited before each try after the first with the try's number and the error that ended
    the one before (a journal records it).
    """
    first = _FirstChunkPost(post, find_existing, local_id, before_retry)
    try:
        return await call_with_retry(first, policy, idempotent=True, what="chunk 1", clock=clock)
    except _REQUEST_ERRORS as error:
        if first.unresolved is None:
            raise
        raise first.duplicate_risk(error) from error


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
    "MonotonicClock",
    "RetryClock",
    "RetryPolicy",
    "RetryingClient",
    "call_with_retry",
    "is_retryable",
    "post_first_chunk_safely",
    "retry_cause",
]
