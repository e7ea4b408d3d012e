"""The page timings of the web benches (bench_web, bench_server_view): each page fetched over
loopback, twice to warm up, then FETCHES times; its median server-and-transfer time against
GOAL_MS, one figure line per page."""

from __future__ import annotations

import statistics
import time
import urllib.request
from collections.abc import Mapping

FETCHES = 15
GOAL_MS = 50.0


def fetch(url: str) -> tuple[float, int]:
    """(seconds, body bytes) of one GET answered 200."""
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as answer:
        body = answer.read()
        assert answer.status == 200
    return time.perf_counter() - started, len(body)


def page_figures(base: str, pages: Mapping[str, str], label: str) -> list[str]:
    """One line per page of ``pages`` (name -> path under ``base``), headed ``label``."""
    lines = []
    for name, path in pages.items():
        for _ in range(2):
            fetch(base + path)
        times = []
        size = 0
        for _ in range(FETCHES):
            seconds, size = fetch(base + path)
            times.append(seconds * 1000)
        median = statistics.median(times)
        mark = "" if median < GOAL_MS else "  (over the goal)"
        lines.append(
            f"{label} {name:<16} {median:6.1f} ms median "
            f"({min(times):.1f}..{max(times):.1f}, {size / 1024:.0f} KiB){mark}"
        )
    return lines
