"""``meshpipe history``: transfers of both directions listed with chunk progress and filters,
as text and as JSON; one transfer's lifecycle event by event; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshpipe import cli
from meshpipe.ledger import Ledger, ReceiveRecord, SendRecord, resolve_ledger_location
from tests.ledger.helpers import (
    RECIPIENT,
    begin_receive,
    begin_send,
    checksum,
    receive_all,
    send_all,
)


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[SendRecord, ReceiveRecord, ReceiveRecord]:
    """In the test's own ledger: a completed send, an acknowledged receive and a receive
    with one of three chunks written."""
    source = tmp_path / "extract.csv"
    source.write_bytes(b"id,value\n" * 100)
    with Ledger.open(resolve_ledger_location()) as ledger:
        sent = send_all(ledger, begin_send(ledger, source, local_id="nightly-1"))
        done = receive_all(ledger, begin_receive(ledger, tmp_path, message_id="MSG-DONE"))
        partial = begin_receive(ledger, tmp_path, message_id="MSG-HALF", workflow_id="WF_B")
        ledger.chunk_written(partial, 1, checksum(1), 5 << 20)
    return sent, done, partial


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(["history", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_lists_both_directions_with_progress(
    recorded: tuple[SendRecord, ReceiveRecord, ReceiveRecord], capsys: pytest.CaptureFixture[str]
) -> None:
    sent, done, partial = recorded
    status, out, _ = run(capsys)
    assert status == 0
    header, *lines = out.splitlines()
    assert header.split()[:4] == ["ID", "DIRECTION", "STATE", "CHUNKS"]
    rows = [line.split() for line in lines]
    assert [row[:4] for row in rows] == [
        [str(partial.id), "receive", "downloading", "1/3"],
        [str(done.id), "receive", "acknowledged", "3/3"],
        [str(sent.id), "send", "completed", "3/3"],
    ]
    assert "MSG-HALF" in lines[0] and "nightly-1" in lines[2]


def test_json_and_filters(
    recorded: tuple[SendRecord, ReceiveRecord, ReceiveRecord], capsys: pytest.CaptureFixture[str]
) -> None:
    sent, done, partial = recorded
    status, out, _ = run(capsys, "--json")
    assert status == 0
    listed = json.loads(out)
    assert [item["id"] for item in listed] == [partial.id, done.id, sent.id]
    assert listed[0]["chunks_done"] == 1 and listed[0]["chunk_count"] == 3
    assert listed[0]["created_at"].endswith("+00:00")

    def ids(*flags: str) -> list[int]:
        code, text, _ = run(capsys, "--json", *flags)
        assert code == 0
        return [item["id"] for item in json.loads(text)]

    assert ids("--state", "acknowledged") == [done.id]
    assert ids("--workflow-id", "WF_B") == [partial.id]
    assert ids("--message-id", "MSG-1") == [sent.id]
    assert ids("--local-id", "nightly-1") == [sent.id]
    assert ids("--mailbox", RECIPIENT.lower()) == [partial.id, done.id]
    assert ids("--limit", "1") == [partial.id]
    assert ids("--since", "2000-01-01", "--until", "2000-01-02") == []
    assert ids("--since", "2000-01-01T00:00:00") == [partial.id, done.id, sent.id]


def test_one_transfer_event_by_event(
    recorded: tuple[SendRecord, ReceiveRecord, ReceiveRecord], capsys: pytest.CaptureFixture[str]
) -> None:
    _, done, _ = recorded
    status, out, _ = run(capsys, "MSG-DONE")
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == f"transfer {done.id}: receive acknowledged, chunks 3/3"
    kinds = [line.split()[2] for line in lines if line[:4].isdigit()]
    assert kinds == [
        "created",
        "chunk_written",
        "chunk_written",
        "chunk_written",
        "verified",
        "delivered",
        "acknowledged",
    ]
    status, out, _ = run(capsys, "--json", str(done.id))
    assert status == 0
    (shown,) = json.loads(out)
    assert shown["transfer"]["message_id"] == "MSG-DONE"
    events = shown["events"]
    assert [event["kind"] for event in events][-1] == "acknowledged"
    assert events[1]["detail"] == {"number": 1, "xxh3_128": checksum(1), "length": 5 << 20}


def test_unknown_transfer_and_bad_flags(
    recorded: object, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "NO-SUCH-MESSAGE")
    assert (status, out) == (1, "")
    assert err.startswith("meshpipe: error: no transfer in ledger ")
    assert "'NO-SUCH-MESSAGE'" in err
    status, _, err = run(capsys, "--since", "yesterday")
    assert status == 2 and "'yesterday' is not a date" in err
    status, _, err = run(capsys, "--state", "lost")
    assert status == 2 and "--state must be one of" in err
