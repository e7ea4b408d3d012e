"""When and how to retry a MESH request: exponential backoff with full jitter.

Retried: connection errors and timeouts, and the transient statuses 425, 429, 502, 503, 504;
500 only for idempotent requests (GET, HEAD, PUT acknowledge, chunk n ≥ 2, which overwrites).
Never retried: any other 4xx, and chunk 1 of a message (``POST /outbox``) after an ambiguous
failure, unless MESH is first asked whether the message already exists
(:func:`post_first_chunk_safely`): re-posting chunk 1 creates a second message.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from meshpipe.errors import (
    MeshConnectionError,
    MeshDuplicateRiskError,
    MeshHTTPError,
    MeshServerError,
)

log = logging.getLogger("meshpipe.retry")

T = TypeVar("T")

TRANSIENT_STATUSES = frozenset({425, 429, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``attempts`` tries in all (1 = never retry); the delay before try k (k ≥ 2) is a random
    value in [0, min(max_delay, base_delay · 2^(k-2))] ("full jitter")."""

    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0
    #: The longest Retry-After (from a 429 or 503) that is honoured; longer ones fail.
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before try ``attempt`` (2, 3, ...)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(0, attempt - 2)))
        return (rng or random).uniform(0, ceiling)

    def delay_after(self, attempt: int, error: BaseException) -> float | None:
        """The wait before try ``attempt`` after ``error``: the backoff, or the server's
        Retry-After if longer; None when that is longer than ``max_retry_after``."""
        wait = self.delay(attempt)
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, int | float):
            if retry_after > self.max_retry_after:
                return None
            wait = max(wait, float(retry_after))
        return wait


NO_RETRY = RetryPolicy(attempts=1)


def is_retryable(error: BaseException, *, idempotent: bool) -> bool:
    """Whether a failed request may be sent again."""
    if isinstance(error, MeshConnectionError):
        return idempotent
    if isinstance(error, MeshHTTPError):
        if error.status in TRANSIENT_STATUSES:
            return idempotent
        return idempotent and isinstance(error, MeshServerError)
    return False


async def call_with_retry(
    operation: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    idempotent: bool,
    what: str,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> T:
    """Run ``operation`` until it succeeds, a non-retryable error occurs or tries run out.

    ``CancelledError`` is never caught; the last error propagates unchanged.
    """
    attempt = 1
    while True:
        try:
            return await operation()
        except (MeshConnectionError, MeshHTTPError) as error:
            if attempt >= policy.attempts or not is_retryable(error, idempotent=idempotent):
                raise
            attempt += 1
            wait = policy.delay_after(attempt, error)
            if wait is None:
                raise
            log.warning("%s failed (%s); try %d in %.2fs", what, error, attempt, wait)
            if on_retry is not None:
                on_retry(attempt, error)
            await asyncio.sleep(wait)


def is_ambiguous(error: BaseException) -> bool:
    """True when a POST may have reached MESH although no success was seen: the connection
    broke or timed out, or a gateway/server status that does not prove nothing was stored."""
    if isinstance(error, MeshConnectionError):
        return True
    return isinstance(error, MeshHTTPError) and (
        error.status in TRANSIENT_STATUSES or error.status >= 500
    )


async def post_first_chunk_safely(
    post: Callable[[], Awaitable[str]],
    find_existing: Callable[[], Awaitable[str | None]],
    policy: RetryPolicy,
    *,
    local_id: str,
) -> str:
    """Send chunk 1 (which creates the message) without ever creating a duplicate.

    After an ambiguous failure, ``find_existing`` asks MESH (rich outbox, then tracking by local
    id) for a message with ``local_id``: if there is one, its id is returned and nothing is
    re-posted; if MESH says there is none, chunk 1 is posted again; if MESH cannot tell,
    MeshDuplicateRiskError is raised. A 429 or 425 is never ambiguous (MESH refused it) and is
    simply retried.
    """
    attempt = 1
    while True:
        try:
            return await post()
        except (MeshConnectionError, MeshHTTPError) as error:
            if not is_ambiguous(error) or attempt >= policy.attempts:
                raise
            attempt += 1
            wait = policy.delay_after(attempt, error)
            if wait is None:
                raise
            await asyncio.sleep(wait)
            refused = isinstance(error, MeshHTTPError) and error.status in (425, 429)
            if refused:
                continue
            try:
                existing = await find_existing()
            except (MeshConnectionError, MeshHTTPError) as lookup_error:
                raise MeshDuplicateRiskError(
                    f"sending chunk 1 failed ({error}) and MESH could not be asked whether the "
                    f"message with local id {local_id!r} was created ({lookup_error}); nothing "
                    "was re-sent. Check with `meshpipe track` before sending again.",
                    local_id=local_id,
                ) from error
            if existing is not None:
                log.warning(
                    "chunk 1 failed ambiguously (%s) but MESH holds message %s with local id "
                    "%r: continuing with it",
                    error,
                    existing,
                    local_id,
                )
                return existing
            log.warning("chunk 1 failed (%s) and MESH has no such message: re-sending", error)
