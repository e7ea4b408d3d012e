"""The meshpipe command line against mesh-sandbox: stdout carries only results, errors are one
line on stderr with a non-zero exit status, secrets never printed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import meshpipe
from meshpipe import cli
from meshpipe.headers import SendHeaders
from meshpipe.sync import SyncMeshClient
from meshpipe.units import size_argument
from tests.client.conftest import RECIPIENT, SENDER, MiB, make_config
from tests.peers import SANDBOX_SHARED_KEY, Sandbox

SECRET_KEY = SANDBOX_SHARED_KEY


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    # (the sandbox's password is the word "password": distinctive wrong ones are checked below)
    assert SECRET_KEY not in captured.out + captured.err
    return status, captured.out, captured.err


def test_parse_size() -> None:
    assert size_argument("5MiB") == 5 * MiB
    assert size_argument("5M") == 5 * MiB
    assert size_argument("75MB") == 75_000_000
    assert size_argument("1048576") == MiB
    with pytest.raises(Exception, match="not a size"):
        size_argument("lots")


def test_send_receive_inbox_track_ack(
    env: Sandbox,
    capsys: pytest.CaptureFixture[str],
    multi_file: Path,
    workflow: str,
    tmp_path: Path,
) -> None:
    status, out, err = run(
        capsys,
        "send",
        str(multi_file),
        "--mailbox",
        SENDER,
        "--to",
        RECIPIENT,
        "--workflow-id",
        workflow,
        "--compress",
        "gzip",
        "--chunk-size",
        "5MiB",
        "--subject",
        "cli",
    )
    assert status == 0, err
    message_id = out.strip()
    assert len(message_id) == 32 and "\n" not in message_id

    status, out, _ = run(capsys, "inbox", "--mailbox", RECIPIENT)
    assert status == 0 and message_id in out.split()
    status, out, _ = run(capsys, "inbox", "--mailbox", RECIPIENT, "--json")
    listed = {item["message_id"]: item for item in json.loads(out)}
    assert listed[message_id]["subject"] == "cli"

    destination = tmp_path / "received.csv"
    status, out, err = run(
        capsys, "receive", message_id, "--out", str(destination), "--mailbox", RECIPIENT, "--no-ack"
    )
    assert status == 0, err
    assert out.strip() == str(destination)
    assert destination.read_bytes() == multi_file.read_bytes()

    status, out, _ = run(capsys, "track", message_id, "--mailbox", SENDER)
    assert status == 0 and out.split("\t")[:2] == [message_id, "accepted"]
    status, out, _ = run(capsys, "track", message_id, "--mailbox", SENDER, "--json")
    assert json.loads(out)["message_id"] == message_id

    status, _, _ = run(capsys, "ack", message_id, "--mailbox", RECIPIENT)
    assert status == 0
    status, out, _ = run(capsys, "track", message_id, "--mailbox", SENDER)
    assert out.split("\t")[1] == "acknowledged"


def test_receive_all(
    env: Sandbox,
    capsys: pytest.CaptureFixture[str],
    small_file: Path,
    workflow: str,
    tmp_path: Path,
) -> None:
    ids = []
    for name in ("a.csv", "b.csv"):
        status, out, err = run(
            capsys,
            "send",
            str(small_file),
            "--mailbox",
            SENDER,
            "--to",
            RECIPIENT,
            "--workflow-id",
            workflow,
            "--filename",
            name,
        )
        assert status == 0, err
        ids.append(out.strip())
    out_dir = tmp_path / "inbox"
    status, out, err = run(
        capsys,
        "receive",
        "--all",
        "--out-dir",
        str(out_dir),
        "--workflow-filter",
        workflow,
        "--mailbox",
        RECIPIENT,
    )
    assert status == 0, err
    assert sorted(path.name for path in out_dir.iterdir()) == ["a.csv", "b.csv"]
    assert {line.split("\t")[0] for line in out.splitlines()} == set(ids)


def test_lookup_and_handshake(env: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "lookup", "X26", "TEST_WORKFLOW", "--mailbox", SENDER)
    assert status == 0 and out.split("\t")[0] == "X26ABC2"
    status, out, _ = run(capsys, "handshake", "--mailbox", SENDER)
    assert status == 0 and "handshake ok" in out


def test_errors_are_one_line(
    env: Sandbox,
    capsys: pytest.CaptureFixture[str],
    small_file: Path,
    multi_file: Path,
    workflow: str,
) -> None:
    wrong = "Wr0ng-Pa55word-42"
    status, out, err = run(capsys, "handshake", "--mailbox", SENDER, "--password", wrong)
    assert status == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "403" in err and wrong not in err
    status, out, err = run(
        capsys,
        "send",
        str(small_file),
        "--mailbox",
        SENDER,
        "--to",
        "X26NOBODY",
        "--workflow-id",
        workflow,
    )
    assert status == 1 and out == "" and "code 12" in err
    status, _, err = run(
        capsys,
        "send",
        str(multi_file),
        "--mailbox",
        SENDER,
        "--to",
        RECIPIENT,
        "--workflow-id",
        workflow,
        "--chunk-size",
        "1MiB",
    )
    assert status == 2
    assert err.startswith("meshpipe: error:") and len(err.strip().splitlines()) == 1
    status, _, err = run(
        capsys,
        "send",
        str(multi_file),
        "--mailbox",
        SENDER,
        "--to",
        RECIPIENT,
        "--workflow-id",
        workflow,
        "--max-file-size",
        "10MiB",
    )
    assert status == 2 and "meshpipe: error:" in err
    status, _, err = run(capsys, "inbox", "--url", "local", "--mailbox", "bad mailbox!")
    assert status == 2 and "mailbox id" in err


def test_python_dash_m(env: Sandbox) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "meshpipe", "lookup", "X26", "TEST_WORKFLOW", "--mailbox", SENDER],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("X26ABC2")


@pytest.mark.parametrize(("command", "expected"), [("serve", "serve"), ("demo", "demo")])
def test_serve_and_demo_are_delegated(command: str, expected: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "meshpipe", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert f"meshpipe {expected}" in completed.stdout


def test_profile_flag(
    env: Sandbox,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MESH_URL")
    config_file = tmp_path / "meshpipe.toml"
    config_file.write_text(
        f'[profiles.sbx]\nurl = "{env.url}"\nmailbox = "{SENDER}"\n'
        'password_env = "MESH_PASSWORD"\nshared_key_env = "MESH_SHARED_KEY"\n'
    )
    status, out, err = run(capsys, "handshake", "--config", str(config_file), "--profile", "sbx")
    assert status == 0, err
    assert out.startswith(f"{SENDER}: handshake ok")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"meshpipe {meshpipe.__version__}"


def send_plain(sandbox: Sandbox, workflow: str, body: bytes) -> str:
    """A message from a plain sender: no meshpipe checksum, no compression."""
    client = SyncMeshClient(make_config(sandbox.url, SENDER))
    with client:
        return client.send_message(SendHeaders(RECIPIENT, workflow), body)


def test_receive_require_verified_and_the_unverified_warning(
    env: Sandbox, capsys: pytest.CaptureFixture[str], workflow: str, tmp_path: Path
) -> None:
    message_id = send_plain(env, workflow, b"plain\n")
    destination = tmp_path / "plain.txt"
    receive = ("receive", message_id, "--out", str(destination), "--mailbox", RECIPIENT)
    status, out, err = run(capsys, *receive, "--require-verified")
    assert status == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and "nothing to verify" in err
    assert not destination.exists()

    out_dir = tmp_path / "inbox"
    all_of = ("receive", "--all", "--out-dir", str(out_dir), "--workflow-filter", workflow)
    status, out, err = run(capsys, *all_of, "--mailbox", RECIPIENT, "--require-verified")
    assert status == 1 and out == ""
    assert message_id in err and len(err.strip().splitlines()) == 1  # printed once
    assert list(out_dir.iterdir()) == []

    destination.write_bytes(b"mine")
    status, _, err = run(capsys, *receive)
    assert status == 1 and "--overwrite" in err and "overwrite=True" in err

    status, out, err = run(capsys, *receive, "--overwrite")
    assert status == 0 and out.strip() == str(destination)
    assert "WARNING" in err and "NOT verified" in err and "--require-verified" in err
    assert destination.read_bytes() == b"plain\n"


def test_retry_budget_from_the_flag_then_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = cli.build_parser()
    monkeypatch.setenv("MESHPIPE_RETRY_BUDGET", "7.5")
    assert cli._retry_policy(parser.parse_args(["inbox"])).budget == 7.5
    flagged = cli._retry_policy(parser.parse_args(["inbox", "--retry-budget", "3"]))
    assert (flagged.budget, flagged.attempts) == (3.0, None)
    never = cli._retry_policy(parser.parse_args(["inbox", "--retry-budget", "0"]))
    assert (never.budget, never.attempts) == (0.0, 1)
    monkeypatch.delenv("MESHPIPE_RETRY_BUDGET")
    assert cli._retry_policy(parser.parse_args(["inbox"])).budget == 120.0

    with pytest.raises(SystemExit) as refused:
        cli.main(["inbox", "--retry-budget", "-1"])
    assert refused.value.code == 2 and "0 or more" in capsys.readouterr().err
    monkeypatch.setenv("MESHPIPE_RETRY_BUDGET", "soon")
    status, out, err = run(
        capsys,
        "inbox",
        "--url",
        "local",
        "--mailbox",
        SENDER,
        "--password",
        "p",
        "--shared-key",
        "k",
    )
    assert status == 2 and out == ""
    assert "MESHPIPE_RETRY_BUDGET='soon'" in err and "number of seconds" in err
