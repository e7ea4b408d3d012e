"""What the durable-send tests share: ``meshpipe send`` as a subprocess that a test can SIGKILL
at a known point, and a proxy in front of the MESH server (meshpipe serve or mesh-sandbox)
that counts chunk uploads and holds one chosen chunk request so that the kill lands while it
is in flight (the point is known from the proxy, never from a sleep)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mesh_client
from aiohttp import web

from meshpipe._meshpipe import xxh3_128_file
from meshpipe.client import ClientSettings, MeshClient
from meshpipe.ledger import Ledger, SendRecord, resolve_ledger_location
from meshpipe.retry import RetryingClient
from tests.client.conftest import FAST_RETRY, RECIPIENT, SENDER, make_config
from tests.client.proxy import FaultProxy
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY

#: A generous bound on waiting for a request to reach the proxy: a failure guard, not timing.
WAIT = 120.0

_OUTBOX = re.compile(r"/messageexchange/[^/]+/outbox(/[^/]+/\d+)?")


def chunk_of(request: web.Request) -> int | None:
    """The chunk number of a chunk upload (chunk 1 is the POST to the outbox), else None."""
    if request.method != "POST" or not _OUTBOX.fullmatch(request.path):
        return None
    value = request.headers.get("mex-Chunk-Range") or "1:1"
    return int(value.split(":")[0])


@dataclass
class _Gate:
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    drop: bool = False


@dataclass
class HoldingProxy(FaultProxy):
    """A FaultProxy that also records each chunk upload MESH answered 202 (``uploads``, in
    order) and holds the requests for one chosen chunk: before forwarding them (the server
    never sees the chunk), or with ``after_forward`` after the server answered (the answer is
    lost). ``held`` is set once a request is held; :meth:`release` lets held requests go on,
    :meth:`drop_held` answers them 503 unforwarded (their sender was killed)."""

    uploads: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.held = asyncio.Event()
        self._hold_chunk: int | None = None
        self._after_forward = False
        self._gate = _Gate()
        self._closing = False

    def hold(self, chunk: int, *, after_forward: bool = False) -> None:
        self._hold_chunk, self._after_forward = chunk, after_forward
        self.held.clear()
        self._gate = _Gate()

    def release(self) -> None:
        self._hold_chunk = None
        self._gate.opened.set()

    def drop_held(self) -> None:
        self._gate.drop = True
        self.release()

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        self.drop_held()
        await super().__aexit__(None, None, None)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        number = chunk_of(request)
        holding = number is not None and number == self._hold_chunk
        if holding and not self._after_forward and not await self._hold():
            return web.Response(status=503, text="dropped by HoldingProxy")
        response = await super()._forward(request)
        if number is not None and response.status == 202:
            self.uploads.append(number)
        if holding and self._after_forward:
            await self._hold()
        return response

    async def _hold(self) -> bool:
        """Wait at the gate; whether to go on."""
        gate = self._gate
        self.held.set()
        self._changed.set()  # wakes wait_until
        await gate.opened.wait()
        return not gate.drop

    async def drop_held_and_settle(self) -> None:
        """Drop the held requests and wait until no request is in flight (a killed sender's
        requests already forwarded are answered by the server, and counted, before this
        returns)."""
        self.drop_held()
        await asyncio.wait_for(self.wait_until(lambda: not any(self.in_flight.values())), WAIT)

    def uploads_since(self, mark: int) -> list[int]:
        return sorted(self.uploads[mark:])


@dataclass(frozen=True)
class SendCommand:
    """``python -m meshpipe send`` against ``url`` as the test sender."""

    url: str
    source: Path
    workflow: str
    extra: tuple[str, ...] = ()

    def argv(self, *more: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "meshpipe",
            "send",
            str(self.source),
            "--url",
            self.url,
            "--mailbox",
            SENDER,
            "--password",
            SANDBOX_PASSWORD,
            "--shared-key",
            SANDBOX_SHARED_KEY,
            "--to",
            RECIPIENT,
            "--workflow-id",
            self.workflow,
            "--chunk-size",
            "5MiB",
            *self.extra,
            *more,
        ]

    async def start(self, *more: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *self.argv(*more),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "MESHPIPE_CONFIG": "", "HOME": "/nonexistent-home-for-tests"},
        )

    async def run(self, *more: str) -> Finished:
        process = await self.start(*more)
        out, err = await asyncio.wait_for(process.communicate(), WAIT)
        assert process.returncode is not None
        return Finished(process.returncode, out.decode(), err.decode())


@dataclass(frozen=True)
class Finished:
    status: int
    out: str
    err: str


async def kill_when_held(
    process: asyncio.subprocess.Process, proxy: HoldingProxy, answered: Collection[int] = ()
) -> None:
    """SIGKILL ``process`` once the proxy holds its chunk request and MESH has answered
    chunks ``answered``."""

    def reached() -> bool:
        return proxy.held.is_set() and set(answered) <= set(proxy.uploads)

    waiter = asyncio.ensure_future(proxy.wait_until(reached))
    exited = asyncio.ensure_future(process.wait())
    done, _ = await asyncio.wait({waiter, exited}, timeout=WAIT, return_when="FIRST_COMPLETED")
    if waiter not in done:
        waiter.cancel()
        output = await process.stderr.read() if process.stderr else b""
        raise AssertionError(f"the send never reached the kill point: {output.decode()[-2000:]}")
    process.kill()
    await process.wait()
    exited.cancel()


def ledger_send(local_id: str | None = None) -> SendRecord:
    """The test's one send (or that of ``local_id``) as its ledger records it now."""
    with Ledger.open(resolve_ledger_location(None, None)) as ledger:
        sends = ledger.history(limit=10)
        matching = [s for s in sends if local_id is None or s.local_id == local_id]
        assert matching, f"no send recorded ({sends})"
        record = ledger.transfer(matching[0].id)
        assert isinstance(record, SendRecord)
        return record


def accepted_chunks(record: SendRecord) -> set[int]:
    with Ledger.open(resolve_ledger_location(None, None)) as ledger:
        return set(ledger.accepted_chunks(record))


async def sent_messages(url: str, workflow: str) -> list[tuple[str, str | None]]:
    """(message id, status) of every message the sender's outbox holds in ``workflow``,
    including any left ``uploading``."""
    settings = ClientSettings(retry=FAST_RETRY)
    async with MeshClient(make_config(url, SENDER), settings) as client:
        since = datetime.now(UTC) - timedelta(hours=1)
        items = await RetryingClient(client).outbox_rich(start_time=since)
    return [(item.message_id, item.status) for item in items if item.workflow_id == workflow]


def download(url: str, message_id: str) -> bytes:
    """The message as NHS's own mesh-client receives it."""
    with mesh_client.MeshClient(
        url, RECIPIENT, SANDBOX_PASSWORD, shared_key=SANDBOX_SHARED_KEY.encode()
    ) as client:
        message = client.retrieve_message(message_id)
        try:
            return bytes(message.read())
        finally:
            message.close()


def received_digest(url: str, message_id: str, source: Path, workdir: Path) -> str:
    """Download the message with mesh-client, check its bytes are the source's, and return
    the xxh3-128 of the received copy."""
    received = download(url, message_id)
    assert received == source.read_bytes(), "the received message is not the source file"
    copy = workdir / f"received-{message_id}"
    copy.write_bytes(received)
    return xxh3_128_file(copy)


def inbox(url: str, workflow: str) -> list[str]:
    with mesh_client.MeshClient(
        url, RECIPIENT, SANDBOX_PASSWORD, shared_key=SANDBOX_SHARED_KEY.encode()
    ) as client:
        return list(client.list_messages(workflow_filter=workflow))


def lines(text: str) -> Iterator[str]:
    return (line for line in text.splitlines() if line.strip())
