"""Durable ``meshpipe send`` beyond the crash points: a source edited before the resume is
refused with nothing sent; a local id already sent is not sent again (from the ledger, or
from MESH's outbox); ``--again`` sends a second message; a message MESH lost is replaced by a
new one, said so; two processes resuming one send never both write; ``--resume LOCAL_ID``."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest

from meshpipe import cli
from meshpipe.client import ClientSettings, MeshClient
from meshpipe.durable import DurableSend
from meshpipe.headers import SendHeaders
from meshpipe.ledger import Ledger, resolve_ledger_location
from meshpipe.server import Fault, FaultPlan, LocalMeshServer
from meshpipe.synthetic import write_csv
from meshpipe.units import MiB
from tests.client.conftest import FAST_RETRY, RECIPIENT, SENDER, make_config
from tests.durable.send_helpers import (
    HoldingProxy,
    SendCommand,
    accepted_chunks,
    kill_when_held,
    ledger_send,
    received_digest,
    sent_messages,
)
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY


async def crash_after_chunk_1(command: SendCommand, proxy: HoldingProxy, *more: str) -> None:
    """Run ``command`` and SIGKILL it while chunk 2 is held (chunk 1 accepted)."""
    proxy.hold(2)
    await kill_when_held(await command.start(*more), proxy)
    await proxy.drop_held_and_settle()


def rewrite_keeping_size_and_mtime(path: Path) -> None:
    """Change one byte in place and put the modification time back: only the hash tells."""
    info = path.stat()
    with path.open("r+b") as file:
        file.seek(info.st_size // 2)
        byte = file.read(1)
        file.seek(info.st_size // 2)
        file.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def append(path: Path) -> None:
    with path.open("ab") as file:
        file.write(b"one more line\n")


@pytest.mark.parametrize(
    ("edit", "said"),
    [(rewrite_keeping_size_and_mtime, "xxh3-128"), (append, "size")],
    ids=["same-size-and-mtime", "appended"],
)
async def test_a_source_edited_before_the_resume_is_refused_and_nothing_sent(
    proxy: HoldingProxy, source: Path, workflow: str, edit: object, said: str
) -> None:
    command = SendCommand(proxy.url, source, workflow)
    await crash_after_chunk_1(command, proxy)
    assert callable(edit)
    await asyncio.to_thread(edit, source)
    mark, requests = len(proxy.uploads), len(proxy.seen)

    finished = await command.run()

    assert finished.status == 1
    assert "changed since the interrupted send" in finished.err and said in finished.err
    assert "nothing was sent" in finished.err and "--again" in finished.err
    assert proxy.uploads_since(mark) == [] and len(proxy.seen) == requests
    assert finished.out == ""


async def test_a_local_id_already_sent_prints_its_message_and_sends_nothing(
    proxy: HoldingProxy, source: Path, workflow: str
) -> None:
    command = SendCommand(proxy.url, source, workflow, ("--local-id", "EXTRACT-2026-12"))
    first = await command.run()
    assert first.status == 0, first.err
    mark = len(proxy.uploads)

    second = await command.run()

    assert second.status == 0, second.err
    assert second.out == first.out
    assert "already sent" in second.err and first.out.strip() in second.err
    assert proxy.uploads_since(mark) == []
    assert len(await sent_messages(proxy.upstream, workflow)) == 1


async def test_again_sends_a_second_message_with_the_next_sequence(
    proxy: HoldingProxy, source: Path, workflow: str
) -> None:
    command = SendCommand(proxy.url, source, workflow, ("--local-id", "EXTRACT-AGAIN"))
    first = await command.run()
    mark = len(proxy.uploads)

    second = await command.run("--again")

    assert second.status == 0, second.err
    assert second.out != first.out
    assert proxy.uploads_since(mark) == [1, 2, 3, 4, 5, 6]
    sent = {item[0] for item in await sent_messages(proxy.upstream, workflow)}
    assert sent == {first.out.strip(), second.out.strip()}
    assert ledger_send("EXTRACT-AGAIN").sequence == 2


async def test_a_local_id_in_meshs_outbox_but_not_the_ledger_is_not_sent_again(
    proxy: HoldingProxy, source: Path, workflow: str
) -> None:
    command = SendCommand(proxy.url, source, workflow, ("--local-id", "SENT-ELSEWHERE"))
    first = await command.run("--no-ledger")
    assert first.status == 0, first.err
    mark = len(proxy.uploads)

    second = await command.run()

    assert second.status == 0, second.err
    assert second.out == first.out
    assert "found in MESH's outbox" in second.err
    assert proxy.uploads_since(mark) == []


async def test_a_message_mesh_lost_is_sent_again_as_a_new_message(
    proxy: HoldingProxy, source: Path, workflow: str, tmp_path: Path
) -> None:
    command = SendCommand(proxy.url, source, workflow)
    await crash_after_chunk_1(command, proxy)
    lost = ledger_send().message_id
    async with (
        aiohttp.ClientSession() as session,
        session.delete(f"{proxy.upstream}/messageexchange/admin/reset/{RECIPIENT}") as answer,
    ):
        assert answer.status < 300
    mark = len(proxy.uploads)

    finished = await command.run()

    assert finished.status == 0, finished.err
    message_id = finished.out.strip()
    assert lost is not None and message_id != lost
    assert f"MESH no longer holds message {lost}" in finished.err
    assert "sending the file as a new message" in finished.err
    assert proxy.uploads_since(mark) == [1, 2, 3, 4, 5, 6]
    assert [item[0] for item in await sent_messages(proxy.upstream, workflow)] == [message_id]
    digest = await asyncio.to_thread(received_digest, proxy.upstream, message_id, source, tmp_path)
    record = ledger_send()
    assert digest == record.source.xxh3_128 and record.message_id == message_id
    with Ledger.open(resolve_ledger_location(None, None)) as ledger:
        kinds = [event.kind for event in ledger.events(record)]
    assert "restarted" in kinds and kinds[-2:] == ["completed", "released"]


async def test_two_processes_resuming_one_send_never_both_write(
    proxy: HoldingProxy, source: Path, workflow: str
) -> None:
    command = SendCommand(proxy.url, source, workflow)
    await crash_after_chunk_1(command, proxy)
    proxy.hold(3)
    resuming = await command.start("--sequential")
    await kill_when_held_or_fail(resuming, proxy)
    requests = len(proxy.seen)

    second = await command.run()

    assert second.status == 1
    assert "is held by meshpipe process" in second.err and f"{resuming.pid}@" in second.err
    assert len(proxy.seen) == requests, "the refused process sent requests"
    proxy.release()
    out, err = await asyncio.wait_for(resuming.communicate(), 120)
    assert resuming.returncode == 0, err.decode()
    assert [item[0] for item in await sent_messages(proxy.upstream, workflow)] == [
        out.decode().strip()
    ]


async def kill_when_held_or_fail(process: asyncio.subprocess.Process, proxy: HoldingProxy) -> None:
    """Wait until ``process`` has a chunk held at the proxy (it is not killed)."""
    waiter = asyncio.ensure_future(proxy.held.wait())
    exited = asyncio.ensure_future(process.wait())
    done, _ = await asyncio.wait({waiter, exited}, timeout=120, return_when="FIRST_COMPLETED")
    exited.cancel()
    assert waiter in done, "the resuming process never reached the held chunk"


async def test_resume_by_local_id_alone_finishes_the_recorded_send(
    proxy: HoldingProxy, source: Path, workflow: str
) -> None:
    command = SendCommand(proxy.url, source, workflow, ("--local-id", "RESUME-ME"))
    await crash_after_chunk_1(command, proxy)
    crashed = ledger_send("RESUME-ME")
    before = accepted_chunks(crashed)
    mark = len(proxy.uploads)
    connection = command.argv()[command.argv().index("--url") : command.argv().index("--to")]
    process = await asyncio.create_subprocess_exec(
        *command.argv()[:4],
        "--resume",
        "RESUME-ME",
        *connection,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)

    assert process.returncode == 0, err.decode()
    assert out.decode().strip() == crashed.message_id
    assert f"{len(before)} of 6 chunks already accepted" in err.decode()
    assert proxy.uploads_since(mark) == sorted(set(range(1, 7)) - before)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["x.csv", "--no-ledger", "--again"], "need the ledger"),
        (["x.csv", "--resume", "L", "--local-id", "L"], "--resume LOCAL_ID names the send"),
        ([], "give the PATH"),
    ],
)
def test_send_usage_errors(argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.main(["send", *argv, "--url", "http://127.0.0.1:9", "--mailbox", SENDER])
    assert status == 2
    assert said in capsys.readouterr().err


@pytest.mark.parametrize(("route", "chunk"), [("send_chunk", 2), ("send", 1)])
async def test_retries_of_a_chunk_are_recorded_as_events(
    tmp_path: Path, route: str, chunk: int
) -> None:
    """Chunk 1's retries too (a 503 to it is ambiguous: MESH is asked first, then it is
    posted again)."""
    source = write_csv(tmp_path / "three.csv", 11 * MiB)
    plan = FaultPlan((Fault("status", route=route, chunk=chunk, status=503, retry_after=0),))
    async with (
        LocalMeshServer(shared_key=SANDBOX_SHARED_KEY, rules="sandbox", faults=plan) as server,
        MeshClient(make_config(server.url, SENDER), ClientSettings(retry=FAST_RETRY)) as client,
    ):
        with Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
            headers = SendHeaders(to=RECIPIENT, workflow_id="TEST_WORKFLOW")
            result = await DurableSend(client, ledger, source, headers, chunk_size=5 * MiB).run()
            record = ledger.find_send(SENDER, result.local_id)
            assert record is not None and record.state == "completed"
            retries = [e.detail for e in ledger.events(record) if e.kind == "retry"]
    assert result.outcome == "sent" and result.sent is not None
    assert [(r["chunk"], r["attempt"]) for r in retries] == [(chunk, 2)]
    assert "503" in str(retries[0]["error"])
    assert SANDBOX_PASSWORD not in str(retries)


async def test_a_chunk_refused_with_410_replaces_the_message(
    proxy: HoldingProxy, source: Path, workflow: str, tmp_path: Path
) -> None:
    command = SendCommand(proxy.url, source, workflow)
    await crash_after_chunk_1(command, proxy)
    lost = ledger_send().message_id
    plan = {"faults": [{"kind": "status", "route": "send_chunk", "status": 410}]}
    async with (
        aiohttp.ClientSession() as session,
        session.put(f"{proxy.upstream}/messageexchange/admin/faults", json=plan) as answer,
    ):
        assert answer.status == 200
    mark = len(proxy.uploads)

    finished = await command.run()

    assert finished.status == 0, finished.err
    message_id = finished.out.strip()
    assert message_id != lost
    assert f"MESH no longer holds message {lost} (HTTP 410 to chunk 2)" in finished.err
    # the new message from chunk 1; chunks 3.. of the old one may have gone alongside chunk 2,
    # but never its last chunk
    resent = proxy.uploads_since(mark)
    assert resent.count(1) == 1 and resent.count(6) == 1 and set(resent) == set(range(1, 7))
    digest = await asyncio.to_thread(received_digest, proxy.upstream, message_id, source, tmp_path)
    assert digest == ledger_send().source.xxh3_128
    with Ledger.open(resolve_ledger_location(None, None)) as ledger:
        kinds = [event.kind for event in ledger.events(ledger_send())]
    assert kinds.count("failed") == 1 and "restarted" in kinds


async def test_a_file_sent_anew_with_again_is_not_resumed_as_the_old_send(
    proxy: HoldingProxy, source: Path, workflow: str
) -> None:
    command = SendCommand(proxy.url, source, workflow)
    await crash_after_chunk_1(command, proxy)
    await asyncio.to_thread(append, source)
    refused = await command.run()
    assert refused.status == 1 and "changed since the interrupted send" in refused.err
    anew = await command.run("--again")
    assert anew.status == 0, anew.err

    later = await command.run()

    assert later.status == 0, later.err
    assert "resuming" not in later.err and later.out not in ("", anew.out)
    statuses = sorted(status or "" for _, status in await sent_messages(proxy.upstream, workflow))
    assert statuses == ["accepted", "accepted", "uploading"]  # the interrupted one never done
