"""The web view's list page with 100,000 transfers in the ledger: server time per page (the
first; one in the middle through the keyset; a filtered one; the last; a search by message
id; one sorted by size, which pages by offset over a sort of every row) and the peak RSS of
the ``meshpipe web`` process serving them. Goal: under 50 ms per page.

The ledger is built with bulk inserts through SQLAlchemy Core (tests/web/ledgers.py), not
100,000 begin_send calls; ``meshpipe web`` runs as its own process and each page is fetched
over loopback HTTP (rendered HTML, as a browser gets it). The figure is the median of 15
fetches after two warm-ups, with the best and the worst; on SQLite and PostgreSQL.

    .venv/bin/python -m pytest benches/bench_web.py -s
    MESHPIPE_BENCH_TRANSFERS=20000 .venv/bin/python -m pytest benches/bench_web.py -s
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.peers import free_port
from tests.web.ledgers import bulk_ledger

from benches.page_timing import page_figures
from meshpipe.memory import peak_rss
from meshpipe.units import MiB

TRANSFERS = int(os.environ.get("MESHPIPE_BENCH_TRANSFERS", "100000"))


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "ledger.sqlite3")
    return str(request.getfixturevalue("postgres_server").create_database("web"))


@pytest.fixture
def web_server(location: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    started = time.perf_counter()
    bulk_ledger(location, TRANSFERS)
    print(f"\nbuilt a ledger of {TRANSFERS:,} transfers in {time.perf_counter() - started:.1f} s")
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "meshpipe",
            "web",
            "--ledger",
            location,
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    line = process.stderr.readline().decode()
    assert "open http://" in line, line
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_list_pages_with_100k_transfers(
    web_server: tuple[str, subprocess.Popen[bytes]], location: str, figures: list[str]
) -> None:
    base, process = web_server
    middle = TRANSFERS // 2
    pages = {
        "first": "/transfers",
        "middle (keyset)": f"/transfers?before={middle}",
        "filtered": "/transfers?state=failed&workflow=WF_03&direction=send",
        "last": "/transfers?last=1",
        "search": f"/transfers?q=2026{middle:016d}_BULK{middle % 97:02d}",
        "sorted by size": "/transfers?sort=size&order=desc&page=3",
        "overview": "/",
        "one transfer": f"/transfers/{middle}",
    }
    backend = "SQLite" if "://" not in location else "PostgreSQL"
    figures.extend(page_figures(base, pages, f"web {backend:<10}"))
    rss = peak_rss(process.pid) / MiB
    figures.append(
        f"web {backend:<10} peak RSS of meshpipe web: {rss:.0f} MiB ({TRANSFERS:,} transfers)"
    )
