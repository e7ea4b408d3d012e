"""Real MESH peers for the tests: NHS's mesh-sandbox (PyPI) run under uvicorn on loopback.

Used by the client interop tests and the server conformance tests alike.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshpipe.auth import make_token

SANDBOX_SHARED_KEY = "TestKey"
SANDBOX_PASSWORD = "password"
SANDBOX_MAILBOXES = ("X26ABC1", "X26ABC2", "X26ABC3")
V2_MEDIA_TYPE = "application/vnd.mesh.v2+json"


def token(mailbox: str, *, shared_key: str = SANDBOX_SHARED_KEY, **options: Any) -> str:
    """An NHSMESH Authorization value for one of the test mailboxes (password ``password``);
    ``options`` go to meshpipe.auth.make_token (nonce, timestamp, ...)."""
    return make_token(mailbox, SANDBOX_PASSWORD, shared_key, **options)


def auth_headers(
    mailbox: str, *, shared_key: str = SANDBOX_SHARED_KEY, v2: bool = True, **extra: str
) -> dict[str, str]:
    """Authorization (and by default the v2 Accept header) for a request as ``mailbox``."""
    headers = {"Authorization": token(mailbox, shared_key=shared_key)}
    if v2:
        headers["Accept"] = V2_MEDIA_TYPE
    return {**headers, **extra}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_ping(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{url}/messageexchange/_ping", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise TimeoutError(f"no answer from {url} within {timeout}s")


@dataclass(frozen=True)
class Sandbox:
    url: str
    shared_key: str
    data_dir: Path
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def run_sandbox(
    data_dir: Path,
    *,
    auth_mode: str = "full",
    store_mode: str = "file",
    shared_key: str = SANDBOX_SHARED_KEY,
) -> Iterator[Sandbox]:
    """Start mesh-sandbox with real authentication and file storage in ``data_dir``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for mailbox in SANDBOX_MAILBOXES:
        (data_dir / mailbox / "in").mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        **os.environ,
        "AUTH_MODE": auth_mode,
        "STORE_MODE": store_mode,
        "SHARED_KEY": shared_key,
        "MAILBOXES_DATA_DIR": str(data_dir),
    }
    log = (data_dir / "sandbox.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "mesh_sandbox.api:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_ping(url, process)
        yield Sandbox(url=url, shared_key=shared_key, data_dir=data_dir, process=process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
