"""What a receive refuses or makes safe: long and shell-hostile file names, messages with
nothing to verify them against (when verification is required), decompression bombs (never
downloaded again), an existing destination; and error texts that say it once."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import pytest

from meshpipe import errors
from meshpipe.client import ClientSettings, MeshClient
from meshpipe.headers import SendHeaders
from meshpipe.retry import RetryPolicy
from meshpipe.transfer import ReceiveFailure, ReceiveResult, receive_all, receive_message
from meshpipe.transfer.download import MAX_NAME_BYTES, safe_filename
from tests.client.conftest import RECIPIENT, SENDER, make_config
from tests.client.proxy import FaultProxy
from tests.peers import free_port

#: What the Assembler adds to a name for its temporary file, at most (pid ≤ 7 digits, counter
#: ≤ 20): ``.{name}.meshpipe-{pid}-{counter}.part``.
TEMPORARY_OVERHEAD = len(".") + len(".meshpipe-") + 7 + len("-") + 20 + len(".part")
ID = "20260101120000000000_ABCDEF"


def entries(directory: Path) -> list[Path]:
    return list(directory.iterdir())


def test_long_names_are_shortened_keeping_the_extension_and_apart() -> None:
    first = "a" * 296 + ".csv"
    second = "a" * 295 + "b.csv"
    one, other = safe_filename(first, ID), safe_filename(second, ID)
    for name in (one, other):
        assert len(name.encode()) <= MAX_NAME_BYTES and name.endswith(".csv")
        assert len(f"{ID}-{name}".encode()) + TEMPORARY_OVERHEAD <= 255 + len(ID) + 1
    assert one != other
    assert MAX_NAME_BYTES + TEMPORARY_OVERHEAD <= 255
    assert safe_filename("report.csv", ID) == "report.csv"  # a name that fits is unchanged
    assert len(safe_filename("é" * 150, ID)) <= MAX_NAME_BYTES


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("-rf", "_rf"),
        ("--help.txt", "_help.txt"),
        ("../../etc/passwd", "passwd"),
        (".bashrc", "bashrc"),
        ("a b;$(rm -rf ~).csv", "a_b___rm_-rf___.csv"),
        ("C:\\Windows\\evil.bat", "evil.bat"),
        ("--", f"{ID}.dat"),
        ("", f"{ID}.dat"),
        (None, f"{ID}.dat"),
    ],
)
def test_shell_hostile_names_are_neutralised(given: str | None, expected: str) -> None:
    assert safe_filename(given, ID) == expected


@pytest.mark.parametrize(("length", "at_once"), [(234, 1), (300, 1), (234, 2)])
async def test_receive_all_takes_a_long_file_name(
    sender: MeshClient,
    recipient: MeshClient,
    workflow: str,
    tmp_path: Path,
    length: int,
    at_once: int,
) -> None:
    """Two messages of one name: the second is prefixed by its id, also when both are
    received side by side (neither name exists on disk yet when both are chosen)."""
    name = "x" * (length - 4) + ".csv"
    headers = SendHeaders(RECIPIENT, workflow, filename=name)
    first = await sender.send_message(headers, b"one\n")
    second = await sender.send_message(headers, b"two\n")
    results = await receive_all(
        recipient, tmp_path / "in", workflow_filter=workflow, messages_at_once=at_once
    )
    received = [item for item in results if isinstance(item, ReceiveResult)]
    assert sorted(item.message_id for item in received) == sorted([first, second])
    for item in received:
        assert item.path.name.endswith(".csv")
        assert len(item.path.name.encode()) <= MAX_NAME_BYTES
    contents = sorted(item.path.read_bytes() for item in received)
    assert contents == [b"one\n", b"two\n"]
    assert await recipient.list_inbox(workflow_filter=workflow) == []


async def test_a_message_with_nothing_to_verify_is_refused_when_verification_is_required(
    sender: MeshClient,
    recipient: MeshClient,
    workflow: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    message_id = await sender.send_message(SendHeaders(RECIPIENT, workflow), b"plain\n")
    destination = tmp_path / "plain.txt"
    with pytest.raises(errors.UnverifiedMessageError, match="nothing to verify") as caught:
        await receive_message(recipient, message_id, destination, require_verified=True)
    assert caught.value.message_id == message_id
    assert entries(tmp_path) == []
    assert await recipient.list_inbox(workflow_filter=workflow) == [message_id]
    results = await receive_all(
        recipient, tmp_path / "in", workflow_filter=workflow, require_verified=True
    )
    assert [type(item) for item in results] == [ReceiveFailure]
    # returned, not also logged as a warning or error (a CLI would print it twice)
    assert not [
        r for r in caplog.records if r.levelno >= logging.WARNING and message_id in r.getMessage()
    ]
    assert entries(tmp_path / "in") == []
    received = await receive_message(recipient, message_id, destination)
    assert received.verified == [] and received.acknowledged


async def test_a_refused_decompression_bomb_is_downloaded_once(
    proxy: FaultProxy,
    sender: MeshClient,
    proxied_recipient: MeshClient,
    recipient: MeshClient,
    workflow: str,
    tmp_path: Path,
) -> None:
    # A plain gzip sender's last chunk may be no longer than chunk 1: this one decodes to 4 MiB.
    message_id = await sender.send_message(
        SendHeaders(RECIPIENT, workflow),
        gzip.compress(b"x" * 1000),
        chunk_count=2,
        content_encoding="gzip",
    )
    bomb = gzip.compress(bytes(4 * 1024 * 1024))
    await sender.send_chunk(message_id, 2, 2, bomb, content_encoding="gzip")
    destination = tmp_path / "bomb.bin"
    with pytest.raises(errors.ChunkTransferError, match="not downloaded again") as caught:
        await receive_message(proxied_recipient, message_id, destination)
    assert caught.value.chunk == 2
    assert isinstance(caught.value.__cause__, errors.ChunkLengthError)
    chunk_two = [seen for seen in proxy.seen if seen.path.endswith(f"{message_id}/2")]
    assert len(chunk_two) == 1
    assert entries(tmp_path) == []
    assert await recipient.list_inbox(workflow_filter=workflow) == [message_id]


async def test_an_existing_destination_names_the_flag_and_the_argument(
    sender: MeshClient, recipient: MeshClient, workflow: str, tmp_path: Path
) -> None:
    message_id = await sender.send_message(SendHeaders(RECIPIENT, workflow), b"data\n")
    destination = tmp_path / "taken.txt"
    destination.write_bytes(b"mine")
    with pytest.raises(FileExistsError) as caught:
        await receive_message(recipient, message_id, destination)
    assert "--overwrite (overwrite=True)" in str(caught.value)
    assert str(caught.value).startswith(str(destination))
    assert destination.read_bytes() == b"mine"
    received = await receive_message(recipient, message_id, destination, overwrite=True)
    assert received.path.read_bytes() == b"data\n"


async def test_a_failed_download_says_what_failed_once() -> None:
    port = free_port()  # nothing listens there
    settings = ClientSettings(retry=RetryPolicy(attempts=1))
    async with MeshClient(make_config(f"http://127.0.0.1:{port}", SENDER), settings) as client:

        async def sink(piece: bytes) -> None:
            raise AssertionError("no bytes can arrive")

        with pytest.raises(errors.MeshConnectionError) as caught:
            await client.download_chunk("ABC", 2, sink)
    message = str(caught.value)
    assert "GET GET" not in message and message.count("GET ") == 1
    assert message.startswith("GET /messageexchange/X26ABC1/inbox/ABC/2 failed")
    assert caught.value.request_sent is False
