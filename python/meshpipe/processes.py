"""What this machine's OS says about a process by its pid (a claim's owner, the writer of a
temporary file a killed receive left)."""

from __future__ import annotations

import os


def process_is_alive(pid: int) -> bool:
    """Whether process ``pid`` on this machine still runs (a zombie does not; another user's
    live process does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


__all__ = ["process_is_alive"]
