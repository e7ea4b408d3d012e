"""``meshpipe serve`` as a child process (the demo, tests that kill it or configure it like a
deployment, benchmarks that measure it on its own core)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import IO

from meshpipe.errors import MeshpipeError


@contextlib.contextmanager
def server_process(
    *args: str,
    env: Mapping[str, str] | None = None,
    stderr: IO[bytes] | None = None,
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Start ``python -m meshpipe.server --port 0 ARGS`` and yield (url, process) once it
    listens: it picks its own free port and prints its URL (the last word of its start-up
    line: the one clients on this machine use), so there is no port race. ``env``
    adds to this process's environment (e.g. the sandbox's SHARED_KEY); the server is stopped
    (terminated, then killed) on exit unless the caller already stopped it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "meshpipe.server", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # its only line on stdout, or EOF if it exits
        if "listening on" not in line:
            process.wait(timeout=30)
            raise MeshpipeError(f"meshpipe serve exited ({process.returncode}) before listening")
        yield line.rsplit(" ", 1)[1].strip(), process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
