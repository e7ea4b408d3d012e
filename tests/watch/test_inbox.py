"""The inbox of ``meshpipe watch`` against real servers: every message lands in the inbox
folder with its sidecar and control file before it is acknowledged, exactly once (a poll run
again after a failed acknowledgement writes nothing twice), remote names stay inside the
folder, and reports are filed apart and counted, never written as data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshpipe.client import ClientSettings, MeshClient
from meshpipe.headers import SendHeaders
from meshpipe.ledger import Ledger
from meshpipe.watch.control import parse_control
from meshpipe.watch.inbox import CONTROL_SUFFIX, SIDECAR_SUFFIX, Inbox
from meshpipe.watch.metrics import WatchMetrics
from meshpipe.watch.settings import MailboxSettings
from tests.client.conftest import FAST_RETRY, RECIPIENT, SENDER, make_config
from tests.watch.conftest import folders_in, put_faults


def client_for(url: str, mailbox: str) -> MeshClient:
    return MeshClient(make_config(url, mailbox), ClientSettings(retry=FAST_RETRY))


def inbox_for(url: str, root: Path, client: MeshClient, ledger: Ledger, workflow: str) -> Inbox:
    settings = MailboxSettings(
        profile="b",
        config=make_config(url, RECIPIENT),
        folders=folders_in(root),
        workflow_filter=workflow,
    )
    return Inbox(settings, client, ledger, WatchMetrics(), state_dir=root / "state")


async def send(url: str, workflow: str, data: bytes, **headers: Any) -> str:
    async with client_for(url, SENDER) as sender:
        return await sender.send_message(SendHeaders(RECIPIENT, workflow, **headers), data)


def files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


async def test_a_message_lands_with_its_sidecar_and_control_file_then_is_acknowledged(
    url: str, workflow: str, tmp_path: Path, ledger: Ledger
) -> None:
    message_id = await send(url, workflow, b"a,b\n1,2\n", filename="../../x.csv", local_id="L-1")
    async with client_for(url, RECIPIENT) as client:
        inbox = inbox_for(url, tmp_path, client, ledger, workflow)
        result = await inbox.poll_once()
        assert await client.list_inbox(workflow_filter=workflow) == []
    folder = tmp_path / "in"
    assert files(folder) == ["x.csv", f"x.csv{CONTROL_SUFFIX}", f"x.csv{SIDECAR_SUFFIX}"]
    assert (folder / "x.csv").read_bytes() == b"a,b\n1,2\n"
    assert not (tmp_path / "x.csv").exists()  # ../../ stayed inside the folder
    sidecar = json.loads((folder / f"x.csv{SIDECAR_SUFFIX}").read_text())
    assert sidecar["message_id"] == message_id and sidecar["local_id"] == "L-1"
    assert sidecar["headers"]["mex-workflowid"] == workflow and sidecar["xxh3_128"]
    control = parse_control((folder / f"x.csv{CONTROL_SUFFIX}").read_bytes(), "received")
    assert control.dts_id == message_id and control.workflow_id == workflow
    assert control.from_dts == SENDER and control.local_id == "L-1"
    [received] = result.received
    assert received.outcome == "delivered" and not result.failures
    sample = inbox.metrics.registry.get_sample_value
    labels = {"mailbox": RECIPIENT, "direction": "receive", "outcome": "received"}
    assert sample("meshpipe_transfers_total", labels) == 1
    assert sample("meshpipe_received_bytes_total", {"mailbox": RECIPIENT}) == 8
    stamp = sample(
        "meshpipe_last_message_received_timestamp_seconds",
        {"mailbox": RECIPIENT, "workflow_id": workflow},
    )
    assert stamp is not None and stamp > 0


async def test_messages_of_one_name_and_names_of_other_files_never_collide(
    url: str, workflow: str, tmp_path: Path, ledger: Ledger
) -> None:
    first = await send(url, workflow, b"one\n", filename="x.csv")
    second = await send(url, workflow, b"two\n", filename="x.csv")
    third = await send(url, workflow, b"three\n", filename="x.csv.ctl")  # another's ctl name
    async with client_for(url, RECIPIENT) as client:
        result = await inbox_for(url, tmp_path, client, ledger, workflow).poll_once()
    assert len(result.received) == 3 and not result.failures
    paths = {item.result.message_id: item.result.path for item in result.received}
    contents = {message_id: path.read_bytes() for message_id, path in paths.items()}
    assert contents == {first: b"one\n", second: b"two\n", third: b"three\n"}
    for path in paths.values():
        sidecar = json.loads(path.with_name(path.name + SIDECAR_SUFFIX).read_text())
        assert paths[sidecar["message_id"]] == path
        assert path.with_name(path.name + CONTROL_SUFFIX).is_file()
    assert len(files(tmp_path / "in")) == 9


async def test_a_failed_acknowledgement_leaves_the_message_and_the_next_poll_writes_nothing_twice(
    meshpipe_url: str, workflow: str, tmp_path: Path, ledger: Ledger
) -> None:
    message_id = await send(meshpipe_url, workflow, b"once\n", filename="once.csv")
    await put_faults(meshpipe_url, [{"kind": "status", "route": "ack", "status": 500, "times": 0}])
    try:
        async with client_for(meshpipe_url, RECIPIENT) as client:
            inbox = inbox_for(meshpipe_url, tmp_path, client, ledger, workflow)
            failed = await inbox.poll_once()
            assert [item[0] for item in failed.failures] == [message_id]
            assert await client.list_inbox(workflow_filter=workflow) == [message_id]
            await put_faults(meshpipe_url, [])
            again = await inbox.poll_once()
            assert await client.list_inbox(workflow_filter=workflow) == []
    finally:
        await put_faults(meshpipe_url, [])
    assert [item.outcome for item in again.received] == ["already-delivered"]
    assert files(tmp_path / "in") == ["once.csv", "once.csv.ctl", "once.csv.meshpipe.json"]
    assert (tmp_path / "in" / "once.csv").read_bytes() == b"once\n"


async def test_reports_are_filed_apart_counted_and_acknowledged(
    meshpipe_url: str, workflow: str, tmp_path: Path, ledger: Ledger
) -> None:
    linked = await send(meshpipe_url, workflow, b"data\n")
    report = {
        "mailbox_id": RECIPIENT,
        "code": "14",
        "description": "Message not collected by recipient after 5 days",
        "workflow_id": workflow,
        "linked_message_id": linked,
        "local_id": "L-REPORTED",
    }
    async with aiohttp.ClientSession() as session:
        url = f"{meshpipe_url}/messageexchange/admin/report"
        async with session.post(url, json=report) as answer:
            assert answer.status == 200
            report_id = (await answer.json())["message_id"]
    async with client_for(meshpipe_url, RECIPIENT) as client:
        inbox = inbox_for(meshpipe_url, tmp_path, client, ledger, workflow)
        result = await inbox.poll_once()
        assert await client.list_inbox(workflow_filter=workflow) == []
    [filed] = result.reports
    assert filed.message_id == report_id and filed.linked_message_id == linked
    document = json.loads((tmp_path / "reports" / f"{report_id}.json").read_text())
    assert document["linked_message_id"] == linked and document["status_code"] == "14"
    assert [item.result.message_id for item in result.received] == [linked]
    name = f"{linked}.dat"  # no mex-FileName: named by its id, its control file beside it
    assert files(tmp_path / "in") == [f"{linked}.ctl", name, f"{name}.meshpipe.json"]
    count = inbox.metrics.registry.get_sample_value(
        "meshpipe_reports_received_total",
        {"mailbox": RECIPIENT, "workflow_id": workflow, "code": "14"},
    )
    assert count == 1


async def test_a_file_at_a_sidecar_name_that_is_not_ours_is_never_replaced(
    meshpipe_url: str, workflow: str, tmp_path: Path, ledger: Ledger
) -> None:
    folder = tmp_path / "in"
    folder.mkdir(parents=True)
    (folder / "y.csv.meshpipe.json").write_text("someone else's\n")
    message_id = await send(meshpipe_url, workflow, b"y\n", filename="y.csv")
    async with client_for(meshpipe_url, RECIPIENT) as client:
        result = await inbox_for(meshpipe_url, tmp_path, client, ledger, workflow).poll_once()
    [received] = result.received
    assert received.result.path.name == f"{message_id}-y.csv"
    assert (folder / "y.csv.meshpipe.json").read_text() == "someone else's\n"


@pytest.mark.parametrize("listed", [0, 1, 499, 500, 1000])
def test_a_full_page_means_poll_again(listed: int) -> None:
    from meshpipe.watch.inbox import PollResult

    assert PollResult(listed=listed).full_page == (listed in (500, 1000))
