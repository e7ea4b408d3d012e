"""The peak memory of a process as the OS reports it (the demo and the benchmarks report it)."""

from __future__ import annotations

import contextlib
from pathlib import Path


def peak_rss(pid: int | str = "self") -> int:
    """Peak resident set (VmHWM, bytes) of a process, from ``/proc``; 0 where that is not
    available. Not ``ru_maxrss``: Linux carries that over from the parent across exec."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0
