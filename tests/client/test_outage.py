"""Outages and silent servers: retries are bounded by a time budget (the default rides out a 60 s
outage), control requests by a short timeout, chunk transfers by a stall timeout.

The default policy is checked on a virtual clock; real transfers ride out a server that stops
and comes back on the same port (OutageGate), with a small budget and the outage counted in
tries the client made, never in seconds."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from meshpipe import errors
from meshpipe.client import ClientSettings, MeshClient
from meshpipe.headers import SendHeaders
from meshpipe.retry import RetryingClient, RetryPolicy, call_with_retry, post_first_chunk_safely
from meshpipe.transfer import (
    ReceiveJournal,
    SendJournal,
    download_message,
    receive_message,
    send_file,
)
from tests.client.conftest import RECIPIENT, SENDER, MiB, make_config
from tests.client.outage import OutageGate, RetryLog, SilentServer
from tests.peers import Sandbox, free_port

#: Quick tries, bounded by the budget only (not by a count of tries).
QUICK_BUDGET = RetryPolicy(budget=30.0, base_delay=0.01, max_delay=0.05)
#: More tries than the old fixed policy allowed (4 in all), so only a budget rides them out.
OUTAGE_TRIES = 6
#: A bound on each test against a hang, never a measurement.
HANG_GUARD = 60.0


class VirtualClock:
    """Time that passes only when the code under test sleeps."""

    def __init__(self) -> None:
        self.time = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.time += seconds


def same_content(one: Path, other: Path) -> bool:
    return one.read_bytes() == other.read_bytes()


def refused() -> errors.MeshConnectionError:
    return errors.MeshConnectionError("connection refused", request_sent=False)


def busy(retry_after: float | None = None) -> errors.MeshHTTPError:
    return errors.MeshHTTPError("503", status=503, kind="transient", retry_after=retry_after)


async def outage(clock: VirtualClock, length: float, error: Exception) -> str:
    """An operation that fails with ``error`` until ``length`` virtual seconds have passed."""
    if clock.time < length:
        raise error
    return "back"


@pytest.mark.parametrize("error", [refused(), busy()], ids=["refused", "503"])
async def test_the_default_policy_rides_out_a_60_second_outage(error: Exception) -> None:
    clock = VirtualClock()
    policy = RetryPolicy()
    result = await call_with_retry(
        lambda: outage(clock, 60.0, error), policy, idempotent=True, what="t", clock=clock
    )
    assert result == "back"
    assert clock.time >= 60.0
    assert max(clock.sleeps) <= policy.max_delay  # capped backoff: back within 10 s of the end


async def test_the_default_policy_gives_up_when_the_budget_is_spent() -> None:
    clock = VirtualClock()
    policy = RetryPolicy()
    with pytest.raises(errors.MeshConnectionError):
        await call_with_retry(
            lambda: outage(clock, 10_000.0, refused()),
            policy,
            idempotent=True,
            what="t",
            clock=clock,
        )
    assert clock.time == pytest.approx(policy.budget)  # the last try at the end of the budget
    assert len(clock.sleeps) > 4  # far more tries than the old fixed four


async def test_retry_after_is_waited_for_within_the_budget_and_refused_past_it() -> None:
    clock = VirtualClock()
    policy = RetryPolicy(budget=30.0)
    calls = 0

    async def answer() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise busy(retry_after=20)
        return "ok"

    assert await call_with_retry(answer, policy, idempotent=True, what="t", clock=clock) == "ok"
    assert clock.sleeps == [20]
    clock = VirtualClock()
    with pytest.raises(errors.MeshHTTPError):
        await call_with_retry(
            lambda: outage(clock, 100.0, busy(retry_after=45)),
            policy,
            idempotent=True,
            what="t",
            clock=clock,
        )
    assert clock.sleeps == []  # asked to stay away beyond the budget: the error stands


def test_the_budget_is_a_policy_setting() -> None:
    assert RetryPolicy().budget >= 60 and RetryPolicy().attempts is None
    assert RetryPolicy(budget=5).budget == 5
    with pytest.raises(ValueError, match="budget"):
        RetryPolicy(budget=-1)
    settings = ClientSettings()
    assert (settings.request_timeout, settings.stall_timeout) == (30.0, 60.0)


async def test_a_refused_first_chunk_is_posted_again_without_a_lookup() -> None:
    clock = VirtualClock()
    posts = 0

    async def post() -> str:
        nonlocal posts
        posts += 1
        if clock.time < 60:
            raise refused()
        return "ID"

    async def find() -> str | None:
        raise AssertionError("a refused connection sent nothing: no need to look")

    assert await post_first_chunk_safely(post, find, RetryPolicy(), local_id="L", clock=clock)
    assert posts > 4


async def test_an_ambiguous_first_chunk_waits_for_mesh_to_answer_the_lookup() -> None:
    clock = VirtualClock()
    posts = 0

    async def post() -> str:
        nonlocal posts
        posts += 1
        raise errors.MeshConnectionError("reset after sending")

    async def find() -> str | None:
        if clock.time < 60:  # MESH still down
            raise refused()
        return "EXISTING"

    assert (
        await post_first_chunk_safely(post, find, RetryPolicy(), local_id="L", clock=clock)
        == "EXISTING"
    )
    assert posts == 1


# --- real outages: a server stopped and started again on the same port -------------------------


@pytest.fixture
async def gate(sandbox: Sandbox) -> AsyncIterator[OutageGate]:
    async with OutageGate(sandbox.url) as running:
        yield running


def budget_settings(policy: RetryPolicy = QUICK_BUDGET) -> ClientSettings:
    return ClientSettings(retry=policy, request_timeout=30, transfer_timeout=120)


class DownAfterFirstChunk(SendJournal):
    def __init__(self, gate: OutageGate) -> None:
        self.gate = gate

    async def chunk_accepted(self, number: int) -> None:
        if number == 1:
            await self.gate.down()


class DownAfterFirstVerified(ReceiveJournal):
    def __init__(self, gate: OutageGate) -> None:
        self.gate = gate

    async def chunk_verified(self, number: int, xxh3_128: str, length: int) -> None:
        if number == 1 and self.gate.is_up:
            await self.gate.down()


async def restart_after_retries(
    gate: OutageGate, log: RetryLog, work: asyncio.Task[object]
) -> None:
    """Bring the gate back once the client has retried OUTAGE_TRIES times (or ``work`` ended)."""
    waiting = asyncio.ensure_future(log.reached(OUTAGE_TRIES))
    await asyncio.wait([waiting, work], return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    await gate.up()


async def test_a_send_rides_out_a_server_restart(
    gate: OutageGate,
    recipient: MeshClient,
    multi_file: Path,
    workflow: str,
    tmp_path: Path,
) -> None:
    async with asyncio.timeout(HANG_GUARD):
        with RetryLog() as log:
            async with MeshClient(make_config(gate.url, SENDER), budget_settings()) as client:
                sending = asyncio.ensure_future(
                    send_file(
                        client,
                        multi_file,
                        SendHeaders(to=RECIPIENT, workflow_id=workflow),
                        chunk_size=5 * MiB,
                        journal=DownAfterFirstChunk(gate),
                    )
                )
                await restart_after_retries(gate, log, sending)
                result = await sending
        assert log.retries >= OUTAGE_TRIES
        received = await receive_message(recipient, result.message_id, tmp_path / "out.csv")
    assert same_content(received.path, multi_file)


async def test_a_first_chunk_rides_out_a_server_that_is_down(
    gate: OutageGate, recipient: MeshClient, small_file: Path, workflow: str
) -> None:
    await gate.down()
    async with asyncio.timeout(HANG_GUARD):
        with RetryLog() as log:
            async with MeshClient(make_config(gate.url, SENDER), budget_settings()) as client:
                sending = asyncio.ensure_future(
                    send_file(client, small_file, SendHeaders(to=RECIPIENT, workflow_id=workflow))
                )
                await restart_after_retries(gate, log, sending)
                result = await sending
        assert log.retries >= OUTAGE_TRIES
        assert await recipient.list_inbox(workflow_filter=workflow) == [result.message_id]


async def test_a_receive_rides_out_a_server_restart(
    gate: OutageGate,
    sender: MeshClient,
    recipient: MeshClient,
    multi_file: Path,
    workflow: str,
    tmp_path: Path,
) -> None:
    sent = await send_file(
        sender, multi_file, SendHeaders(to=RECIPIENT, workflow_id=workflow), chunk_size=5 * MiB
    )
    async with asyncio.timeout(HANG_GUARD):
        with RetryLog() as log:
            async with MeshClient(make_config(gate.url, RECIPIENT), budget_settings()) as client:
                receiving = asyncio.ensure_future(
                    receive_message(
                        client,
                        sent.message_id,
                        tmp_path / "out.csv",
                        concurrency=1,
                        journal=DownAfterFirstVerified(gate),
                    )
                )
                await restart_after_retries(gate, log, receiving)
                received = await receiving
        assert log.retries >= OUTAGE_TRIES
    assert received.acknowledged
    assert same_content(received.path, multi_file)
    assert await recipient.list_inbox(workflow_filter=workflow) == []


async def test_tries_stop_when_the_budget_is_spent(
    gate: OutageGate, sender: MeshClient, workflow: str, tmp_path: Path
) -> None:
    message_id = await sender.send_message(SendHeaders(RECIPIENT, workflow), b"data")
    await gate.down()
    policy = dataclasses.replace(QUICK_BUDGET, budget=0.3)
    async with asyncio.timeout(HANG_GUARD):
        with RetryLog() as log:
            async with MeshClient(make_config(gate.url, RECIPIENT), budget_settings(policy)) as c:
                with pytest.raises(errors.MeshConnectionError, match=r"refused|Cannot connect"):
                    await RetryingClient(c).head(message_id)
    assert log.retries >= 1 and len(log.gave_up) == 1
    assert "retry budget of 0.3s" in log.gave_up[0]


# --- silent and stalling servers ---------------------------------------------------------------


async def test_a_control_request_to_a_silent_server_fails_within_its_timeout() -> None:
    settings = ClientSettings(
        request_timeout=0.2, stall_timeout=100, retry=RetryPolicy(budget=0.3, base_delay=0.01)
    )
    async with (
        asyncio.timeout(HANG_GUARD),
        SilentServer() as silent,
        MeshClient(make_config(silent.url, SENDER), settings) as client,
    ):
        with pytest.raises(errors.MeshConnectionError, match=r"no complete answer within 0\.2s"):
            await client.handshake()
        with pytest.raises(errors.MeshConnectionError, match="timed out"):
            await RetryingClient(client).handshake()
    assert silent.connections >= 2  # the first, then at least one more within the budget


@pytest.fixture
async def stalling_server() -> AsyncIterator[tuple[str, list[str]]]:
    """A server whose first download and every chunk upload stall after some bytes (until the
    test ends); the second download is whole."""
    release = asyncio.Event()
    seen: list[str] = []
    body = bytes(range(256)) * 8

    async def download(request: web.Request) -> web.StreamResponse:
        seen.append("GET")
        response = web.StreamResponse(headers={"Content-Length": str(len(body))})
        await response.prepare(request)
        if seen.count("GET") == 1:
            await response.write(body[:1000])
            await release.wait()
        await response.write(body)
        return response

    async def upload(request: web.Request) -> web.Response:
        seen.append("POST")
        await request.content.read(65536)
        await release.wait()
        return web.Response(status=202)

    app = web.Application(client_max_size=200 * MiB)
    app.router.add_get("/messageexchange/X26ABC2/inbox/STALL", download)
    app.router.add_post("/messageexchange/X26ABC1/outbox/STALL/2", upload)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        release.set()
        await runner.cleanup()


STALL_SETTINGS = ClientSettings(
    stall_timeout=0.2, request_timeout=100, transfer_timeout=100, retry=QUICK_BUDGET
)


async def test_a_stalled_download_is_aborted_and_retried(
    stalling_server: tuple[str, list[str]],
) -> None:
    url, seen = stalling_server
    with RetryLog() as log:
        async with asyncio.timeout(HANG_GUARD):
            async with MeshClient(make_config(url, RECIPIENT), STALL_SETTINGS) as client:
                _, data = await download_message(client, "STALL")
    assert data == bytes(range(256)) * 8
    assert seen == ["GET", "GET"] and log.retries == 1


async def test_a_stalled_upload_is_aborted(stalling_server: tuple[str, list[str]]) -> None:
    url, _ = stalling_server
    settings = dataclasses.replace(STALL_SETTINGS, retry=RetryPolicy(attempts=1))
    async with asyncio.timeout(HANG_GUARD):
        async with MeshClient(make_config(url, SENDER), settings) as client:
            with pytest.raises(errors.MeshConnectionError, match="stalled"):
                await client.send_chunk("STALL", 2, 2, bytes(32 * MiB))
