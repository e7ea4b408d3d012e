"""The retry observer (RetryPolicy.on_retry): every retry is reported with its cause, what is
retried does not change, and a real client's timeouts and refused connections are told apart."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import pytest
from aiohttp import web

from meshpipe.client import ClientSettings, MeshClient
from meshpipe.config import MeshConfig
from meshpipe.error_body import mesh_error_from_response
from meshpipe.errors import ChecksumMismatchError, MeshConnectionError, MeshHTTPError
from meshpipe.retry import RetryingClient, RetryPolicy, call_with_retry, retry_cause

QUICK = RetryPolicy(attempts=6, base_delay=0.001, max_delay=0.002)


def http(status: int) -> MeshHTTPError:
    return mesh_error_from_response(status, b"", method="GET", path="/x")


def failing(*errors: Exception) -> Callable[[], Awaitable[str]]:
    """An operation raising ``errors`` one per try, then answering "done"."""
    pending = list(errors)

    async def operation() -> str:
        if pending:
            raise pending.pop(0)
        return "done"

    return operation


async def test_every_retry_is_reported_with_its_cause() -> None:
    causes: list[str] = []
    policy = replace(QUICK, on_retry=causes.append)
    operation = failing(
        http(503),
        MeshConnectionError("refused", request_sent=False),
        MeshConnectionError("stalled", timed_out=True),
        http(429),
    )
    assert await call_with_retry(operation, policy, idempotent=True, what="test") == "done"
    assert causes == ["http_503", "connection", "timeout", "http_429"]


async def test_only_retries_are_reported_not_final_failures() -> None:
    causes: list[str] = []
    policy = replace(QUICK, attempts=2, on_retry=causes.append)
    with pytest.raises(MeshHTTPError):
        await call_with_retry(failing(http(400)), policy, idempotent=True, what="test")
    assert causes == []
    with pytest.raises(MeshHTTPError):
        await call_with_retry(failing(http(502), http(504)), policy, idempotent=True, what="t")
    assert causes == ["http_502"]  # the second failure used the last try: given up, not retried
    with pytest.raises(MeshHTTPError):
        await call_with_retry(failing(http(503)), policy, idempotent=False, what="t")
    assert causes == ["http_502"]


async def test_further_errors_are_reported_by_name() -> None:
    causes: list[str] = []
    policy = replace(QUICK, on_retry=causes.append)
    operation = failing(ChecksumMismatchError("chunk 2 differs"))
    result = await call_with_retry(
        operation, policy, idempotent=True, what="t", also=(ChecksumMismatchError,)
    )
    assert (result, causes) == ("done", ["checksum_mismatch"])


async def test_a_failing_observer_never_stops_the_retry(caplog: pytest.LogCaptureFixture) -> None:
    def broken(cause: str) -> None:
        raise RuntimeError("observer bug")

    policy = replace(QUICK, on_retry=broken)
    with caplog.at_level(logging.ERROR, "meshpipe.retry"):
        result = await call_with_retry(failing(http(503)), policy, idempotent=True, what="t")
    assert result == "done"
    assert "the retry observer failed" in caplog.text


def test_the_observer_does_not_change_policy_equality_or_repr() -> None:
    observed = replace(QUICK, on_retry=print)
    assert observed == QUICK
    assert "on_retry" not in repr(observed)


@pytest.fixture
async def stalling_server() -> AsyncIterator[tuple[str, list[int]]]:
    """A server whose /_ping answers 503 twice, then never answers (until the test ends)."""
    hits: list[int] = []
    release = asyncio.Event()

    async def ping(request: web.Request) -> web.Response:
        hits.append(1)
        if len(hits) <= 2:
            return web.Response(status=503)
        await release.wait()
        return web.json_response({})

    app = web.Application()
    app.router.add_get("/messageexchange/_ping", ping)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", hits
    finally:
        release.set()
        await runner.cleanup()


def client_for(url: str, causes: list[str], attempts: int) -> MeshClient:
    config = MeshConfig(url=url, mailbox="X26ABC1", password="password", shared_key="key")
    policy = replace(QUICK, attempts=attempts, on_retry=causes.append)
    return MeshClient(config, ClientSettings(request_timeout=0.3, retry=policy))


async def test_a_client_counts_503s_and_a_timeout(stalling_server: tuple[str, list[int]]) -> None:
    url, hits = stalling_server
    causes: list[str] = []
    async with client_for(url, causes, attempts=4) as client:
        with pytest.raises(MeshConnectionError) as caught:
            await RetryingClient(client).ping()
    assert caught.value.timed_out
    assert causes == ["http_503", "http_503", "timeout"]
    assert len(hits) == 4


async def test_a_refused_connection_is_a_connection_cause() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens once it is closed
    causes: list[str] = []
    async with client_for(f"http://127.0.0.1:{port}", causes, attempts=2) as client:
        with pytest.raises(MeshConnectionError) as caught:
            await RetryingClient(client).ping()
    assert not caught.value.timed_out
    assert causes == ["connection"]


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (MeshConnectionError("x"), "connection"),
        (MeshConnectionError("x", timed_out=True), "timeout"),
        (http(503), "http_503"),
        (ChecksumMismatchError("x"), "checksum_mismatch"),
        (ValueError("x"), "value"),
    ],
)
def test_retry_cause(error: BaseException, cause: str) -> None:
    assert retry_cause(error) == cause
