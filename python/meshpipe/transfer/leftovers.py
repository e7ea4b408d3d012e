"""Temporary files left by receives that were killed: found beside the destination and
removed, so that a crash does not leave a ``.part`` file forever.

A receive without the ledger writes into ``.<name>.meshpipe-<pid>-<n>.part`` beside its
destination (the engine's Assembler) and removes it on any failure it sees; only a process
that was killed (SIGKILL, OOM, power) leaves one behind. The next receive into the same
destination removes those whose process no longer runs on this machine and that have not
been written for :data:`ABANDONED_AFTER` seconds (a folder shared with another machine may
hold a live receive whose pid means nothing here: it writes continually, or gives up after
its stall timeout). A receive recorded in the ledger keeps a stable partial file instead
(``.<name>.<message id>.meshpipe-partial``), which the next run resumes; this module leaves
those alone.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Final

from meshpipe.processes import process_is_alive

log = logging.getLogger("meshpipe.transfer")

#: Seconds without a write after which a dead process's temporary file is removed.
ABANDONED_AFTER: Final = 60.0


def remove_abandoned_parts(destination: Path, *, now: float | None = None) -> list[Path]:
    """Remove the temporary files that killed receives left beside ``destination``; returns
    what was removed."""
    pattern = re.compile(rf"\.{re.escape(destination.name)}\.meshpipe-(\d+)-\d+\.part")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(destination.parent))
    except OSError:
        return removed
    moment = time.time() if now is None else now
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if (
            match is None
            or int(match.group(1)) == os.getpid()
            or process_is_alive(int(match.group(1)))
        ):
            continue
        try:
            if moment - entry.stat(follow_symlinks=False).st_mtime < ABANDONED_AFTER:
                continue
            os.unlink(entry.path)
        except OSError:
            continue  # gone already, or not ours to remove
        log.info("removed %s, left by a receive that was killed", entry.path)
        removed.append(Path(entry.path))
    return removed


__all__ = ["ABANDONED_AFTER", "remove_abandoned_parts"]
