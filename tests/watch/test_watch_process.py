"""``meshpipe watch`` as a real process against ``meshpipe serve`` (a child process) and NHS's
mesh-sandbox: files dropped in A's outbox folder (with control files, and by folder rule)
arrive in B's inbox folder byte-exact with their metadata; bad control files, an unknown
recipient and a workflow the recipient may not receive end in failed/ with a reason; a
remote file name stays inside the inbox folder; ``--once`` sends, then receives; a file
without a ``[watch]`` table is refused. (A stop mid-transfer: test_watch_e2e.py.) Every wait
is on a condition with a bounded deadline."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshpipe.server.process import server_process
from tests.client.conftest import RECIPIENT, SENDER
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY, Sandbox

DEADLINE = 90.0
RULE_FOLDER = "extracts"
#: A workflow X26ABC2 may receive under the server's strict rules (and in the sandbox).
WORKFLOW = "TEST_WORKFLOW"


@pytest.fixture
def strict_url() -> Iterator[str]:
    """``meshpipe serve`` as a child process, enforcing the live platform's rules."""
    with server_process("--rules", "strict", "--shared-key", SANDBOX_SHARED_KEY) as (url, _):
        yield url


@pytest.fixture
def sandbox_rules_url() -> Iterator[str]:
    with server_process("--rules", "sandbox", "--shared-key", SANDBOX_SHARED_KEY) as (url, _):
        yield url


@dataclass
class Watch:
    """The folders and config file of a two-mailbox ``meshpipe watch``."""

    root: Path
    config: Path
    workflow: str

    def folder(self, mailbox: str, name: str) -> Path:
        return self.root / mailbox / name

    async def start(self) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "meshpipe",
            "watch",
            "--config",
            str(self.config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "MESHPIPE_CONFIG": "", "HOME": "/nonexistent-home-for-tests"},
        )

    def inbox_data(self) -> dict[str, bytes]:
        inbox = self.folder("b", "in")
        if not inbox.is_dir():
            return {}
        return {
            path.name: path.read_bytes()
            for path in inbox.iterdir()
            if path.is_file()
            and not path.name.endswith((".json", ".ctl"))
            and not path.name.startswith(".")
        }


def write_config(root: Path, url_a: str, url_b: str, workflow: str, **watch: object) -> Watch:
    lines = []
    for name, mailbox, url in (("a", SENDER, url_a), ("b", RECIPIENT, url_b)):
        lines += [
            f"[profiles.{name}]",
            f'url = "{url}"',
            f'mailbox = "{mailbox}"',
            f'password = "{SANDBOX_PASSWORD}"',
            f'shared_key = "{SANDBOX_SHARED_KEY}"',
            "",
        ]
    settings = {
        "listen": '"127.0.0.1:0"',
        "poll_interval": 0.3,
        "scan_interval": 0.2,
        "settle_seconds": 0.2,
        "shutdown_grace": 2,
        "retry_budget": 5,
        "max_backoff": 1,
        **watch,
    }
    lines += ["[watch]", *(f"{key} = {value}" for key, value in settings.items()), ""]
    lines += [
        "[[watch.mailbox]]",
        'profile = "a"',
        f'root = "{root / "a"}"',
        "receive = false",
        "",
        "[[watch.mailbox.rule]]",
        f'folder = "{RULE_FOLDER}"',
        f'to = "{RECIPIENT}"',
        f'workflow_id = "{workflow}"',
        "",
        "[[watch.mailbox]]",
        'profile = "b"',
        f'root = "{root / "b"}"',
        "send = false",
        f'workflow_filter = "{workflow}"',
        "",
    ]
    config = root / "meshpipe.toml"
    config.write_text("\n".join(lines))
    return Watch(root, config, workflow)


async def until(
    condition: Callable[[], bool], what: str, process: asyncio.subprocess.Process
) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not condition():
        if process.returncode is not None or loop.time() > end:
            output = await process.stderr.read() if process.stderr else b""
            raise AssertionError(f"never happened: {what}\n{output.decode()[-3000:]}")
        await asyncio.sleep(0.05)


async def terminate(process: asyncio.subprocess.Process) -> tuple[int, str]:
    """SIGTERM, then the exit status and standard error (bounded by DEADLINE)."""
    process.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), DEADLINE)
    assert process.returncode is not None
    return process.returncode, err.decode()


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    yield started
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


def ctl(to: str, workflow: str, local_id: str) -> bytes:
    return (
        "<DTSControl><Version>1.0</Version><AddressType>DTS</AddressType>"
        f"<MessageType>Data</MessageType><WorkflowId>{workflow}</WorkflowId>"
        f"<To_DTS>{to}</To_DTS><LocalId>{local_id}</LocalId></DTSControl>"
    ).encode()


def drop(out: Path, name: str, data: bytes, control: bytes) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.dat").write_bytes(data)
    (out / f"{name}.ctl").write_bytes(control)


async def test_files_dropped_in_a_arrive_in_b_and_bad_ones_fail_with_a_reason(
    strict_url: str, tmp_path: Path, processes: list[asyncio.subprocess.Process]
) -> None:
    watch = write_config(tmp_path, strict_url, strict_url, WORKFLOW)
    out = watch.folder("a", "out")
    good = b"nhs_number\n9434765919\n" * 200
    drop(out, "good", good, ctl(RECIPIENT, WORKFLOW, f"GOOD-{uuid.uuid4().hex[:8]}"))
    drop(out, "broken", b"b", b"<DTSControl><To_DTS>X26ABC2</To_DTS><Oops/></DTSControl>")
    drop(out, "nobody", b"n", ctl("X26NOBODY9", WORKFLOW, "NOBODY-1"))
    drop(out, "refused", b"r", ctl(RECIPIENT, "NOT_A_WORKFLOW", "REFUSED-1"))
    (out / RULE_FOLDER).mkdir()
    (out / RULE_FOLDER / "nightly.csv").write_bytes(b"by rule\n")
    process = await watch.start()
    processes.append(process)

    await until(
        lambda: len(list(watch.folder("b", "in").glob("*.json"))) == 2, "two messages in B", process
    )
    failed = watch.folder("a", "failed")
    await until(lambda: len(list(failed.glob("*.reason.txt"))) == 3, "three failures in A", process)
    status, err = await terminate(process)

    assert status == 0, err
    assert watch.inbox_data() == {"good.dat": good, "nightly.csv": b"by rule\n"}
    assert (watch.folder("b", "in") / "good.ctl").exists()
    reasons = {path.name: path.read_text() for path in failed.glob("*.reason.txt")}
    assert set(reasons) == {
        "broken.dat.reason.txt",
        "nobody.dat.reason.txt",
        "refused.dat.reason.txt",
    }
    assert "check the recipient mailbox id" in reasons["nobody.dat.reason.txt"]
    assert "may not receive this workflow" in reasons["refused.dat.reason.txt"]
    assert SANDBOX_PASSWORD not in err and SANDBOX_SHARED_KEY not in err


async def test_against_the_sandbox_a_remote_name_stays_inside_the_inbox(
    sandbox: Sandbox, tmp_path: Path, processes: list[asyncio.subprocess.Process]
) -> None:
    workflow = f"MPE2E_{uuid.uuid4().hex[:12].upper()}"
    watch = write_config(tmp_path, sandbox.url, sandbox.url, workflow)
    rule = watch.folder("a", "out") / RULE_FOLDER
    rule.mkdir(parents=True)
    (rule / "daily.csv").write_bytes(b"daily\n")
    process = await watch.start()
    processes.append(process)

    await until(lambda: watch.inbox_data() != {}, "the file in B", process)
    await until(
        lambda: len(list(watch.folder("b", "in").glob("*.json"))) == 1, "its sidecar", process
    )
    status, err = await terminate(process)

    assert status == 0, err
    assert watch.inbox_data() == {"daily.csv": b"daily\n"}


async def run_once(watch: Watch) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meshpipe",
        "watch",
        "--config",
        str(watch.config),
        "--once",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "MESHPIPE_CONFIG": "", "HOME": "/nonexistent-home-for-tests"},
    )
    _, err = await asyncio.wait_for(process.communicate(), DEADLINE)
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_once_sends_then_receives_and_exits(strict_url: str, tmp_path: Path) -> None:
    watch = write_config(tmp_path, strict_url, strict_url, WORKFLOW)
    drop(watch.folder("a", "out"), "cron", b"from cron\n", ctl(RECIPIENT, WORKFLOW, "CRON-1"))

    first = await run_once(watch)
    assert first[0] == 0, first[1]
    assert list(watch.folder("a", "out").glob("cron.*")) == []
    second = await run_once(watch)

    assert second[0] == 0, second[1]
    assert watch.inbox_data() == {"cron.dat": b"from cron\n"}
    assert (watch.folder("b", "in") / "cron.dat.meshpipe.json").exists()


async def test_a_config_without_a_watch_table_is_refused_with_what_to_do(tmp_path: Path) -> None:
    config = tmp_path / "meshpipe.toml"
    config.write_text('[profiles.a]\nurl = "http://127.0.0.1:1"\n')
    watch = Watch(tmp_path, config, WORKFLOW)

    status, err = await run_once(watch)

    assert status == 2
    assert err.strip().splitlines()[-1].startswith("meshpipe: error: config file")
    assert "no [watch] table" in err
