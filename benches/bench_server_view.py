"""The store view of ``meshpipe serve`` with 100,000 messages in its store: server time per
page (the mailboxes with their counts; a mailbox's first, a middle and a filtered page; one
message; its evidence bundle) and the peak RSS of the server process.

The store is written as the dir store keeps it (one ``<ID>.msg`` metadata file a message,
each of three chunks; no chunk bodies, which the view never reads), spread over the three
default mailboxes, and ``meshpipe serve --store dir`` loads it; each page is fetched over
loopback HTTP. The figure is the median of 15 fetches after two warm-ups, with the best and
the worst.

    .venv/bin/python -m pytest benches/bench_server_view.py -s
    MESHPIPE_BENCH_MESSAGES=20000 .venv/bin/python -m pytest benches/bench_server_view.py -s
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from benches.page_timing import page_figures
from meshpipe.memory import peak_rss
from meshpipe.server.models import (
    ACCEPTED,
    ACKNOWLEDGED,
    DATA,
    UPLOADING,
    ChunkRecord,
    Event,
    Message,
)
from meshpipe.server.process import server_process
from meshpipe.server.store import METADATA_SUFFIX
from meshpipe.units import MiB

MESSAGES = int(os.environ.get("MESHPIPE_BENCH_MESSAGES", "100000"))
MAILBOXES = ("X26ABC1", "X26ABC2", "X26ABC3")


def _write_store(root: Path, count: int) -> None:
    start = datetime.now(UTC) - timedelta(days=2)
    for number in range(count):
        sender, recipient = MAILBOXES[number % 3], MAILBOXES[(number + 1) % 3]
        created = start + timedelta(seconds=number)
        events = [Event(UPLOADING, created), Event(ACCEPTED, created)]
        if number % 4 == 0:
            events.append(Event(ACKNOWLEDGED, created + timedelta(seconds=1)))
        message = Message(
            message_id=f"{number:032X}",
            sender=sender,
            recipient=recipient,
            workflow_id="TEST_WORKFLOW",
            message_type=DATA,
            total_chunks=3,
            created=created,
            inbox_expiry=created + timedelta(days=5),
            events=events,
            subject=f"bench message {number}",
            file_name=f"extract-{number}.csv",
            chunks={n: ChunkRecord(n, 5 * MiB, 5 * MiB, f"{n:032x}") for n in (1, 2, 3)},
        )
        folder = root / recipient / "in"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{message.message_id}{METADATA_SUFFIX}"
        path.write_text(json.dumps(message.to_json(), separators=(",", ":")))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    started = time.perf_counter()
    _write_store(tmp_path / "store", MESSAGES)
    print(f"\nwrote a store of {MESSAGES:,} messages in {time.perf_counter() - started:.1f} s")
    arguments = ["--store", "dir", "--data-dir", str(tmp_path / "store"), "--log-level", "WARNING"]
    with server_process(*arguments) as running:
        yield running


def test_store_view_pages_with_100k_messages(
    served: tuple[str, subprocess.Popen[str]], figures: list[str]
) -> None:
    base, process = served
    middle = f"{MESSAGES // 2:032X}"
    pages = {
        "mailboxes": "/view/",
        "mailbox first": "/view/mailboxes/X26ABC2",
        "mailbox middle": f"/view/mailboxes/X26ABC2?page={MESSAGES // 300}",
        "inbox, filtered": "/view/mailboxes/X26ABC2?box=inbox&status=acknowledged",
        "one message": f"/view/messages/{middle}",
        "evidence": f"/view/messages/{middle}/evidence.json",
    }
    figures.extend(page_figures(base, pages, "store view"))
    rss = peak_rss(process.pid) / MiB
    figures.append(f"store view peak RSS of meshpipe serve: {rss:.0f} MiB ({MESSAGES:,} messages)")
