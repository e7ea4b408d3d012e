"""Pipelined transfers through a fault-injecting proxy in front of mesh-sandbox: real
concurrency, last chunk last, retries, no duplicate on an ambiguous chunk 1, re-download of a
chunk that fails verification, nothing acknowledged unless verified."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshpipe import errors
from meshpipe.client import MeshClient
from meshpipe.headers import SendHeaders
from meshpipe.retry import RetryingClient
from meshpipe.transfer import (
    ReceiveFailure,
    ReceiveResult,
    find_sent_message,
    receive_all,
    receive_message,
    send_file,
)
from tests.client.conftest import RECIPIENT, MiB, write_csv
from tests.client.proxy import FaultProxy, Rule

CHUNK_UPLOAD = r"/messageexchange/X26ABC1/outbox/[0-9A-F]+/\d+"
FIRST_CHUNK = r"/messageexchange/X26ABC1/outbox"


def content(path: Path) -> bytes:
    return path.read_bytes()


def leftovers(directory: Path, name: str) -> list[Path]:
    """Files named like ``name`` (the destination or a temporary beside it)."""
    return [path for path in directory.iterdir() if name in path.name]


@pytest.fixture
def four_chunk_file(tmp_path: Path) -> Path:
    """16 MiB: chunks of 5, 5, 5 and 1 MiB."""
    return write_csv(tmp_path / "four.csv", 16 * MiB)


async def test_middle_chunks_in_flight_together_and_last_chunk_last(
    proxy: FaultProxy,
    proxied_sender: MeshClient,
    recipient: MeshClient,
    four_chunk_file: Path,
    workflow: str,
    tmp_path: Path,
) -> None:
    # Hold chunks 2 and 3 at the proxy until both have arrived: a sequential client would
    # never have two there at once.
    gather = proxy.add(
        Rule("POST", r"/messageexchange/X26ABC1/outbox/[0-9A-F]+/[23]", "gather", times=2, gather=2)
    )
    result = await send_file(
        proxied_sender,
        four_chunk_file,
        SendHeaders(to=RECIPIENT, workflow_id=workflow),
        chunk_size=5 * MiB,
        concurrency=4,
    )
    assert gather.hits == 2
    assert proxy.max_in_flight["chunk upload"] >= 2
    # chunk 4 (the last) started only after every other chunk had finished
    uploads = [event for event in proxy.events if event.chunk_range]
    last_start = next(
        index for index, e in enumerate(uploads) if e.kind == "start" and e.chunk_range == "4:4"
    )
    ends_before = {e.chunk_range for e in uploads[:last_start] if e.kind == "end"}
    assert ends_before == {"1:4", "2:4", "3:4"}
    destination = tmp_path / "out.csv"
    await receive_message(recipient, result.message_id, destination)
    assert content(destination) == content(four_chunk_file)


async def test_sequential_mode_sends_one_chunk_at_a_time(
    proxy: FaultProxy, proxied_sender: MeshClient, four_chunk_file: Path, workflow: str
) -> None:
    await send_file(
        proxied_sender,
        four_chunk_file,
        SendHeaders(to=RECIPIENT, workflow_id=workflow),
        chunk_size=5 * MiB,
        sequential=True,
    )
    assert proxy.max_in_flight["chunk upload"] == 1


async def test_transient_chunk_failures_are_retried(
    proxy: FaultProxy,
    proxied_sender: MeshClient,
    recipient: MeshClient,
    multi_file: Path,
    workflow: str,
    tmp_path: Path,
) -> None:
    busy = proxy.add(Rule("POST", CHUNK_UPLOAD, "status", times=2, status=503))
    dropped = proxy.add(Rule("POST", CHUNK_UPLOAD, "drop_after", times=1))
    result = await send_file(
        proxied_sender,
        multi_file,
        SendHeaders(to=RECIPIENT, workflow_id=workflow),
        chunk_size=5 * MiB,
    )
    assert (busy.hits, dropped.hits) == (2, 1)
    # chunks 2 and 3 once each, plus a try again for each of the three faults
    posts = [e for e in proxy.events if e.kind == "start" and e.chunk_range in ("2:3", "3:3")]
    assert len(posts) == 5
    destination = tmp_path / "out.csv"
    await receive_message(recipient, result.message_id, destination)
    assert content(destination) == content(multi_file)


async def test_ambiguous_first_chunk_is_never_duplicated(
    proxy: FaultProxy,
    proxied_sender: MeshClient,
    sender: MeshClient,
    recipient: MeshClient,
    multi_file: Path,
    workflow: str,
    tmp_path: Path,
) -> None:
    # MESH stores chunk 1 but the client never hears back.
    drop = proxy.add(Rule("POST", FIRST_CHUNK, "drop_after", times=1))
    result = await send_file(
        proxied_sender,
        multi_file,
        SendHeaders(to=RECIPIENT, workflow_id=workflow, local_id="ambiguous-first-chunk"),
        chunk_size=5 * MiB,
    )
    assert drop.hits == 1
    first_posts = [s for s in proxy.seen if s.method == "POST" and s.path.endswith("/outbox")]
    assert len(first_posts) == 1
    sent = [m for m in await sender.outbox_rich() if m.workflow_id == workflow]
    assert [m.message_id for m in sent] == [result.message_id]
    assert await recipient.list_inbox(workflow_filter=workflow) == [result.message_id]
    destination = tmp_path / "out.csv"
    await receive_message(recipient, result.message_id, destination)
    assert content(destination) == content(multi_file)


async def test_failed_first_chunk_not_stored_is_sent_again(
    proxy: FaultProxy,
    proxied_sender: MeshClient,
    recipient: MeshClient,
    workflow: str,
    tmp_path: Path,
) -> None:
    # a gateway error before MESH stored anything: the outbox shows nothing, so it is re-sent
    source = write_csv(tmp_path / "one.csv", 1000)
    gateway = proxy.add(Rule("POST", FIRST_CHUNK, "status", times=1, status=502))
    result = await send_file(
        proxied_sender, source, SendHeaders(to=RECIPIENT, workflow_id=workflow)
    )
    assert gateway.hits == 1
    assert await recipient.list_inbox(workflow_filter=workflow) == [result.message_id]


async def test_a_failing_chunk_cancels_the_send_and_is_named(
    proxy: FaultProxy,
    proxied_sender: MeshClient,
    sender: MeshClient,
    four_chunk_file: Path,
    workflow: str,
) -> None:
    failing = proxy.add(
        Rule("POST", r"/messageexchange/X26ABC1/outbox/[0-9A-F]+/3", "status", times=99, status=500)
    )
    with pytest.raises(errors.ChunkTransferError) as caught:
        await send_file(
            proxied_sender,
            four_chunk_file,
            SendHeaders(to=RECIPIENT, workflow_id=workflow),
            chunk_size=5 * MiB,
        )
    assert caught.value.chunk == 3
    assert failing.hits == proxied_sender.settings.retry.attempts
    assert "chunk 3 of 4" in str(caught.value)
    cause = caught.value.__cause__
    assert isinstance(cause, errors.MeshHTTPError) and cause.kind == "server_error"
    # the last chunk was never sent, so the message never became visible
    assert not any(e.chunk_range == "4:4" for e in proxy.events)
    assert caught.value.message_id is not None
    assert (await sender.track(caught.value.message_id)).status == "uploading"


async def test_source_change_stops_before_the_last_chunk(
    monkeypatch: pytest.MonkeyPatch,
    proxy: FaultProxy,
    proxied_sender: MeshClient,
    multi_file: Path,
    workflow: str,
) -> None:
    import meshpipe.transfer.upload

    monkeypatch.setattr(meshpipe.transfer.upload, "xxh3_128_file", lambda path: "0" * 32)
    with pytest.raises(errors.SourceChangedError, match="changed while it was being sent"):
        await send_file(
            proxied_sender,
            multi_file,
            SendHeaders(to=RECIPIENT, workflow_id=workflow),
            chunk_size=5 * MiB,
        )
    assert not any(e.chunk_range == "3:3" for e in proxy.events)


@pytest.mark.parametrize("codec", ["gzip", "none"])
async def test_corrupt_download_is_fetched_again(
    proxy: FaultProxy,
    sender: MeshClient,
    proxied_recipient: MeshClient,
    multi_file: Path,
    workflow: str,
    tmp_path: Path,
    codec: str,
) -> None:
    result = await send_file(
        sender,
        multi_file,
        SendHeaders(to=RECIPIENT, workflow_id=workflow),
        chunk_size=5 * MiB,
        codec=codec,
    )
    corrupt = proxy.add(Rule("GET", r"/messageexchange/X26ABC2/inbox/[0-9A-F]+/2", "corrupt"))
    dropped = proxy.add(Rule("GET", r"/messageexchange/X26ABC2/inbox/[0-9A-F]+/3", "drop_after"))
    destination = tmp_path / "out.csv"
    received = await receive_message(proxied_recipient, result.message_id, destination)
    assert (corrupt.hits, dropped.hits) == (1, 1)
    assert content(destination) == content(multi_file)
    assert received.acknowledged and "file xxh3-128" in received.verified


async def test_persistently_corrupt_chunk_is_named_and_not_acknowledged(
    proxy: FaultProxy,
    sender: MeshClient,
    proxied_recipient: MeshClient,
    recipient: MeshClient,
    multi_file: Path,
    workflow: str,
    tmp_path: Path,
) -> None:
    result = await send_file(
        sender,
        multi_file,
        SendHeaders(to=RECIPIENT, workflow_id=workflow),
        chunk_size=5 * MiB,
        codec="gzip",
    )
    corrupt = proxy.add(
        Rule("GET", r"/messageexchange/X26ABC2/inbox/[0-9A-F]+/2", "corrupt", times=99)
    )
    destination = tmp_path / "out.csv"
    with pytest.raises(errors.ChunkTransferError) as caught:
        await receive_message(proxied_recipient, result.message_id, destination, chunk_attempts=3)
    assert caught.value.chunk == 2
    assert corrupt.hits == 3
    assert leftovers(tmp_path, "out.csv") == []
    assert await recipient.list_inbox(workflow_filter=workflow) == [result.message_id]


async def test_progress_is_reported_per_chunk(
    sender: MeshClient, recipient: MeshClient, multi_file: Path, workflow: str, tmp_path: Path
) -> None:
    sent_progress: list[tuple[int, int]] = []
    received_progress: list[tuple[int, int]] = []
    size = len(content(multi_file))
    result = await send_file(
        sender,
        multi_file,
        SendHeaders(to=RECIPIENT, workflow_id=workflow),
        chunk_size=5 * MiB,
        progress=lambda done, total: sent_progress.append((done, total)),
    )
    await receive_message(
        recipient,
        result.message_id,
        tmp_path / "out.csv",
        progress=lambda done, total: received_progress.append((done, total)),
    )
    for calls in (sent_progress, received_progress):
        assert len(calls) == 3
        assert calls[-1] == (size, size)
        assert [done for done, _ in calls] == sorted(done for done, _ in calls)


async def test_cancellation_propagates_and_never_completes_the_message(
    proxy: FaultProxy,
    proxied_sender: MeshClient,
    sender: MeshClient,
    four_chunk_file: Path,
    workflow: str,
) -> None:
    # Hold every middle chunk at the proxy, then cancel the send while they are in flight.
    held = proxy.add(
        Rule(
            "POST",
            r"/messageexchange/X26ABC1/outbox/[0-9A-F]+/[23]",
            "gather",
            times=2,
            gather=99,
            gather_timeout=30,
        )
    )
    task = asyncio.create_task(
        send_file(
            proxied_sender,
            four_chunk_file,
            SendHeaders(to=RECIPIENT, workflow_id=workflow, local_id=f"{workflow}-cancelled"),
            chunk_size=5 * MiB,
        )
    )
    async with asyncio.timeout(30):
        await proxy.wait_until(
            lambda: sum(1 for e in proxy.events if e.kind == "start" and e.chunk_range) >= 3
        )
    assert held.hits == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    message_id = await find_sent_message(sender, f"{workflow}-cancelled")
    assert message_id is not None
    assert (await sender.track(message_id)).status == "uploading"
    assert not any(e.chunk_range == "4:4" for e in proxy.events)


async def test_lost_acknowledgement_is_retried_with_a_fresh_token(
    proxy: FaultProxy,
    sender: MeshClient,
    proxied_recipient: MeshClient,
    workflow: str,
) -> None:
    """A dropped connection on a kept-alive PUT: aiohttp would silently re-send it with the
    same token (live refuses a re-used token with 403); meshpipe retries with a fresh one."""
    message_id = await sender.send_message(SendHeaders(RECIPIENT, workflow), b"data")
    await proxied_recipient.head(message_id)  # a kept-alive connection to the proxy
    dropped = proxy.add(
        Rule("PUT", r"/messageexchange/X26ABC2/inbox/[0-9A-F]+/status/acknowledged", "drop_after")
    )
    await RetryingClient(proxied_recipient).acknowledge(message_id)
    assert dropped.hits == 1
    tokens = [e.authorization for e in proxy.events if e.kind == "start" and e.method == "PUT"]
    assert len(tokens) == 2
    assert tokens[0] != tokens[1]
    assert (await sender.track(message_id)).status == "acknowledged"


async def test_receive_all_keeps_going_past_a_failed_message(
    proxy: FaultProxy,
    sender: MeshClient,
    proxied_recipient: MeshClient,
    recipient: MeshClient,
    multi_file: Path,
    small_file: Path,
    workflow: str,
    tmp_path: Path,
) -> None:
    bad = await send_file(
        sender,
        multi_file,
        SendHeaders(to=RECIPIENT, workflow_id=workflow),
        chunk_size=5 * MiB,
        codec="gzip",
    )
    good = await send_file(sender, small_file, SendHeaders(to=RECIPIENT, workflow_id=workflow))
    corrupt = proxy.add(
        Rule("GET", rf"/messageexchange/X26ABC2/inbox/{bad.message_id}/2", "corrupt", times=99)
    )
    results = await receive_all(proxied_recipient, tmp_path / "in", workflow_filter=workflow)
    assert corrupt.hits == 3  # receive_message's three chunk attempts
    failures = [item for item in results if isinstance(item, ReceiveFailure)]
    received = [item for item in results if isinstance(item, ReceiveResult)]
    assert [item.message_id for item in failures] == [bad.message_id]
    assert isinstance(failures[0].error, errors.ChunkTransferError)
    assert [item.message_id for item in received] == [good.message_id]
    assert content(received[0].path) == content(small_file)
    assert await recipient.list_inbox(workflow_filter=workflow) == [bad.message_id]


async def test_duplicate_check_falls_back_to_tracking_by_local_id(
    proxy: FaultProxy,
    proxied_sender: MeshClient,
    recipient: MeshClient,
    multi_file: Path,
    workflow: str,
) -> None:
    """Where the rich outbox is not offered (it is not in the public spec), the ambiguous
    chunk 1 is looked up by local id through the (deprecated) tracking endpoint."""
    no_rich = proxy.add(
        Rule("GET", r"/messageexchange/X26ABC1/outbox/rich", "status", times=9, status=404)
    )
    dropped = proxy.add(Rule("POST", FIRST_CHUNK, "drop_after", times=1))
    result = await send_file(
        proxied_sender,
        multi_file,
        SendHeaders(to=RECIPIENT, workflow_id=workflow, local_id=f"{workflow}-fallback"),
        chunk_size=5 * MiB,
    )
    looked_up = [e.path for e in proxy.events if e.kind == "start" and "tracking" in e.path]
    assert looked_up == [f"/messageexchange/X26ABC1/outbox/tracking/{workflow}-fallback"]
    assert (no_rich.hits, dropped.hits) == (1, 1)
    assert await recipient.list_inbox(workflow_filter=workflow) == [result.message_id]
