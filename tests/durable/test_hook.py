"""The hook's pieces on their own: command lines split without a shell (and refused when
they cannot be), the environment without MESH secrets, a command that cannot start, and the
idempotency key."""

from __future__ import annotations

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
