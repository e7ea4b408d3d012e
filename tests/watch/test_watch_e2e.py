"""``meshpipe watch`` as a process, stopped in the middle of a transfer: by SIGTERM (it stops
within its grace period, exit status 0) and by SIGKILL; started again, it finishes the
transfer, and the recipient's inbox folder holds the file exactly once, byte-exact.

The kill lands at a known point without timing anything: the local server holds chunk 2 of
the message (a stall fault), and the test waits until its fault log shows the stall began."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshpipe.server.process import server_process
from meshpipe.synthetic import write_csv
from meshpipe.units import MiB
from tests.client.conftest import RECIPIENT, SENDER
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY

WORKFLOW = "TEST_WORKFLOW"  # the local server's default: from X26ABC1 to X26ABC2


@pytest.fixture
def server() -> Iterator[str]:
    with server_process("--store", "memory", env={"SHARED_KEY": SANDBOX_SHARED_KEY}) as (url, _):
        yield url


def admin(url: str, method: str, data: Any = None) -> Any:
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(
        f"{url}/messageexchange/admin/faults",
        data=body,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def write_config(root: Path, url: str) -> Path:
    profiles = "".join(
        f'[profiles.{name}]\nurl = "{url}"\nmailbox = "{mailbox}"\n'
        f'password = "{SANDBOX_PASSWORD}"\nshared_key = "{SANDBOX_SHARED_KEY}"\n'
        for name, mailbox in (("a", SENDER), ("b", RECIPIENT))
    )
    watch = (
        '[watch]\nlisten = "127.0.0.1:0"\npoll_interval = 1\nscan_interval = 0.2\n'
        "settle_seconds = 0.2\nshutdown_grace = 1\n"
        f'[[watch.mailbox]]\nprofile = "a"\nroot = "{root / "a"}"\nchunk_size = "5MiB"\n'
        f'receive = false\n[[watch.mailbox.rule]]\nfolder = "drop"\nto = "{RECIPIENT}"\n'
        f'workflow_id = "{WORKFLOW}"\n'
        f'[[watch.mailbox]]\nprofile = "b"\nroot = "{root / "b"}"\nsend = false\n'
    )
    path = root / "watch.toml"
    path.write_text(profiles + watch)
    return path


def start_watch(config: Path, state: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "meshpipe", "watch", "--config", str(config)]
    return subprocess.Popen(
        [*command, "--state-dir", str(state)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition: Callable[[], bool], what: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"watch exited before {what}: {process.stderr.read()}")  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["term", "kill"])
def test_a_watch_stopped_mid_transfer_finishes_it_once_after_a_restart(
    server: str, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    config = write_config(tmp_path, server)
    source = write_csv(tmp_path / "extract.csv", 12 * MiB)  # three chunks of 5 MiB
    expected = source.read_bytes()
    stall = {"kind": "stall", "route": "send_chunk", "chunk": 2, "seconds": 30}
    admin(server, "PUT", {"faults": [stall]})
    drop = tmp_path / "a" / "out" / "drop"
    drop.mkdir(parents=True)
    source.rename(drop / "extract.csv")

    first = start_watch(config, tmp_path / "state")
    wait_for(lambda: bool(admin(server, "GET")["log"]), "chunk 2 on the wire", first)
    first.send_signal(stop_signal)
    status = first.wait(timeout=30)
    stderr = first.stderr.read()  # type: ignore[union-attr]
    if stop_signal == signal.SIGTERM:
        assert status == 0, stderr
        assert "stopping" in stderr
    else:
        assert status == -signal.SIGKILL
    assert (drop / "extract.csv").is_file()  # not moved: the send is not finished
    inbox = tmp_path / "b" / "in"
    assert not (inbox / "extract.csv").exists()

    admin(server, "PUT", {"faults": []})
    second = start_watch(config, tmp_path / "state")
    try:
        wait_for(lambda: (inbox / "extract.csv.ctl").exists(), "the delivery", second)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    assert (inbox / "extract.csv").read_bytes() == expected
    assert sorted(os.listdir(inbox)) == [
        "extract.csv",
        "extract.csv.ctl",
        "extract.csv.meshpipe.json",
    ]
    sent = sorted(os.listdir(tmp_path / "a" / "sent"))
    assert len(sent) == 2 and sent[0].startswith("extract_")
    assert list(drop.iterdir()) == []
