"""``meshpipe watch`` with ``fleet = true``: a complete outbox file is submitted to the fleet
(real worker processes, the PostgreSQL ledger, ``meshpipe serve``) instead of sent by watch,
stays in out/ while the workers send it, and is moved to sent/ (or failed/) once the ledger
shows its send ended; a watch killed mid-send and started again sends it once; a file changed
while the fleet sends it is never moved to sent/ as sent."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from meshpipe._meshpipe import xxh3_128_file
from meshpipe.client import ClientSettings, MeshClient
from meshpipe.config import MeshConfig
from meshpipe.errors import ConfigError
from meshpipe.ledger import Ledger, SendRecord
from meshpipe.synthetic import write_csv
from meshpipe.units import MiB
from meshpipe.watch.cli import build_parser, settings_from
from meshpipe.watch.control import parse_control
from meshpipe.watch.fleet_outbox import FleetOutbox
from meshpipe.watch.folders import list_folder, make_folders
from meshpipe.watch.health import Health
from meshpipe.watch.metrics import WatchMetrics
from meshpipe.watch.outbox import SendOutcome, file_local_id
from meshpipe.watch.service import WatchService
from meshpipe.watch.settings import (
    FolderRule,
    MailboxSettings,
    WatchSettings,
    load_watch_settings,
)
from tests.client.conftest import FAST_RETRY
from tests.fleet.conftest import RECIPIENT, SENDER, Fleet
from tests.fleet.test_send import receive
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY
from tests.watch.conftest import folders_in

CHUNK = 5 * MiB  # MESH's smallest chunk: a few MiB make a multi-chunk message
RULE_FOLDER = "extracts"
DEADLINE = 60.0


def config(url: str, mailbox: str = SENDER) -> MeshConfig:
    return MeshConfig(url, mailbox, SANDBOX_PASSWORD, SANDBOX_SHARED_KEY)


def mailbox_settings(url: str, root: Path, workflow: str) -> MailboxSettings:
    folders = folders_in(root)
    make_folders(folders.all().values())
    return MailboxSettings(
        profile="a",
        config=config(url),
        folders=folders,
        rules=(FolderRule(RULE_FOLDER, RECIPIENT, workflow),),
        chunk_size=CHUNK,
        receive=False,
    )


def ctl(workflow: str, local_id: str, to: str = RECIPIENT) -> bytes:
    return (
        "<DTSControl><Version>1.0</Version><MessageType>Data</MessageType>"
        f"<WorkflowId>{workflow}</WorkflowId><To_DTS>{to}</To_DTS>"
        f"<LocalId>{local_id}</LocalId></DTSControl>"
    ).encode()


def drop(out: Path, stem: str, size: int, control: bytes) -> Path:
    """A data file of ``size`` bytes (old enough to be complete), then its control file."""
    data = write_csv(out / f"{stem}.dat", size)
    (out / f"{stem}.ctl").write_bytes(control)
    return data


def files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.is_file())


class Watching:
    """A FleetOutbox of the sender on the fleet's ledger, its metrics, driven scan by scan."""

    def __init__(self, fleet: Fleet, settings: MailboxSettings, client: MeshClient) -> None:
        self.fleet = fleet
        self.settings = settings
        self.client = client
        self.ledger = Ledger.open(fleet.ledger)
        self.metrics = WatchMetrics()
        self.stall_seconds = 300.0
        self.outbox = self.restarted()

    def restarted(self) -> FleetOutbox:
        """A new outbox, knowing nothing of what the last one submitted (a restarted watch)."""
        self.outbox = FleetOutbox(
            self.settings,
            self.client,
            self.ledger,
            self.metrics,
            location=self.fleet.ledger,
            settle_seconds=0,
            concurrency=2,
            chunks_per_job=1,
            stall_seconds=self.stall_seconds,
        )
        return self.outbox

    async def run(self) -> list[SendOutcome]:
        return await self.outbox.run_once(asyncio.Event())

    async def until_ended(self) -> list[SendOutcome]:
        """Scans until one of them reports an outcome other than submitted or deferred."""
        deadline = time.monotonic() + DEADLINE
        seen: list[SendOutcome] = []
        while time.monotonic() < deadline:
            outcomes = await self.run()
            seen += outcomes
            if any(item.outcome not in ("submitted", "deferred") for item in outcomes):
                return seen
            await asyncio.sleep(0.2)
        raise AssertionError(f"no send ended: {seen}\n{self.fleet.log_text()}")

    def sample(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"mailbox": SENDER, **labels})
        return value or 0.0


@pytest.fixture
async def watching(fleet: Fleet, tmp_path: Path, workflow: str) -> AsyncIterator[Watching]:
    settings = mailbox_settings(fleet.url, tmp_path / "a", workflow)
    async with MeshClient(config(fleet.url), ClientSettings(retry=FAST_RETRY)) as client:
        running = Watching(fleet, settings, client)
        try:
            yield running
        finally:
            running.ledger.close()


async def inbox_of(url: str, workflow: str) -> list[str]:
    async with MeshClient(config(url, RECIPIENT), ClientSettings(retry=FAST_RETRY)) as client:
        return await client.list_inbox(workflow_filter=workflow)


async def received_hash(url: str, message_id: str, where: Path) -> str:
    await receive(url, message_id, where)
    return xxh3_128_file(where)


# --- sent by the fleet ----------------------------------------------------------------------


async def test_a_file_in_the_outbox_is_sent_by_several_workers_and_moved_to_sent(
    watching: Watching, fleet: Fleet, tmp_path: Path, workflow: str
) -> None:
    out = watching.settings.folders.out
    source = drop(out, "extract", 5 * CHUNK, ctl(workflow, "EXTRACT-1"))
    expected = xxh3_128_file(source)
    await asyncio.to_thread(fleet.start_all)
    first = await watching.run()
    assert [item.outcome for item in first] == ["submitted"], first
    assert watching.outbox.in_flight == [source] and source.exists()
    # Every later scan looks at it in the ledger, none submits it again, until it is sent.
    outcomes = first + await watching.until_ended()
    assert [item.outcome for item in outcomes] == ["submitted", "sent"], fleet.log_text()
    message_id = outcomes[1].message_id
    assert message_id is not None
    record = watching.ledger.find_send(SENDER, "EXTRACT-1")
    assert isinstance(record, SendRecord) and record.state == "completed"
    assert record.sequence == 1 and record.message_id == message_id
    workers = {chunk.worker for chunk in watching.ledger.chunks(record)}
    assert len(workers) >= 2 and workers <= {"w1", "w2", "w3"}, workers
    # Moved as a send of watch's own: the data and its status control file in sent/.
    sent = watching.settings.folders.sent
    assert files(sent) == [f"extract_{message_id}.ctl", f"extract_{message_id}.dat"]
    status = parse_control((sent / f"extract_{message_id}.ctl").read_bytes(), "status")
    assert status.dts_id == message_id
    assert files(out) == [] and watching.outbox.in_flight == []
    assert xxh3_128_file(sent / f"extract_{message_id}.dat") == expected
    assert await received_hash(fleet.url, message_id, tmp_path / "received") == expected
    labels = {"direction": "send", "outcome": "sent"}
    assert watching.sample("meshpipe_transfers_total", **labels) == 1
    assert watching.sample("meshpipe_sent_chunks_total") == 5
    assert watching.sample("meshpipe_sent_bytes_total") == 5 * CHUNK


async def test_a_send_no_worker_takes_shows_as_stalled_until_a_worker_starts(
    watching: Watching, fleet: Fleet, workflow: str, caplog: pytest.LogCaptureFixture
) -> None:
    watching.stall_seconds = 0.5
    watching.restarted()
    drop(watching.settings.folders.out, "waiting", 2 * CHUNK, ctl(workflow, "WAITING-1"))
    assert [item.outcome for item in await watching.run()] == ["submitted"]
    assert watching.sample("meshpipe_fleet_sends_in_flight") == 1
    await asyncio.sleep(0.6)  # no worker: nothing moves
    assert await watching.run() == []
    assert watching.sample("meshpipe_fleet_send_stalled_seconds") >= 0.5
    [warning] = [r.getMessage() for r in caplog.records if "has not moved" in r.getMessage()]
    assert "waiting.dat" in warning and "since it was submitted" in warning, warning
    assert f"queue meshpipe-{SENDER}" in warning, warning
    await watching.run()  # warned once per stall
    assert len([r for r in caplog.records if "has not moved" in r.getMessage()]) == 1
    await asyncio.to_thread(fleet.start_all, names=("w1",))
    ended = [item for item in await watching.until_ended() if item.outcome != "submitted"]
    assert [item.outcome for item in ended] == ["sent"], (ended, fleet.log_text())
    assert watching.sample("meshpipe_fleet_sends_in_flight") == 0
    assert watching.sample("meshpipe_fleet_send_stalled_seconds") == 0


async def test_a_fleet_send_that_fails_ends_in_failed_with_the_reason(
    watching: Watching, fleet: Fleet, workflow: str
) -> None:
    out = watching.settings.folders.out
    drop(out, "lost", 2 * CHUNK, ctl(workflow, "LOST-1", to="X26NOPE1"))
    await asyncio.to_thread(fleet.start_all, names=("w1",))
    outcomes = await watching.until_ended()
    ended = [item for item in outcomes if item.outcome != "submitted"]
    assert [item.outcome for item in ended] == ["failed"], (ended, fleet.log_text())
    reason = ended[0].reason or ""
    assert "chunk 1 failed on worker w1" in reason and "MESH refused" in reason, reason
    failed = watching.settings.folders.failed
    assert files(failed) == ["lost.ctl", "lost.dat", "lost.dat.reason.txt"]
    assert reason in (failed / "lost.dat.reason.txt").read_text()
    assert files(out) == [] and files(watching.settings.folders.sent) == []
    labels = {"direction": "send", "outcome": "failed"}
    assert watching.sample("meshpipe_transfers_total", **labels) == 1


async def test_a_file_changed_while_the_fleet_sends_it_is_not_moved_to_sent(
    watching: Watching, fleet: Fleet, tmp_path: Path, workflow: str
) -> None:
    out = watching.settings.folders.out
    source = drop(out, "edited", 2 * CHUNK, ctl(workflow, "EDITED-1"))
    assert [item.outcome for item in await watching.run()] == ["submitted"]
    with source.open("ab") as file:  # changed before any worker reads it
        file.write(b"one more row\n")
    expected = xxh3_128_file(source)
    await asyncio.to_thread(fleet.start_all, names=("w1",))
    first = watching.ledger.find_send(SENDER, "EDITED-1")
    assert first is not None
    deadline = time.monotonic() + DEADLINE
    while watching.ledger.transfer(first.id).state != "failed":
        assert time.monotonic() < deadline, fleet.log_text()
        await asyncio.sleep(0.1)
    # The fleet failed it (source changed); watch leaves the file, takes it as it is now.
    outcomes = await watching.run()
    assert outcomes[0].outcome == "deferred" and "changed" in (outcomes[0].reason or "")
    assert source.exists() and files(watching.settings.folders.sent) == []
    assert files(watching.settings.folders.failed) == []
    ended = [item for item in await watching.until_ended() if item.outcome != "submitted"]
    assert [item.outcome for item in ended] == ["sent"], (ended, fleet.log_text())
    again = watching.ledger.find_send(SENDER, "EDITED-1")
    assert again is not None and again.sequence == 2 and again.state == "completed"
    assert "changed since it was submitted" in (watching.ledger.transfer(first.id).error or "")
    message_id = ended[0].message_id
    assert message_id is not None and await inbox_of(fleet.url, workflow) == [message_id]
    assert await received_hash(fleet.url, message_id, tmp_path / "received") == expected


def test_fleet_needs_a_postgresql_ledger(tmp_path: Path) -> None:
    mailbox = mailbox_settings("https://localhost:1", tmp_path / "a", "WF")
    settings = WatchSettings(
        mailboxes=(mailbox,), fleet=True, ledger=str(tmp_path / "ledger.sqlite3")
    )
    with pytest.raises(ConfigError, match="needs the PostgreSQL ledger"):
        asyncio.run(WatchService(settings, WatchMetrics(), Health([SENDER])).run(asyncio.Event()))


# --- a real watch process, killed mid-send -------------------------------------------------


def write_watch_config(root: Path, url: str, ledger: str, workflow: str) -> Path:
    lines = [
        "[profiles.a]",
        f'url = "{url}"',
        f'mailbox = "{SENDER}"',
        f'password = "{SANDBOX_PASSWORD}"',
        f'shared_key = "{SANDBOX_SHARED_KEY}"',
        "",
        "[watch]",
        'listen = "127.0.0.1:0"',
        "scan_interval = 0.2",
        "settle_seconds = 0.2",
        "shutdown_grace = 2",
        f'ledger = "{ledger}"',
        "fleet = true",
        "fleet_chunks_per_job = 1",
        "",
        "[[watch.mailbox]]",
        'profile = "a"',
        f'root = "{root / "a"}"',
        "receive = false",
        f"chunk_size = {CHUNK}",
        "",
        "[[watch.mailbox.rule]]",
        f'folder = "{RULE_FOLDER}"',
        f'to = "{RECIPIENT}"',
        f'workflow_id = "{workflow}"',
        "",
    ]
    path = root / "meshpipe.toml"
    path.write_text("\n".join(lines))
    return path


async def start_watch(config_file: Path, log: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "meshpipe", "watch", "--config", str(config_file), "-v",
        stdout=asyncio.subprocess.DEVNULL, stderr=log.open("ab"),
        env={**os.environ, "MESHPIPE_CONFIG": "", "HOME": "/nonexistent-home-for-tests"},
    )  # fmt: skip


async def until(condition: Callable[[], bool], what: str, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}\n{logs()}")
        await asyncio.sleep(0.05)


async def test_a_watch_killed_mid_send_and_started_again_sends_the_file_once(
    fleet: Fleet, tmp_path: Path, workflow: str
) -> None:
    config_file = write_watch_config(tmp_path, fleet.url, fleet.ledger, workflow)
    folder = tmp_path / "a" / "out" / RULE_FOLDER
    folder.mkdir(parents=True)
    source = write_csv(folder / "nightly.csv", 5 * CHUNK)
    expected = xxh3_128_file(source)
    [entry] = list_folder(folder).files
    local_id = file_local_id(SENDER, entry)
    sent = tmp_path / "a" / "sent"
    watch_log = tmp_path / "logs" / "watch.log"

    def logs() -> str:
        return f"{watch_log.read_text(errors='replace')[-3000:]}\n{fleet.log_text()}"

    # One worker, two requests a second: killed with watch right after chunk 1, so the send
    # is under way (and cannot end) while watch is down and while it starts again.
    await asyncio.to_thread(fleet.start_all, "--max-rps", "2", names=("w1",))
    with Ledger.open(fleet.ledger) as ledger:

        def under_way() -> bool:
            record = ledger.find_send(SENDER, local_id)
            return record is not None and record.message_id is not None

        watch = await start_watch(config_file, watch_log)
        try:
            await until(under_way, "chunk 1 sent", logs)
        finally:
            watch.send_signal(signal.SIGKILL)
            fleet.kill("w1")
            del fleet.processes["w1"]  # dead: the ones started later are waited for
            await watch.wait()
        record = ledger.find_send(SENDER, local_id)
        assert record is not None and record.state == "uploading", record
        assert source.exists() and files(sent) == []
        watch = await start_watch(config_file, watch_log)
        try:
            # It finds the send by its local id and takes it up (not a new one) ...
            resubmitted = "nightly.csv submitted again to the fleet"
            await until(lambda: resubmitted in watch_log.read_text(), "submitted again", logs)
            assert source.exists() and files(sent) == []
            # ... and moves the file once other workers (w1's jobs taken over) finish it.
            await asyncio.to_thread(fleet.start_all, names=("w2", "w3"))
            await until(lambda: sent.is_dir() and len(files(sent)) == 2, "moved to sent/", logs)
        finally:
            watch.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(watch.wait(), DEADLINE) == 0, logs()
        record = ledger.find_send(SENDER, local_id)
        assert record is not None and record.state == "completed" and record.sequence == 1
    message_id = record.message_id
    assert message_id is not None
    assert files(sent) == [f"nightly_{message_id}.csv", f"nightly_{message_id}.ctl"]
    assert not source.exists()
    assert await inbox_of(fleet.url, workflow) == [message_id]  # one message, sent once
    assert await received_hash(fleet.url, message_id, tmp_path / "received") == expected


# --- the switch ------------------------------------------------------------------------------


def test_fleet_is_switched_on_for_watch_or_per_mailbox(tmp_path: Path) -> None:
    config_file = write_watch_config(tmp_path, "https://localhost:1", "postgresql://x/y", "WF")
    text = config_file.read_text()
    settings = load_watch_settings(config_file)
    assert settings.fleet and settings.fleet_chunks_per_job == 1
    assert settings.uses_fleet(settings.mailboxes[0])
    # A mailbox's own setting wins over [watch]'s.
    config_file.write_text(text.replace('profile = "a"\n', 'profile = "a"\nfleet = false\n'))
    own = load_watch_settings(config_file)
    assert own.fleet and own.mailboxes[0].fleet is False and not own.uses_fleet(own.mailboxes[0])
    # Off unless asked: --fleet switches it on.
    config_file.write_text(text.replace("fleet = true\n", ""))
    off = load_watch_settings(config_file)
    assert not off.fleet and not off.uses_fleet(off.mailboxes[0])
    args = build_parser().parse_args(["--config", str(config_file), "--fleet"])
    assert settings_from(args).uses_fleet(off.mailboxes[0])
    assert not settings_from(build_parser().parse_args(["--config", str(config_file)])).fleet
    for right, wrong, message in (
        ("fleet = true", 'fleet = "yes"', "fleet: 'yes' is not a bool"),
        ("fleet_chunks_per_job = 1", "fleet_chunks_per_job = 0", "must be at least 1"),
    ):
        config_file.write_text(text.replace(right, wrong, 1))
        with pytest.raises(ConfigError, match=message):
            load_watch_settings(config_file)
