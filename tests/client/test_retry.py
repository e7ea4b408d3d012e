"""Backoff, what is retried, the never-duplicate rule for chunk 1, and which layer retries."""

from __future__ import annotations

import asyncio
import random

import pytest

from meshpipe.client import MeshClient
from meshpipe.error_body import mesh_error_from_response
from meshpipe.errors import MeshConnectionError, MeshDuplicateRiskError, MeshHTTPError
from meshpipe.headers import SendHeaders
from meshpipe.retry import (
    RetryingClient,
    RetryPolicy,
    call_with_retry,
    is_retryable,
    post_first_chunk_safely,
)
from tests.client.conftest import RECIPIENT
from tests.client.proxy import FaultProxy, Rule

QUICK = RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.002)


def http(status: int) -> MeshHTTPError:
    return mesh_error_from_response(status, b"", method="POST", path="/x")


def test_delay_is_bounded_full_jitter() -> None:
    policy = RetryPolicy(attempts=10, base_delay=0.5, max_delay=4.0)
    rng = random.Random(1)
    for attempt in range(2, 10):
        ceiling = min(4.0, 0.5 * 2 ** (attempt - 2))
        delays = [policy.delay(attempt, rng) for _ in range(50)]
        assert all(0 <= delay <= ceiling for delay in delays)
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


@pytest.mark.parametrize(
    ("error", "idempotent", "expected"),
    [
        (http(503), True, True),
        (http(429), True, True),
        (http(500), True, True),
        (http(500), False, False),
        (http(400), True, False),
        (http(403), True, False),
        (http(423), True, False),
        (http(413), True, False),  # a refused bomb or oversized body: the same again
        (MeshConnectionError("reset"), True, True),
        (MeshConnectionError("reset"), False, False),
    ],
)
def test_is_retryable(error: BaseException, idempotent: bool, expected: bool) -> None:
    assert is_retryable(error, idempotent=idempotent) is expected


async def test_retries_transient_then_succeeds() -> None:
    failures = [http(503), MeshConnectionError("reset")]

    async def operation() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    assert await call_with_retry(operation, QUICK, idempotent=True, what="t") == "ok"


async def test_does_not_retry_client_errors() -> None:
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1
        raise http(400)

    with pytest.raises(MeshHTTPError):
        await call_with_retry(operation, QUICK, idempotent=True, what="t")
    assert calls == 1


async def test_gives_up_after_attempts() -> None:
    calls = 0

    async def operation() -> None:
        nonlocal calls
        calls += 1
        raise http(503)

    with pytest.raises(MeshHTTPError):
        await call_with_retry(operation, QUICK, idempotent=True, what="t")
    assert calls == QUICK.attempts


async def test_cancellation_is_not_swallowed() -> None:
    started = asyncio.Event()

    async def operation() -> None:
        started.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(call_with_retry(operation, QUICK, idempotent=True, what="t"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_first_chunk_found_after_ambiguous_failure_is_not_reposted() -> None:
    posts = 0

    async def post() -> str:
        nonlocal posts
        posts += 1
        raise MeshConnectionError("connection reset after sending")

    async def find() -> str | None:
        return "EXISTING"

    assert await post_first_chunk_safely(post, find, QUICK, local_id="L") == "EXISTING"
    assert posts == 1


async def test_first_chunk_reposted_only_when_mesh_says_absent() -> None:
    outcomes: list[BaseException | str] = [http(502), "NEW"]
    lookups = 0

    async def post() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def find() -> str | None:
        nonlocal lookups
        lookups += 1
        return None

    assert await post_first_chunk_safely(post, find, QUICK, local_id="L") == "NEW"
    assert lookups == 1


async def test_first_chunk_unknown_state_raises_duplicate_risk() -> None:
    async def post() -> str:
        raise MeshConnectionError("timeout")

    async def find() -> str | None:
        raise MeshConnectionError("still down")

    with pytest.raises(MeshDuplicateRiskError) as caught:
        await post_first_chunk_safely(post, find, QUICK, local_id="L-42")
    assert caught.value.local_id == "L-42"


async def test_first_chunk_rate_limited_retries_without_lookup() -> None:
    outcomes: list[BaseException | str] = [http(429), "ID"]

    async def post() -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def find() -> str | None:
        raise AssertionError("a 429 is not ambiguous")

    assert await post_first_chunk_safely(post, find, QUICK, local_id="L") == "ID"


async def test_first_chunk_validation_error_is_final() -> None:
    async def post() -> str:
        raise http(417)

    async def find() -> str | None:
        raise AssertionError("not ambiguous")

    with pytest.raises(MeshHTTPError):
        await post_first_chunk_safely(post, find, QUICK, local_id="L")


def test_retry_after_is_honoured_within_limits() -> None:
    policy = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02, max_retry_after=10)
    busy = mesh_error_from_response(503, b"", method="GET", path="/x", retry_after=5)
    assert busy.retry_after == 5
    assert policy.delay_after(2, busy) == 5
    too_long = mesh_error_from_response(429, b"", method="GET", path="/x", retry_after=3600)
    assert policy.delay_after(2, too_long) is None
    plain = http(503)
    delay = policy.delay_after(2, plain)
    assert delay is not None and 0 <= delay <= 0.01


def test_retry_after_header_forms() -> None:
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    from meshpipe.client import _retry_after

    assert _retry_after("7") == 7.0
    assert _retry_after(None) is None
    assert _retry_after("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    seconds = _retry_after(later)
    assert seconds is not None and 20 < seconds <= 30


async def test_retry_waits_for_retry_after() -> None:
    policy = RetryPolicy(attempts=2, base_delay=0.0, max_delay=0.0)
    calls = 0

    async def operation() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise mesh_error_from_response(429, b"", method="GET", path="/x", retry_after=0)
        return "ok"

    assert await call_with_retry(operation, policy, idempotent=True, what="t") == "ok"
    assert calls == 2


async def test_the_client_never_retries_and_the_retrying_client_does(
    proxy: FaultProxy, proxied_recipient: MeshClient, sender: MeshClient, workflow: str
) -> None:
    message_id = await sender.send_message(SendHeaders(RECIPIENT, workflow), b"data")
    busy = proxy.add(
        Rule("HEAD", rf"/messageexchange/X26ABC2/inbox/{message_id}", "status", times=2)
    )
    with pytest.raises(MeshHTTPError) as caught:
        await proxied_recipient.head(message_id)
    assert (caught.value.status, busy.hits) == (503, 1)
    endpoints = RetryingClient(proxied_recipient)
    assert (await endpoints.head(message_id)).message_id == message_id
    assert busy.hits == 2  # the second 503, then the try that got through
    await endpoints.acknowledge(message_id)
