"""The order of an upload on the wire, seen by a raw server that records when each body's bytes
reach it across connections (tests/client/wire.py): in order, bodies arrive one after another
in chunk order, each completed only once the one before was accepted, while the next is already
on its way; concurrent bodies overlap (so the check can fail); a retry keeps the order."""

from __future__ import annotations

from pathlib import Path

import pytest
from typing_extensions import Unpack

from meshpipe import cli
from meshpipe.client import ClientSettings, MeshClient
from meshpipe.config import MeshConfig
from meshpipe.headers import SendHeaders
from meshpipe.transfer import SendJournal, SendOptions, send_file
from tests.client.conftest import FAST_RETRY, RECIPIENT, SENDER, MiB, write_csv
from tests.client.wire import WireServer, completed_before_accepted, overlaps

CHUNK = 5 * MiB


class RetryLog(SendJournal):
    def __init__(self) -> None:
        self.retried: list[int] = []

    async def chunk_retrying(self, number: int, attempt: int, error: BaseException) -> None:
        self.retried.append(number)


@pytest.fixture
def six_chunks(tmp_path: Path) -> Path:
    """26 MiB: five chunks of 5 MiB and one of 1 MiB (chunks 2..5 are the middle ones)."""
    return write_csv(tmp_path / "six.csv", 26 * MiB)


async def _send(server: WireServer, source: Path, **options: Unpack[SendOptions]) -> RetryLog:
    journal = RetryLog()
    config = MeshConfig(server.url, SENDER, "password", "key")
    async with MeshClient(config, ClientSettings(retry=FAST_RETRY)) as client:
        await send_file(
            client,
            source,
            SendHeaders(to=RECIPIENT, workflow_id="ORDER"),
            chunk_size=CHUNK,
            journal=journal,
            **options,
        )
    return journal


def _check_bodies(server: WireServer, source: Path) -> None:
    """Every chunk arrived whole, exactly as in the file."""
    data = source.read_bytes()
    for number in range(1, 7):
        accepted = [r for r in server.tries(number) if r.status == 202]
        assert len(accepted) == 1, f"chunk {number}: {len(accepted)} accepted tries"
        assert bytes(accepted[0].body) == data[(number - 1) * CHUNK : number * CHUNK]


async def test_in_order_bodies_arrive_one_after_another_and_pipelined(six_chunks: Path) -> None:
    # Chunks 2, 3 and 4 are answered only once the next chunk's body has begun to arrive: a
    # client that waited for each answer before the next request would never finish.
    with WireServer(answer_after_next={2, 3, 4}) as server:
        await _send(server, six_chunks, order="in-order")
    assert overlaps(server) == [], server.timeline()
    assert completed_before_accepted(server) == []
    assert server.max_outstanding == 2
    assert [r.chunk for r in server.requests] == [1, 2, 3, 4, 5, 6]
    _check_bodies(server, six_chunks)


async def test_concurrent_bodies_overlap(six_chunks: Path) -> None:
    # The first middle body to arrive is not read further until another one has begun to
    # arrive, which a concurrent upload does while the first is still on its way.
    with WireServer(hold_first=True) as server:
        await _send(server, six_chunks, order="concurrent", concurrency=4)
    assert overlaps(server) != [], server.timeline()
    assert server.max_outstanding >= 2
    _check_bodies(server, six_chunks)


async def test_the_default_for_a_local_server_is_concurrent(six_chunks: Path) -> None:
    with WireServer(hold_first=True) as server:
        await _send(server, six_chunks)
    assert overlaps(server) != [], server.timeline()


async def test_a_retry_keeps_the_order(six_chunks: Path) -> None:
    # Chunk 3's first try is answered 500 once chunk 4's body has begun: chunk 4 steps aside
    # (its request abandoned, its body incomplete), chunk 3 goes again, then chunk 4.
    with WireServer(fail_once={3}, answer_after_next={3}) as server:
        journal = await _send(server, six_chunks, order="in-order")
    assert overlaps(server) == [], server.timeline()
    assert completed_before_accepted(server) == []
    assert [(r.chunk, r.status, r.abandoned) for r in server.requests] == [
        (1, 202, False),
        (2, 202, False),
        (3, 500, False),
        (4, 0, True),
        (3, 202, False),
        (4, 202, False),
        (5, 202, False),
        (6, 202, False),
    ]
    assert journal.retried == [3]  # stepping aside is not a failure of chunk 4
    _check_bodies(server, six_chunks)


async def test_sequential_has_one_request_outstanding(six_chunks: Path) -> None:
    with WireServer() as server:
        await _send(server, six_chunks, sequential=True)
    assert overlaps(server) == [], server.timeline()
    assert server.max_outstanding == 1


def _cli_send(server: WireServer, source: Path, *flags: str) -> int:
    return cli.main(
        [
            "send",
            str(source),
            "--url",
            server.url,
            "--mailbox",
            SENDER,
            "--password",
            "password",
            "--shared-key",
            "key",
            "--to",
            RECIPIENT,
            "--workflow-id",
            "ORDER",
            "--chunk-size",
            "5MiB",
            "--no-ledger",
            *flags,
        ]
    )


def test_the_command_line_chooses_the_order(
    six_chunks: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Answers that wait for the next body: only a pipelined in-order upload gets through.
    with WireServer(answer_after_next={2, 3, 4}) as server:
        assert _cli_send(server, six_chunks, "--order", "in-order") == 0
    assert overlaps(server) == [] and server.max_outstanding == 2
    with WireServer() as server:
        assert _cli_send(server, six_chunks, "--sequential") == 0
    assert server.max_outstanding == 1
    with WireServer() as server:
        status = _cli_send(server, six_chunks, "--sequential", "--order", "concurrent")
    assert status == 2 and server.requests == []
    err = capsys.readouterr().err
    assert "--sequential contradicts --order concurrent" in err and len(err.splitlines()) == 1


def test_the_profile_chooses_the_order(six_chunks: Path, tmp_path: Path) -> None:
    profile = tmp_path / "meshpipe.toml"
    profile.write_text('[profiles.default]\nupload_order = "in-order"\n')
    with WireServer(answer_after_next={2, 3, 4}) as server:
        assert _cli_send(server, six_chunks, "--config", str(profile)) == 0
    assert overlaps(server) == [] and server.max_outstanding == 2


async def test_a_contradictory_or_unknown_order_is_refused_before_anything_is_sent(
    six_chunks: Path,
) -> None:
    with WireServer() as server:
        with pytest.raises(ValueError, match="sequential=True contradicts order='concurrent'"):
            await _send(server, six_chunks, order="concurrent", sequential=True)
        with pytest.raises(ValueError, match="'inorder' is not one of in-order, concurrent"):
            await _send(server, six_chunks, order="inorder")  # type: ignore[typeddict-item]
    assert server.requests == []
