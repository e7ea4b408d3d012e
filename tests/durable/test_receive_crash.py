"""A ``meshpipe receive`` SIGKILLed part-way, then run again, against ``meshpipe serve``
(dir store): one verified file, acknowledged once, and the chunks recorded written before
the crash not downloaded again; a partial file tampered with between the runs is caught and
the changed chunk fetched again; a second receiver of the same message is refused."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshpipe import xxh3_128_file
from meshpipe.durable import partial_path_for
from tests.durable.receiving import (
    CHUNK,
    Serve,
    flip_byte,
    hold,
    open_ledger,
    receive_record,
    run_meshpipe,
    serve,
    stalled_on,
    start_meshpipe,
    wait_for,
)

SIZE = 5 * CHUNK + 12345  # six chunks, the last short
CHUNKS = 6


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    with serve(tmp_path_factory.mktemp("serve")) as running:
        yield running


def crash_while_holding(
    server: Serve, message_id: str, out: Path, chunk: int, done: int
) -> set[int]:
    """Start a receive, wait until ``chunk`` is held and ``done`` chunks are recorded, then
    SIGKILL it; return the chunks the ledger recorded written."""
    process = start_meshpipe(
        server.url, "receive", message_id, "--out", str(out), "--concurrency", "2"
    )
    try:

        def reached() -> bool:
            record = receive_record(message_id)
            return stalled_on(server, chunk)() and record is not None and record.chunks_done >= done

        wait_for(f"chunk {chunk} held with {done} chunks written", reached, process)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    with open_ledger() as ledger:
        record = ledger.find_receive("X26ABC2", message_id)
        assert record is not None and record.state == "downloading"
        return set(ledger.written_chunks(record))


@pytest.mark.parametrize("checksum", [True, False], ids=["meshpipe-sender", "plain-sender"])
def test_killed_receive_resumes_without_refetching(
    server: Serve, tmp_path: Path, checksum: bool
) -> None:
    message_id = server.synthetic(SIZE, checksum=checksum)
    out = tmp_path / "extract.bin"
    server.faults(hold(4))
    written = crash_while_holding(server, message_id, out, chunk=4, done=5)
    assert 4 not in written and len(written) == 5
    assert not out.exists()
    assert partial_path_for(out, message_id).exists()

    server.faults()  # count afresh; nothing held
    finished = run_meshpipe(server.url, "receive", message_id, "--out", str(out))
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == str(out)
    assert "5 chunk(s) kept" in finished.stderr
    assert server.downloads() == {4: 1}  # only the chunk in flight at the crash
    assert server.acks() == 1
    assert server.status(message_id) == "acknowledged"
    record = receive_record(message_id)
    assert record is not None and record.state == "acknowledged"
    assert record.xxh3_128 == xxh3_128_file(out)
    assert out.stat().st_size == SIZE
    assert not partial_path_for(out, message_id).exists()
    if checksum:
        assert "file xxh3-128" in finished.stderr
    shown = run_meshpipe(server.url, "history", message_id, "--json")
    assert shown.returncode == 0, shown.stderr
    (lifecycle,) = json.loads(shown.stdout)
    kinds = [event["kind"] for event in lifecycle["events"]]
    assert kinds.count("chunk_written") == CHUNKS  # each chunk once, across both runs
    assert "taken_over" in kinds and "resumed" in kinds  # the killed run's claim, the new run
    assert kinds[-2:] == ["acknowledged", "released"]


def test_tampered_partial_file_is_caught_and_refetched(server: Serve, tmp_path: Path) -> None:
    message_id = server.synthetic(SIZE, seed=2)
    out = tmp_path / "extract.bin"
    server.faults(hold(5))
    written = crash_while_holding(server, message_id, out, chunk=5, done=5)
    assert written == {1, 2, 3, 4, 6}
    flip_byte(partial_path_for(out, message_id), CHUNK + 1000)  # inside chunk 2

    server.faults()
    finished = run_meshpipe(server.url, "receive", message_id, "--out", str(out))
    assert finished.returncode == 0, finished.stderr
    assert server.downloads() == {2: 1, 5: 1}
    assert "file xxh3-128" in finished.stderr  # the sender's whole-file checksum held
    with open_ledger() as ledger:
        record = ledger.find_receive("X26ABC2", message_id)
        assert record is not None and record.state == "acknowledged"
        discarded = [e.detail for e in ledger.events(record) if e.kind == "chunks_discarded"]
    assert discarded and discarded[0]["numbers"] == [2]


def test_second_receiver_of_the_same_message_is_refused(server: Serve, tmp_path: Path) -> None:
    message_id = server.synthetic(SIZE, seed=3)
    out = tmp_path / "extract.bin"
    server.faults(hold(2))
    first = start_meshpipe(server.url, "receive", message_id, "--out", str(out))
    try:
        wait_for("chunk 2 held", stalled_on(server, 2), first)
        second = run_meshpipe(server.url, "receive", message_id, "--out", str(out))
        assert second.returncode == 1
        assert "is being received by another process" in second.stderr
        assert second.stderr.startswith("meshpipe: error: ")
        assert server.status(message_id) != "acknowledged"
    finally:
        first.kill()
        first.communicate()
    server.faults()
    again = run_meshpipe(server.url, "receive", message_id, "--out", str(out))
    assert again.returncode == 0, again.stderr  # the dead owner's claim is taken over
    assert xxh3_128_file(out) == receive_record(message_id).xxh3_128  # type: ignore[union-attr]
