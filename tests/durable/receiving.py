"""Helpers of the durable receive tests: a ``meshpipe serve`` child process (dir store) with
its admin API (synthetic messages, fault plans, the fault log), ``meshpipe receive`` as a
child process, and the ledger as the tests read it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshpipe.ledger import Ledger, ReceiveRecord, resolve_ledger_location
from meshpipe.units import MiB
from tests.peers import SANDBOX_PASSWORD, SANDBOX_SHARED_KEY
from tests.server.processes import serve_with

CHUNK = 5 * MiB
SENDER = "X26ABC1"
RECIPIENT = "X26ABC2"
#: Long enough that only a SIGKILL ends a stalled download.
HOLD_SECONDS = 3600
#: A bound on waiting for a child process to reach a point (a hang fails, never a slow run).
PATIENCE = 120.0


@dataclass
class Serve:
    """A running ``meshpipe serve`` and its admin API."""

    url: str
    process: subprocess.Popen[str]
    mark: int = 0  # fault log entries before the current plan

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}/messageexchange/admin/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def synthetic(self, size: int, *, checksum: bool = True, seed: int = 1) -> str:
        """A message of ``size`` bytes in 5 MiB chunks in the recipient's inbox."""
        made = self.admin(
            "POST",
            "synthetic",
            {
                "mailbox_id": RECIPIENT,
                "sender": SENDER,
                "size": size,
                "chunk_size": CHUNK,
                "seed": seed,
                "checksum": checksum,
                "workflow_id": "DURABLE_TEST",
                "file_name": "extract.bin",
            },
        )
        return str(made["message_id"])

    def faults(self, *faults: dict[str, Any]) -> None:
        """Replace the fault plan (and keep counting every download and acknowledgement)."""
        counting = [
            {"kind": "stall", "route": route, "seconds": 0, "times": 0}
            for route in ("download", "ack")
        ]
        self.mark = len(self.admin("GET", "faults")["log"])
        self.admin("PUT", "faults", {"faults": [*counting, *faults]})

    def log(self) -> list[dict[str, Any]]:
        """The faults fired since the current plan was set."""
        return list(self.admin("GET", "faults")["log"])[self.mark :]

    def downloads(self) -> Counter[int]:
        """Downloads per chunk number since the plan was set."""
        return Counter(
            int(entry["chunk"])
            for entry in self.log()
            if entry["route"] == "download" and entry.get("seconds") == 0
        )

    def acks(self) -> int:
        return sum(
            1 for entry in self.log() if entry["route"] == "ack" and entry.get("seconds") == 0
        )

    def status(self, message_id: str) -> str:
        return str(self.admin("GET", f"message/{message_id}")["status"]).lower()


@contextmanager
def serve(data_dir: Path) -> Iterator[Serve]:
    with serve_with("--store", "dir", "--data-dir", str(data_dir)) as (url, process):
        yield Serve(url, process)


def mesh_env(url: str, **extra: str) -> dict[str, str]:
    """The environment of a ``meshpipe`` child process receiving as the recipient."""
    return {
        **os.environ,
        "MESH_URL": url,
        "MESH_MAILBOX": RECIPIENT,
        "MESH_PASSWORD": SANDBOX_PASSWORD,
        "MESH_SHARED_KEY": SANDBOX_SHARED_KEY,
        "MESHPIPE_CONFIG": "",
        "HOME": "/nonexistent-home-for-tests",
        **extra,
    }


def meshpipe_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "meshpipe", *args]


def run_meshpipe(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        meshpipe_argv(*args), env=mesh_env(url), capture_output=True, text=True, timeout=300
    )


def start_meshpipe(url: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        meshpipe_argv(*args),
        env=mesh_env(url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def open_ledger() -> Ledger:
    """The ledger the child processes use (the test's own state directory)."""
    return Ledger.open(resolve_ledger_location())


def receive_record(message_id: str) -> ReceiveRecord | None:
    with open_ledger() as ledger:
        return ledger.find_receive(RECIPIENT, message_id)


def wait_for(what: str, predicate: Callable[[], bool], process: subprocess.Popen[str]) -> None:
    """Return once ``predicate()`` holds; fail if ``process`` exits first or it never does."""
    deadline = time.monotonic() + PATIENCE
    while not predicate():
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"meshpipe exited ({process.returncode}) before {what}: {err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def stalled_on(serve: Serve, chunk: int) -> Callable[[], bool]:
    def held() -> bool:
        return any(
            entry["route"] == "download"
            and entry.get("chunk") == chunk
            and entry.get("seconds") == HOLD_SECONDS
            for entry in serve.log()
        )

    return held


def hold(chunk: int) -> dict[str, Any]:
    """A fault that holds the first download of ``chunk`` until the receiver is killed."""
    return {"kind": "stall", "route": "download", "chunk": chunk, "seconds": HOLD_SECONDS}


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))
