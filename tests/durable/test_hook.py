"""The hook's pieces on their own: command lines split without a shell (and refused when
they cannot be), the environment without MESH secrets, a command that cannot start, and the
idempotency key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshpipe.durable import CommandHook, Delivery, HookError
from meshpipe.durable.hook import CallableHook, delivery_json, hook_environment
from meshpipe.models import MessageMetadata


def delivery(tmp_path: Path) -> Delivery:
    metadata = MessageMetadata.from_headers(
        "MSG1",
        {
            "mex-MessageID": "MSG1",
            "mex-From": "X26ABC1",
            "mex-WorkflowID": "WF",
            "mex-Subject": "s",
        },
    )
    return Delivery(
        message_id="MSG1",
        path=tmp_path / "out.bin",
        metadata_path=tmp_path / "hooks" / "MSG1.json",
        xxh3_128="a" * 32,
        size=10,
        attempt=2,
        transfer_id=7,
        metadata=metadata,
    )


def test_command_lines_are_split_without_a_shell() -> None:
    assert CommandHook("load --table 'nightly extract' $HOME;rm").argv == [
        "load",
        "--table",
        "nightly extract",
        "$HOME;rm",
    ]
    with pytest.raises(HookError, match="cannot be split"):
        CommandHook("load 'unclosed")
    with pytest.raises(HookError, match="needs a command"):
        CommandHook("   ")


def test_environment_has_the_delivery_and_no_secrets(tmp_path: Path) -> None:
    base = {"PATH": "/bin", "MESH_PASSWORD": "hunter2", "MESH_SHARED_KEY": "k", "MESH_URL": "u"}
    env = hook_environment(delivery(tmp_path), base)
    assert "MESH_PASSWORD" not in env and "MESH_SHARED_KEY" not in env
    assert env["MESH_URL"] == "u" and env["PATH"] == "/bin"
    assert env["MESHPIPE_IDEMPOTENCY_KEY"] == "MSG1:" + "a" * 32
    assert env["MESHPIPE_HOOK_ATTEMPT"] == "2"
    assert env["MESHPIPE_SENDER"] == "X26ABC1" and env["MESHPIPE_WORKFLOW_ID"] == "WF"
    assert "MESHPIPE_LOCAL_ID" not in env  # the sender gave none
    described = delivery_json(delivery(tmp_path))
    assert described["idempotency_key"] == "MSG1:" + "a" * 32
    assert described["headers"]["mex-subject"] == "s"


async def test_a_command_that_cannot_start_is_a_hook_failure(tmp_path: Path) -> None:
    hook = CommandHook(str(tmp_path / "no-such-program"))
    with pytest.raises(HookError, match="could not be started"):
        await hook.run(delivery(tmp_path))


async def test_a_callable_hook_may_return_an_awaitable(tmp_path: Path) -> None:
    seen: list[str] = []

    async def later(item: Delivery) -> None:
        seen.append(item.idempotency_key)

    await CallableHook(lambda item: later(item)).run(delivery(tmp_path))
    assert seen == ["MSG1:" + "a" * 32]


async def test_a_command_past_its_timeout_is_stopped_with_what_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("meshpipe.durable.hook.KILL_GRACE", 0.5)
    pids = tmp_path / "pids"
    # The shell starts a child that ignores SIGTERM, so only a SIGKILL of the whole session
    # stops it; both pids are recorded first.
    script = tmp_path / "hang.sh"
    script.write_text(
        f"#!/bin/sh\nsh -c 'trap \"\" TERM; exec sleep 60' &\necho $! >> {pids}\n"
        f"echo $$ >> {pids}\nwait\n"
    )
    script.chmod(0o755)
    hook = CommandHook(str(script), timeout=0.5)
    with pytest.raises(HookError, match=r"did not finish within 0\.5 s and was stopped"):
        await hook.run(delivery(tmp_path))
    recorded = [int(line) for line in pids.read_text().split()]
    assert len(recorded) == 2
    for pid in recorded:  # a SIGKILL is delivered soon after it is sent, not at once
        for _ in range(100):
            if _gone(pid):
                break
            await asyncio.sleep(0.05)
        assert _gone(pid), f"process {pid} still runs"


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def test_a_timeout_must_be_positive() -> None:
    with pytest.raises(HookError, match="more than 0 seconds"):
        CommandHook("true", timeout=0)
