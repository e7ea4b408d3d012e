"""The watch service in this process: files dropped in one mailbox's outbox folder (with a
control file, and in a rule folder) arrive in another's inbox folder byte-exact with their
metadata, against both peers; MESH failing opens the circuit (not ready, platform down,
retries counted by cause) and its recovery closes it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from meshpipe.client import ClientSettings
from meshpipe.config import RetryPolicy
from meshpipe.watch.health import Health
from meshpipe.watch.metrics import WatchMetrics
from meshpipe.watch.service import Breaker, WatchService
from meshpipe.watch.settings import FolderRule, MailboxSettings, WatchSettings
from tests.client.conftest import RECIPIENT, SENDER, make_config
from tests.watch.conftest import folders_in, put_faults


def watch_settings(url: str, root: Path, workflow: str, **numbers: Any) -> WatchSettings:
    sender = MailboxSettings(
        profile="a",
        config=make_config(url, SENDER),
        folders=folders_in(root / "a"),
        rules=(FolderRule("drop", RECIPIENT, workflow),),
        receive=False,
    )
    recipient = MailboxSettings(
        profile="b",
        config=make_config(url, RECIPIENT),
        folders=folders_in(root / "b"),
        send=False,
        workflow_filter=workflow,
    )
    return WatchSettings(
        mailboxes=(sender, recipient),
        state_dir=str(root / "state"),
        settle_seconds=0.05,
        **numbers,
    )


def control(workflow: str, local_id: str) -> bytes:
    return (
        f"<DTSControl><Version>1.0</Version><AddressType>DTS</AddressType>"
        f"<MessageType>Data</MessageType><WorkflowId>{workflow}</WorkflowId>"
        f"<From_DTS>{SENDER}</From_DTS><To_DTS>{RECIPIENT}</To_DTS>"
        f"<Subject>nightly</Subject><LocalId>{local_id}</LocalId></DTSControl>"
    ).encode()


async def run_once(settings: WatchSettings) -> tuple[WatchMetrics, Health]:
    metrics = WatchMetrics()
    health = Health(mailbox.mailbox for mailbox in settings.mailboxes)
    await WatchService(settings, metrics, health).run(asyncio.Event(), once=True)
    return metrics, health


async def test_files_dropped_in_one_outbox_arrive_in_the_other_inbox_folder(
    url: str, workflow: str, tmp_path: Path
) -> None:
    settings = watch_settings(url, tmp_path, workflow)
    out = tmp_path / "a" / "out"
    (out / "drop").mkdir(parents=True)
    (out / "night.dat").write_bytes(b"with a control file\n")
    (out / "night.ctl").write_bytes(control(workflow, "NIGHT-1"))
    (out / "drop" / "extract.csv").write_bytes(b"id,value\n1,2\n")
    inbox = tmp_path / "b" / "in"
    deadline = time.monotonic() + 30
    # One round per run (as from cron): the rule-folder file goes once it is 1 s old.
    while not (inbox / "extract.csv.ctl").exists():
        assert time.monotonic() < deadline, "not delivered"
        _, health = await run_once(settings)
        await asyncio.sleep(0.2)
    assert (inbox / "night.dat").read_bytes() == b"with a control file\n"
    assert (inbox / "extract.csv").read_bytes() == b"id,value\n1,2\n"
    sidecar = json.loads((inbox / "night.dat.meshpipe.json").read_text())
    assert sidecar["local_id"] == "NIGHT-1" and sidecar["subject"] == "nightly"
    assert (inbox / "extract.csv.ctl").is_file()
    sent = sorted(path.name for path in (tmp_path / "a" / "sent").iterdir())
    assert len(sent) == 4 and all("_" in name for name in sent)
    assert list(out.iterdir()) == [out / "drop"] and list((out / "drop").iterdir()) == []
    assert health.problems() == []


def test_the_breaker_opens_after_the_threshold_and_closes_on_success() -> None:
    settings = WatchSettings(
        mailboxes=(
            MailboxSettings(
                profile="a",
                config=make_config("http://127.0.0.1:1", SENDER),
                folders=folders_in(Path("/nowhere/a")),
            ),
        ),
        failure_threshold=2,
        max_backoff=8,
    )
    health, metrics = Health([SENDER]), WatchMetrics()
    breaker = Breaker(settings, health[SENDER], metrics)

    def up() -> float | None:
        return metrics.registry.get_sample_value("meshpipe_platform_up", {"mailbox": SENDER})

    breaker.failure("poll", RuntimeError("down"))
    assert not breaker.open and breaker.backoff() == 0 and up() == 0
    for _ in range(10):
        breaker.failure("poll", RuntimeError("down"))
    assert breaker.open and health[SENDER].circuit_open
    assert 4 <= breaker.backoff() <= 8  # doubling, capped at max_backoff
    assert any("circuit open" in item for item in health.problems())
    breaker.success()
    assert not breaker.open and not health[SENDER].circuit_open and up() == 1


async def test_mesh_failing_opens_the_circuit_and_its_recovery_closes_it(
    meshpipe_url: str,
    workflow: str,
    tmp_path: Path,
) -> None:
    settings = watch_settings(meshpipe_url, tmp_path, workflow, failure_threshold=2)
    metrics, health = WatchMetrics(), Health([SENDER, RECIPIENT])
    quick = ClientSettings(retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02))
    service = WatchService(settings, metrics, health, client_settings=quick)
    down = [
        {"kind": "status", "route": route, "status": 503, "times": 0}
        for route in ("handshake", "inbox", "send")
    ]
    await put_faults(meshpipe_url, down)
    try:
        await service.run(asyncio.Event(), once=True)  # the handshake and the poll fail
        assert health[RECIPIENT].circuit_open and not health[RECIPIENT].handshake_ok
        assert any(RECIPIENT in item for item in health.problems())
        sample = metrics.registry.get_sample_value
        assert sample("meshpipe_platform_up", {"mailbox": RECIPIENT}) == 0
        retries = sample("meshpipe_retries_total", {"mailbox": RECIPIENT, "cause": "http_503"})
        assert retries is not None and retries >= 4
    finally:
        await put_faults(meshpipe_url, [])
    await service.run(asyncio.Event(), once=True)
    assert health.problems() == []
    assert metrics.registry.get_sample_value("meshpipe_platform_up", {"mailbox": RECIPIENT}) == 1
    polled = metrics.registry.get_sample_value(
        "meshpipe_last_poll_success_timestamp_seconds", {"mailbox": RECIPIENT}
    )
    assert polled is not None and polled > 0


async def test_credentials_refused_open_the_circuit_and_say_what_to_check(
    meshpipe_url: str, workflow: str, tmp_path: Path
) -> None:
    """A 401 is not retried, but it is a failure of the mailbox like any other: the circuit
    opens (backing off) and readiness names the credentials."""
    settings = watch_settings(meshpipe_url, tmp_path, workflow, failure_threshold=2)
    metrics, health = WatchMetrics(), Health([SENDER, RECIPIENT])
    service = WatchService(settings, metrics, health)
    refused = [
        {"kind": "status", "route": route, "status": 401, "times": 0}
        for route in ("handshake", "inbox")
    ]
    await put_faults(meshpipe_url, refused)
    try:
        await service.run(asyncio.Event(), once=True)  # the handshake and the poll refused
    finally:
        await put_faults(meshpipe_url, [])
    assert health[RECIPIENT].circuit_open and not health[RECIPIENT].handshake_ok
    sample = metrics.registry.get_sample_value
    assert sample("meshpipe_platform_up", {"mailbox": RECIPIENT}) == 0
    assert any("check the mailbox id, password and shared key" in p for p in health.problems())
    # Refused credentials are not tried again at once.
    assert sample("meshpipe_retries_total", {"mailbox": RECIPIENT, "cause": "http_401"}) is None


async def test_a_failed_handshake_is_tried_again_soon_not_a_day_later(
    meshpipe_url: str, workflow: str, tmp_path: Path
) -> None:
    settings = watch_settings(meshpipe_url, tmp_path, workflow, poll_interval=1)
    metrics, health = WatchMetrics(), Health([SENDER, RECIPIENT])
    once = ClientSettings(retry=RetryPolicy(attempts=1))
    service = WatchService(settings, metrics, health, client_settings=once)
    fault = {"kind": "status", "route": "handshake", "status": 503, "times": 2}
    await put_faults(meshpipe_url, [fault])  # the first handshake of each mailbox fails
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    try:
        deadline = time.monotonic() + 30
        while not all(item.handshake_ok for item in health):
            assert not running.done(), running
            assert time.monotonic() < deadline, health.problems()
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
        await put_faults(meshpipe_url, [])
    assert health.problems() == []
