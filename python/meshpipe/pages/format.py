"""How the pages write sizes, rates, durations and times (Jinja filters of every page)."""

from __future__ import annotations

import datetime as dt
from typing import Final

_BINARY: Final = ("B", "KiB", "MiB", "GiB", "TiB")


def size_text(size: int | None) -> str:
    """``0 B``, ``1023 B``, ``1.5 KiB``, ``20.0 MiB``; ``–`` for None."""
    if size is None:
        return "–"
    value = float(size)
    for unit in _BINARY:
        if abs(value) < 1024 or unit == _BINARY[-1]:
            return f"{size} B" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def rate_text(bytes_per_second: float | None) -> str:
    """``310.2 MB/s`` (decimal megabytes, as the progress line writes them); ``–`` for None."""
    if bytes_per_second is None:
        return "–"
    if bytes_per_second == 0:
        return "0 B/s"
    if bytes_per_second < 1e6:
        return f"{bytes_per_second / 1e3:,.1f} kB/s"
    return f"{bytes_per_second / 1e6:,.1f} MB/s"


def duration_text(seconds: float | None) -> str:
    """``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``; ``–`` for None."""
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, whole = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {whole:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def time_text(moment: dt.datetime | float | None) -> str:
    """``2026-12-04 02:10:33Z`` (UTC, to the second) from an aware datetime or a Unix time;
    ``–`` for None. A naive datetime is taken to be UTC."""
    if moment is None:
        return "–"
    if isinstance(moment, int | float):
        moment = dt.datetime.fromtimestamp(moment, dt.UTC)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


FILTERS: Final = {
    "size": size_text,
    "rate": rate_text,
    "duration": duration_text,
    "time": time_text,
}

__all__ = ["FILTERS", "duration_text", "rate_text", "size_text", "time_text"]
