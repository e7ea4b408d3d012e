"""``python -m meshpipe.server`` as a child process, for tests that kill or configure it like a
deployment (command line, environment variables)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

KEY = "TestKey"
ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def serve_with(*args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``python -m meshpipe.server`` on a free port, as a child process we can SIGKILL."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "python")}
    common = ["--port", "0", "--rules", "sandbox", "--shared-key", KEY, "--log-level", "WARNING"]
    process = subprocess.Popen(
        [sys.executable, "-m", "meshpipe.server", *common, *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on" in line, line
        yield line.rsplit(" ", 1)[1].strip(), process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=10)
