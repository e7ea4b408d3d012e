"""``meshpipe serve`` as a child process for tests that kill it or configure it like a
deployment (command line, environment variables)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

from meshpipe.server.process import server_process
from tests.peers import SANDBOX_SHARED_KEY


@contextmanager
def serve_with(*args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Sandbox rules, the test key, quiet logs; a process the test may SIGKILL."""
    common = ["--rules", "sandbox", "--shared-key", SANDBOX_SHARED_KEY, "--log-level", "WARNING"]
    with server_process(*common, *args) as running:
        yield running
