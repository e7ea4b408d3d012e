"""The application hook of a durable receive: what runs after a message is delivered into
its destination and before it is acknowledged.

Two forms: :class:`CommandHook` (``meshpipe receive --exec CMD``) runs a program without a
shell, and :class:`CallableHook` calls a Python function (sync or async) for library users.
Both are given a :class:`Delivery`. A hook fails by exiting non-zero or raising; then the
message is not acknowledged, and the hook runs again on the next attempt with the same
:attr:`Delivery.idempotency_key` (message id ``:`` the delivered file's xxh3-128), so the
application can tell a repeat from a new message.

A command gets two arguments, the delivered file and a JSON file describing the message
(:func:`delivery_json`), and these environment variables: ``MESHPIPE_MESSAGE_ID``,
``MESHPIPE_IDEMPOTENCY_KEY``, ``MESHPIPE_PATH``, ``MESHPIPE_METADATA``, ``MESHPIPE_XXH3_128``,
``MESHPIPE_SIZE``, ``MESHPIPE_HOOK_ATTEMPT``, and when the sender gave them
``MESHPIPE_SENDER``, ``MESHPIPE_WORKFLOW_ID``, ``MESHPIPE_LOCAL_ID``, ``MESHPIPE_SUBJECT``,
``MESHPIPE_FILENAME``. The MESH password and shared key are removed from its environment.
Its standard output goes to meshpipe's standard error, so meshpipe's own output stays
machine-readable. A command given a ``timeout`` that runs past it is stopped, with every process
it started (it runs in a session of its own): SIGTERM, then SIGKILL after
:data:`KILL_GRACE` seconds; the hook has then failed, and the message is not acknowledged.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, cast

from meshpipe.errors import MeshpipeError
from meshpipe.models import MessageMetadata

#: Removed from a hook command's environment: the hook never needs meshpipe's secrets.
SECRET_VARIABLES: Final = ("MESH_PASSWORD", "MESH_SHARED_KEY")
#: The longest failure detail kept in the ledger.
DETAIL_LIMIT: Final = 500
#: Seconds between SIGTERM and SIGKILL for a command that ran past its timeout.
KILL_GRACE: Final = 5.0


class HookError(MeshpipeError):
    """The application hook failed; the message was not acknowledged."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivered message, as a hook sees it. ``attempt`` counts the hook's runs for this
    message, this one included."""

    message_id: str
    path: Path
    metadata_path: Path
    xxh3_128: str
    size: int
    attempt: int
    transfer_id: int
    metadata: MessageMetadata = field(repr=False)

    @property
    def idempotency_key(self) -> str:
        """The same for every run of the hook on this message: message id ``:`` xxh3-128."""
        return f"{self.message_id}:{self.xxh3_128}"


class Hook(Protocol):
    """Runs the application's step for a delivered message; raises HookError if it failed."""

    async def run(self, delivery: Delivery) -> None: ...

    def describe(self) -> str:
        """What the hook is, for messages (no arguments that could hold secrets)."""
        ...


def delivery_json(delivery: Delivery) -> dict[str, Any]:
    """The metadata file a command hook is given: the delivery and every ``mex-`` header."""
    metadata = delivery.metadata
    return {
        "message_id": delivery.message_id,
        "idempotency_key": delivery.idempotency_key,
        "path": str(delivery.path),
        "xxh3_128": delivery.xxh3_128,
        "size": delivery.size,
        "attempt": delivery.attempt,
        "transfer_id": delivery.transfer_id,
        "sender": metadata.sender,
        "recipient": metadata.recipient,
        "workflow_id": metadata.workflow_id,
        "local_id": metadata.local_id,
        "subject": metadata.subject,
        "filename": metadata.filename,
        "chunk_count": metadata.chunk_count,
        "headers": {
            name: value
            for name, value in metadata.headers.items()
            if name.lower().startswith("mex-")
        },
    }


def write_delivery_json(delivery: Delivery) -> None:
    """Write the metadata file (atomically: a hook never sees half of it)."""
    delivery.metadata_path.parent.mkdir(parents=True, exist_ok=True)
    temporary = delivery.metadata_path.with_name(delivery.metadata_path.name + ".tmp")
    temporary.write_text(json.dumps(delivery_json(delivery), indent=2, sort_keys=True) + "\n")
    os.replace(temporary, delivery.metadata_path)


def hook_environment(delivery: Delivery, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a command hook: ``base`` (default: this process's) without the
    MESH secrets, plus the ``MESHPIPE_*`` variables of the delivery."""
    env = {k: v for k, v in (os.environ if base is None else base).items()}
    for name in SECRET_VARIABLES:
        env.pop(name, None)
    metadata = delivery.metadata
    env.update(
        MESHPIPE_MESSAGE_ID=delivery.message_id,
        MESHPIPE_IDEMPOTENCY_KEY=delivery.idempotency_key,
        MESHPIPE_PATH=str(delivery.path),
        MESHPIPE_METADATA=str(delivery.metadata_path),
        MESHPIPE_XXH3_128=delivery.xxh3_128,
        MESHPIPE_SIZE=str(delivery.size),
        MESHPIPE_HOOK_ATTEMPT=str(delivery.attempt),
    )
    optional = {
        "MESHPIPE_SENDER": metadata.sender,
        "MESHPIPE_WORKFLOW_ID": metadata.workflow_id,
        "MESHPIPE_LOCAL_ID": metadata.local_id,
        "MESHPIPE_SUBJECT": metadata.subject,
        "MESHPIPE_FILENAME": metadata.filename,
    }
    env.update({name: value for name, value in optional.items() if value})
    return env


class CommandHook:
    """``CMD PATH METADATA_JSON``, split like a shell would (shlex) but run without one."""

    def __init__(self, command: str, *, timeout: float | None = None) -> None:
        if timeout is not None and not timeout > 0:
            raise HookError(f"a hook timeout must be more than 0 seconds, not {timeout}")
        self.timeout = timeout
        try:
            self.argv = shlex.split(command)
        except ValueError as error:
            raise HookError(f"--exec {command!r} cannot be split into arguments: {error}") from None
        if not self.argv:
            raise HookError("--exec needs a command, e.g. --exec 'load-extract --table x'")

    def describe(self) -> str:
        return f"hook command {self.argv[0]}"

    async def run(self, delivery: Delivery) -> None:
        await asyncio.to_thread(write_delivery_json, delivery)
        try:
            process = await asyncio.create_subprocess_exec(
                *self.argv,
                str(delivery.path),
                str(delivery.metadata_path),
                env=hook_environment(delivery),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=_standard_error(),
                start_new_session=True,
            )
        except OSError as error:
            raise HookError(
                f"{self.describe()} could not be started: {error.strerror or error}"
            ) from None
        try:
            async with asyncio.timeout(self.timeout):
                status = await process.wait()
        except TimeoutError:
            await _stop_session(process)
            raise HookError(
                f"{self.describe()} did not finish within {self.timeout:g} s and was stopped"
            ) from None
        except BaseException:
            await _stop_session(process)  # cancelled: leave no hook running unseen
            raise
        if status != 0:
            how = (
                f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
            )
            raise HookError(f"{self.describe()} {how}")


async def _stop_session(process: asyncio.subprocess.Process) -> None:
    """Stop a hook command and every process of its session: SIGTERM to all of them, then
    SIGKILL to any still there after :data:`KILL_GRACE` seconds."""
    polls = max(1, round(KILL_GRACE / _POLL))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break  # none left
        if sig == signal.SIGTERM:
            for _ in range(polls):  # no event says when a session is empty: look again
                if not _session_alive(process.pid):
                    break
                await asyncio.sleep(_POLL)
    await asyncio.shield(process.wait())


_POLL: Final = 0.05


def _session_alive(session: int) -> bool:
    try:
        os.killpg(session, 0)
    except ProcessLookupError:
        return False
    return True


def _standard_error() -> int | None:
    """This process's standard error as a descriptor (None: inherit standard output, when
    standard error is not a real file, as under a test runner's capture)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return None


HookFunction = Callable[[Delivery], Awaitable[object] | object]
"""A Python hook: called with the delivery; an exception means it failed."""


class CallableHook:
    """A Python function (sync, run on a thread, or async) as the hook."""

    def __init__(self, function: HookFunction) -> None:
        self.function = function

    def describe(self) -> str:
        name = getattr(self.function, "__qualname__", None) or type(self.function).__name__
        return f"hook {name}"

    async def run(self, delivery: Delivery) -> None:
        try:
            if inspect.iscoroutinefunction(self.function):
                await self.function(delivery)
            else:
                outcome = await asyncio.to_thread(self.function, delivery)
                if inspect.isawaitable(outcome):
                    await outcome
        except HookError:
            raise
        except Exception as error:
            text = f"{type(error).__name__}: {error}"[:DETAIL_LIMIT]
            raise HookError(f"{self.describe()} raised {text}") from error


def as_hook(hook: Hook | HookFunction | str | None) -> Hook | None:
    """A Hook from a command line (str), a Python function, or a Hook as it is."""
    if hook is None:
        return None
    if isinstance(hook, str):
        return CommandHook(hook)
    if hasattr(hook, "run") and hasattr(hook, "describe"):
        return cast(Hook, hook)
    return CallableHook(hook)


__all__ = [
    "CallableHook",
    "CommandHook",
    "Delivery",
    "Hook",
    "HookError",
    "HookFunction",
    "as_hook",
    "delivery_json",
    "hook_environment",
]
