"""A one-line progress display (bytes, rate, ETA) for terminals; silent otherwise."""

from __future__ import annotations

import time
from typing import TextIO

from meshpipe.units import MiB


def progress_text(done: int, total: int, elapsed: float) -> str:
    """``512.0/1024.0 MiB  50%  310.2 MB/s  ETA 2 s``."""
    rate = done / elapsed if elapsed > 0 else 0.0
    percent = 100 * done / total if total else 100.0
    eta = f"ETA {(total - done) / rate:,.0f} s" if rate > 0 and done < total else ""
    return (
        f"{done / MiB:,.1f}/{total / MiB:,.1f} MiB {percent:3.0f}%  {rate / 1e6:,.1f} MB/s  {eta}"
    ).rstrip()


class Progress:
    """Call it with (done, total) bytes; it redraws one line on a terminal, no more than every
    tenth of a second. ``close()`` ends the line."""

    def __init__(self, stream: TextIO, *, label: str = "", force: bool = False) -> None:
        self._stream = stream
        self._enabled = force or stream.isatty()
        self._label = f"{label} " if label else ""
        self._started = time.monotonic()
        self._last_drawn = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        if done < total and now - self._last_drawn < 0.1:
            return
        self._last_drawn = now
        text = progress_text(done, total, now - self._started)
        self._stream.write(f"\r{self._label}{text}\x1b[K")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
