"""Exactly-once delivery and the application hook, through ``meshpipe receive`` against
``meshpipe serve``: a message whose acknowledgement was lost is delivered (and handed to the
hook) once and acknowledged on the next run; a failing hook leaves the message
unacknowledged and recorded, and runs again with the same idempotency key."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshpipe import xxh3_128_file
from tests.durable.receiving import CHUNK, Serve, receive_record, run_meshpipe, serve

SIZE = 2 * CHUNK + 999  # three chunks
#: Appends one JSON line per run (its arguments and MESHPIPE_* variables) to the log file;
#: fails while the flag file exists.
HOOK = """
import json, os, sys
log, flag, path, metadata = sys.argv[1:5]
seen = {k: v for k, v in os.environ.items() if k.startswith(("MESHPIPE_", "MESH_"))}
with open(log, "a") as out:
    out.write(json.dumps({"path": path, "metadata": metadata, "env": seen}) + "\\n")
sys.exit(3 if os.path.exists(flag) else 0)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    with serve(tmp_path_factory.mktemp("serve")) as running:
        yield running


@pytest.fixture
def hook(tmp_path: Path) -> tuple[str, Path, Path]:
    """(the --exec command, its log, its failure flag)."""
    script = tmp_path / "hook.py"
    script.write_text(HOOK)
    log, flag = tmp_path / "hook.log", tmp_path / "fail"
    command = shlex.join([sys.executable, str(script), str(log), str(flag)])
    return command, log, flag


def runs(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_lost_ack_is_delivered_once_and_acknowledged_on_the_next_run(
    server: Serve, tmp_path: Path, hook: tuple[str, Path, Path]
) -> None:
    command, log, _ = hook
    message_id = server.synthetic(SIZE, seed=11)
    out = tmp_path / "extract.bin"
    server.faults({"kind": "lost_ack", "route": "ack", "times": 0})  # every ack lost
    first = run_meshpipe(
        server.url,
        "receive",
        message_id,
        "--out",
        str(out),
        "--exec",
        command,
        "--retry-budget",
        "2",  # not the default 120 s of tries
    )
    assert first.returncode == 1
    assert "was delivered to" in first.stderr and "could not be acknowledged" in first.stderr
    assert server.status(message_id) != "acknowledged"
    record = receive_record(message_id)
    assert record is not None and record.state == "delivered"
    assert len(runs(log)) == 1
    delivered = out.stat().st_mtime_ns

    server.faults()
    again = run_meshpipe(server.url, "receive", message_id, "--out", str(out), "--exec", command)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == str(out)
    assert "already delivered" in again.stderr and "not written again" in again.stderr
    assert server.downloads() == {}  # not downloaded again
    assert server.acks() == 1
    assert server.status(message_id) == "acknowledged"
    assert out.stat().st_mtime_ns == delivered
    assert len(runs(log)) == 1  # the hook succeeded the first time: not run again
    record = receive_record(message_id)
    assert record is not None and record.state == "acknowledged"
    assert record.hook is not None and (record.hook.ok, record.hook.attempts) == (True, 1)


def test_failing_hook_leaves_the_message_unacknowledged_then_runs_again(
    server: Serve, tmp_path: Path, hook: tuple[str, Path, Path]
) -> None:
    command, log, flag = hook
    flag.touch()
    message_id = server.synthetic(SIZE, seed=12)
    out = tmp_path / "extract.bin"
    server.faults()
    first = run_meshpipe(server.url, "receive", message_id, "--out", str(out), "--exec", command)
    assert first.returncode == 1
    assert "exited with status 3" in first.stderr and "not acknowledged" in first.stderr
    assert server.acks() == 0
    record = receive_record(message_id)
    assert record is not None and record.state == "delivered"
    assert record.hook is not None and (record.hook.ok, record.hook.attempts) == (False, 1)

    flag.unlink()
    server.faults()
    again = run_meshpipe(server.url, "receive", message_id, "--out", str(out), "--exec", command)
    assert again.returncode == 0, again.stderr
    assert server.downloads() == {}
    assert server.acks() == 1
    first_run, second_run = runs(log)
    key = f"{message_id}:{xxh3_128_file(out)}"
    for run, attempt in ((first_run, "1"), (second_run, "2")):
        env = run["env"]
        assert isinstance(env, dict)
        assert env["MESHPIPE_IDEMPOTENCY_KEY"] == key
        assert env["MESHPIPE_MESSAGE_ID"] == message_id
        assert env["MESHPIPE_PATH"] == str(out) == run["path"]
        assert env["MESHPIPE_HOOK_ATTEMPT"] == attempt
        assert "MESH_PASSWORD" not in env and "MESH_SHARED_KEY" not in env
        metadata = json.loads(Path(str(run["metadata"])).read_text())
        assert metadata["idempotency_key"] == key
        assert metadata["headers"]["mex-workflowid"] == "DURABLE_TEST"
    record = receive_record(message_id)
    assert record is not None and record.state == "acknowledged"
    assert record.hook is not None and (record.hook.ok, record.hook.attempts) == (True, 2)


def test_exec_needs_the_ledger(server: Serve, tmp_path: Path) -> None:
    refused = run_meshpipe(
        server.url, "receive", "X", "--out", str(tmp_path / "x"), "--exec", "true", "--no-ledger"
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith("meshpipe: error: --exec needs the ledger")


def test_no_ledger_receives_without_recording(server: Serve, tmp_path: Path) -> None:
    message_id = server.synthetic(SIZE, seed=13)
    out = tmp_path / "extract.bin"
    done = run_meshpipe(server.url, "receive", message_id, "--out", str(out), "--no-ledger")
    assert done.returncode == 0, done.stderr
    assert receive_record(message_id) is None
    assert out.stat().st_size == SIZE


def test_receive_all_runs_the_durable_path_per_message(
    server: Serve, tmp_path: Path, hook: tuple[str, Path, Path]
) -> None:
    command, log, _ = hook
    server.admin("DELETE", "reset/X26ABC2")  # only this test's messages in the inbox
    first, second = server.synthetic(SIZE, seed=14), server.synthetic(SIZE, seed=15)
    inbox = tmp_path / "inbox"
    done = run_meshpipe(server.url, "receive", "--all", "--out-dir", str(inbox), "--exec", command)
    assert done.returncode == 0, done.stderr
    listed = dict(line.split("\t") for line in done.stdout.splitlines())
    assert set(listed) == {first, second}
    assert sorted(run["env"]["MESHPIPE_MESSAGE_ID"] for run in runs(log)) == sorted(listed)  # type: ignore[index]
    for message_id, path in listed.items():
        record = receive_record(message_id)
        assert record is not None and record.state == "acknowledged"
        assert record.destination == path
