"""Every endpoint against NHS's mesh-sandbox (real auth, file store), and the specific
exception for each refusal."""

from __future__ import annotations

import json
import logging
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from meshpipe import errors
from meshpipe.client import ClientSettings, MeshClient
from meshpipe.headers import SendHeaders
from meshpipe.models import ReportMessage
from meshpipe.retry import RetryingClient
from meshpipe.sync import SyncMeshClient
from meshpipe.transfer import (
    download_message,
    find_sent_message,
    receive_all,
    receive_message,
    receive_report,
    send_file,
)
from tests.client.conftest import RECIPIENT, SENDER, MiB, make_config
from tests.peers import SANDBOX_SHARED_KEY, Sandbox


def admin(sandbox: Sandbox, path: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        f"{sandbox.url}/messageexchange/admin/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
    return json.loads(text) if text.strip() else {}


async def test_ping_and_handshake(sender: MeshClient) -> None:
    status = await sender.ping()
    assert status.get("status") == "running"
    await sender.handshake()


async def test_send_list_head_download_ack_track(
    sender: MeshClient, recipient: MeshClient, workflow: str
) -> None:
    local_id = f"local-{uuid.uuid4().hex}"
    body = b"hello, MESH\n" * 1000
    headers = SendHeaders(
        RECIPIENT,
        workflow,
        local_id=local_id,
        subject="greetings",
        filename="hello.txt",
        checksum="sha256:abc",
    )
    message_id = await sender.send_message(headers, body)
    assert await recipient.list_inbox(workflow_filter=workflow) == [message_id]
    assert message_id in await recipient.list_inbox()
    assert await recipient.inbox_count() >= 1
    info = await recipient.message_info(message_id)
    assert not isinstance(info, ReportMessage)
    assert (info.sender, info.recipient, info.workflow_id) == (SENDER, RECIPIENT, workflow)
    assert (info.local_id, info.subject, info.filename) == (local_id, "greetings", "hello.txt")
    assert info.checksum_header == "sha256:abc"
    metadata, data = await download_message(recipient, message_id)
    assert data == body and metadata.chunk_count == 1
    tracking = await sender.track(message_id)
    assert tracking.local_id == local_id and tracking.status == "accepted"
    by_local = await sender.track_local_id(local_id)
    assert by_local.message_id == message_id
    assert await find_sent_message(sender, local_id) == message_id
    rich = await recipient.inbox_rich()
    assert any(item.message_id == message_id for item in rich)
    await recipient.acknowledge(message_id)
    await recipient.acknowledge(message_id)  # idempotent
    assert await recipient.list_inbox(workflow_filter=workflow) == []
    assert (await sender.track(message_id)).status == "acknowledged"


async def test_inbox_pages(sender: MeshClient, recipient: MeshClient, workflow: str) -> None:
    sent = [
        await sender.send_message(SendHeaders(RECIPIENT, workflow), b"x%d" % n) for n in range(12)
    ]
    pages = [
        page async for page in recipient.iter_inbox_pages(workflow_filter=workflow, max_results=10)
    ]
    assert [len(page) for page in pages] == [10, 2]
    assert sorted(await recipient.list_inbox(workflow_filter=workflow, max_results=10)) == sorted(
        sent
    )
    for message_id in sent:
        await recipient.acknowledge(message_id)


async def test_lookup_and_workflow_search(sender: MeshClient) -> None:
    found = await sender.lookup("X26", "TEST_WORKFLOW")
    assert [item.mailbox_id for item in found] == ["X26ABC2"]
    assert await sender.lookup("X26", "NO_SUCH_WORKFLOW") == []
    searched = await sender.workflow_search("TEST_WORKFLOW2")
    assert {item.mailbox_id for item in searched} == {"X26ABC1", "X26ABC2", "X26ABC3"}


async def test_wrong_password_is_authentication_error(
    sandbox: Sandbox, settings: ClientSettings
) -> None:
    config = make_config(sandbox.url, SENDER).with_overrides(password="wrong-password")
    async with MeshClient(config, settings) as client:
        with pytest.raises(errors.MeshAuthenticationError) as caught:
            await client.handshake()
    assert caught.value.status == 403
    assert "wrong-password" not in str(caught.value)


async def test_wrong_shared_key_and_unknown_mailbox(
    sandbox: Sandbox, settings: ClientSettings
) -> None:
    for config in (
        make_config(sandbox.url, SENDER, shared_key="NotTheKey"),
        make_config(sandbox.url, "X26NOPE9"),
    ):
        async with MeshClient(config, settings) as client:
            with pytest.raises(errors.MeshAuthenticationError):
                await client.list_inbox()


async def test_unknown_recipient(sender: MeshClient, workflow: str) -> None:
    with pytest.raises(errors.MeshUnknownRecipientError) as caught:
        await sender.send_message(SendHeaders("X26NOBODY", workflow), b"data")
    assert (caught.value.status, caught.value.code) == (417, "12")


async def test_missing_workflow(sender: MeshClient, small_file: Path) -> None:
    # MESH itself refuses a message without the header...
    with pytest.raises(errors.MeshHTTPError) as caught:
        await sender.request(
            "POST",
            f"/messageexchange/{SENDER}/outbox",
            headers={"mex-To": RECIPIENT},
            data=b"data",
            expect=(202,),
        )
    assert (caught.value.status, caught.value.kind) == (400, "missing_header")
    # ...and meshpipe refuses an empty one before sending (the sandbox would accept it).
    with pytest.raises(errors.MessageHeaderError, match="workflow id") as refused:
        await send_file(sender, small_file, SendHeaders(to=RECIPIENT, workflow_id=""))
    assert (refused.value.header, refused.value.rule) == ("mex-WorkflowID", "missing")


async def test_control_characters_refused_before_sending(
    sender: MeshClient, small_file: Path, workflow: str
) -> None:
    with pytest.raises(errors.MessageHeaderError, match="control character") as caught:
        await send_file(
            sender, small_file, SendHeaders(to=RECIPIENT, workflow_id=workflow, subject="a\tb")
        )
    assert (caught.value.header, caught.value.rule) == ("mex-Subject", "control_character")


async def test_empty_body_is_missing_data(sender: MeshClient, workflow: str) -> None:
    with pytest.raises(errors.MeshHTTPError) as caught:
        await sender.send_message(SendHeaders(RECIPIENT, workflow), b"")
    assert caught.value.kind == "missing_data"


async def test_chunk_size_refused_before_sending(
    sender: MeshClient, multi_file: Path, workflow: str
) -> None:
    local_id = f"refused-{uuid.uuid4().hex}"
    with pytest.raises(errors.ChunkSizeError):
        await send_file(
            sender,
            multi_file,
            SendHeaders(to=RECIPIENT, workflow_id=workflow, local_id=local_id),
            chunk_size=MiB,
        )
    assert await find_sent_message(sender, local_id) is None


async def test_not_found_gone_and_forbidden(
    sandbox: Sandbox, sender: MeshClient, recipient: MeshClient, workflow: str
) -> None:
    with pytest.raises(errors.MeshNotFoundError):
        await recipient.head("0" * 32)
    message_id = await sender.send_message(SendHeaders(RECIPIENT, workflow), b"data")
    async with MeshClient(make_config(sandbox.url, "X26ABC3")) as third:
        with pytest.raises(errors.MeshHTTPError) as forbidden:
            await download_message(third, message_id)
    assert forbidden.value.kind == "forbidden"
    admin(sandbox, f"message/{message_id}/event", {"status": "error", "code": "99"})
    with pytest.raises(errors.MeshHTTPError) as gone:
        await download_message(recipient, message_id)
    assert gone.value.kind == "gone"
    tracking = await sender.track(message_id)
    assert tracking.status == "error"


async def test_report_messages(
    sandbox: Sandbox, recipient: MeshClient, workflow: str, tmp_path: Path
) -> None:
    created = admin(
        sandbox,
        "report",
        {
            "mailbox_id": RECIPIENT,
            "code": "14",
            "description": "ignored for undeliverable",
            "workflow_id": workflow,
            "subject": "the original",
            "local_id": "original-local",
            "linked_message_id": "LINKED123",
        },
    )
    report_id = str(created["message_id"])
    info = await recipient.message_info(report_id)
    assert isinstance(info, ReportMessage)
    assert info.is_non_delivery and info.linked_message_id == "LINKED123"
    assert info.workflow_id == workflow and info.local_id == "original-local"
    with pytest.raises(errors.MeshReportError) as caught:
        await receive_message(recipient, report_id, tmp_path / "never.dat")
    assert isinstance(caught.value.report, ReportMessage)
    assert not (tmp_path / "never.dat").exists()
    assert report_id in await recipient.list_inbox(workflow_filter=workflow)
    results = await receive_all(recipient, tmp_path / "all", workflow_filter=workflow)
    assert [type(item) for item in results] == [ReportMessage]
    assert await recipient.list_inbox(workflow_filter=workflow) == []

    error_report = admin(
        sandbox,
        "report",
        {
            "mailbox_id": RECIPIENT,
            "code": "16",
            "description": "sender not allowed",
            "workflow_id": workflow,
            "status": "error",
        },
    )
    report = await receive_report(recipient, str(error_report["message_id"]))
    assert (report.status_code, report.status_description) == ("16", "sender not allowed")
    assert report.status_success == "ERROR"


def test_sync_facade(sandbox: Sandbox, workflow: str) -> None:
    with (
        SyncMeshClient(make_config(sandbox.url, SENDER)) as sender,
        SyncMeshClient(make_config(sandbox.url, RECIPIENT)) as recipient,
    ):
        assert sender.ping()["status"] == "running"
        sender.handshake()
        message_id = sender.send_message(SendHeaders(RECIPIENT, workflow), b"sync")
        assert recipient.list_inbox(workflow_filter=workflow) == [message_id]
        assert recipient.download(message_id)[1] == b"sync"
        recipient.acknowledge(message_id)
        assert sender.track(message_id).status == "acknowledged"


async def test_outbox_rich_pages_and_local_ids(sender: MeshClient, workflow: str) -> None:
    since = datetime.now(UTC) - timedelta(seconds=1)
    sent = {
        await sender.send_message(
            SendHeaders(RECIPIENT, workflow, local_id=f"{workflow}-{n}"), b"r%d" % n
        ): n
        for n in range(12)
    }
    listed = await sender.outbox_rich(start_time=since, max_results=10)
    ours = [item for item in listed if item.message_id in sent]
    assert len(ours) == 12
    assert {item.local_id for item in ours} == {f"{workflow}-{n}" for n in range(12)}
    assert all(item.status == "accepted" and item.workflow_id == workflow for item in ours)
    first_page = await sender.outbox_rich(start_time=since, max_results=10, max_pages=1)
    assert len(first_page) == 10
    assert await find_sent_message(sender, f"{workflow}-3", since=since) in sent
    assert await find_sent_message(sender, f"{workflow}-absent", since=since) is None


def test_sync_facade_transfers(sandbox: Sandbox, workflow: str, multi_file: Path) -> None:
    destination = multi_file.with_name("sync-received.csv")
    with (
        SyncMeshClient(make_config(sandbox.url, SENDER)) as sender,
        SyncMeshClient(make_config(sandbox.url, RECIPIENT)) as recipient,
    ):
        sent = sender.send_file(
            multi_file, SendHeaders(to=RECIPIENT, workflow_id=workflow), chunk_size=5 * MiB
        )
        received = recipient.receive_message(sent.message_id, destination)
    assert received.size == multi_file.stat().st_size
    assert destination.read_bytes() == multi_file.read_bytes()


async def test_no_secret_or_token_in_logs(
    sender: MeshClient,
    recipient: MeshClient,
    multi_file: Path,
    workflow: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    result = await send_file(
        sender, multi_file, SendHeaders(to=RECIPIENT, workflow_id=workflow), chunk_size=5 * MiB
    )
    await receive_message(recipient, result.message_id, tmp_path / "out.csv")
    with pytest.raises(errors.MeshUnknownRecipientError) as caught:
        await sender.send_message(SendHeaders("X26NOBODY", workflow), b"x")
    text = caplog.text + str(caught.value) + repr(caught.value) + repr(sender)
    assert SANDBOX_SHARED_KEY not in text
    assert "NHSMESH" not in text


async def test_sink_errors_are_not_network_errors(
    sender: MeshClient, recipient: MeshClient, workflow: str
) -> None:
    message_id = await sender.send_message(SendHeaders(RECIPIENT, workflow), b"x" * 100_000)

    async def full_disk(piece: bytes) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left") as caught:
        await recipient.download_chunk(message_id, 1, full_disk)
    assert not isinstance(caught.value, errors.MeshConnectionError)
    await recipient.acknowledge(message_id)


async def test_last_chunk_must_come_last(sender: MeshClient, workflow: str) -> None:
    """Why send_file sends chunk N only after every other chunk was accepted: the sandbox's
    file store answers 500 to a last chunk that overtakes a missing one, and the message stays
    uploading; sent again after the rest, it completes. Middle chunks may come in any order."""
    headers = SendHeaders(RECIPIENT, workflow)
    message_id = await sender.send_message(headers, b"1" * 100, chunk_count=4)
    with pytest.raises(errors.MeshHTTPError) as caught:
        await sender.send_chunk(message_id, 4, 4, b"4")
    assert caught.value.kind == "server_error"
    # the sandbox closes the connection after its 500: the retrying endpoints reconnect
    assert (await RetryingClient(sender).track(message_id)).status == "uploading"
    await sender.send_chunk(message_id, 3, 4, b"3")
    await sender.send_chunk(message_id, 2, 4, b"2")
    await sender.send_chunk(message_id, 2, 4, b"2")  # re-sending a middle chunk overwrites
    await sender.send_chunk(message_id, 4, 4, b"4")
    assert (await sender.track(message_id)).status == "accepted"
    with pytest.raises(errors.MeshMessageLockedError):
        await sender.send_chunk(message_id, 3, 4, b"3")
