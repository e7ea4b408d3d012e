"""The outbox of ``meshpipe watch`` against real servers (``meshpipe serve`` in a thread and
NHS's mesh-sandbox): complete files only, sent once through the ledger, then moved to
``sent/`` with their message id or to ``failed/`` with a reason; MESH down: left in place and
resumed by the next scan. Scans are driven one at a time (settle_seconds=0: a rule-folder
file is complete at the second scan that sees it unchanged), so nothing here waits on time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshpipe.client import ClientSettings, MeshClient
from meshpipe.ledger import Ledger
from meshpipe.models import MessageMetadata
from meshpipe.server import LocalMeshServer
from meshpipe.server.threaded import ServerThread
from meshpipe.synthetic import write_csv
from meshpipe.units import MiB
from meshpipe.watch import outbox as outbox_module
from meshpipe.watch.control import parse_control
from meshpipe.watch.folders import list_folder, make_folders
from meshpipe.watch.metrics import WatchMetrics
from meshpipe.watch.outbox import Outbox, SendOutcome, file_local_id
from meshpipe.watch.settings import FolderRule, MailboxFolders, MailboxSettings
from tests.client.conftest import FAST_RETRY, RECIPIENT, SENDER, make_config
from tests.durable.send_helpers import download, sent_messages
from tests.peers import SANDBOX_SHARED_KEY
from tests.watch.conftest import folders_in, put_faults

RULE_FOLDER = "extracts"


@dataclass
class Mailbox:
    """One sending mailbox's outbox, its folders, ledger and metrics, for a test."""

    outbox: Outbox
    folders: MailboxFolders
    metrics: WatchMetrics
    url: str
    workflow: str

    @property
    def out(self) -> Path:
        return self.folders.out

    def drop(self, name: str, data: bytes, control: bytes | None = None) -> Path:
        """Put ``name`` in out/ (data first), then its control file."""
        path = self.out / name
        path.write_bytes(data)
        if control is not None:
            (self.out / (name.rsplit(".", 1)[0] + ".ctl")).write_bytes(control)
        return path

    def ctl(self, **elements: str) -> bytes:
        values = {"To_DTS": RECIPIENT, "WorkflowId": self.workflow, **elements}
        body = "".join(f"<{name}>{value}</{name}>" for name, value in values.items())
        return f"<DTSControl><Version>1.0</Version>{body}</DTSControl>".encode()

    async def run(self) -> list[SendOutcome]:
        return await self.outbox.run_once(asyncio.Event())

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"mailbox": SENDER, **labels})
        return value or 0.0


def make_outbox(
    url: str, workflow: str, root: Path, ledger: Ledger, client: MeshClient, **settings: Any
) -> Mailbox:
    folders = folders_in(root)
    make_folders(folders.all().values())
    mailbox = MailboxSettings(
        profile="a",
        config=make_config(url, SENDER),
        folders=folders,
        rules=(FolderRule(RULE_FOLDER, RECIPIENT, workflow, subject="by rule"),),
        **settings,
    )
    metrics = WatchMetrics()
    outbox = Outbox(mailbox, client, ledger, metrics, settle_seconds=0, concurrency=3)
    return Mailbox(outbox, folders, metrics, url, workflow)


def client_for(url: str) -> MeshClient:
    settings = ClientSettings(retry=FAST_RETRY, request_timeout=30, transfer_timeout=120)
    return MeshClient(make_config(url, SENDER), settings)


@pytest.fixture
async def mailbox(
    url: str, workflow: str, tmp_path: Path, ledger: Ledger
) -> AsyncIterator[Mailbox]:
    async with client_for(url) as client:
        yield make_outbox(url, workflow, tmp_path / "a", ledger, client)


async def received(url: str, message_id: str) -> tuple[bytes, MessageMetadata]:
    async with MeshClient(make_config(url, RECIPIENT), ClientSettings(retry=FAST_RETRY)) as c:
        metadata = await c.head(message_id)
    return await asyncio.to_thread(download, url, message_id), metadata


def names(folder: Path) -> list[str]:
    """The files in ``folder`` (not the rule folders in out/)."""
    return sorted(path.name for path in folder.iterdir() if not path.is_dir())


# --- sending ------------------------------------------------------------------------------


async def test_a_data_file_with_its_control_file_is_sent_and_moved_to_sent(
    mailbox: Mailbox,
) -> None:
    data = b"nhs,number\n1,9434765919\n" * 100
    mailbox.drop(
        "extract.dat",
        data,
        mailbox.ctl(LocalId="EXTRACT-1", Subject="monthly", PartnerId="", Compress="Y"),
    )

    [outcome] = await mailbox.run()

    assert outcome.outcome == "sent" and outcome.message_id
    message_id = outcome.message_id
    body, metadata = await received(mailbox.url, message_id)
    assert body == data
    assert (metadata.workflow_id, metadata.local_id) == (mailbox.workflow, "EXTRACT-1")
    assert (metadata.subject, metadata.filename) == ("monthly", "extract.dat")
    assert names(mailbox.out) == []
    sent = mailbox.folders.sent
    assert names(sent) == [f"extract_{message_id}.ctl", f"extract_{message_id}.dat"]
    assert outcome.moved_to == sent / f"extract_{message_id}.dat"
    assert outcome.moved_to.read_bytes() == data
    status = parse_control((sent / f"extract_{message_id}.ctl").read_bytes(), "sent.ctl")
    assert status.dts_id == message_id and status.local_id == "EXTRACT-1"
    assert status.from_dts == SENDER and status.compress is True
    assert status.status_record is not None and status.status_record.status == "SUCCESS"
    assert mailbox.sample("meshpipe_transfers_total", direction="send", outcome="sent") == 1
    assert mailbox.sample("meshpipe_sent_bytes_total") == len(data)
    assert mailbox.sample("meshpipe_sent_chunks_total") == 1
    assert mailbox.sample("meshpipe_transfer_duration_seconds_count", direction="send") == 1


async def test_a_rule_folder_file_is_sent_once_it_stays_unchanged(mailbox: Mailbox) -> None:
    assert await mailbox.run() == []  # the first scan makes the folders
    path = mailbox.out / RULE_FOLDER / "report.csv"
    path.write_bytes(b"a,b\n")
    assert await mailbox.run() == []  # first seen
    assert mailbox.sample("meshpipe_outbox_backlog_files") == 1
    with path.open("ab") as handle:
        handle.write(b"1,2\n")
    assert await mailbox.run() == []  # changed since: not yet

    [outcome] = await mailbox.run()

    assert outcome.outcome == "sent" and outcome.message_id
    body, metadata = await received(mailbox.url, outcome.message_id)
    assert body == b"a,b\n1,2\n"
    assert (metadata.workflow_id, metadata.subject) == (mailbox.workflow, "by rule")
    assert metadata.local_id == file_local_id(SENDER, outcome.item.data)
    assert names(mailbox.out / RULE_FOLDER) == []
    sent = names(mailbox.folders.sent)
    assert sent == [f"report_{outcome.message_id}.csv", f"report_{outcome.message_id}.ctl"]
    assert mailbox.sample("meshpipe_outbox_backlog_files") == 1  # as scanned, before the send
    await mailbox.run()
    assert mailbox.sample("meshpipe_outbox_backlog_files") == 0


async def test_incomplete_and_unsafe_entries_are_never_sent(
    mailbox: Mailbox, tmp_path: Path
) -> None:
    await mailbox.run()
    secret = tmp_path / "secret.txt"
    secret.write_text("not for MESH")
    mailbox.drop("waiting.dat", b"no control file yet")
    mailbox.drop(".hidden.dat", b"x", mailbox.ctl())
    mailbox.drop("copying.dat.part", b"x")
    (mailbox.out / RULE_FOLDER / "link.csv").symlink_to(secret)
    (mailbox.out / "linked.dat").symlink_to(secret)
    (mailbox.out / "linked.ctl").write_bytes(mailbox.ctl())
    os.mkfifo(mailbox.out / RULE_FOLDER / "pipe.csv")

    for _ in range(3):
        assert await mailbox.run() == []

    assert await sent_messages(mailbox.url, mailbox.workflow) == []
    assert "waiting.dat" in names(mailbox.out) and names(mailbox.folders.sent) == []


async def test_several_files_are_sent_concurrently_each_once(mailbox: Mailbox) -> None:
    for number in range(7):
        mailbox.drop(f"f{number}.dat", f"file {number}\n".encode(), mailbox.ctl())

    outcomes = await mailbox.run()

    assert sorted(o.outcome for o in outcomes) == ["sent"] * 7
    assert len({o.message_id for o in outcomes}) == 7
    assert len(await sent_messages(mailbox.url, mailbox.workflow)) == 7
    assert await mailbox.run() == []


async def test_nothing_starts_once_stopping_is_set(
    mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    for number in range(3):
        mailbox.drop(f"f{number}.dat", b"x", mailbox.ctl())
    stopping = asyncio.Event()
    assert await mailbox.outbox.run_once(stopping_set()) == []
    send = mailbox.outbox.send
    mailbox.outbox.concurrency = 1

    async def send_then_stop(item: Any) -> SendOutcome:
        stopping.set()
        return await send(item)

    monkeypatch.setattr(mailbox.outbox, "send", send_then_stop)
    outcomes = await mailbox.outbox.run_once(stopping)

    assert [o.outcome for o in outcomes] == ["sent"]
    assert len(names(mailbox.out)) == 4  # two pairs left for the next run


def stopping_set() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


# --- sent once ----------------------------------------------------------------------------


@pytest.mark.parametrize("local_id", [None, "GIVEN-ID"])
async def test_a_file_sent_but_not_moved_is_already_sent_not_sent_again(
    mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch, local_id: str | None
) -> None:
    """As after a crash between the send and the move."""
    extra = {"LocalId": local_id} if local_id else {}
    mailbox.drop("x.dat", b"once\n", mailbox.ctl(**extra))
    real_move = Outbox._move_sent

    def crash(self: Outbox, item: Any, message_id: str) -> Path:
        raise OSError(5, "simulated crash before the move")

    monkeypatch.setattr(Outbox, "_move_sent", crash)
    [first] = await mailbox.run()
    assert first.outcome == "sent" and first.reason and "not moved" in first.reason
    assert names(mailbox.out) == ["x.ctl", "x.dat"]
    monkeypatch.setattr(Outbox, "_move_sent", real_move)

    [second] = await mailbox.run()

    assert second.outcome == "already-sent" and second.message_id == first.message_id
    assert [m for m, _ in await sent_messages(mailbox.url, mailbox.workflow)] == [first.message_id]
    assert names(mailbox.folders.sent) == [f"x_{first.message_id}.ctl", f"x_{first.message_id}.dat"]
    assert mailbox.sample("meshpipe_transfers_total", direction="send", outcome="already-sent") == 1


async def test_a_crash_between_the_status_file_and_the_move_writes_no_second_status_file(
    mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox.drop("x.dat", b"once\n", mailbox.ctl())
    real_move = outbox_module.move_new

    def crash(*args: Any) -> Path:
        raise OSError(28, "simulated: no space left")

    monkeypatch.setattr(outbox_module, "move_new", crash)
    [first] = await mailbox.run()
    monkeypatch.setattr(outbox_module, "move_new", real_move)

    [second] = await mailbox.run()

    assert (first.outcome, second.outcome) == ("sent", "already-sent")
    message_id = first.message_id
    assert names(mailbox.folders.sent) == [f"x_{message_id}.ctl", f"x_{message_id}.dat"]
    assert names(mailbox.out) == []


async def test_a_local_id_reused_by_another_file_goes_to_failed(mailbox: Mailbox) -> None:
    mailbox.drop("a.dat", b"first\n", mailbox.ctl(LocalId="DAILY"))
    [first] = await mailbox.run()
    mailbox.drop("b.dat", b"second\n", mailbox.ctl(LocalId="DAILY"))

    [second] = await mailbox.run()

    assert first.outcome == "sent" and second.outcome == "failed"
    assert second.reason and "LocalId 'DAILY' was already used" in second.reason
    assert names(mailbox.folders.failed) == ["b.ctl", "b.dat", "b.dat.reason.txt"]
    assert len(await sent_messages(mailbox.url, mailbox.workflow)) == 1


def test_the_generated_local_id_follows_the_file(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"1")
    [entry] = list_folder(tmp_path).files
    assert file_local_id("X26ABC1", entry) == file_local_id("x26abc1", entry)
    assert file_local_id("X26ABC1", entry) != file_local_id("X26ABC2", entry)
    (tmp_path / "x").write_bytes(b"22")
    [changed] = list_folder(tmp_path).files
    assert file_local_id("X26ABC1", changed) != file_local_id("X26ABC1", entry)


# --- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("control", "said"),
    [
        (b"<DTSControl><To_DTS>X26ABC2</To_DTS>", "not well-formed XML"),
        (b"<DTSControl><Colour>red</Colour></DTSControl>", "<Colour> is not a DTSControl"),
        (b"<DTSControl><WorkflowId>W</WorkflowId></DTSControl>", "<To_DTS> is missing"),
        (
            b"<DTSControl><From_DTS>X26OTHER</From_DTS><To_DTS>X26ABC2</To_DTS>"
            b"<WorkflowId>W</WorkflowId></DTSControl>",
            "this folder sends from X26ABC1",
        ),
        (
            b"<DTSControl><To_DTS>X26NOBODY9</To_DTS><WorkflowId>W</WorkflowId></DTSControl>",
            "check the recipient mailbox id",
        ),
    ],
    ids=["broken-xml", "unknown-element", "no-recipient", "other-sender", "unknown-recipient"],
)
async def test_a_file_that_cannot_be_sent_goes_to_failed_with_a_reason(
    mailbox: Mailbox, control: bytes, said: str
) -> None:
    data = b"payload\n"
    mailbox.drop("bad.dat", data, control)
    first = await mailbox.run()
    if first == []:  # a control file that does not parse is judged once it stays the same
        first = await mailbox.run()

    [outcome] = first

    assert outcome.outcome == "failed" and outcome.reason and said in outcome.reason
    failed = mailbox.folders.failed
    assert names(failed) == ["bad.ctl", "bad.dat", "bad.dat.reason.txt"]
    assert (failed / "bad.dat").read_bytes() == data
    reason = (failed / "bad.dat.reason.txt").read_text()
    assert said in reason and "move the data file" in reason
    if outcome.item.problem is None:  # a control file that was read: its ERROR status
        status = parse_control((failed / "bad.ctl").read_bytes(), "failed.ctl")
        assert status.status_record is not None and status.status_record.status == "ERROR"
        assert said in status.status_record.description
    else:  # one that could not be read is kept as it was
        assert (failed / "bad.ctl").read_bytes() == control
    assert names(mailbox.out) == []
    assert await sent_messages(mailbox.url, mailbox.workflow) == []
    assert mailbox.sample("meshpipe_transfers_total", direction="send", outcome="failed") == 1


async def test_a_control_file_still_being_written_is_not_judged_at_once(mailbox: Mailbox) -> None:
    mailbox.drop("x.dat", b"x", b"<DTSControl><To_DTS>X26A")
    assert await mailbox.run() == []
    (mailbox.out / "x.ctl").write_bytes(mailbox.ctl())

    [outcome] = await mailbox.run()

    assert outcome.outcome == "sent"


async def test_a_workflow_the_recipient_may_not_receive_goes_to_failed(
    tmp_path: Path, ledger: Ledger
) -> None:
    thread = ServerThread(LocalMeshServer(rules="strict", shared_key=SANDBOX_SHARED_KEY))
    server = thread.start()
    try:
        async with client_for(server.url) as client:
            box = make_outbox(server.url, "NOT_A_WORKFLOW", tmp_path / "a", ledger, client)
            box.drop("x.dat", b"x", box.ctl())
            [refused] = await box.run()
            box.drop("y.dat", b"y", box.ctl(WorkflowId="TEST_WORKFLOW"))
            [allowed] = await box.run()
    finally:
        thread.stop()
    assert refused.outcome == "failed" and refused.reason
    assert "may not receive this workflow" in refused.reason
    assert allowed.outcome == "sent"


# --- MESH down ----------------------------------------------------------------------------


async def test_mesh_unreachable_defers_the_file_and_a_later_scan_sends_it(
    meshpipe_url: str, workflow: str, tmp_path: Path, ledger: Ledger
) -> None:
    with socket_bound_nowhere() as dead_url:
        async with client_for(dead_url) as client:
            down = make_outbox(dead_url, workflow, tmp_path / "a", ledger, client)
            down.drop("x.dat", b"later\n", down.ctl())
            [deferred] = await down.run()
    assert deferred.outcome == "deferred" and deferred.reason
    assert names(down.out) == ["x.ctl", "x.dat"]

    async with client_for(meshpipe_url) as client:
        up = make_outbox(meshpipe_url, workflow, tmp_path / "a", ledger, client)
        [sent] = await up.run()

    assert sent.outcome == "sent" and sent.message_id
    assert (await received(meshpipe_url, sent.message_id))[0] == b"later\n"


async def test_a_send_interrupted_by_mesh_failing_resumes_at_the_next_scan(
    workflow: str, tmp_path: Path, ledger: Ledger
) -> None:
    thread = ServerThread(LocalMeshServer(rules="sandbox", shared_key=SANDBOX_SHARED_KEY))
    server = thread.start()
    source = write_csv(tmp_path / "big.csv", 11 * MiB)  # three chunks of 5 MiB
    try:
        async with client_for(server.url) as client:
            box = make_outbox(
                server.url, workflow, tmp_path / "a", ledger, client, chunk_size=5 * MiB
            )
            await box.run()
            os.link(source, box.out / RULE_FOLDER / "big.csv")
            await box.run()
            await put_faults(
                server.url, [{"kind": "status", "route": "send_chunk", "status": 503, "times": 0}]
            )
            [deferred] = await box.run()
            await put_faults(server.url, [])
            [resumed] = await box.run()
        assert deferred.outcome == "deferred" and "503" in (deferred.reason or "")
        assert resumed.outcome == "sent" and resumed.message_id
        assert [m for m, _ in await sent_messages(server.url, workflow)] == [resumed.message_id]
        body, _ = await received(server.url, resumed.message_id)
        assert body == source.read_bytes()
        assert box.sample("meshpipe_sent_chunks_total") == 2  # chunk 1 went before the failure
    finally:
        thread.stop()


@contextlib.contextmanager
def socket_bound_nowhere() -> Iterator[str]:
    """A URL on a local port that nothing listens on (bound, never listening: refused)."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{bound.getsockname()[1]}"


def test_settle_and_concurrency_are_checked(tmp_path: Path, ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Outbox(
            MailboxSettings("a", make_config("http://x", SENDER), folders_in(tmp_path)),
            None,  # type: ignore[arg-type]
            ledger,
            WatchMetrics(),
            settle_seconds=0,
            concurrency=0,
        )
